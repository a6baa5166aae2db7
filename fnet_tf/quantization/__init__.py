"""Quantization schemes behind one registry (``--qat_scheme NAME`` / ``--scheme NAME``).

A scheme wraps a finished float Keras model (model code never imports TF-MOT) and says how the
TFLite converter should quantize it. Each scheme is one module: a class with a ``name``,
``quantize(model)`` (float model -> QAT model; the model itself for post-training-only
schemes), ``scope()`` (custom objects to load its models) and ``configure_converter``.
"""
from fnet_tf.errors import UserError

_SCHEMES = {}


def register_scheme(cls):
    if cls.name in _SCHEMES:
        raise ValueError(f"quantization scheme {cls.name!r} registered twice")
    _SCHEMES[cls.name] = cls()
    return cls


def list_schemes():
    return sorted(_SCHEMES)


def get_scheme(name):
    if name not in _SCHEMES:
        raise UserError(f"unknown quantization scheme {name!r}: choose one of "
                        f"{', '.join(list_schemes())}")
    return _SCHEMES[name]


# Importing the scheme modules registers them (they load TF-MOT only when used).
from fnet_tf.quantization import dbq, ptq, ternary_hybrid, tfmot_int8  # noqa: E402,F401
