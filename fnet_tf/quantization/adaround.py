"""Weights rounded to few bits, by nearest rounding or by AdaRound (Nagel et al., ICML 2020).

Every Conv2D, DepthwiseConv2D and Dense layer is quantized as an integer file would store it:
BN folded into the kernel (per output channel ``gamma / sqrt(var + eps)``), symmetric, levels
``-(2^(b-1)-1) .. 2^(b-1)-1`` times a step ``s`` per output channel (or one per tensor); the
quantized folded kernel is unfolded again, so the Keras model (BN in inference mode) computes
what the folded quantized layer would. Activations stay float.

The step ``s`` is ``max|w| / (2^(b-1)-1)``, what TFLite's int8 converter uses.

**AdaRound** chooses, weight by weight, whether to round down or up, so that the layer's output
(not its weights) stays closest to the float layer's. Layer by layer in graph order, on
calibration images from the training split: the input ``x_q`` comes from the model whose
earlier layers are already rounded, the target ``y`` from the float model (the paper's
asymmetric reconstruction), and

    w~ = s * clip(floor(w / s) + h(V), -n, n),   h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)
    loss = mean over positions of sum over channels (conv(x_q, w~) - y)^2
           + lambda * sum(1 - |2 h(V) - 1|^beta)

is minimised over ``V`` with Adam; ``beta`` anneals from 20 to 2 (cosine) after a warm-up
without the regulariser, which pushes every ``h`` to 0 or 1; the final rounding is
``h >= 0.5``. ``V`` starts where ``h`` equals the fractional part, i.e. at nearest rounding's
neighbourhood. The channel's largest weight keeps ``+-n`` so that a converter recomputing
``max|w~| / n`` finds the same step (the 8-bit repaired file then stores exactly these codes).
Where nearest rounding reconstructs a layer better on the calibration images, it is kept (and
the report says so).
"""
import dataclasses
import time

import numpy as np

from fnet_tf.core import backend
from fnet_tf.quantization import equalization, keras_graph

ZETA, GAMMA = 1.1, -0.1
WEIGHT_TYPES = ("Conv2D", "DepthwiseConv2D", "Dense")
METHODS = ("nearest", "adaround")


@dataclasses.dataclass(frozen=True)
class AdaRoundSettings:
    """The optimisation of one layer's rounding (defaults: the paper's, fewer iterations)."""

    iterations: int = 1000
    batch_size: int = 32
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    learning_rate: float = 1e-3
    seed: int = 0


class WeightLayer:
    """A conv/dense layer with its BN folded: ``output(x, folded_kernel)`` equals the BN's
    output (or the layer's, without BN) in inference mode."""

    def __init__(self, layer, bn):
        self.layer, self.bn = layer, bn
        self.kind = type(layer).__name__
        weights = layer.get_weights()
        self.kernel = weights[0].astype(np.float64)
        bias = weights[1].astype(np.float64) if layer.use_bias else 0.0
        if bn is None:
            self.factor = np.ones(self.channels_shape())
            self.bias = np.broadcast_to(bias, self.channels_shape()).reshape(-1)
        else:
            gamma, beta, mean, variance = (v.astype(np.float64)
                                           for v in equalization.bn_weights(bn))
            factor = gamma / np.sqrt(variance + bn.epsilon)
            self.factor = factor.reshape(self.channels_shape())
            self.bias = (beta + factor * (bias - mean)).reshape(-1)

    def channels_shape(self):
        """The shape that broadcasts one value per output channel over the kernel."""
        if self.kind == "DepthwiseConv2D":
            return (1, 1) + self.kernel.shape[2:]
        return (1,) * (self.kernel.ndim - 1) + self.kernel.shape[-1:]

    def reduce_axes(self):
        return (0, 1) if self.kind == "DepthwiseConv2D" else tuple(range(self.kernel.ndim - 1))

    def folded(self):
        return self.kernel * self.factor

    def set_folded(self, folded):
        """Write a folded kernel back as the Keras kernel (BN unchanged)."""
        safe = np.where(self.factor != 0, self.factor, 1.0)
        weights = self.layer.get_weights()
        weights[0] = (folded / safe).astype(np.float32)
        self.layer.set_weights(weights)

    def output(self, x, folded):
        """The folded layer on ``x`` (a TensorFlow op, differentiable in ``folded``)."""
        tf = backend.tf
        if self.kind == "Conv2D":
            y = self.layer.convolution_op(x, folded)
        elif self.kind == "DepthwiseConv2D":
            s = self.layer.strides
            y = tf.nn.depthwise_conv2d(x, folded, strides=(1, s[0], s[1], 1),
                                       padding=self.layer.padding.upper(),
                                       dilations=self.layer.dilation_rate)
            y = tf.reshape(y, tf.concat([tf.shape(y)[:-1], [-1]], 0))
        else:
            y = tf.tensordot(x, folded, [[len(x.shape) - 1], [0]])
        return y + tf.constant(self.bias, y.dtype)


def levels(bits):
    return 2 ** (int(bits) - 1) - 1


def step_sizes(folded, axes, bits, per_channel=True):
    """The quantization step ``max|w| / n`` per output channel (shaped to broadcast over the
    kernel; ``axes``: the kernel's axes within one channel) or per tensor."""
    keep = axes if per_channel else tuple(range(folded.ndim))
    peak = np.max(np.abs(folded), axis=keep, keepdims=True)
    return np.where(peak > 0, peak, 1.0) / levels(bits)


def round_nearest(folded, step, bits):
    n = levels(bits)
    return np.clip(np.round(folded / step), -n, n) * step


def _pin_extremes(codes, folded, axes, per_channel, n):
    """Keep each channel's (or the tensor's) largest weight at +-n, where nearest rounding
    puts it, so that ``max|w~| / n`` is the step again."""
    keep = axes if per_channel else tuple(range(folded.ndim))
    peak = np.max(np.abs(folded), axis=keep, keepdims=True)
    at_peak = (np.abs(folded) == peak) & (peak > 0)
    return np.where(at_peak, np.sign(folded) * n, codes)


def adaround_kernel(op, inputs, targets, step, bits, settings=None):
    """The AdaRounded folded kernel of ``op`` (a WeightLayer): ``inputs`` to the layer (from the
    partly rounded model), ``targets`` its float folded outputs, both numpy arrays."""
    tf = backend.tf
    settings = settings or AdaRoundSettings()
    n = levels(bits)
    folded = op.folded()
    floor = np.floor(folded / step)
    rest = folded / step - floor
    # h(V) = rest at the start: sigmoid(V) = (rest - gamma) / (zeta - gamma)
    p = np.clip((rest - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    v = tf.Variable(np.log(p / (1 - p)).astype(np.float32))
    floor_t, step_t = tf.constant(floor, tf.float32), tf.constant(step, tf.float32)
    x_all, y_all = tf.constant(inputs, tf.float32), tf.constant(targets, tf.float32)
    optimizer = backend.keras.optimizers.Adam(settings.learning_rate)
    total = int(settings.iterations)
    warm = int(settings.warmup * total)

    def soft(v):
        return tf.clip_by_value(tf.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    @tf.function
    def step_fn(index, beta, reg_weight):
        x, y = tf.gather(x_all, index), tf.gather(y_all, index)
        with tf.GradientTape() as tape:
            h = soft(v)
            kernel = step_t * tf.clip_by_value(floor_t + h, -n, n)
            out = op.output(x, kernel)
            rec = tf.reduce_mean(tf.reduce_sum(tf.square(out - y), axis=-1))
            reg = reg_weight * tf.reduce_sum(1.0 - tf.pow(tf.abs(2.0 * h - 1.0), beta))
            loss = rec + reg
        optimizer.apply_gradients([(tape.gradient(loss, v), v)])
        return rec

    rng = np.random.default_rng(settings.seed)
    for it in range(total):
        index = rng.choice(len(inputs), size=min(settings.batch_size, len(inputs)), replace=False)
        if it < warm:
            beta, reg_weight = settings.beta_start, 0.0
        else:
            t = (it - warm) / max(1, total - warm)
            beta = settings.beta_end + 0.5 * (settings.beta_start - settings.beta_end) * (
                1 + np.cos(np.pi * t))
            reg_weight = settings.reg_weight
        step_fn(tf.constant(index), tf.constant(beta, tf.float32),
                tf.constant(reg_weight, tf.float32))
    codes = np.clip(floor + (soft(v).numpy() >= 0.5), -n, n)
    return _pin_extremes(codes, folded, op.reduce_axes(), step.size > 1, n) * step


def reconstruction_error(op, inputs, targets, folded):
    """Mean over positions of the summed squared output error of ``folded`` on ``inputs``."""
    out = op.output(backend.tf.constant(inputs, backend.tf.float32),
                    backend.tf.constant(folded, backend.tf.float32)).numpy()
    return float(np.mean(np.sum((out - targets) ** 2, axis=-1)))


def weight_layers(model):
    """Every Conv2D, DepthwiseConv2D and Dense of ``model`` in graph order, with its BN."""
    graph = keras_graph.consumers(model)
    return [WeightLayer(layer, keras_graph.batch_norm_after(graph, layer))
            for layer in model.layers if type(layer).__name__ in WEIGHT_TYPES]


def quantize_weights(model, bits, per_channel=True, method="nearest", images=None,
                     settings=None, progress=None):
    """Round the weights of every conv/dense layer of ``model`` in place (see the module).

    ``method``: 'nearest' or 'adaround' (needs ``images``: calibration images from the
    training split). Returns, per layer, for AdaRound the reconstruction error on ``images``
    of nearest rounding and of AdaRound's, and which was kept (AdaRound's unless nearest
    reconstructs better); ``progress(text)`` is told what runs."""
    ops = weight_layers(model)
    if method not in METHODS:
        raise ValueError(f"rounding {method!r} is not one of {METHODS}")
    steps = {}
    for op in ops:
        steps[op.layer.name] = step_sizes(op.folded(), op.reduce_axes(), bits, per_channel)
    if method == "nearest":
        for op in ops:
            op.set_folded(round_nearest(op.folded(), steps[op.layer.name], bits))
        return {}
    if images is None:
        raise ValueError("AdaRound needs calibration images (the training split)")
    reference = backend.keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    report = {}
    for i, op in enumerate(ops):
        started = time.time()
        target = reference.get_layer((op.bn or op.layer).name).output
        inputs, = keras_graph.outputs_of(model, [op.layer.input], images)
        targets, = keras_graph.outputs_of(reference, [target], images)
        step = steps[op.layer.name]
        nearest = round_nearest(op.folded(), step, bits)
        learned = adaround_kernel(op, inputs, targets, step, bits, settings)
        errors = {"nearest": reconstruction_error(op, inputs, targets, nearest),
                  "adaround": reconstruction_error(op, inputs, targets, learned)}
        kept = "adaround" if errors["adaround"] <= errors["nearest"] else "nearest"
        op.set_folded(learned if kept == "adaround" else nearest)
        report[op.layer.name] = {"error_nearest": errors["nearest"],
                                 "error_adaround": errors["adaround"], "kept": kept}
        if progress:
            progress(f"AdaRound {bits} bits: layer {i + 1}/{len(ops)} {op.layer.name}: "
                     f"reconstruction error {errors['nearest']:.4g} (nearest) -> "
                     f"{errors['adaround']:.4g} ({time.time() - started:.0f}s)")
    return report
