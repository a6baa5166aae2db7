"""``dbq``: the Differentiable Branch Quantizer (Dbouk, Sanghvi, Mehendale, Shanbhag, ECCV 2020),
as a TF-MOT scheme.

A weight filter (one output channel) is a sum of ``K`` scaled ternary branches, each of which a
ternary dot-product engine computes with adds and subtracts only::

    r_0 = w;   b_k = a_k * s_k(r_{k-1});   r_k = r_{k-1} - b_k;   w_q = b_1 + ... + b_K

where ``s_k`` is a ternary step with threshold ``t_k``: hard, ``sign(r) * [|r| > t_k]``; relaxed
during training into the smooth odd step ``(tanh((r - t_k) / T) + tanh((r + t_k) / T)) / 2``,
which tends to the hard step as the temperature ``T`` goes to 0. Thresholds ``t_k`` and scales
``a_k`` are learnable, one per branch and output channel. ``T = tau * mean|w|`` of the filter,
so one schedule fits every layer; ``tau`` is annealed over QAT from ``--dbq_temperature`` to
``--dbq_temperature_end`` (``--dbq_anneal exponential`` or ``linear``, by optimizer step, so a
resumed run continues the schedule). Inference (validation, export) uses the hard step: a
filter then holds at most ``3^K`` distinct values.

Assumptions (the paper's code is not public; stated again in BUILD_NOTES.md):
- branches are **residual** (each ternarizes what the previous ones left), which gives up to
  ``3^K`` levels per filter; they are initialized greedily from the float weights by TWN
  (threshold ``0.7 * mean|r|``, scale = mean of the ``|r|`` above it), so ``K = 1`` starts as
  TWN and training then moves thresholds and scales;
- the forward pass in training is the smooth relaxation itself (no straight-through term):
  gradients reach weights, thresholds and scales and fade for weights far from a threshold as
  ``T`` shrinks;
- like ``ternary_hybrid``: first conv and classifier stay 8-bit, activations stay 8-bit (TF-MOT's
  default quantizers), BN is folded by the converter per output channel, which keeps a filter's
  branch structure; no weight FakeQuant is emitted, the converter rounds the folded filter onto
  its int8 per-channel grid (sums of branches land within 1 LSB of their int8 images, which
  ``fnet_tf.analysis.bit_budget`` accounts for).
"""
import numpy as np

from fnet_tf.core import backend
from fnet_tf.core.errors import UserError
from fnet_tf.quantization.base import Option
from fnet_tf.quantization.registry import register_scheme
from fnet_tf.quantization.ternary_hybrid import bake_weights, layer_form
from fnet_tf.quantization.ternary_hybrid import quantizer_classes as weight_classes
from fnet_tf.quantization.ternary_hybrid import twn_filters, weight_layers
from fnet_tf.quantization.tfmot_int8 import TfmotScheme, unsupported_layers_refused

MAX_BRANCHES = 4
ANNEALS = ("exponential", "linear")


def _filters(weights, tf, depthwise):
    """(weights as [values per filter, filters], the original shape)."""
    channels = weights.shape[-1] * (weights.shape[-2] if depthwise else 1)
    return tf.reshape(weights, [-1, channels]), tf.shape(weights)


def _mean_magnitude(flat, tf, groups):
    rows = tf.cast(tf.shape(flat)[0], flat.dtype) / groups
    return tf.reduce_sum(tf.abs(flat), axis=0) / rows


def dbq_weights(weights, thresholds, scales, tau, tf, *, hard, depthwise=False, groups=1):
    """The DBQ weight of ``weights`` (see the module docstring). ``thresholds``, ``scales``:
    ``[K, filters]``; ``tau``: the relative temperature (ignored when ``hard``). ``groups``: a
    grouped conv in its block-diagonal training form (its zero blocks stay zero and do not count
    in the filter's mean |w|)."""
    flat, shape = _filters(weights, tf, depthwise)
    temperature = tf.stop_gradient(tau * _mean_magnitude(flat, tf, groups)) + 1e-12
    residual, total = flat, tf.zeros_like(flat)
    for k in range(thresholds.shape[0]):
        t, a = tf.abs(thresholds[k]), tf.abs(scales[k])
        if hard:
            step = tf.sign(residual) * tf.cast(tf.abs(residual) > t, flat.dtype)
        else:
            step = 0.5 * (tf.tanh((residual - t) / temperature)
                          + tf.tanh((residual + t) / temperature))
        branch = a * step
        total += branch
        residual -= branch
    return tf.reshape(total, shape)


def greedy_branches(kernel, branches, depthwise=False, groups=1):
    """Thresholds and scales ``[K, filters]`` of greedy residual TWN on a float ``kernel``."""
    w = np.asarray(kernel, np.float64)
    flat = w.reshape(-1, w.shape[-1] * (w.shape[-2] if depthwise else 1))
    thresholds, scales = [], []
    residual = flat.copy()
    for _ in range(branches):
        threshold, scale, ternary = twn_filters(residual, groups)
        residual = residual - ternary
        thresholds.append(threshold)
        scales.append(scale)
    return np.array(thresholds, np.float32), np.array(scales, np.float32)


def relative_temperature(progress, start, end, anneal):
    """``tau`` at ``progress`` (0..1 of the QAT steps)."""
    progress = min(max(float(progress), 0.0), 1.0)
    if anneal == "linear":
        return start + (end - start) * progress
    return start * (end / start) ** progress


def _classes():
    global _CLASSES
    if _CLASSES:
        return _CLASSES
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import \
        default_8bit_quantize_registry as registry

    keras, tf = backend.keras, backend.tf

    class DbqWeights(tfmot.quantization.keras.quantizers.Quantizer):
        """Weight quantizer: ``K`` residual ternary branches, learnable per filter."""

        def __init__(self, branches, tau=1.0, depthwise=False, groups=1):
            self.branches, self.tau = int(branches), float(tau)
            self.depthwise, self.groups = bool(depthwise), int(groups)

        def build(self, tensor_shape, name, layer):
            channels = tensor_shape[-1] * (tensor_shape[-2] if self.depthwise else 1)
            shape = (self.branches, int(channels))
            return {
                "thresholds": layer.add_weight(f"{name}_dbq_thresholds", shape=shape,
                                               initializer="zeros", trainable=True),
                "scales": layer.add_weight(f"{name}_dbq_scales", shape=shape,
                                           initializer="zeros", trainable=True),
                "tau": layer.add_weight(f"{name}_dbq_tau", shape=(), trainable=False,
                                        initializer=keras.initializers.Constant(self.tau)),
            }

        baked = False  # export_form: the kernel already holds the deployed weights

        def __call__(self, inputs, training, weights, **kwargs):
            from tf_keras.src.utils import control_flow_util

            if self.baked:
                return inputs

            def quantized(hard):
                return lambda: dbq_weights(inputs, weights["thresholds"], weights["scales"],
                                           weights["tau"], tf, hard=hard,
                                           depthwise=self.depthwise, groups=self.groups)

            return control_flow_util.smart_cond(training, quantized(False), quantized(True))

        def get_config(self):
            return {"branches": self.branches, "tau": self.tau, "depthwise": self.depthwise,
                    "groups": self.groups}

    class DbqConfig(registry.Default8BitQuantizeConfig):
        def __init__(self, weight_attrs, activation_attrs, quantize_output, branches=1,
                     tau=1.0, depthwise=False, groups=1):
            super().__init__(weight_attrs, activation_attrs, quantize_output)
            self.branches, self.tau, self.depthwise, self.groups = branches, tau, depthwise, groups
            self.weight_quantizer = DbqWeights(branches, tau, depthwise, groups)

        def get_config(self):
            return {**super().get_config(), "branches": self.branches, "tau": self.tau,
                    "depthwise": self.depthwise, "groups": self.groups}

    class DbqAnnealing(keras.callbacks.Callback):
        """Sets every DBQ layer's relative temperature from the optimizer's step before each
        training batch (the QAT optimizer starts at step 0 and is checkpointed)."""

        def __init__(self, start, end, anneal):
            super().__init__()
            self.start, self.end, self.anneal = start, end, anneal

        def on_train_batch_begin(self, batch, logs=None):
            total = max(1, self.params["steps"] * self.params["epochs"])
            step = int(self.model.optimizer.iterations.numpy())
            tau = relative_temperature(step / total, self.start, self.end, self.anneal)
            for variable in temperature_variables(self.model):
                variable.assign(tau)

    _CLASSES = {"DbqWeights": DbqWeights, "DbqConfig": DbqConfig, "DbqAnnealing": DbqAnnealing}
    return _CLASSES


_CLASSES = {}


def temperature_variables(model):
    return [v for v in model.non_trainable_weights if "_dbq_tau" in v.name]


def initialize_branches(qat_model):
    """Set every DBQ layer's thresholds and scales by greedy residual TWN on its float kernel."""
    weights_class = _classes()["DbqWeights"]
    for wrapper in qat_model.layers:
        for kernel, quantizer, variables in getattr(wrapper, "_weight_vars", ()):
            if not isinstance(quantizer, weights_class):
                continue
            thresholds, scales = greedy_branches(kernel.numpy(), quantizer.branches,
                                                 quantizer.depthwise, quantizer.groups)
            variables["thresholds"].assign(thresholds)
            variables["scales"].assign(scales)


@register_scheme
class Dbq(TfmotScheme):
    name = "dbq"
    description = "TF-MOT QAT with DBQ weights (sums of K learnable ternary branches)"
    declared_options = (
        Option("dbq_branches", int, 2, "ternary branches per filter (K; a filter then holds at "
               "most 3^K values)"),
        Option("dbq_temperature", float, 0.5, "the smooth steps' temperature at the start of "
               "QAT, relative to each filter's mean |w|"),
        Option("dbq_temperature_end", float, 0.01, "the temperature at the end of QAT "
               "(validation and export always use the hard step)"),
        Option("dbq_anneal", str, "exponential", "the temperature schedule over the QAT steps, "
               "exponential or linear"),
    )

    def __init__(self, dbq_branches=2, dbq_temperature=0.5, dbq_temperature_end=0.01,
                 dbq_anneal="exponential"):

        if not 1 <= int(dbq_branches) <= MAX_BRANCHES or int(dbq_branches) != dbq_branches:
            raise UserError(f"--dbq_branches is the number of ternary branches per filter, 1 to "
                            f"{MAX_BRANCHES}, got {dbq_branches}")
        if not 0 < dbq_temperature_end <= dbq_temperature:
            raise UserError(f"--dbq_temperature ({dbq_temperature:g}) and --dbq_temperature_end "
                            f"({dbq_temperature_end:g}) must satisfy 0 < end <= start")
        if dbq_anneal not in ANNEALS:
            raise UserError(f"--dbq_anneal must be one of {', '.join(ANNEALS)}, got {dbq_anneal!r}")
        self.options = {"dbq_branches": int(dbq_branches),
                        "dbq_temperature": float(dbq_temperature),
                        "dbq_temperature_end": float(dbq_temperature_end),
                        "dbq_anneal": dbq_anneal}

    def scope(self):
        import tensorflow_model_optimization as tfmot

        return tfmot.quantization.keras.quantize_scope(dict(_classes()))

    def quantize(self, model):
        import tensorflow_model_optimization as tfmot


        eligible, classes = set(weight_layers(model)[1]), _classes()
        branches, tau = self.options["dbq_branches"], self.options["dbq_temperature"]

        def config_for(layer, config):
            if layer.name not in eligible:
                return None
            return classes["DbqConfig"](config.weight_attrs, config.activation_attrs,
                                        config.quantize_output, branches, tau,
                                        *layer_form(layer))

        scheme = weight_classes()["WeightScheme"](config_for)
        with self.scope(), unsupported_layers_refused(model):
            annotated = tfmot.quantization.keras.quantize_annotate_model(model)
            qat = tfmot.quantization.keras.quantize_apply(annotated, scheme=scheme)
        initialize_branches(qat)
        return qat

    def export_form(self, model):
        return bake_weights(model, _classes()["DbqWeights"])

    def callbacks(self):
        o = self.options
        return [_classes()["DbqAnnealing"](o["dbq_temperature"], o["dbq_temperature_end"],
                                           o["dbq_anneal"])]
