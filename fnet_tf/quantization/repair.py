"""Data-free repairs before post-training quantization (Nagel et al., ICCV 2019).

**Cross-layer equalization** (``cle``). For a pair ``A -> [BN] -> ReLU -> B`` (A and B each a
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

**Bias correction** (``bias_correction``). Rounding A's folded weights to int8 shifts the mean of
each output channel by ``delta_i = sum_k (Wq - W)[k, i] * E[x_k]``, with ``E[x]`` the per-channel
mean of A's input over calibration images (training split) and ``Wq`` the weights as TFLite will
round them (symmetric int8, per channel or per tensor as the scheme says). The correction
subtracts ``delta_i`` from the bias TFLite folds (BN beta, or the layer's bias). It treats
every output position alike: at a zero-padded border the true shift is smaller.

Both act on a copy of the float model (``repaired``); ``report`` describes what changed.
"""
import dataclasses

import numpy as np

from fnet_tf.core import backend
from fnet_tf.core.errors import UserError

REPAIRS = ("cle", "bias_correction")


def _pools():
    layers = backend.keras.layers
    return (layers.MaxPooling2D, layers.AveragePooling2D)
EPS_RANGE = 1e-8


@dataclasses.dataclass
class Pair:
    """An equalizable pair: A (with its BN, if any) -> ReLU -> B."""

    first: object
    bn: object
    second: object


@dataclasses.dataclass
class RepairReport:
    """What a repair changed: per-layer channel-range ratios before and after, skipped layers."""

    pairs: list = dataclasses.field(default_factory=list)  # (A name, B name)
    skipped: list = dataclasses.field(default_factory=list)  # (layer name, why)
    ratio_before: dict = dataclasses.field(default_factory=dict)  # layer -> widest/narrowest
    ratio_after: dict = dataclasses.field(default_factory=dict)
    bias_shift: dict = dataclasses.field(default_factory=dict)  # layer -> max |delta| corrected

    def lines(self):
        out = [f"cross-layer equalization: {len(self.pairs)} pairs"]
        for name in self.ratio_before:
            if name in self.ratio_after:
                out.append(f"  {name}: channel-range ratio {self.ratio_before[name]:.1f} -> "
                           f"{self.ratio_after[name]:.1f}")
        for name, why in self.skipped:
            out.append(f"  {name}: skipped ({why})")
        for name, shift in self.bias_shift.items():
            out.append(f"  {name}: bias corrected by up to {shift:.3g}")
        return out


def parse_repairs(text):
    """'cle,bias_correction' -> ('cle', 'bias_correction'); UserError names a bad one."""
    names = tuple(n.strip() for n in (text or "").split(",") if n.strip())
    for name in names:
        if name not in REPAIRS:
            raise UserError(f"--repair {name!r} is not one of {', '.join(REPAIRS)}")
    return names


def _is_weight_layer(layer):
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


def _consumers(model):
    """{layer name: [layers reading its output]} of a functional model."""
    found = {layer.name: [] for layer in model.layers}
    for layer in model.layers:
        for node in layer.inbound_nodes:
            inbound = node.inbound_layers
            for source in (inbound if isinstance(inbound, (list, tuple)) else [inbound]):
                if source.name in found:
                    found[source.name].append(layer)
    return found


def _only_consumer(consumers, layer):
    readers = consumers.get(layer.name, [])
    return readers[0] if len(readers) == 1 else None


def find_pairs(model):
    """(pairs, skipped): every A -> [BN] -> ReLU -> B chain, and each weight layer whose output
    chain is not one (with why)."""
    consumers = _consumers(model)
    pairs, skipped = [], []
    for layer in model.layers:
        if not _is_weight_layer(layer):
            continue
        nxt, bn = _only_consumer(consumers, layer), None
        if isinstance(nxt, backend.keras.layers.BatchNormalization):
            bn, nxt = nxt, _only_consumer(consumers, nxt)
        if nxt is None or not _is_relu(nxt):
            why = ("its output feeds several layers" if nxt is None and
                   len(consumers.get((bn or layer).name, [])) > 1 else
                   f"followed by {type(nxt).__name__ if nxt is not None else 'the output'}, "
                   f"not a ReLU")
            skipped.append((layer.name, why))
            continue
        second = _only_consumer(consumers, nxt)
        while isinstance(second, _pools()):  # max and mean commute with a positive channel scale
            second = _only_consumer(consumers, second)
        if second is None or not _is_weight_layer(second):
            what = type(second).__name__ if second is not None else "several layers"
            skipped.append((layer.name, f"its ReLU feeds {what}"))
            continue
        pairs.append(Pair(layer, bn, second))
    return pairs, skipped


def _bn_factor(bn):
    """gamma / sqrt(var + eps) per channel: what the converter multiplies the kernel by."""
    gamma, _, _, var = _bn_weights(bn)
    return gamma / np.sqrt(var + bn.epsilon)


def _bn_weights(bn):
    weights = dict(zip([w.name.split("/")[-1].split(":")[0] for w in bn.weights], bn.get_weights()))
    channels = weights["moving_mean"].shape[0]
    gamma = weights.get("gamma", np.ones(channels, np.float32))
    beta = weights.get("beta", np.zeros(channels, np.float32))
    return gamma, beta, weights["moving_mean"], weights["moving_variance"]


def _set_bn(bn, gamma, beta):
    names = [w.name.split("/")[-1].split(":")[0] for w in bn.weights]
    if "gamma" not in names or "beta" not in names:
        raise UserError(f"{bn.name} has no gamma or beta (scale/center off): cannot equalize")
    bn.set_weights([gamma if n == "gamma" else beta if n == "beta" else w
                    for n, w in zip(names, bn.get_weights())])


def _output_channel_view(layer, kernel):
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
    factor = _bn_factor(bn)
    if isinstance(layer, backend.keras.layers.DepthwiseConv2D):
        kh, kw, c, m = kernel.shape
        return kernel * factor.reshape(1, 1, c, m)
    return kernel * factor


def output_ranges(layer, bn=None):
    """Largest absolute folded weight of each output channel."""
    return np.abs(_output_channel_view(layer, folded_kernel(layer, bn))).max(axis=0)


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
        gamma, beta, _, _ = _bn_weights(bn)
        _set_bn(bn, gamma / scale, beta / scale)
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


def quantize_symmetric(weights, per_channel, view):
    """Weights rounded as TFLite's int8 weights are: symmetric, 127 levels a side, per output
    channel of ``view`` (weights per output channel, channels) or per tensor."""
    flat = view(weights)
    limit = np.abs(flat).max(axis=0) if per_channel else np.abs(flat).max()
    scale = np.maximum(limit, EPS_RANGE) / 127.0
    return (np.clip(np.round(flat / scale), -127, 127) * scale).reshape(weights.shape)


def _bias_target(layer, consumers):
    """The BN TFLite folds into ``layer`` (its only reader), or None."""
    nxt = _only_consumer(consumers, layer)
    return nxt if isinstance(nxt, backend.keras.layers.BatchNormalization) else None


def correct_bias(model, images, per_channel=True, report=None, batch_size=100):
    """Empirical bias correction of every Conv2D/DepthwiseConv2D in place (see the module).
    ``images``: calibration images from the training split, as the model takes them."""
    report = report or RepairReport()
    consumers = _consumers(model)
    layers = [layer for layer in model.layers if _is_weight_layer(layer)]
    probe = backend.keras.Model(model.inputs, [layer.input for layer in layers])
    sums = None
    for start in range(0, len(images), batch_size):
        outs = probe(images[start:start + batch_size], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        means = [np.asarray(o, np.float64).sum(axis=(0, 1, 2)) for o in outs]
        sums = means if sums is None else [a + b for a, b in zip(sums, means)]
    for layer, total in zip(layers, sums):
        mean_input = total / (len(images) * np.prod(layer.input_shape[1:3]))
        bn = _bias_target(layer, consumers)
        folded = folded_kernel(layer, bn)
        view = lambda w, layer=layer: _output_channel_view(layer, w)  # noqa: E731
        error = quantize_symmetric(folded, per_channel, view) - folded
        if isinstance(layer, backend.keras.layers.DepthwiseConv2D):
            kh, kw, c, m = error.shape
            delta = (error.sum(axis=(0, 1)) * mean_input[:, None]).reshape(c * m)
        else:
            delta = np.einsum("kio,i->o", error.reshape(-1, error.shape[-2], error.shape[-1]),
                              mean_input)
        delta = delta.astype(np.float32)
        if bn is not None:
            gamma, beta, _, _ = _bn_weights(bn)
            _set_bn(bn, gamma, beta - delta)
        elif layer.use_bias:
            weights = layer.get_weights()
            weights[1] = weights[1] - delta
            layer.set_weights(weights)
        else:
            report.skipped.append((layer.name, "no bias or BN to correct"))
            continue
        report.bias_shift[layer.name] = float(np.abs(delta).max())
    return report


def repaired(model, repairs, calibration_images=None, per_channel=True):
    """(a repaired copy of ``model``, its report). ``repairs`` from ``parse_repairs``."""
    copy = backend.keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    report = RepairReport()
    if "cle" in repairs:
        equalize(copy, report=report)
    if "bias_correction" in repairs:
        if calibration_images is None:
            raise UserError("bias correction needs calibration images (the training split)")
        correct_bias(copy, calibration_images, per_channel=per_channel, report=report)
    return copy, report
