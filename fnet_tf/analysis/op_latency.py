"""Where an INT8 model's time goes: each operator of a .tflite timed on its own.

Each operator is cut out of the flatbuffer into a one-op model (the operator, its weights and
its tensors with their quantization, unchanged) and timed with the LiteRT interpreter exactly
as the whole model is (same threads, default delegates), all of them interleaved with the whole
model in one pass. Each slice also says which kernel ran it: ``XNNPACK`` when the delegate took
the operator, ``builtin`` when TFLite's own kernel did (an op or layout XNNPACK does not take;
on x86 with LiteRT 2.3 every op of the released models, grouped convs included, is XNNPACK's).

Every timed invoke carries the interpreter's fixed per-invoke cost once, so the per-op times
usually add up to a little more than the whole model; compare ops by their share of the sum,
and the smallest op (the final FULLY_CONNECTED) shows roughly what that fixed cost is.
"""
import copy
import csv
import io
import os
from dataclasses import dataclass

from fnet_tf.analysis import plots
from fnet_tf.core import fileio
from fnet_tf.core.errors import UserError
from fnet_tf.tflite import convert as export
from fnet_tf.tflite import measure as benchmark

FIELDS = ["index", "op", "kind", "output_shape", "macs", "kernel", "p50_us", "share"]


@dataclass
class OpSlice:
    index: int
    op: str
    kind: str           # the op with its kernel size and grouping, e.g. "CONV_2D 3x3 grouped"
    output_shape: list
    macs: int
    content: bytes      # a flatbuffer holding only this operator


def _kind(op, tensors):
    """A readable op kind: convs carry their kernel size and whether they are grouped."""
    name = op["op_name"]
    if name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return name
    weights = tensors[op["inputs"][1]]["shape"]
    kind = f"{name} {weights[1]}x{weights[2]}"
    in_channels = tensors[op["inputs"][0]]["shape"][-1]
    if name == "CONV_2D" and weights[3] != in_channels:
        kind += " grouped"
    return kind


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _is_constant(model, tensor):
    data = model.buffers[model.subgraphs[0].tensors[tensor].buffer].data
    return data is not None and len(data) > 0


def _pack(model):
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_slices(content):
    """One single-operator flatbuffer per operator of ``content``'s main subgraph."""

    it = export.interpreter(content)  # a damaged file fails here, in one line
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    schema = _schema()
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytes(content), 0))
    except Exception as e:  # noqa: BLE001  (flatbuffers raises assorted errors)
        raise UserError(f"cannot read the .tflite's operators ({type(e).__name__}): "
                        f"re-export it") from None
    if len(model.subgraphs) != 1 or len(model.subgraphs[0].operators) != len(ops):
        raise UserError("per-op latency needs a model with one subgraph (no control flow)")
    slices = []
    for op in ops:
        k = op["index"]
        cut = copy.copy(model)
        graph = copy.copy(model.subgraphs[0])
        operator = graph.operators[k]
        graph.operators = [operator]
        # the operator's activations (tensors with no constant data) become the model's inputs
        graph.inputs = [i for i in operator.inputs if i >= 0 and not _is_constant(model, i)]
        graph.outputs = list(operator.outputs)
        cut.subgraphs = [graph]
        cut.signatureDefs = None
        macs = (benchmark.op_macs(op, tensors) if op["op_name"] in benchmark.MAC_OPS else 0)
        slices.append(OpSlice(index=k, op=op["op_name"], kind=_kind(op, tensors),
                              output_shape=[int(s) for s in tensors[op["outputs"][0]]["shape"]],
                              macs=int(macs), content=_pack(cut)))
    return slices


def op_latency(content, threads=1, runs=300):
    """Per-op p50 latency (us) of ``content``, timed interleaved with the whole model.

    Returns ``{"whole_p50_ms", "sum_of_ops_p50_ms", "threads", "ops": [row, ...]}``, one row per
    operator in execution order with the fields of ``FIELDS``.
    """

    slices = op_slices(content)
    timings = benchmark.latency([content] + [s.content for s in slices], threads, runs)
    whole, per_op = timings[0], timings[1:]
    total_us = sum(t["p50"] for t in per_op) * 1e3
    rows = []
    for s, t in zip(slices, per_op):
        p50_us = t["p50"] * 1e3
        rows.append({"index": s.index, "op": s.op, "kind": s.kind,
                     "output_shape": "x".join(str(d) for d in s.output_shape[1:]),
                     "macs": s.macs,
                     "kernel": "XNNPACK" if benchmark.uses_xnnpack(s.content, threads) else "builtin",
                     "p50_us": round(p50_us, 2), "share": round(p50_us / total_us, 4)})
    return {"whole_p50_ms": whole["p50"], "sum_of_ops_p50_ms": total_us / 1e3,
            "threads": threads, "runs": runs, "ops": rows}


def summary(timed):
    """What a metrics.json keeps of ``op_latency(...)``: totals, time per kind, builtin ops."""
    return {"whole_p50_ms": timed["whole_p50_ms"], "sum_of_ops_p50_ms": timed["sum_of_ops_p50_ms"],
            "by_kind_us": by_kind(timed["ops"]),
            "builtin_kernel_ops": [r["index"] for r in timed["ops"] if r["kernel"] != "XNNPACK"]}


def by_kind(rows):
    """Total p50 microseconds per op kind, largest first."""
    totals = {}
    for r in rows:
        totals[r["kind"]] = totals.get(r["kind"], 0.0) + r["p50_us"]
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def csv_text(rows):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def slowest_first(rows):
    return sorted(rows, key=lambda r: -r["p50_us"])


def kinds_of(by_kinds):
    """Every op kind of several models' ``by_kind`` dicts, in first-seen order."""
    kinds = []
    for by_kind_us in by_kinds:
        kinds += [k for k in by_kind_us if k not in kinds]
    return kinds


def write(rows, folder, title):
    """``op_latency.csv`` and ``op_latency.png`` of one model in ``folder``."""

    fileio.write_text(os.path.join(folder, "op_latency.csv"), csv_text(rows))
    plots.op_latency(rows, os.path.join(folder, "op_latency.png"), title)
