"""Quantization schemes behind one registry (``--qat_scheme NAME`` / ``--scheme NAME``).

A scheme wraps a finished float Keras model (model code never imports TF-MOT) and says how the
TFLite converter should quantize it. Each scheme is one module: a class with a ``name``,
``quantize(model)`` (float model -> QAT model; the model itself for post-training-only
schemes), ``scope()`` (custom objects to load its models) and ``configure_converter``.

The registry is ``registry``; ``schemes`` registers every scheme module and is what callers
import (``schemes.get_scheme(name)``).
"""
