"""fnet_tf: efficient CNNs for CIFAR-10 that run fully in INT8 with the LiteRT interpreter.

Importing the package sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is loaded, so that
``tf.keras`` resolves to Keras 2 (``tf_keras``), which is what TF Model Optimization needs.
Nothing else happens at import time: TensorFlow itself is loaded by the first module that
needs it (``fnet_tf.core.backend``).
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter off the CLIs

__version__ = "0.1.0"

_LAZY = {
    "create_model": "fnet_tf.arch.architectures",
    "list_models": "fnet_tf.arch.architectures",
    "model_spec": "fnet_tf.arch.architectures",
    "build_model": "fnet_tf.arch.spec",
}


def __getattr__(name):  # PEP 562: the public API without importing TensorFlow up front
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fnet_tf' has no attribute {name!r}")
