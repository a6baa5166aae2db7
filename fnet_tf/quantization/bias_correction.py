"""Empirical bias correction (Nagel et al., ICCV 2019).

Rounding A's folded weights to int8 shifts the mean of each output channel by
``delta_i = sum_k (Wq - W)[k, i] * E[x_k]``, with ``E[x]`` the per-channel mean of A's input
over calibration images (training split) and ``Wq`` the weights as TFLite will round them
(symmetric int8, per channel or per tensor as the scheme says). The correction subtracts
``delta_i`` from the bias TFLite folds (BN beta, or the layer's bias). It treats every output
position alike: at a zero-padded border the true shift is smaller.
"""
import numpy as np

from fnet_tf.core import backend
from fnet_tf.quantization import keras_graph
from fnet_tf.quantization.equalization import (EPS_RANGE, bn_weights, constant_input_response,
                                               folded_kernel, is_weight_layer,
                                               output_channel_view, update_bn)
from fnet_tf.quantization.repair_report import RepairReport


def quantize_symmetric(weights, per_channel, view):
    """Weights rounded as TFLite's int8 weights are: symmetric, 127 levels a side, per output
    channel of ``view`` (weights per output channel, channels) or per tensor."""
    flat = view(weights)
    limit = np.abs(flat).max(axis=0) if per_channel else np.abs(flat).max()
    scale = np.maximum(limit, EPS_RANGE) / 127.0
    return (np.clip(np.round(flat / scale), -127, 127) * scale).reshape(weights.shape)


def correct_bias(model, images, per_channel=True, report=None, batch_size=100):
    """Empirical bias correction of every Conv2D/DepthwiseConv2D in place (see the module).
    ``images``: calibration images from the training split, as the model takes them."""
    report = report or RepairReport()
    consumers = keras_graph.consumers(model)
    layers = [layer for layer in model.layers if is_weight_layer(layer)]
    probe = backend.keras.Model(model.inputs, [layer.input for layer in layers])
    sums = None
    for start in range(0, len(images), batch_size):
        outs = probe(images[start:start + batch_size], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        means = [np.asarray(o, np.float64).sum(axis=(0, 1, 2)) for o in outs]
        sums = means if sums is None else [a + b for a, b in zip(sums, means)]
    for layer, total in zip(layers, sums):
        mean_input = total / (len(images) * np.prod(layer.input_shape[1:3]))
        bn = keras_graph.batch_norm_after(consumers, layer)
        folded = folded_kernel(layer, bn)
        view = lambda w, layer=layer: output_channel_view(layer, w)  # noqa: E731
        error = quantize_symmetric(folded, per_channel, view) - folded
        delta = constant_input_response(layer, error, mean_input).astype(np.float32)
        if bn is not None:
            _, beta, _, _ = bn_weights(bn)
            update_bn(bn, beta=beta - delta)
        elif layer.use_bias:
            weights = layer.get_weights()
            weights[1] = weights[1] - delta
            layer.set_weights(weights)
        else:
            report.skipped.append((layer.name, "no bias or BN to correct"))
            continue
        report.bias_shift[layer.name] = float(np.abs(delta).max())
    return report


