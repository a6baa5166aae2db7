"""Float weights for the released INT8 models, derived from the INT8 files themselves.

The zoo's float Keras models were not kept, but each INT8 file holds every weight its float
model computes with: a CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED filter is the QAT model's
kernel with its BN folded in, rounded to int8 with one scale per output channel (or one per
tensor), and its int32 bias is the folded BN shift. Dequantized, they give a float model that
computes what the INT8 file computes, without the activation rounding: the released
``float_weights.npz`` beside each ``model_int8.tflite`` (``fnet_tf.zoo.keras_model`` loads it).

BN is kept, so that the model fine-tunes like the one it came from. A conv followed by BN gets
the folded kernel, and its BN is set so that at inference it adds the folded bias
(``gamma = sqrt(var + eps)``, ``beta = bias + mean``: ``gamma * (z - mean) / sqrt(var + eps) +
beta = z + bias``), and so that in train mode, which normalises with the batch's own
statistics, it does the same on batches like the calibration images: its moving mean and
variance are the statistics of the conv's float output over those images, through the model
with every layer before it set, as a layer-by-layer estimate takes them. One pass measures them
all: a BN set this way adds its bias whatever its statistics, so no layer's input depends on
the statistics of the BNs before it.

A TF-MOT QAT file names each weight tensor after its layer (``.../quant_<layer>/...``); where a
scheme leaves the name out (``ternary_hybrid`` emits no FakeQuant op, so its weight tensor is
just ``Conv2D``), the op's fused output names the BN that follows the conv. Grouped convs are
read in the native (``[out, kh, kw, in / groups]``) or the block-diagonal form.

The file is ``fnet_tf.run.portable_weights``' format (``<layer>/<index>`` arrays, each layer's
``get_weights()`` in order; compressed, no pickles, nothing executable), read with its bound on
the declared array sizes.
"""
import dataclasses

import numpy as np

from fnet_tf.analysis.layerwise import match_layer
from fnet_tf.arch import grouped
from fnet_tf.arch.spec import build_model
from fnet_tf.core import backend, fileio
from fnet_tf.core.errors import UserError
from fnet_tf.core.wording import count
from fnet_tf.run.portable_weights import WEIGHTS as FILE  # noqa: F401  (the released file's name)
from fnet_tf.run.portable_weights import read_weights, weights_by_layer
from fnet_tf.tflite import convert as export

MAX_BYTES = 64 << 20  # declared array bytes; a released model's float weights are under 4 MB
SOURCE = ("derived from model_int8.tflite (dequantized weights, BN statistics re-estimated on "
          "{images:,} training images)")

# TFLite op -> the Keras layer type it is exported from
LAYER_TYPES = {"CONV_2D": "Conv2D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D",
               "FULLY_CONNECTED": "Dense"}


@dataclasses.dataclass
class FileWeights:
    """One weight op of an INT8 file, dequantized, in TFLite's layout."""

    op: str          # CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED
    names: tuple     # the weight tensor's name, then the op's output tensor's name
    kernel: np.ndarray
    bias: np.ndarray


def _dequantized(it, detail):
    values = it.get_tensor(detail["index"]).astype(np.float64)
    q = detail["quantization_parameters"]
    scales, zeros = q["scales"], q["zero_points"].astype(np.float64)
    if len(scales) == 0:  # a float tensor: nothing to undo
        return values
    if len(scales) == 1:
        return (values - zeros[0]) * scales[0]
    shape = [1] * values.ndim
    shape[q["quantized_dimension"]] = -1
    return (values - zeros.reshape(shape)) * scales.reshape(shape)


def _out_channels(op, kernel):
    """A TFLite kernel's output channels: the last axis of a depthwise one, else the first."""
    return kernel.shape[-1] if op == "DEPTHWISE_CONV_2D" else kernel.shape[0]


def file_weights(content):
    """[FileWeights] of every conv and dense op of a .tflite's bytes, in graph order."""

    it = export.interpreter(content)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    found = []
    for op in it._get_ops_details():
        name = op["op_name"]
        if name not in LAYER_TYPES:
            continue
        weight = tensors[op["inputs"][1]]
        kernel = _dequantized(it, weight)
        bias = (_dequantized(it, tensors[op["inputs"][2]])
                if len(op["inputs"]) > 2 and op["inputs"][2] >= 0
                else np.zeros(_out_channels(name, kernel)))
        found.append(FileWeights(name, (weight["name"], tensors[op["outputs"][0]]["name"]),
                                 kernel, bias))
    return found


def _following_bn(layer):
    """The BatchNormalization a layer feeds, and only it, or None."""
    nodes = layer._outbound_nodes
    if len(nodes) == 1 and type(nodes[0].outbound_layer).__name__ == "BatchNormalization":
        return nodes[0].outbound_layer
    return None


def _aliases(model):
    """{name: conv/dense layer}: each such layer by its own name and by its BN's."""
    aliases = {}
    for layer in model.layers:
        if type(layer).__name__ in LAYER_TYPES.values():
            aliases[layer.name] = layer
            bn = _following_bn(layer)
            if bn is not None:
                aliases[bn.name] = layer
    return aliases


def _layer_of(weights, aliases, source):
    """The Keras layer an op was exported from: named by its weight tensor, else by the fused
    layers its output tensor names."""

    for name in weights.names:
        alias = match_layer(name, aliases, None, False)
        if alias is not None:
            return aliases[alias]
    raise UserError(f"{source}: no layer of the model matches the {weights.op} op whose weights "
                    f"are {weights.names[0]!r}: the file was exported from another model")


def keras_kernel(weights, layer):
    """An op's kernel in its Keras layer's layout: CONV_2D [out, kh, kw, in] -> (kh, kw, in,
    out) (a block-diagonal grouped kernel back to its groups), DEPTHWISE_CONV_2D [1, kh, kw,
    channels * multiplier] -> (kh, kw, channels, multiplier), FULLY_CONNECTED [out, in] ->
    (in, out)."""

    target = tuple(layer.get_weights()[0].shape)
    if weights.op == "FULLY_CONNECTED":
        kernel = weights.kernel.T
    elif weights.op == "DEPTHWISE_CONV_2D":
        kernel = weights.kernel[0]
        if kernel.size == np.prod(target):
            kernel = kernel.reshape(target)
    else:
        kernel = weights.kernel.transpose(1, 2, 3, 0)
        groups = getattr(layer, "groups", 1)
        if groups > 1 and kernel.shape[2] == target[2] * groups:
            blocks = grouped.diagonal_blocks(kernel, groups)
            if not np.array_equal(grouped.block_diagonal(blocks, groups), kernel):
                raise UserError(f"layer {layer.name}: the file's kernel has weights off the "
                                f"{groups} diagonal blocks of a grouped conv")
            kernel = blocks
    if kernel.shape != target:
        raise UserError(f"layer {layer.name}: the file's {weights.op} kernel "
                        f"{list(weights.kernel.shape)} does not fit the Keras kernel {target}: "
                        f"the file was exported from another model, level or width")
    return kernel.astype(np.float32)


def _set_bn(bn, bias, mean, var):
    """BN weights that add ``bias`` to its input at inference and, on batches with this mean
    and variance, in train mode too."""
    if not (bn.scale and bn.center):
        raise UserError(f"{bn.name} has no gamma or beta to take a folded conv's scale and bias")
    gamma = np.sqrt(var + bn.epsilon)
    bn.set_weights([a.astype(np.float32) for a in (gamma, bias + mean, mean, var)])


def output_statistics(model, layers, images, batch_size=100):
    """[(mean, variance)] per channel of each layer's output over ``images`` (float64 sums over
    images and positions: the population statistics a BN's train mode normalises by)."""
    keras = backend.keras

    probe = keras.Model(model.input, [layer.output for layer in layers])
    sums = [np.zeros(layer.output.shape[-1]) for layer in layers]
    squares = [np.zeros_like(s) for s in sums]
    counts = [0] * len(layers)
    for start in range(0, len(images), batch_size):
        outputs = probe(np.asarray(images[start:start + batch_size], np.float32), training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for k, out in enumerate(outputs):
            flat = np.asarray(out, np.float64).reshape(-1, sums[k].shape[0])
            sums[k] += flat.sum(axis=0)
            squares[k] += np.square(flat).sum(axis=0)
            counts[k] += flat.shape[0]
    means = [s / n for s, n in zip(sums, counts)]
    return [(m, np.maximum(q / n - m * m, 0.0)) for m, q, n in zip(means, squares, counts)]


def derive(tflite_path, spec, calibration_images):
    """The tf_keras float model of ``spec`` carrying the INT8 file's dequantized weights, its
    BNs set from ``calibration_images`` (raw pixels, from the training split; see the module
    docstring). UserError, in one line, if any Keras weight is left unmatched or a shape
    differs: the file and the spec must be the same model."""

    with open(tflite_path, "rb") as f:
        content = f.read()
    model = build_model(spec)
    aliases = _aliases(model)
    assigned = {}
    for weights in file_weights(content):
        layer = _layer_of(weights, aliases, tflite_path)
        if LAYER_TYPES[weights.op] != type(layer).__name__:
            raise UserError(f"{tflite_path}: a {weights.op} op faces the Keras "
                            f"{type(layer).__name__} {layer.name}: another model")
        if layer.name in assigned:
            raise UserError(f"{tflite_path}: two ops hold the weights of layer {layer.name}")
        if weights.bias.shape != (_out_channels(weights.op, weights.kernel),):
            raise UserError(f"layer {layer.name}: the file's bias has shape "
                            f"{list(weights.bias.shape)}, not one per output channel")
        assigned[layer.name] = (layer, keras_kernel(weights, layer), weights.bias,
                                _following_bn(layer))
    set_layers = set(assigned) | {bn.name for *_, bn in assigned.values() if bn is not None}
    unmatched = [layer.name for layer in model.layers
                 if layer.weights and layer.name not in set_layers]
    if unmatched:
        raise UserError(f"{tflite_path} holds no weights for {count(len(unmatched), 'layer')} of "
                        f"{spec.name} ({', '.join(unmatched[:5])}): it was exported from "
                        f"another model")
    with_bn = []
    for layer, kernel, bias, bn in assigned.values():
        if bn is not None:  # BN set to add the bias for now; its statistics come below
            layer.set_weights([kernel] + ([np.zeros_like(bias, np.float32)]
                                          if layer.use_bias else []))
            _set_bn(bn, bias, np.zeros_like(bias), np.ones_like(bias))
            with_bn.append((layer, bias, bn))
        elif layer.use_bias:
            layer.set_weights([kernel, bias.astype(np.float32)])
        elif np.any(bias):
            raise UserError(f"layer {layer.name} has no bias and no BN to take the file's bias: "
                            f"the file was exported from another model")
        else:
            layer.set_weights([kernel])
    statistics = output_statistics(model, [layer for layer, _, _ in with_bn], calibration_images)
    for (layer, bias, bn), (mean, var) in zip(with_bn, statistics):
        _set_bn(bn, bias, mean, var)
    return model


def write(path, model):
    """``model``'s weights by layer name, compressed, written atomically."""

    with fileio.atomic_path(path) as tmp:
        np.savez_compressed(tmp, **weights_by_layer(model))


def read(path):
    """The arrays of a released ``float_weights.npz``: sizes bounded from the headers before
    anything is decompressed, floats only; a one-line UserError otherwise."""

    arrays = read_weights(path, max_bytes=MAX_BYTES, remedy="derive it again with "
                          "tools/derive_float_weights.py")
    for key, value in arrays.items():
        if not np.issubdtype(value.dtype, np.floating):
            raise UserError(f"{path}: array {key!r} is {value.dtype}, not float weights: the "
                            f"file is corrupt; derive it again with tools/derive_float_weights.py")
    return arrays
