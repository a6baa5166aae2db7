"""What the repairs do to a float model, layer by layer and in accuracy (``fnet-analyze --repair``).

For a float Keras model and the repairs named (``fnet_tf.quantization.repair``) it measures,
before and after:

- **Accuracy** on the test split with LiteRT of the post-training INT8 files, weights per
  channel (``ptq``) and per tensor (``ptq_per_tensor``), each calibrated and repaired on the
  same training images; and of **4-bit weights** (per output channel, BN folded, step
  ``max|w| / 7``; activations float, in Keras): before = nearest rounding, after = the
  float-preserving repairs named (``cle``, ``bias_absorption``) then AdaRound at 4 bits if
  ``adaround`` is named, else nearest rounding. Bias correction acts on the 8-bit grid only.
- **Per weight layer**: the widest/narrowest BN-folded channel-range ratio; the output SQNR
  (dB, on calibration images from the training split) of the per-tensor INT8 file's op
  against the float model (the LiteRT intermediates, as ``layers.csv`` measures them); and
  the output SQNR of the layer (its BN output, where it has one) in the 4-bit model against
  the float model.
"""
import numpy as np

from fnet_tf.analysis import layerwise
from fnet_tf.core import backend
from fnet_tf.data import datasets as data_lib
from fnet_tf.quantization import adaround, equalization, repair
from fnet_tf.quantization.schemes import get_scheme
from fnet_tf.tflite import convert, measure

SCHEMES = ("ptq", "ptq_per_tensor")
FLOAT_PRESERVING = ("cle", "bias_absorption")
WEIGHT_BITS = 4
LAYER_FIELDS = ("repair_channel_range_ratio_before", "repair_channel_range_ratio_after",
                "repair_int8_per_tensor_sqnr_db_before", "repair_int8_per_tensor_sqnr_db_after",
                "repair_w4_sqnr_db_before", "repair_w4_sqnr_db_after")


def _copy(model):
    copy = backend.keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def four_bit_model(model, repairs, images, settings=None, progress=None):
    """(4-bit-weight copy of ``model``, the float model it was rounded from, per-layer
    AdaRound errors): see the module. The float model is ``model`` after the float-preserving
    repairs named: its layers' outputs are what the 4-bit layers' are compared with (CLE
    rescales channels inside a pair, so ``model``'s are not)."""
    kept = tuple(r for r in repairs if r in FLOAT_PRESERVING)
    reference = repair.repaired(model, kept, images)[0] if kept else model
    quantized = _copy(reference)
    method = "adaround" if "adaround" in repairs else "nearest"
    errors = adaround.quantize_weights(quantized, WEIGHT_BITS, method=method, images=images,
                                       settings=settings, progress=progress)
    return quantized, reference, errors


def keras_accuracy(model, split, limit=None):
    count = len(split) if limit is None else min(limit, len(split))
    logits = model.predict(split.images[:count].astype(np.float32), batch_size=500, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == split.labels[:count]))


def _sqnr(reference, values):
    noise = np.sum((values.astype(np.float64) - reference) ** 2)
    return float(10 * np.log10(np.sum(reference ** 2) / noise)) if noise > 0 else float("inf")


def weight_layer_sqnr(reference, quantized, images):
    """{weight layer: SQNR (dB) of its folded output (BN's, where it has one) in ``quantized``
    against ``reference`` (same architecture) on ``images``}."""
    ops = adaround.weight_layers(reference)
    names = [(op.bn or op.layer).name for op in ops]
    floats = layerwise.keras_outputs(reference, names, images)
    ints = layerwise.keras_outputs(quantized, names, images)
    return {op.layer.name: _sqnr(floats[n].astype(np.float64), ints[n])
            for op, n in zip(ops, names)}


def _int8_sqnr(model, content, images):
    """{weight layer: output SQNR of the INT8 op it feeds} from the LiteRT intermediates."""
    rows = layerwise.analyze_layers(model, content, images)[0]
    found = {}
    for row in rows:
        if row.get("weight_layer") and row["weight_layer"] not in found:
            found[row["weight_layer"]] = row["sqnr_db"]
    return found


def measure_repairs(model, repairs, dataset, calibration_samples=500, layer_images=128,
                    limit=None, threads=1, settings=None, progress=print):
    """(accuracy rows, per-layer rows, the per-tensor repair report): see the module."""
    calibration = dataset.train.images[:calibration_samples].astype(np.float32)
    layer_batch = dataset.train.images[:layer_images].astype(np.float32)
    accuracy, sqnr_int8, reports = [], {}, {}
    for scheme_name in SCHEMES:
        scheme = get_scheme(scheme_name)
        context = repair.Context(images=calibration, per_channel=scheme.per_channel,
                                 rounding=settings or adaround.AdaRoundSettings(),
                                 progress=progress)
        fixed, reports[scheme_name] = repair.repaired(model, repairs, context=context)
        for when, candidate in (("before", model), ("after", fixed)):
            progress(f"{scheme_name} {when} the repairs: converting and evaluating")
            representative = data_lib.representative_dataset(dataset.train, calibration_samples)
            content = convert.convert_int8(candidate, representative, scheme)
            result = measure.evaluate_tflite(content, dataset.test, limit, threads, progress=False)
            accuracy.append({"weights": "int8 " + ("per-channel" if scheme.per_channel
                                                   else "per-tensor"),
                             "activations": "int8", "when": when,
                             "accuracy": result["accuracy_top1"],
                             "num_images": result["num_images"]})
            if not scheme.per_channel:
                sqnr_int8[when] = _int8_sqnr(candidate, content, layer_batch)
    sqnr_w4 = {}
    for when, rounding in (("before", ()), ("after", repairs)):
        progress(f"4-bit weights {when} the repairs")
        quantized, reference, _ = four_bit_model(model, rounding, calibration, settings,
                                                 progress)
        accuracy.append({"weights": f"{WEIGHT_BITS}-bit per-channel", "activations": "float",
                         "when": when, "accuracy": keras_accuracy(quantized, dataset.test, limit),
                         "num_images": len(dataset.test) if limit is None
                         else min(limit, len(dataset.test))})
        sqnr_w4[when] = weight_layer_sqnr(reference, quantized, layer_batch)
    accuracy.insert(0, {"weights": "float", "activations": "float", "when": "before",
                        "accuracy": keras_accuracy(model, dataset.test, limit),
                        "num_images": accuracy[0]["num_images"]})
    report = reports["ptq_per_tensor"]
    layers = []
    for op in adaround.weight_layers(model):
        name = op.layer.name
        before = equalization.channel_ratio(op.layer, op.bn) if op.kind != "Dense" else None
        layers.append({
            "layer": name, "kind": op.kind,
            "repair_channel_range_ratio_before": report.ratio_before.get(name, before),
            "repair_channel_range_ratio_after": report.ratio_after.get(name, before),
            "repair_int8_per_tensor_sqnr_db_before": sqnr_int8["before"].get(name),
            "repair_int8_per_tensor_sqnr_db_after": sqnr_int8["after"].get(name),
            "repair_w4_sqnr_db_before": sqnr_w4["before"].get(name),
            "repair_w4_sqnr_db_after": sqnr_w4["after"].get(name)})
    return accuracy, layers, report


def report_lines(repairs, accuracy, layers, report, calibration_samples, layer_images):
    """The report.md section."""
    name = ", ".join(repairs)
    lines = [f"## Repairs: {name}", "",
             f"Post-training quantization before and after the repairs (calibration and repairs "
             f"on {calibration_samples} training images; top-1 on "
             f"{accuracy[0]['num_images']:,} test images; INT8 with LiteRT, 4-bit weights in "
             f"Keras with float activations).", "",
             "| weights | activations | before | after |", "| --- | --- | ---: | ---: |"]
    kinds = list(dict.fromkeys((r["weights"], r["activations"]) for r in accuracy))
    for weights, activations in kinds:
        cell = {r["when"]: f"{r['accuracy']:.2%}" for r in accuracy
                if (r["weights"], r["activations"]) == (weights, activations)}
        lines.append(f"| {weights} | {activations} | {cell.get('before', '-')} | "
                     f"{cell.get('after', '-')} |")

    def num(value, digits=1):
        return "-" if value is None else f"{value:.{digits}f}"

    lines += ["", f"Per layer (SQNR on {layer_images} training images, dB):", "",
              "| layer | kind | channel-range ratio before -> after | INT8 per-tensor SQNR "
              "before -> after | 4-bit SQNR before -> after |", "| --- | --- | --- | --- | --- |"]
    for r in layers:
        lines.append(f"| {r['layer']} | {r['kind']} | "
                     f"{num(r['repair_channel_range_ratio_before'])} -> "
                     f"{num(r['repair_channel_range_ratio_after'])} | "
                     f"{num(r['repair_int8_per_tensor_sqnr_db_before'])} -> "
                     f"{num(r['repair_int8_per_tensor_sqnr_db_after'])} | "
                     f"{num(r['repair_w4_sqnr_db_before'])} -> "
                     f"{num(r['repair_w4_sqnr_db_after'])} |")
    skipped = [f"{layer} ({why})" for layer, why in report.skipped]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    return lines + ["", "![repairs](repair.png)", ""]
