"""The one place that imports Keras.

Every module that builds or trains a model takes Keras from here, so that no code path can
build a Keras 3 model by accident (TF-MOT's ``quantize_model`` rejects those).
"""
import fnet_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import tensorflow as tf
import tf_keras as keras

__all__ = ["tf", "keras", "configure_threads"]


def configure_threads(threads):
    """Limit TensorFlow to ``threads`` CPU threads (0 or None: TensorFlow's default).

    Must run before TensorFlow executes its first op; afterwards the setting cannot change.
    """
    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:  # already initialised (e.g. a second call in the same process)
        pass
