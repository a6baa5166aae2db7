"""``ternary_hybrid``: per-layer hybrid filter banks of ternary and 8-bit filters (Gope et al.,
"Ternary MobileNets via Per-Layer Hybrid Filter Banks", CVPRW 2020), as a TF-MOT scheme.

In each chosen conv/dense layer a share of the output filters is ternary, ``w in {-a, 0, +a}``
per filter (TWN: threshold ``0.7 * mean|w|``, ``a`` = mean of the ``|w|`` above it), the rest
8-bit per channel; straight-through gradients. Which filters are ternary is decided at every
step by each filter's relative ternarization error (the filters that lose least). Everything
else is TF-MOT's default 8-bit scheme (its registry is subclassed, so its layout transforms,
BN folding and activation quantizers apply unchanged); activations stay 8-bit.

Assumptions (the paper's code is not public): the ternary share is counted in weights; the
first conv and the classifier stay 8-bit; a ternary filter's values are ternary before BN
folding, and BN folding scales a whole output channel, so the deployed int8 filter is
``{-q, 0, +q}`` (checked on the exported file by ``fnet_tf.analysis.bit_budget``).
"""
import math
import os

from fnet_tf.arch.grouped import training_groups
from fnet_tf.core import backend, fileio
from fnet_tf.core.errors import UserError
from fnet_tf.quantization.base import Option
from fnet_tf.quantization.registry import register_scheme
from fnet_tf.quantization.tfmot_int8 import TfmotScheme, unsupported_layers_refused

WEIGHT_TYPES = ("Conv2D", "DepthwiseConv2D", "Dense")
TWN_THRESHOLD = 0.7  # a weight is kept when |w| > TWN_THRESHOLD * mean|w| of its filter


def twn_filters(flat, groups=1):
    """TWN per filter of a numpy ``[values per filter, filters]`` array: (thresholds, scales,
    the ternary array). ``groups``: the mean |w| is over the real block of a block-diagonal
    grouped kernel (its zeros stay zero)."""
    import numpy as np

    magnitude = np.abs(flat)
    threshold = TWN_THRESHOLD * magnitude.sum(axis=0) / (flat.shape[0] / groups)
    keep = magnitude > threshold
    count = keep.sum(axis=0)
    scale = np.where(count > 0, (magnitude * keep).sum(axis=0) / np.maximum(count, 1), 0.0)
    return threshold, scale, np.sign(flat) * keep * scale


def hybrid_ternary(weights, fraction, tf, depthwise=False, groups=1):
    """``weights`` with the ``fraction`` of filters (output channels) that ternarize best made
    ternary and the rest rounded to the 8-bit per-channel grid; straight-through gradient.
    ``groups``: a grouped conv in its block-diagonal training form (``fnet_tf.arch.grouped``), whose
    filters hold ``groups - 1`` blocks of zeros: the mean |w| is taken over the real block, so
    training and the exported native grouped conv ternarize alike.
    No FakeQuant op is emitted (a per-channel one cannot follow a depthwise kernel's reshape in
    the converter): the converter quantizes the folded weights per channel itself, which maps
    a ternary filter to {-127, 0, 127} and an 8-bit one onto its own grid."""
    shape = tf.shape(weights)
    channels = weights.shape[-1] * (weights.shape[-2] if depthwise else 1)
    flat = tf.reshape(weights, [-1, channels])
    magnitude = tf.abs(flat)
    rows = tf.cast(tf.shape(flat)[0], flat.dtype) / groups
    threshold = TWN_THRESHOLD * tf.reduce_sum(magnitude, axis=0) / rows
    keep = tf.cast(magnitude > threshold, flat.dtype)
    scale = tf.math.divide_no_nan(tf.reduce_sum(magnitude * keep, 0), tf.reduce_sum(keep, 0))
    ternary = tf.sign(flat) * keep * scale
    error = tf.math.divide_no_nan(tf.reduce_sum(tf.square(flat - ternary), 0),
                                  tf.reduce_sum(tf.square(flat), 0))
    count = min(channels, int(math.ceil(fraction * channels - 1e-9)))
    chosen = tf.zeros([channels], tf.bool)
    if count:
        best = tf.math.top_k(-error, k=count).indices
        chosen = tf.scatter_nd(best[:, None], tf.ones([count], tf.bool), [channels])
    step = tf.reduce_max(magnitude, axis=0) / 127.0  # symmetric, narrow range, per channel
    int8 = tf.round(tf.math.divide_no_nan(flat, step)) * step
    mixed = tf.where(chosen[None, :], ternary, int8)
    return weights + tf.stop_gradient(tf.reshape(mixed, shape) - weights)


def quantizer_classes():
    """The TF-MOT classes of this scheme (built on first use: TF-MOT loads only then)."""
    global _CLASSES
    if _CLASSES:
        return _CLASSES
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import \
        default_8bit_quantize_registry as registry
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import \
        default_8bit_quantize_scheme as scheme

    tf = backend.tf

    class HybridTernaryWeights(tfmot.quantization.keras.quantizers.Quantizer):
        def __init__(self, fraction, depthwise=False, groups=1):
            self.fraction, self.depthwise, self.groups = float(fraction), bool(depthwise), groups

        def build(self, tensor_shape, name, layer):
            return {}

        baked = False  # export_form: the kernel already holds the deployed weights

        def __call__(self, inputs, training, weights, **kwargs):
            if self.baked:
                return inputs
            return hybrid_ternary(inputs, self.fraction, tf, self.depthwise, self.groups)

        def get_config(self):
            return {"fraction": self.fraction, "depthwise": self.depthwise, "groups": self.groups}

    class HybridTernaryConfig(registry.Default8BitQuantizeConfig):
        def __init__(self, weight_attrs, activation_attrs, quantize_output, fraction=0.0,
                     depthwise=False, groups=1):
            super().__init__(weight_attrs, activation_attrs, quantize_output)
            self.fraction, self.depthwise, self.groups = fraction, depthwise, groups
            self.weight_quantizer = HybridTernaryWeights(fraction, depthwise, groups)

        def get_config(self):
            return {**super().get_config(), "fraction": self.fraction,
                    "depthwise": self.depthwise, "groups": self.groups}

    class WeightSchemeRegistry(registry.Default8BitQuantizeRegistry):
        """TF-MOT's 8-bit registry, with ``config_for(layer, config)`` choosing a conv/dense
        layer's own config (None: keep the 8-bit one)."""

        def __init__(self, config_for):
            super().__init__()
            self.config_for = config_for

        def get_quantize_config(self, layer):
            config = super().get_quantize_config(layer)
            if type(layer).__name__ not in WEIGHT_TYPES:
                return config
            return self.config_for(layer, config) or config

    class WeightScheme(scheme.Default8BitQuantizeScheme):
        """TF-MOT's 8-bit scheme whose registry is a ``WeightSchemeRegistry``: the sub-8-bit
        schemes (this one, ``dbq``) differ only in the weight config they give a layer."""

        def __init__(self, config_for):
            super().__init__()
            self.config_for = config_for

        def get_quantize_registry(self):
            return WeightSchemeRegistry(self.config_for)

    _CLASSES = {"HybridTernaryWeights": HybridTernaryWeights,
                "HybridTernaryConfig": HybridTernaryConfig, "WeightScheme": WeightScheme}
    return _CLASSES


_CLASSES = {}


def layer_form(layer):
    """(depthwise, groups) of a conv/dense layer as its weight quantizer sees the kernel: a
    depthwise kernel's filters span two axes; ``groups`` > 1 for a grouped conv in its
    block-diagonal training form (``fnet_tf.arch.grouped``)."""

    return type(layer).__name__ == "DepthwiseConv2D", training_groups(layer) or 1


def bake_weights(qat_model, quantizer_class):
    """Each weight quantized by a ``quantizer_class`` instance replaced by its deployed
    (inference) value, and the quantizer turned into the identity (``baked``): the converter
    then sees the deployed weights as constants. Changes ``qat_model`` in place; its inference
    outputs stay the same."""
    for wrapper in qat_model.layers:
        for kernel, quantizer, variables in getattr(wrapper, "_weight_vars", ()):
            if isinstance(quantizer, quantizer_class) and not quantizer.baked:
                kernel.assign(quantizer(kernel, False, variables))
                quantizer.baked = True
    return qat_model


def weight_layers(model):
    layers = [layer for layer in model.layers if type(layer).__name__ in WEIGHT_TYPES]
    sizes = {layer.name: _native_size(layer) for layer in layers}
    eligible = layers[1:-1] if len(layers) > 2 else []  # first conv, classifier: 8-bit
    return sizes, [layer.name for layer in eligible]


def _native_size(layer):
    """Weights of a layer as the exported (native grouped) conv holds them."""

    return layer.get_weights()[0].size // (training_groups(layer) or 1)


def uniform_fractions(model, share):
    """Per layer ternary filter fraction so that at least ``share`` of all conv/dense weights
    are ternary, spread evenly over the eligible layers (first conv and classifier excluded)."""
    sizes, eligible = weight_layers(model)
    pool = sum(sizes[n] for n in eligible)
    fraction = min(1.0, share * sum(sizes.values()) / pool) if pool else 0.0
    return {name: fraction for name in eligible}


def sensitivity_fractions(model, share, rows):
    """Per layer fraction with the least sensitive layers ternary first: eligible layers in
    order of their ternary accuracy drop (``fnet_tf.analyze --sensitivity`` rows, 'only this
    layer' quantized) become fully ternary until ``share`` of all weights is reached."""

    sizes, eligible = weight_layers(model)
    drop = {r["layer"]: float(r["drop_only_this"]) for r in rows if r["bits"] == "ternary"}
    missing = [n for n in eligible if n not in drop]
    if missing:
        raise UserError(f"the sensitivity table has no ternary row for layer {missing[0]!r}: run "
                        f"python -m fnet_tf.analyze RUN --sensitivity on this model's float run")
    budget = share * sum(sizes.values())
    fractions = {}
    for name in sorted(eligible, key=lambda n: drop[n]):
        if budget <= 0:
            break
        fractions[name] = min(1.0, budget / sizes[name])
        budget -= fractions[name] * sizes[name]
    return fractions


def read_sensitivity(path):

    if not os.path.isfile(path):
        raise UserError(f"cannot read the sensitivity table {path!r} (no such file): run python "
                        f"-m fnet_tf.analyze RUN --sensitivity first")
    rows = fileio.read_csv(path)  # bounded; a malformed file is a one-line error naming it
    if not rows or not {"layer", "bits", "drop_only_this"} <= set(rows[0]):
        raise UserError(f"{path!r} is not a sensitivity.csv of fnet_tf.analyze --sensitivity")
    return rows


@register_scheme
class TernaryHybrid(TfmotScheme):
    name = "ternary_hybrid"
    description = "TF-MOT QAT with per-layer hybrid ternary/int8 filter banks"
    declared_options = (
        Option("ternary_fraction", float, 0.5, "the share of all conv/dense weights held by "
               "ternary filters (first conv and classifier stay 8-bit)"),
        Option("ternary_allocation", str, "uniform", "'uniform' (the same filter share in "
               "every eligible layer) or 'sensitivity' (the least sensitive layers first, from "
               "--sensitivity_csv)"),
        Option("sensitivity_csv", str, None, "the float run's analysis/sensitivity.csv (python "
               "-m fnet_tf.analyze RUN --sensitivity), for --ternary_allocation sensitivity",
               is_path=True),
    )

    def __init__(self, ternary_fraction=0.5, ternary_allocation="uniform", sensitivity_csv=None):

        if not 0 <= ternary_fraction <= 1:
            raise UserError(f"--ternary_fraction is a share of the weights in [0, 1], got "
                            f"{ternary_fraction:g}")
        if ternary_allocation not in ("uniform", "sensitivity"):
            raise UserError(f"--ternary_allocation must be uniform or sensitivity, got "
                            f"{ternary_allocation!r}")
        if ternary_allocation == "sensitivity" and not sensitivity_csv:
            raise UserError("--ternary_allocation sensitivity needs --sensitivity_csv (the "
                            "float run's analysis/sensitivity.csv)")
        self.options = {"ternary_fraction": float(ternary_fraction),
                        "ternary_allocation": ternary_allocation,
                        "sensitivity_csv": sensitivity_csv}

    def scope(self):
        import tensorflow_model_optimization as tfmot

        return tfmot.quantization.keras.quantize_scope(dict(quantizer_classes()))

    def fractions(self, model):
        share = self.options["ternary_fraction"]
        if self.options["ternary_allocation"] == "sensitivity":
            return sensitivity_fractions(model, share, read_sensitivity(self.options["sensitivity_csv"]))
        return uniform_fractions(model, share)

    def export_form(self, model):
        return bake_weights(model, quantizer_classes()["HybridTernaryWeights"])

    def quantize(self, model):
        import tensorflow_model_optimization as tfmot

        fractions, classes = self.fractions(model), quantizer_classes()

        def config_for(layer, config):
            fraction = fractions.get(layer.name, 0.0)
            if not fraction:
                return None
            return classes["HybridTernaryConfig"](config.weight_attrs, config.activation_attrs,
                                                  config.quantize_output, fraction,
                                                  *layer_form(layer))

        scheme = classes["WeightScheme"](config_for)
        with self.scope(), unsupported_layers_refused(model):
            annotated = tfmot.quantization.keras.quantize_annotate_model(model)
            return tfmot.quantization.keras.quantize_apply(annotated, scheme=scheme)
