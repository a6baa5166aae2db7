"""Per-layer statistics of a Keras model and its INT8 flatbuffer.

- **Weights** of every conv/dense layer as the INT8 file stores them: BN folded into the
  kernel (per output channel ``gamma / sqrt(var + eps)``). Per-channel ranges are max|w| per
  output channel (int8 weights are symmetric); the ratio of the widest to the narrowest range
  is what makes per-tensor quantization fail (the narrow channels get few levels).
- **Activations** of every layer whose output the INT8 file holds, on calibration images from
  the training split: min, max, percentiles, histogram.
- **Weight quantization**: the SQNR of each folded kernel under symmetric int8 with one scale
  per output channel and with one per tensor, a deterministic measure of what per-tensor
  quantization would cost the layer (the output SQNR below also carries activation and
  propagated error, which at depth can outweigh it).
- **Quantization error**: each INT8 op's output (read with the interpreter's
  ``experimental_preserve_all_tensors``) against the matching Keras layer's output on the same
  images: MSE, SQNR (dB), max |error| and RMSE in units of the tensor's quantization step
  (uniform rounding alone gives RMSE 1/sqrt(12) = 0.289 steps).

Matching a TFLite tensor to a Keras layer: the converter names a fused op's output after the
fused layers, last layer first (``model/b1_relu/Relu;model/b1_pw_bn/...;model/b1_pw/Conv2D``;
QAT layers carry a ``quant_`` prefix), so the first name that is a layer of the model is the
layer whose output the tensor holds. The model's output tensor is the model's output layer.
"""
import numpy as np

from fnet_tf.arch.grouped import diagonal_blocks, training_groups
from fnet_tf.core import backend
from fnet_tf.tflite import convert as export

CONV_TYPES = ("Conv2D", "DepthwiseConv2D", "Dense")


def float_reference(model, float_architecture=None):
    """The float Keras model that carries ``model``'s weights: ``model`` itself, or for a
    TF-MOT QAT model a copy of ``float_architecture`` (the run's float model: same layer
    names) with the QAT-trained weights copied out of the quantize wrappers, so that errors
    measure quantization and not fine-tuning drift."""
    if not any(hasattr(layer, "layer") for layer in model.layers):
        return model
    if float_architecture is None:
        raise ValueError("a QAT model needs its float architecture to compare against")
    keras = backend.keras

    # A wrapper holds its layer's variables under the layer's own names ("b0_conv/kernel:0")
    # beside its quantizer state ("quant_b0_conv/kernel_min:0").
    trained = {v.name: v.numpy() for v in model.weights}
    reference = keras.models.clone_model(float_architecture)
    reference.set_weights(float_architecture.get_weights())
    for layer in reference.layers:
        names = [f"{layer.name}/{w.name.split('/')[-1]}" for w in layer.weights]
        if names and all(n in trained for n in names):
            layer.set_weights([trained[n] for n in names])
    return reference


def _inner(layer):
    """The Keras layer inside a TF-MOT quantize wrapper (or the layer itself)."""
    return getattr(layer, "layer", layer)


def next_layer(layer):
    nodes = getattr(layer, "_outbound_nodes", [])
    return nodes[0].outbound_layer if len(nodes) == 1 else None


def folded_kernels(model, fold_bn=True):
    """{layer name: (kind, kernel with BN folded, output-channel axis)} of conv/dense layers
    (``fold_bn=False``: the trained kernels as they are, before BN scales them).

    Works on float and QAT models alike: variables are read by name from ``model.weights``
    (a quantize wrapper owns its layer's variables under the layer's names) and the BN that
    follows a conv is found through the Keras graph.
    """

    values = {v.name: v for v in model.weights}
    result = {}
    for outer in model.layers:
        layer = _inner(outer)
        kind = type(layer).__name__
        if kind not in CONV_TYPES:
            continue
        var = "depthwise_kernel" if kind == "DepthwiseConv2D" else "kernel"
        kernel = values[f"{layer.name}/{var}:0"].numpy().astype(np.float64)
        if kind == "DepthwiseConv2D":  # (kh, kw, in, multiplier): one output per (in, m)
            kernel = kernel.reshape(*kernel.shape[:2], -1)
        nxt = next_layer(outer)
        bn = _inner(nxt) if nxt is not None else None
        if fold_bn and bn is not None and type(bn).__name__ == "BatchNormalization":
            scale = values.get(f"{bn.name}/gamma:0")  # none where BN does not scale
            gamma = scale.numpy() if scale is not None else 1.0
            var_ = values[f"{bn.name}/moving_variance:0"].numpy()
            kernel = kernel * (gamma / np.sqrt(var_ + bn.epsilon))
        label = kind
        groups = training_groups(layer) if kind == "Conv2D" else None
        if groups:  # a grouped conv in its block-diagonal training form: keep its groups only
            kernel, label = diagonal_blocks(kernel, groups), "GroupedConv2D"
        elif kind == "Conv2D" and layer.groups > 1:
            label = "GroupedConv2D"
        elif kind == "Conv2D" and tuple(layer.kernel_size) == (1, 1):
            label = "PointwiseConv2D"
        result[layer.name] = (label, kernel, -1)
    return result


def weight_quant_sqnr(kernel, axis=-1, per_channel=True):
    """SQNR (dB) of the kernel itself after symmetric int8 quantization (scale max|w| / 127,
    per output channel or per tensor): what each granularity costs this layer's weights."""
    w = np.moveaxis(kernel, axis, -1).reshape(-1, kernel.shape[axis])
    peak = np.max(np.abs(w), axis=0) if per_channel else np.max(np.abs(w))
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    noise = np.sum((w - np.clip(np.round(w / scale), -127, 127) * scale) ** 2)
    return float(10 * np.log10(np.sum(w ** 2) / noise)) if noise > 0 else float("inf")


def weight_stats(kernel, axis=-1):
    per_channel = np.max(np.abs(np.moveaxis(kernel, axis, -1).reshape(-1, kernel.shape[axis])),
                         axis=0)
    narrow = float(per_channel.min())
    return {"weight_min": float(kernel.min()), "weight_max": float(kernel.max()),
            "weight_std": float(kernel.std()), "channels": int(len(per_channel)),
            "channel_range_max": float(per_channel.max()), "channel_range_min": narrow,
            "channel_range_ratio": float(per_channel.max() / narrow) if narrow > 0 else float("inf"),
            "weight_sqnr_db_per_channel": weight_quant_sqnr(kernel, axis, True),
            "weight_sqnr_db_per_tensor": weight_quant_sqnr(kernel, axis, False),
            "per_channel_range": per_channel}


def activation_stats(values):
    flat = values.ravel()
    p = np.percentile(flat, [0.1, 1, 50, 99, 99.9])
    return {"act_min": float(flat.min()), "act_max": float(flat.max()), "act_p0_1": float(p[0]),
            "act_p1": float(p[1]), "act_p50": float(p[2]), "act_p99": float(p[3]),
            "act_p99_9": float(p[4])}


def match_layer(tensor_name, layer_names, output_layer, is_output):
    """The Keras layer whose output a TFLite tensor holds (None if none)."""
    if is_output:
        return output_layer
    for part in tensor_name.split(";"):
        for piece in part.split("/"):
            name = piece[len("quant_"):] if piece.startswith("quant_") else piece
            if name in layer_names:
                return name
    return None


def tflite_intermediates(content, images):
    """[(op index, op name, tensor name, tensor index, dequantized outputs (N, ...), scale)]
    of every op, on raw-pixel ``images``."""
    it = export.interpreter(content, preserve_all_tensors=True)
    inp = it.get_input_details()[0]
    output_index = it.get_output_details()[0]["index"]
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    collected = {op["index"]: [] for op in ops}
    for image in images:
        it.set_tensor(inp["index"], export.quantize_input(image[None], inp))
        it.invoke()
        for op in ops:
            value = it.get_tensor(op["outputs"][0])
            collected[op["index"]].append(value[0].copy() if value.ndim else value.copy())
    result = []
    for op in ops:
        t = tensors[op["outputs"][0]]
        scale, zero = t["quantization"]
        raw = np.stack(collected[op["index"]]).astype(np.float64)
        values = (raw - zero) * scale if scale else raw
        result.append((op["index"], op["op_name"], t["name"], t["index"] == output_index,
                       values, float(scale)))
    return result


def quant_error(reference, quantized, scale):
    err = quantized - reference
    mse = float(np.mean(err ** 2))
    signal = float(np.mean(reference ** 2))
    sqnr = 10 * np.log10(signal / mse) if mse > 0 and signal > 0 else float("inf")
    out = {"mse": mse, "sqnr_db": float(sqnr)}
    if scale:
        out.update(max_err_lsb=float(np.max(np.abs(err)) / scale),
                   rmse_lsb=float(np.sqrt(mse) / scale))
    return out


def keras_outputs(model, names, images, batch_size=128):
    keras = backend.keras

    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    outs = probe.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    outs = outs if isinstance(outs, list) else [outs]
    return dict(zip(names, outs))


def analyze_layers(model, content, images, float_architecture=None):
    """One row per INT8 op that matches a Keras layer: weights (if a conv/dense feeds it),
    activations and quantization error; plus the data for plots: (rows, per-channel weight
    ranges, activation values, weight values), the last three keyed by layer."""
    reference = float_reference(model, float_architecture)
    layer_names = {layer.name for layer in reference.layers}
    kernels, raw = folded_kernels(reference), folded_kernels(reference, fold_bn=False)
    producers = _conv_feeding(reference)
    ints = tflite_intermediates(content, images)
    matched = [(op, opname, tname, match_layer(tname, layer_names, reference.layers[-1].name,
                                                is_out), values, scale)
               for op, opname, tname, is_out, values, scale in ints]
    matched = [m for m in matched if m[3] is not None]
    floats = keras_outputs(reference, sorted({m[3] for m in matched}), images)
    rows, per_channel, activations, weight_values = [], {}, {}, {}
    for op, opname, tname, layer, values, scale in matched:
        ref = floats[layer].astype(np.float64)
        if ref.shape != values.shape:
            continue
        conv = producers.get(layer)
        _add_row(rows, per_channel, activations, (op, opname, tname, scale), layer, ref, values,
                 (conv, kernels[conv]) if conv in kernels else None, weight_values,
                 raw[conv][1] if conv in raw else None)
    return rows, per_channel, activations, weight_values


def lowest_sqnr_layers(model, content, images, float_architecture=None, count=3):
    """[(layer, INT8 output SQNR dB)] of the ``count`` layers with the lowest SQNR."""
    rows = analyze_layers(model, content, images, float_architecture)[0]
    ranked = sorted((row["sqnr_db"], row["layer"]) for row in rows)
    return [(layer, sqnr) for sqnr, layer in ranked[:count]]


def _add_row(rows, per_channel, activations, op_info, layer, ref, values, weights,
             weight_values, raw_kernel=None):
    """One layers.csv row: error and activation stats, plus the weights that produced it (and,
    where the Keras model gives it, the same kernel before BN folding: ``raw_*``, to tell the
    ranges training left from those BN's scales make)."""
    op, opname, tensor_name, scale = op_info
    row = {"op": op, "tflite_op": opname, "layer": layer, "tensor": tensor_name[:120],
           "scale": scale, **quant_error(ref, values, scale), **activation_stats(ref)}
    if weights is not None:
        weight_layer, (kind, kernel, axis) = weights
        stats = weight_stats(kernel, axis)
        per_channel[weight_layer] = stats.pop("per_channel_range")
        weight_values[weight_layer] = kernel.ravel()
        row.update(weight_layer=weight_layer, weight_kind=kind, params=int(kernel.size), **stats)
        if raw_kernel is not None:
            before = weight_stats(raw_kernel, axis)
            row.update(raw_weight_std=before["weight_std"],
                       raw_channel_range_max=before["channel_range_max"],
                       raw_channel_range_ratio=before["channel_range_ratio"])
    rows.append(row)
    activations[layer] = ref.ravel()


def _conv_feeding(model):
    """{layer name: the conv/dense layer whose output reaches it through BN/ReLU only}."""
    feeding = {}
    for layer in model.layers:
        if type(layer).__name__ in CONV_TYPES:
            feeding[layer.name] = layer.name
            nxt = next_layer(layer)
            while nxt is not None and type(nxt).__name__ in ("BatchNormalization", "ReLU"):
                feeding[nxt.name] = layer.name
                nxt = next_layer(nxt)
    return feeding


def _short_name(tensor_name):
    """'model/activation_1/Relu;model/...' -> 'activation_1' (the op's last fused layer)."""
    first = tensor_name.split(";")[0]
    parts = first.split("/")
    return parts[1] if len(parts) > 2 else first


def analyze_tflite_pair(int8_content, float_content, images):
    """Layer-wise rows from an INT8 file and the float .tflite converted from the same model
    (no Keras model needed): ops are paired by their output tensor names, which the converter
    derives from the model's layers, and weights are read from the float file, where the
    converter has already folded BN into the kernels."""
    quantized = tflite_intermediates(int8_content, images)
    floats = {name: (values, op_name) for _, op_name, name, _, values, _ in
              tflite_intermediates(float_content, images)}
    it = export.interpreter(float_content)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    filters = {}
    for op in it._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            out_name = tensors[op["outputs"][0]]["name"]
            kernel = it.get_tensor(op["inputs"][1]).astype(np.float64)
            axis = 3 if op["op_name"] == "DEPTHWISE_CONV_2D" else 0
            groups = 1
            if op["op_name"] == "CONV_2D":
                groups = tensors[op["inputs"][0]]["shape"][-1] // kernel.shape[3]
            kind = {"DEPTHWISE_CONV_2D": "DepthwiseConv2D", "FULLY_CONNECTED": "Dense"}.get(
                op["op_name"], "GroupedConv2D" if groups > 1 else
                ("PointwiseConv2D" if kernel.shape[1:3] == (1, 1) else "Conv2D"))
            filters[out_name] = (kind, kernel, axis)
    rows, per_channel, activations, weight_values = [], {}, {}, {}
    for op, opname, name, is_output, values, scale in quantized:
        if name not in floats or floats[name][0].shape != values.shape:
            continue
        layer = "output" if is_output else _short_name(name)
        _add_row(rows, per_channel, activations, (op, opname, name, scale), layer, floats[name][0],
                 values, (layer, filters[name]) if name in filters else None, weight_values)
    return rows, per_channel, activations, weight_values
