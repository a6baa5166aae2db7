"""Measuring .tflite models with the LiteRT interpreter: accuracy, latency, size, MACs, memory.

Everything here reads the flatbuffer itself, so it works on any image classifier, ours or
anyone's (e.g. the MLPerf Tiny ResNet-8).

MACs follow the usual convention (MLPerf Tiny's 12.5 M for ResNet-8): multiply-accumulates of
CONV_2D (out_h * out_w * out_c * k_h * k_w * in_c / groups), DEPTHWISE_CONV_2D
(out_h * out_w * out_c * k_h * k_w) and FULLY_CONNECTED (batch * out * in). Element-wise
work (ADD, MEAN, pooling) is counted apart as ``elementwise_ops`` (one per output element).

Latency uses our own invoke loop rather than ``python -m ai_edge_litert.tools.benchmark_litert_model``
because the analyzer must interleave several models (this VM's speed drifts by tens of percent
over minutes, so only interleaved timings give fair ratios) and report p90/p99 (the tool
reports p5/p95 at 0.01 ms resolution). ``litert_tool_latency`` runs the tool so the two can be
compared; ``analyze`` records both.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from fnet_tf.core import backend
from fnet_tf.quantization.schemes import get_scheme
from fnet_tf.tflite import convert as export

MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
ELEMENTWISE_OPS = ("ADD", "MEAN", "AVERAGE_POOL_2D", "MAX_POOL_2D", "MUL", "SUB")


def evaluate_tflite(content, split, limit=None, num_threads=1, progress=True):
    """Top-1/top-5 accuracy of a flatbuffer on ``split`` (raw pixels; the model's own input
    quantization is applied), one invoke per image."""
    count = len(split) if limit is None else min(limit, len(split))
    started = time.time()
    scores = export.predict(content, split.images[:count], num_threads, progress)
    labels = split.labels[:count]
    top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    # with five classes or fewer every label is in the top 5: a figure that measures nothing
    top5_accuracy = (float(np.mean((top5 == labels[:, None]).any(axis=1)))
                     if scores.shape[1] > 5 else None)
    return {"accuracy_top1": float(np.mean(np.argmax(scores, axis=1) == labels)),
            "accuracy_top5": top5_accuracy,
            "num_images": count, "seconds": time.time() - started}


def op_macs(op, tensors):
    name = op["op_name"]
    out_shape = tensors[op["outputs"][0]]["shape"]
    weights = tensors[op["inputs"][1]]["shape"]
    if name == "CONV_2D":  # filter [out_c, k_h, k_w, in_c / groups]
        _, oh, ow, oc = out_shape
        return int(oh * ow * oc * weights[1] * weights[2] * weights[3])
    if name == "DEPTHWISE_CONV_2D":  # filter [1, k_h, k_w, out_c]
        _, oh, ow, oc = out_shape
        return int(oh * ow * oc * weights[1] * weights[2])
    if name == "FULLY_CONNECTED":  # filter [out, in]
        batch = int(np.prod(out_shape)) // int(weights[0])
        return int(batch * weights[0] * weights[1])
    return 0


def graph_stats(content):
    """Ops, params, MACs, peak activation memory and I/O quantization of a flatbuffer."""
    it = export.interpreter(content)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    info = export.inspect(content)
    produced = {i: op["index"] for op in ops for i in op["outputs"]}
    last_use = {}
    for op in ops:
        for i in op["inputs"]:
            if i >= 0:
                last_use[i] = max(last_use.get(i, -1), op["index"])
    model_inputs = {d["index"] for d in it.get_input_details()}
    model_outputs = {d["index"] for d in it.get_output_details()}
    activations = {i for i in tensors if i in produced or i in model_inputs}
    nbytes = {i: int(np.prod(tensors[i]["shape"])) * np.dtype(tensors[i]["dtype"]).itemsize
              for i in activations}
    peak = 0
    for op in ops:
        live = sum(nbytes[i] for i in activations
                   if produced.get(i, -1) <= op["index"]
                   and (i in model_outputs or last_use.get(i, -1) >= op["index"]))
        peak = max(peak, live)
    macs = sum(op_macs(op, tensors) for op in ops if op["op_name"] in MAC_OPS)
    # params: the weights and biases of the MAC ops (shape and axis operands are not params)
    weight_tensors = {i for op in ops if op["op_name"] in MAC_OPS for i in op["inputs"][1:]
                      if i >= 0 and i not in produced}
    params = int(sum(np.prod(tensors[i]["shape"]) for i in weight_tensors))
    elementwise = sum(int(np.prod(tensors[op["outputs"][0]]["shape"])) for op in ops
                      if op["op_name"] in ELEMENTWISE_OPS)
    return {"ops": info["ops"], "params": params, "macs": macs,
            "elementwise_ops": elementwise, "peak_activation_bytes": peak,
            "input": info["input"], "output": info["output"], "problems": info["problems"]}


def _percentiles(times_ms):
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99),
            "mean": float(np.mean(times_ms)), "runs": len(times_ms)}


def latency(contents, threads=1, runs=300, warmup=30, rounds=10):
    """Latency percentiles (ms) of each flatbuffer, interleaved: ``rounds`` times, each model
    runs ``runs / rounds`` invokes in turn, so drift of the machine hits all models alike."""
    interpreters = []
    for content in contents:
        it = export.interpreter(content, delegates=True, num_threads=threads)
        inp = it.get_input_details()[0]
        pixels = np.random.default_rng(0).integers(0, 256, inp["shape"]).astype(np.float32)
        it.set_tensor(inp["index"], export.quantize_input(pixels, inp))
        for _ in range(warmup):
            it.invoke()
        interpreters.append(it)
    times = [[] for _ in contents]
    # exactly ``runs`` invokes each, spread over at most ``rounds`` rounds
    per_round = [len(chunk) for chunk in np.array_split(np.arange(runs), min(rounds, runs))]
    for count in per_round:
        for k, it in enumerate(interpreters):
            for _ in range(count):
                start = time.perf_counter()
                it.invoke()
                times[k].append((time.perf_counter() - start) * 1e3)
    return [dict(_percentiles(t), threads=threads) for t in times]


def median_of_passes(passes):
    """Each model's latency over several interleaved passes, the peer last in every pass.

    ``passes``: one ``latency()`` result per pass. Returns one dict per model: the median over
    passes of each percentile, and ``passes`` (each pass's p50 and its ratio to that pass's
    peer p50) with ``ratio_median``, the median of the per-pass ratios: the peer shares each
    pass's drift, so the ratio is steadier than either p50.
    """
    if not passes or len({len(p) for p in passes}) != 1:
        raise ValueError("every pass must time the same models")
    combined = []
    for k in range(len(passes[0])):
        timings = [p[k] for p in passes]
        merged = {key: float(np.median([t[key] for t in timings]))
                  for key in ("p50", "p90", "p99", "mean")}
        ratios = [t["p50"] / p[-1]["p50"] for t, p in zip(timings, passes)]
        merged.update(runs=sum(t["runs"] for t in timings), threads=timings[0].get("threads"),
                      passes=[{"p50": t["p50"], "ratio_to_peer": r}
                              for t, r in zip(timings, ratios)],
                      ratio_median=float(np.median(ratios)))
        combined.append(merged)
    return combined


def uses_xnnpack(content, threads=1):
    """Whether the default interpreter delegates ops to XNNPACK (a DELEGATE node appears)."""
    it = export.interpreter(content, delegates=True, num_threads=threads)
    return any(op["op_name"] == "DELEGATE" for op in it._get_ops_details())


def litert_tool_latency(path, threads=1, runs=300):
    """Median latency from the wheel's own ``benchmark_litert_model`` (None if it fails)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_json = os.path.join(tmp, "result.json")
        try:
            subprocess.run([sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model",
                            "--model", path, "--num_runs", str(runs), "--warmup_runs", "30",
                            "--num_threads", str(threads), "--result_json", result_json],
                           capture_output=True, timeout=300, check=True)
            with open(result_json) as f:
                lat = json.load(f)["latency"]
        except (subprocess.SubprocessError, OSError, ValueError, KeyError):
            return None
    return {"median": lat.get("median_ms"), "p95": lat.get("p95_ms"), "mean": lat.get("avg_ms"),
            "runs": lat.get("num_runs"), "threads": threads}


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        from importlib.metadata import version

        litert = version("ai-edge-litert")
    except Exception:  # noqa: BLE001
        litert = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(),
            "system": platform.system(), "python": platform.python_version(),
            "ai_edge_litert": litert}


PEAK_PROBES = {  # name: (input shape, filters, kernel): convs that keep XNNPACK's int8 GEMM busy
    "conv1x1 256->256 @32x32": ((32, 32, 256), 256, 1),
    "conv3x3 64->64 @32x32": ((32, 32, 64), 64, 3),
}
_PROBE_CACHE = {}


def peak_probes():
    """{name: (int8 .tflite, MACs)}: large single convs whose throughput stands for this CPU's
    practical int8 peak in LiteRT (built once per process, random weights, PTQ-calibrated)."""
    if _PROBE_CACHE:
        return _PROBE_CACHE
    keras = backend.keras

    rng = np.random.default_rng(0)
    for name, (shape, filters, kernel) in PEAK_PROBES.items():
        keras.utils.set_random_seed(0)
        inputs = keras.Input(shape)
        model = keras.Model(inputs, keras.layers.Conv2D(filters, kernel, padding="same")(inputs))

        def representative(shape=shape):
            for _ in range(8):
                yield [rng.uniform(-1, 1, (1, *shape)).astype(np.float32)]

        content = export.convert_int8(model, representative, get_scheme("ptq"))
        macs = shape[0] * shape[1] * shape[2] * filters * kernel * kernel
        _PROBE_CACHE[name] = (content, macs)
    return _PROBE_CACHE


def gmacs(macs, latency):
    """GMAC/s of ``macs`` done in a ``latency`` entry's p50 (ms)."""
    return macs / (latency["p50"] * 1e-3) / 1e9


def peak_gmacs(latencies):
    """The practical peak (GMAC/s) from the probes' timings, in ``peak_probes`` order."""
    rates = [gmacs(macs, lat) for (_, macs), lat in zip(peak_probes().values(), latencies)]
    return max(rates), dict(zip(peak_probes(), rates))


def efficiency(macs, latency, peak):
    """Achieved GMAC/s of a model and its share of the peak."""
    achieved = gmacs(macs, latency)
    return {"achieved_gmacs": achieved, "peak_gmacs": peak, "peak_share": achieved / peak}
