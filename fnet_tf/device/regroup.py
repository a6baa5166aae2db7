#!/usr/bin/env python3
"""Make an INT8 .tflite's grouped convolutions faster on this CPU, with identical outputs.

    python regroup.py model_int8.tflite --out model_int8_regrouped.tflite [--threads 1]

LiteRT's int8 grouped ``CONV_2D`` kernels (XNNPACK) slow down sharply when a group has only a
few channels: on an x86 VM a 3x3 conv over 32 channels at 32x32 takes 9 us depthwise, 13 us
in 2 groups, 35 us in 8 groups and 70 us in 16 groups. The same conv can be stored with fewer,
wider groups: the int8 filter is laid out block-diagonally with zeros, which add nothing to the
int32 accumulators, while the per-channel scales and the bias stay as they are. So the integer
results are the same, only the kernel LiteRT picks changes.

For each grouped conv this script times every group count that divides the original one, each
as a one-op model on this machine (interleaved, p50), and keeps the fastest if it beats the
original by at least --min_gain. The rewritten file is written (atomically) only if its outputs
equal the original's, bit for bit, on --check_inputs random inputs; the labels appended to the
file travel with it. Run it on the device that will run the model: which layout wins depends on
its kernels.

Needs only numpy and ai-edge-litert (which brings flatbuffers), like run_tflite.py.
"""
import argparse
import copy
import io
import os
import sys
import tempfile
import time
import zipfile

import numpy as np


class RegroupError(Exception):
    """A problem with the user's input, reported in one line."""


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def read_model(content):
    schema = _schema()
    try:
        if len(content) < 8 or content[4:8] != b"TFL3":
            raise ValueError("no TFL3 identifier")
        return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))
    except Exception as e:  # noqa: BLE001  (flatbuffers raises assorted errors on damage)
        raise RegroupError(f"not a valid .tflite model ({type(e).__name__}: {e})") from None


def write_model(model):
    import flatbuffers

    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def appended_files(content):
    """The zip of associated files (``labels.txt``) appended after the flatbuffer, or b"".
    Rewriting the flatbuffer drops it, so it is carried over as it is."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as z:
            start = min((info.header_offset for info in z.infolist()), default=0)
    except (zipfile.BadZipFile, ValueError, OSError):
        return b""
    return content[start:] if start > 0 else b""


def _builtin_name(model, op):
    schema = _schema()
    code = model.operatorCodes[op.opcodeIndex]
    number = max(code.builtinCode, code.deprecatedBuiltinCode)
    return next((k for k, v in vars(schema.BuiltinOperator).items() if v == number), str(number))


def grouped_convs(model):
    """[(op index, groups, filter shape)] of the main subgraph's grouped CONV_2D ops whose
    filter is a constant int8 tensor (the only kind this rewrites)."""
    graph = model.subgraphs[0]
    int8 = _schema().TensorType.INT8
    found = []
    for k, op in enumerate(graph.operators):
        if _builtin_name(model, op) != "CONV_2D":
            continue
        in_channels = int(graph.tensors[op.inputs[0]].shape[-1])
        filt = graph.tensors[op.inputs[1]]
        data = model.buffers[filt.buffer].data
        if filt.type != int8 or data is None or len(data) == 0:
            continue
        per_group = int(filt.shape[3])
        if per_group < in_channels:
            found.append((k, in_channels // per_group, [int(s) for s in filt.shape]))
    return found


def expand_filter(weights, groups, new_groups):
    """An [O, kh, kw, C/groups] filter as the same conv over ``new_groups`` (which divides
    ``groups``): each output channel's weights sit at its input channels, zeros elsewhere."""
    out_c, kh, kw, per_group = weights.shape
    in_c = per_group * groups
    new_per_group = in_c // new_groups
    expanded = np.zeros((out_c, kh, kw, new_per_group), weights.dtype)
    for o in range(out_c):
        first_input = (o // (out_c // groups)) * per_group          # its inputs, as a channel
        offset = first_input - (o // (out_c // new_groups)) * new_per_group
        expanded[o, :, :, offset:offset + per_group] = weights[o]
    return expanded


def regrouped(model, op_index, new_groups):
    """A copy of ``model`` whose conv ``op_index`` runs over ``new_groups`` groups. The filter
    is rewritten in place, or copied where another op or tensor shares it."""
    model = copy.deepcopy(model)
    graph = model.subgraphs[0]
    op = graph.operators[op_index]
    in_channels = int(graph.tensors[op.inputs[0]].shape[-1])
    tensor_index = int(op.inputs[1])
    filt = graph.tensors[tensor_index]
    groups = in_channels // int(filt.shape[3])
    data = np.asarray(model.buffers[filt.buffer].data, np.uint8).view(np.int8)
    expanded = expand_filter(data.reshape([int(s) for s in filt.shape]), groups, new_groups)
    if sum(int(t.buffer == filt.buffer) for t in graph.tensors) > 1:
        model.buffers.append(_schema().BufferT())  # the converter shares identical buffers
        filt.buffer = len(model.buffers) - 1
    if sum(list(o.inputs).count(tensor_index) for o in graph.operators) > 1:
        filt = copy.deepcopy(filt)
        graph.tensors.append(filt)
        op.inputs = np.array(op.inputs, np.int32)
        op.inputs[1] = len(graph.tensors) - 1
    model.buffers[filt.buffer].data = expanded.view(np.uint8).ravel()
    filt.shape = np.array(expanded.shape, np.int32)
    if filt.shapeSignature is not None:
        filt.shapeSignature = np.array(expanded.shape, np.int32)
    return model


def one_op(model, op_index):
    """Only operator ``op_index``, with its activation input and output as the model's I/O."""
    model = copy.copy(model)
    graph = copy.copy(model.subgraphs[0])
    op = graph.operators[op_index]
    graph.operators = [op]
    graph.inputs = [op.inputs[0]]
    graph.outputs = list(op.outputs)
    model.subgraphs = [graph]
    model.signatureDefs = None
    return model


def _interpreter(content, threads):
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_content=content, num_threads=threads)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise RegroupError(f"LiteRT cannot load the model ({str(e).strip()[:160]})") from None
    return it


def _fill_random(it, rng):
    for d in it.get_input_details():
        info = np.iinfo(d["dtype"]) if np.issubdtype(d["dtype"], np.integer) else None
        value = (rng.integers(info.min, info.max + 1, d["shape"]) if info
                 else rng.normal(size=d["shape"]))
        it.set_tensor(d["index"], value.astype(d["dtype"]))


def p50_us(contents, threads, runs, rounds=10):
    """p50 microseconds of each flatbuffer, timed interleaved (machine drift hits all alike)."""
    rng = np.random.default_rng(0)
    its = []
    for content in contents:
        it = _interpreter(content, threads)
        _fill_random(it, rng)
        for _ in range(20):
            it.invoke()
        its.append(it)
    times = [[] for _ in its]
    for _ in range(rounds):
        for k, it in enumerate(its):
            for _ in range(max(1, runs // rounds)):
                start = time.perf_counter()
                it.invoke()
                times[k].append(time.perf_counter() - start)
    return [float(np.median(t)) * 1e6 for t in times]


def outputs_equal(a, b, inputs, threads):
    """Whether two flatbuffers give bit-identical outputs on ``inputs`` random inputs."""
    ia, ib = _interpreter(a, threads), _interpreter(b, threads)
    rng = np.random.default_rng(1)
    for _ in range(inputs):
        _fill_random(ia, rng)
        for da, db in zip(ia.get_input_details(), ib.get_input_details()):
            ib.set_tensor(db["index"], ia.get_tensor(da["index"]))
        ia.invoke()
        ib.invoke()
        for da, db in zip(ia.get_output_details(), ib.get_output_details()):
            if not np.array_equal(ia.get_tensor(da["index"]), ib.get_tensor(db["index"])):
                return False
    return True


def tune(content, threads=1, runs=300, min_gain=0.1, log=print):
    """(the rewritten flatbuffer, one dict per grouped conv with the timings and the choice)."""
    model = read_model(content)
    if len(model.subgraphs) != 1:
        raise RegroupError("the model has several subgraphs (control flow): not supported")
    tuned, choices = model, []
    for op_index, groups, shape in grouped_convs(model):
        candidates = [g for g in range(1, groups + 1) if groups % g == 0]
        variants = [write_model(one_op(regrouped(model, op_index, g), op_index)) if g != groups
                    else write_model(one_op(model, op_index)) for g in candidates]
        times = dict(zip(candidates, p50_us(variants, threads, runs)))
        best = min(times, key=times.get)
        if times[best] > (1 - min_gain) * times[groups]:
            best = groups
        choices.append({"op": op_index, "filter": shape, "groups": groups, "chosen_groups": best,
                        "p50_us": {str(g): round(t, 2) for g, t in times.items()}})
        log(f"op {op_index} CONV_2D {groups} groups, filter {shape}: "
            + ", ".join(f"{g} groups {t:.1f} us" for g, t in times.items())
            + f" -> {best} groups")
        if best != groups:
            tuned = regrouped(tuned, op_index, best)
    return write_model(tuned) + appended_files(content), choices


def _write_atomically(path, data):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".regroup.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a model file gets the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an INT8 .tflite with grouped CONV_2D ops")
    parser.add_argument("--out", required=True, help="where to write the regrouped .tflite")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (as deployed)")
    parser.add_argument("--runs", type=int, default=300, help="timed invokes per candidate")
    parser.add_argument("--min_gain", type=float, default=0.1,
                        help="keep the original layout unless a candidate is this much faster")
    parser.add_argument("--check_inputs", type=int, default=20,
                        help="random inputs on which the outputs must be bit-identical")
    args = parser.parse_args(argv)
    try:
        if args.threads < 1 or args.runs < 10 or args.check_inputs < 1:
            raise RegroupError("--threads and --check_inputs must be >= 1, --runs >= 10")
        try:
            with open(args.model, "rb") as f:
                content = f.read()
        except OSError as e:
            raise RegroupError(f"cannot read {args.model!r} ({e.strerror})") from None
        _interpreter(content, args.threads)  # a damaged file fails here, before any timing
        tuned, choices = tune(content, args.threads, args.runs, args.min_gain)
        if not choices:
            raise RegroupError(f"{args.model} has no grouped CONV_2D with a constant int8 filter: "
                               f"nothing to regroup")
        if not outputs_equal(content, tuned, args.check_inputs, args.threads):
            raise RegroupError("the regrouped model's outputs differ from the original's: "
                               "not written (please report this model)")
        before, after = p50_us([content, tuned], args.threads, args.runs)
        _write_atomically(args.out, tuned)
    except RegroupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    changed = sum(c["groups"] != c["chosen_groups"] for c in choices)
    print(f"regrouped {changed} of {len(choices)} grouped convs; outputs bit-identical on "
          f"{args.check_inputs} random inputs; whole model p50 {before:.1f} us -> {after:.1f} us "
          f"({args.threads} thread(s)); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
