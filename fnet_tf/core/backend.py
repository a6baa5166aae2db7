"""The one place that imports Keras.

Every module that builds or trains a model takes Keras from here, so that no code path can
build a Keras 3 model by accident (TF-MOT's ``quantize_model`` rejects those).
"""
import fnet_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from fnet_tf.device.run_tflite import stderr_filtered

# TensorFlow's C++ start-up lines print before its logging is initialised, so
# TF_CPP_MIN_LOG_LEVEL does not reach them: a oneDNN notice, and on a machine without a CUDA
# driver "no CUDA driver" (INFO) and the failed cuInit probe that follows from it (ERROR); a
# machine with a working driver prints neither. They are filtered out of stderr while
# TensorFlow loads and probes its devices; any other line passes through.
KNOWN_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
)


LOADED = ("tf", "keras")  # the names this module gives on first use


def _load():
    with stderr_filtered(KNOWN_STARTUP_NOISE):
        import tensorflow as tf
        import tf_keras as keras

        tf.config.list_physical_devices()  # the CUDA probe runs here, inside the filter
    globals().update(tf=tf, keras=keras)


def __getattr__(name):
    """``backend.tf`` and ``backend.keras`` (PEP 562): TensorFlow and tf_keras load the first
    time either is read, so a module names its Keras needs at its top (``from fnet_tf.core
    import backend``) and still imports in a blink; a command answers a bad flag before
    TensorFlow loads."""
    if name in LOADED:
        _load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def keras_classes(module_globals, names, define):
    """A module ``__getattr__`` for Keras classes made on first use: ``define(keras)`` returns
    ``{name: class}`` for ``names``, which then become the module's own attributes (made once,
    so ``isinstance`` and Keras' registry see one class each), without TensorFlow loading
    when the module is imported. Also returns ``made()``, which makes them and returns that
    dict, for the module's own code."""
    def made():
        if names[0] not in module_globals:
            module_globals.update(define(__getattr__("keras")))
        return {n: module_globals[n] for n in names}

    def module_getattr(name):
        if name in names:
            return made()[name]
        raise AttributeError(f"module {module_globals['__name__']!r} has no attribute {name!r}")

    return module_getattr, made


def configure_threads(threads):
    """Limit TensorFlow to ``threads`` CPU threads (0 or None: TensorFlow's default).

    Must run before TensorFlow executes its first op; afterwards the setting cannot change.
    """
    if not threads:
        return
    tf = __getattr__("tf")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:  # already initialised (e.g. a second call in the same process)
        pass
