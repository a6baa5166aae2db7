"""Per-layer quantization sensitivity: which layers of a float model survive fewer bits.

For every conv/dense layer and every weight precision b in ``BITS`` (ternary, 4, 8) it measures
the accuracy of the float model on validation images (never the test split) with

- **only that layer's** weights quantized to b bits (how much the layer alone costs), and
- **all but that layer** quantized (how much keeping that one layer at full precision buys),

beside the float model and the all-quantized model. This is the per-layer analysis AIMET's
QuantAnalyzer offers for PyTorch, done here for the Keras models fnet_tf exports.

Assumptions (stated because the sub-8-bit schemes build on them):
- weights are quantized as the INT8 file stores them: BN folded into the kernel (per output
  channel ``gamma / sqrt(var + eps)``), symmetric, one scale per output channel (filter); the
  quantized folded kernel is unfolded again so the Keras model (BN in inference mode)
  computes exactly what the folded quantized layer would;
- ``b`` bits: levels ``-(2^(b-1)-1) .. 2^(b-1)-1`` times ``max|w| / (2^(b-1)-1)``;
- ternary (TWN, Li & Liu 2016): per filter, threshold ``0.7 * mean|w|``, scale ``a`` = the mean
  of the ``|w|`` above it, weights ``{-a, 0, +a}``;
- activations stay float: the analysis isolates what each layer's weights can lose.
"""
import numpy as np

from fnet_tf.analysis.layerwise import CONV_TYPES, next_layer
from fnet_tf.quantization.adaround import round_nearest, step_sizes
from fnet_tf.quantization.equalization import bn_factor
from fnet_tf.quantization.ternary_hybrid import twn_filters

BITS = ("ternary", 4, 8)


def quantize_filters(kernel, bits):
    """``kernel`` (..., filters) quantized per filter (last axis) to ``bits`` (an int, or
    'ternary'), returned in the same shape and float dtype."""
    w = np.asarray(kernel, np.float64)
    flat = w.reshape(-1, w.shape[-1])
    if bits == "ternary":
        return twn_filters(flat)[2].reshape(w.shape)
    # the grid AdaRound and the exporter use: step max|w| / (2^(b-1) - 1) per filter
    return round_nearest(flat, step_sizes(flat, (0,), bits), bits).reshape(w.shape)


def _fold_factors(model):
    """{conv/dense layer: (weight index, per-output-channel BN factor or None)}."""

    factors = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in CONV_TYPES:
            continue
        nxt = next_layer(layer)
        factor = None
        if nxt is not None and type(nxt).__name__ == "BatchNormalization":
            factor = bn_factor(nxt)  # gamma is 1 where BN has no scale
        factors[layer.name] = (kind, factor)
    return factors


def quantized_kernel(layer, factor, bits):
    """The Keras kernel of ``layer`` whose BN-folded form is quantized per filter to ``bits``."""
    kernel = layer.get_weights()[0].astype(np.float64)
    shape = kernel.shape
    filters = kernel.reshape(*shape[:-2], -1) if type(layer).__name__ == "DepthwiseConv2D" \
        else kernel  # depthwise (kh, kw, in, mult): one filter per (in, mult)
    scale = np.ones(filters.shape[-1]) if factor is None else factor
    safe = np.where(scale != 0, scale, 1.0)
    folded = quantize_filters(filters * scale, bits) / safe
    return folded.reshape(shape).astype(np.float32)


def layer_sensitivity(model, images, labels, bits=BITS, evaluate=None, progress=None):
    """Rows of per-layer sensitivity (see module docstring) and the baselines.

    ``model`` is a float Keras model; ``evaluate(model) -> accuracy`` defaults to top-1 of
    ``model.predict`` on ``images``; ``progress(text)`` is told what runs. Returns
    ``(rows, baselines)`` where ``baselines`` maps 'float' and each precision (all layers
    quantized) to an accuracy.
    """
    labels = np.asarray(labels)
    if evaluate is None:
        def evaluate(m):
            logits = m.predict(images.astype(np.float32), batch_size=500, verbose=0)
            return float(np.mean(np.argmax(logits, -1) == labels))

    factors = _fold_factors(model)
    names = list(factors)
    originals = {n: model.get_layer(n).get_weights() for n in names}
    quantized = {(n, b): quantized_kernel(model.get_layer(n), factors[n][1], b)
                 for n in names for b in bits}

    def accuracy_with(chosen, b):
        for n in names:
            weights = list(originals[n])
            if n in chosen:
                weights[0] = quantized[(n, b)]
            model.get_layer(n).set_weights(weights)
        return evaluate(model)

    try:
        baselines = {"float": accuracy_with(set(), None)}
        rows = []
        for b in bits:
            baselines[str(b)] = accuracy_with(set(names), b)
            for i, n in enumerate(names):
                if progress:
                    progress(f"{b} bits: layer {i + 1}/{len(names)} {n}")
                only = accuracy_with({n}, b)
                all_but = accuracy_with(set(names) - {n}, b)
                rows.append({"layer": n, "kind": factors[n][0], "position": i,
                             "params": int(originals[n][0].size), "bits": str(b),
                             "accuracy_float": baselines["float"],
                             "accuracy_all_quantized": baselines[str(b)],
                             "accuracy_only_this": only, "accuracy_all_but_this": all_but,
                             "drop_only_this": baselines["float"] - only,
                             "gain_keeping_this": all_but - baselines[str(b)]})
    finally:
        for n in names:
            model.get_layer(n).set_weights(originals[n])
    return rows, baselines


def ranking(rows, bits):
    """Layers at precision ``bits``, most sensitive first (largest drop when only it is
    quantized; ties broken by the larger gain from keeping it)."""
    chosen = [r for r in rows if r["bits"] == str(bits)]
    return sorted(chosen, key=lambda r: (-r["drop_only_this"], -r["gain_keeping_this"]))


def report_lines(rows, baselines, images):
    """The report section: baselines, then per precision the most and least sensitive layers."""
    lines = ["## Per-layer sensitivity (weights only, BN folded, per filter; validation split)", "",
             f"Float top-1 {baselines['float']:.2%} on {images} validation images. "
             "'only' = just that layer quantized, 'all but' = every other layer quantized.", "",
             "| precision | all layers quantized | most sensitive (drop when only it) | "
             "least sensitive |", "| --- | --- | --- | --- |"]
    for b in BITS:
        ranked = ranking(rows, b)
        if not ranked:
            continue
        top, low = ranked[0], ranked[-1]
        lines.append(f"| {b} | {baselines[str(b)]:.2%} | {top['layer']} ({top['drop_only_this']:+.2%}) "
                     f"| {low['layer']} ({low['drop_only_this']:+.2%}) |")
    lines += ["", "| layer | kind | params | " + " | ".join(
        f"{b}: only / all but" for b in BITS) + " |", "| --- | --- | --- |" + " --- |" * len(BITS)]
    for name in dict.fromkeys(r["layer"] for r in rows):
        cells = []
        for b in BITS:
            r = next((x for x in rows if x["layer"] == name and x["bits"] == str(b)), None)
            cells.append(f"{r['accuracy_only_this']:.2%} / {r['accuracy_all_but_this']:.2%}"
                         if r else "-")
        first = next(r for r in rows if r["layer"] == name)
        lines.append(f"| {name} | {first['kind']} | {first['params']:,} | " + " | ".join(cells) + " |")
    return lines + ["", "![sensitivity](sensitivity.png)", ""]
