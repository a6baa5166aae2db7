"""Cross-layer equalization (Nagel et al., ICCV 2019) and bias absorption.

**Cross-layer equalization**. For a pair ``A -> [BN] -> ReLU -> B`` (A and B each a
Conv2D or DepthwiseConv2D, every tensor between them feeding only the next layer), scaling A's
output channel ``i`` by ``1/s_i`` and B's input channel ``i`` by ``s_i`` leaves the float
function unchanged (ReLU is positively homogeneous) and, with ``s_i = sqrt(r_A,i / r_B,i)``,
gives both layers the range ``sqrt(r_A,i * r_B,i)`` in channel ``i`` (``r``: the channel's
largest absolute weight after folding A's BN). A per-tensor scale then wastes far fewer levels
on small channels. A's side is scaled where TFLite folds it: in its BN's gamma and beta when it
has one (the converter folds them into A's kernel and bias), else in A's kernel and bias. Pairs
are equalized in turn, ``iterations`` times (a layer between two pairs moves twice).
Max or average pooling between the ReLU and B is passed through (both commute with a positive
per-channel scale); residual adds, concatenations, global pooling and grouped convs end a pair:
those layers are skipped and named.

**Bias absorption**. Where A's pre-ReLU output ``z_i`` never falls below ``c_i > 0`` on the
calibration images (training split), ``relu(z_i) = relu(z_i - c_i) + c_i``: ``c_i`` leaves A's
bias (its BN's beta) and enters B's as ``sum_k W_B[k, i] c_i`` (or B's BN's moving mean), so
A's ReLU output, which TFLite quantizes with one scale per tensor, loses a constant offset
and keeps its information in fewer levels. Exact where ``z_i >= c_i`` (every calibration
image) and where B reads no zero padding: B is a 1x1 conv or uses 'valid' padding; other
pairs are skipped and named.
"""
import dataclasses

import numpy as np

from fnet_tf.core import backend
from fnet_tf.core.errors import UserError
from fnet_tf.quantization import keras_graph
from fnet_tf.quantization.repair_report import RepairReport

EPS_RANGE = 1e-8


def _pools():
    layers = backend.keras.layers
    return (layers.MaxPooling2D, layers.AveragePooling2D)


@dataclasses.dataclass
class Pair:
    """An equalizable pair: A (with its BN, if any) -> ReLU -> B."""

    first: object
    bn: object
    second: object


def is_weight_layer(layer):
    """A plain 2-D conv or depthwise conv (a grouped conv's channels do not line up)."""
    return (type(layer) in (backend.keras.layers.Conv2D, backend.keras.layers.DepthwiseConv2D)
            and getattr(layer, "groups", 1) == 1)


def _is_relu(layer):
    if isinstance(layer, backend.keras.layers.ReLU):
        return (layer.max_value is None and not float(layer.negative_slope)
                and not float(layer.threshold))
    if isinstance(layer, backend.keras.layers.Activation):
        return layer.get_config().get("activation") == "relu"
    return False


def find_pairs(model):
    """(pairs, skipped): every A -> [BN] -> ReLU -> B chain, and each weight layer whose output
    chain is not one (with why)."""
    consumers = keras_graph.consumers(model)
    pairs, skipped = [], []
    for layer in model.layers:
        if not is_weight_layer(layer):
            continue
        nxt, bn = keras_graph.only_consumer(consumers, layer), None
        if isinstance(nxt, backend.keras.layers.BatchNormalization):
            bn, nxt = nxt, keras_graph.only_consumer(consumers, nxt)
        if nxt is None or not _is_relu(nxt):
            why = ("its output feeds several layers" if nxt is None and
                   len(consumers.get((bn or layer).name, [])) > 1 else
                   f"followed by {type(nxt).__name__ if nxt is not None else 'the output'}, "
                   f"not a ReLU")
            skipped.append((layer.name, why))
            continue
        second = keras_graph.only_consumer(consumers, nxt)
        while isinstance(second, _pools()):  # max and mean commute with a positive channel scale
            second = keras_graph.only_consumer(consumers, second)
        if second is None or not is_weight_layer(second):
            what = type(second).__name__ if second is not None else "several layers"
            skipped.append((layer.name, f"its ReLU feeds {what}"))
            continue
        pairs.append(Pair(layer, bn, second))
    return pairs, skipped


def bn_factor(bn):
    """gamma / sqrt(var + eps) per channel: what the converter multiplies the kernel by."""
    gamma, _, _, var = bn_weights(bn)
    return gamma / np.sqrt(var + bn.epsilon)


def _bn_names(bn):
    """BN's weight names in ``get_weights`` order: gamma and beta only where scale/center."""
    return [w.name.split("/")[-1].split(":")[0] for w in bn.weights]


def bn_weights(bn):
    """(gamma, beta, moving mean, moving variance); ones/zeros where scale/center is off."""
    weights = dict(zip(_bn_names(bn), bn.get_weights()))
    channels = weights["moving_mean"].shape[0]
    gamma = weights.get("gamma", np.ones(channels, np.float32))
    beta = weights.get("beta", np.zeros(channels, np.float32))
    return gamma, beta, weights["moving_mean"], weights["moving_variance"]


def update_bn(bn, **values):
    """Replace BN's weights named in ``values`` (gamma, beta, moving_mean, moving_variance);
    one a layer lacks (scale or center off) is a UserError naming it."""
    names = _bn_names(bn)
    missing = sorted(set(values) - set(names))
    if missing:
        raise UserError(f"{bn.name} has no {' or '.join(missing)} (scale/center off): cannot "
                        f"repair it in place")
    bn.set_weights([np.asarray(values[n], np.float32) if n in values else w
                    for n, w in zip(names, bn.get_weights())])


def output_channel_view(layer, kernel):
    """The kernel as (weights per output channel, output channels)."""
    if isinstance(layer, backend.keras.layers.DepthwiseConv2D):
        kh, kw, c, m = kernel.shape
        return kernel.reshape(kh * kw, c * m)
    return kernel.reshape(-1, kernel.shape[-1])


def folded_kernel(layer, bn):
    """A's kernel as TFLite folds it (BN's factor on each output channel)."""
    kernel = layer.get_weights()[0]
    if bn is None:
        return kernel
    factor = bn_factor(bn)
    if isinstance(layer, backend.keras.layers.DepthwiseConv2D):
        kh, kw, c, m = kernel.shape
        return kernel * factor.reshape(1, 1, c, m)
    return kernel * factor


def output_ranges(layer, bn=None):
    """Largest absolute folded weight of each output channel."""
    return np.abs(output_channel_view(layer, folded_kernel(layer, bn))).max(axis=0)


def _input_ranges(layer):
    kernel = layer.get_weights()[0]
    if isinstance(layer, backend.keras.layers.DepthwiseConv2D):
        kh, kw, c, m = kernel.shape
        return np.abs(kernel.reshape(kh * kw, c, m)).max(axis=(0, 2))
    return np.abs(kernel).max(axis=tuple(range(kernel.ndim - 2)) + (kernel.ndim - 1,))


def channel_ratio(layer, bn=None):
    ranges = output_ranges(layer, bn)
    return float(ranges.max() / max(ranges.min(), EPS_RANGE))


def _equalize(pair):
    first, bn, second = pair.first, pair.bn, pair.second
    if isinstance(first, backend.keras.layers.DepthwiseConv2D) and first.depth_multiplier != 1:
        return False
    r1, r2 = output_ranges(first, bn), _input_ranges(second)
    if r1.shape != r2.shape:
        return False
    scale = np.sqrt(np.maximum(r1, EPS_RANGE) / np.maximum(r2, EPS_RANGE))
    scale = np.where((r1 > EPS_RANGE) & (r2 > EPS_RANGE), scale, 1.0).astype(np.float32)
    if bn is not None:
        gamma, beta, _, _ = bn_weights(bn)
        update_bn(bn, gamma=gamma / scale, beta=beta / scale)
    else:
        weights = first.get_weights()
        kernel = weights[0]
        if isinstance(first, backend.keras.layers.DepthwiseConv2D):
            weights[0] = kernel / scale.reshape(1, 1, -1, 1)
        else:
            weights[0] = kernel / scale
        if first.use_bias:
            weights[1] = weights[1] / scale
        first.set_weights(weights)
    weights = second.get_weights()
    weights[0] = weights[0] * scale.reshape(1, 1, -1, 1)  # input channel i of B, times s_i
    second.set_weights(weights)
    return True


def equalize(model, iterations=4, report=None):
    """Cross-layer equalization of ``model`` in place; returns the report."""
    report = report or RepairReport()
    pairs, skipped = find_pairs(model)
    report.skipped += skipped
    for pair in pairs:
        report.ratio_before.setdefault(pair.first.name, channel_ratio(pair.first, pair.bn))
    done = []
    for _ in range(iterations):
        done = [pair for pair in pairs if _equalize(pair)]
    report.pairs = [(p.first.name, p.second.name) for p in done]
    for pair in pairs:
        report.ratio_after[pair.first.name] = channel_ratio(pair.first, pair.bn)
    return report




def constant_input_response(layer, kernel, values):
    """What ``kernel`` (shaped as ``layer``'s) adds to each output channel when every input
    position holds ``values`` (one per input channel), away from zero-padded borders."""
    if isinstance(layer, backend.keras.layers.DepthwiseConv2D):
        kh, kw, c, m = kernel.shape
        return (kernel.sum(axis=(0, 1)) * values[:, None]).reshape(c * m)
    return np.einsum("kio,i->o", kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]), values)


def _reads_no_padding(layer):
    return tuple(layer.kernel_size) == (1, 1) or layer.padding == "valid"


def _shift_into(second, graph, shift):
    """Add ``shift`` (one value per input channel of ``second``) to ``second``'s input, taken
    back out of its output: ``W^T shift`` goes into its bias or its BN's moving mean.
    Returns False where ``second`` has neither."""
    moved = constant_input_response(second, second.get_weights()[0].astype(np.float64), shift)
    bn = keras_graph.batch_norm_after(graph, second)
    if second.use_bias:
        weights = second.get_weights()
        weights[1] = (weights[1] + moved).astype(np.float32)
        second.set_weights(weights)
    elif bn is not None:
        _, _, mean, _ = bn_weights(bn)
        update_bn(bn, moving_mean=mean - moved)
    else:
        return False
    return True


def absorb_biases(model, images, report=None):
    """Bias absorption in place (see the module): per pair, ``c_i`` is the smallest pre-ReLU
    value of channel ``i`` on ``images`` where it is positive. Returns the report."""
    report = report or RepairReport()
    graph = keras_graph.consumers(model)
    pairs, _ = find_pairs(model)
    usable = []
    for pair in pairs:
        if not _reads_no_padding(pair.second):
            report.skipped.append((pair.first.name, f"bias absorption: {pair.second.name} reads "
                                   f"zero padding ({pair.second.kernel_size[0]}x"
                                   f"{pair.second.kernel_size[1]} 'same')"))
        elif pair.bn is None and not pair.first.use_bias:
            report.skipped.append((pair.first.name, "bias absorption: no bias or BN to move"))
        else:
            usable.append(pair)
    if not usable:
        return report
    pre_relu = keras_graph.outputs_of(model, [(p.bn or p.first).output for p in usable], images)
    for pair, values in zip(usable, pre_relu):
        shift = np.maximum(values.reshape(-1, values.shape[-1]).min(axis=0), 0.0)
        if not np.any(shift > 0):
            continue
        if not _shift_into(pair.second, graph, shift.astype(np.float64)):
            report.skipped.append((pair.first.name, f"bias absorption: {pair.second.name} has "
                                   f"no bias or BN to take the offset"))
            continue
        if pair.bn is not None:
            _, beta, _, _ = bn_weights(pair.bn)
            update_bn(pair.bn, beta=beta - shift)
        else:
            weights = pair.first.get_weights()
            weights[1] = (weights[1] - shift).astype(np.float32)
            pair.first.set_weights(weights)
        report.absorbed[pair.first.name] = float(shift.max())
    return report
