"""Activation ranges for QAT set from data before its first step.

TF-MOT's activation quantizers (``MovingAverageQuantizer``: every ``quant_X/output_min|max``
and ``post_activation_min|max``) start at [-6, 6] and move towards each batch's range with an
exponential moving average of decay 0.999: after ``n`` steps ``0.999**n`` of the initial
[-6, 6] is left. On CIFAR-10 (3 QAT epochs, ~1,000 steps) that is a third; fine-tuning on a
few hundred images of someone's own (a few steps) leaves the ranges at [-6, 6], and every
activation above 6 is clipped: on 100 handwritten digits, ResNet-8's INT8 top-1 fell from
69% (the same float model quantized after training) to 26% (``results/transfer/``).

``calibrate`` starts each range where its moving average converges instead: the mean over
calibration batches of each batch's range, as TF-MOT computes it (min(batch min, 0),
max(batch max, 0)), measured on the float model's layer of the same name (a QAT wrapper
``quant_X`` quantizes the output of layer ``X``). The float model runs in training mode, as
QAT does when it updates the averages (BN normalises with the batch's statistics: a model
whose moving statistics have not converged, such as StatAssist's short float warm-up, would
give ranges in the tens of thousands in inference mode); its weights, BN's moving statistics
included, are restored afterwards. A range that is not finite or has no width keeps TF-MOT's
start.
"""
import numpy as np

from fnet_tf.core import backend

WRAPPER_PREFIX = "quant_"
RANGE_VARIABLES = {"output_min": np.minimum, "output_max": np.maximum,
                   "post_activation_min": np.minimum, "post_activation_max": np.maximum}


def _range_variables(qat_model):
    """{float layer name: {'min'|'max': [variables]}} of every moving-average activation
    range in ``qat_model``."""
    found = {}
    for variable in qat_model.weights:
        parts = variable.name.split(":")[0].split("/")
        if len(parts) < 2 or parts[-1] not in RANGE_VARIABLES:
            continue
        owner = parts[-2]
        if not owner.startswith(WRAPPER_PREFIX):
            continue
        side = "min" if parts[-1].endswith("_min") else "max"
        found.setdefault(owner[len(WRAPPER_PREFIX):], {"min": [], "max": []})[side].append(
            variable)
    return found


def batch_ranges(float_model, layer_names, images, batch_size):
    """{layer: (mean batch min, mean batch max)} of the outputs of ``layer_names`` in
    ``float_model`` over ``images``, each batch's range widened to include 0 (TF-MOT's)."""
    keras = backend.keras

    outputs = [float_model.get_layer(name).output for name in layer_names]
    probe = keras.Model(float_model.inputs, outputs)
    lows = {name: [] for name in layer_names}
    highs = {name: [] for name in layer_names}
    saved = float_model.get_weights()  # training mode moves BN's statistics: put them back
    try:
        for start in range(0, len(images), batch_size):
            values = probe(images[start:start + batch_size].astype(np.float32), training=True)
            if len(layer_names) == 1:
                values = [values]
            for name, value in zip(layer_names, values):
                value = np.asarray(value)
                lows[name].append(min(float(value.min()), 0.0))
                highs[name].append(max(float(value.max()), 0.0))
    finally:
        float_model.set_weights(saved)
    return {name: (float(np.mean(lows[name])), float(np.mean(highs[name])))
            for name in layer_names}


def calibrate(qat_model, float_model, images, batch_size):
    """Set ``qat_model``'s moving-average activation ranges from ``images`` run through
    ``float_model`` (see the module docstring). Returns how many ranges were set."""
    variables = _range_variables(qat_model)
    names = [name for name in variables if name in {layer.name for layer in float_model.layers}]
    if not names:
        return 0
    ranges = batch_ranges(float_model, names, images, batch_size)
    count = 0
    for name in names:
        low, high = ranges[name]
        if not (np.isfinite(low) and np.isfinite(high) and high - low > 1e-6):
            continue  # TF-MOT's [-6, 6] start
        for variable in variables[name]["min"]:
            variable.assign(np.full(variable.shape, low, np.float32))
            count += 1
        for variable in variables[name]["max"]:
            variable.assign(np.full(variable.shape, high, np.float32))
    return count
