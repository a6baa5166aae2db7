"""Repairs before post-training quantization, by name: what ``--repair`` takes.

| name | what it does | float outputs | module |
| --- | --- | --- | --- |
| ``cle`` | cross-layer equalization (Nagel et al., ICCV 2019) | unchanged | ``equalization`` |
| ``bias_absorption`` | moves ReLU inputs' positive floor into the next layer | unchanged on the calibration images | ``equalization`` |
| ``adaround`` | learned rounding of the weights (Nagel et al., ICML 2020) | weights on the int grid | ``adaround`` |
| ``bias_correction`` | removes the mean shift rounding causes | shifted where rounding shifts | ``bias_correction`` |

They run in that order whatever order ``--repair`` names them in, on a copy of the float model
(``repaired``), with calibration images from the training split where one needs data.
AdaRound here rounds to the scheme's 8-bit grid (per channel or per tensor, step
``max|w| / 127`` as the converter computes it), so the exported file stores its codes;
4-bit weights are the analyzer's (``fnet_tf.analysis.repair_effect``).
"""
import dataclasses

from fnet_tf.core import backend
from fnet_tf.core.errors import UserError
from fnet_tf.quantization import adaround, bias_correction, equalization
from fnet_tf.quantization.repair_report import RepairReport


@dataclasses.dataclass(frozen=True)
class Context:
    """What a repair may need besides the model."""

    images: object = None  # calibration images (training split), as the model takes them
    per_channel: bool = True  # the scheme's weight granularity
    bits: int = 8
    rounding: adaround.AdaRoundSettings = adaround.AdaRoundSettings()
    progress: object = None


def _cle(model, context, report):
    equalization.equalize(model, report=report)


def _bias_absorption(model, context, report):
    equalization.absorb_biases(model, context.images, report=report)


def _adaround(model, context, report):
    report.rounding.update(adaround.quantize_weights(
        model, context.bits, per_channel=context.per_channel, method="adaround",
        images=context.images, settings=context.rounding, progress=context.progress))


def _bias_correction(model, context, report):
    bias_correction.correct_bias(model, context.images, per_channel=context.per_channel,
                                 report=report)


@dataclasses.dataclass(frozen=True)
class Repair:
    name: str
    apply: object  # (model, Context, RepairReport) -> None, in place
    needs_images: bool


REPAIRS = {r.name: r for r in (
    Repair("cle", _cle, False),
    Repair("bias_absorption", _bias_absorption, True),
    Repair("adaround", _adaround, True),
    Repair("bias_correction", _bias_correction, True),
)}


def parse_repairs(text):
    """'cle,bias_correction' -> ('cle', 'bias_correction') in the order they run; UserError
    names a bad one."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    for name in names:
        if name not in REPAIRS:
            raise UserError(f"--repair {name!r} is not one of {', '.join(REPAIRS)}")
    return tuple(n for n in REPAIRS if n in names)


def repaired(model, repairs, calibration_images=None, per_channel=True, context=None):
    """(a repaired copy of ``model``, its report). ``repairs`` from ``parse_repairs``."""
    context = context or Context(images=calibration_images, per_channel=per_channel)
    for name in repairs:
        if REPAIRS[name].needs_images and context.images is None:
            raise UserError(f"{name.replace('_', ' ')} needs calibration images (the training "
                            f"split)")
    copy = backend.keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    report = RepairReport()
    for name in REPAIRS:
        if name in repairs:
            REPAIRS[name].apply(copy, context, report)
    return copy, report
