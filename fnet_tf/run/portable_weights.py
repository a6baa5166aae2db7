"""Weights by layer name: the format that moves a float model between Keras 3 and tf_keras.

A model trained by ``fnet_tf.keras3_float`` (Keras 3, e.g. on JAX) is saved as an ``.npz`` of
``<layer name>/<index>`` arrays, each layer's ``get_weights()`` in order; ``fnet_tf.train
--init_from DIR`` loads it into the tf_keras model of the same spec. Both Keras versions order
a layer's weights the same way for the layers specs use (Conv2D: kernel, bias; BN: gamma, beta,
moving mean, moving variance; Dense: kernel, bias), which a test checks on every model.
"""
import os
import zipfile

import numpy as np

from fnet_tf.core import fileio
from fnet_tf.core.errors import UserError
from fnet_tf.device.run_tflite import RunError, array_headers, declared_bytes

WEIGHTS = "float_weights.npz"
RESULT = "keras3_result.json"
MAX_WEIGHTS_BYTES = 1 << 30  # declared array bytes; fnet_tf's models hold a few MB


def read_result(folder):
    """The ``keras3_result.json`` of a Keras 3 ``--out`` folder (possibly someone else's): read
    with fileio's size bound and checked to name a model and level, else a one-line UserError."""
    path = os.path.join(folder, RESULT)
    result = fileio.read_json(path)
    if not (isinstance(result, dict) and isinstance(result.get("model"), str)
            and isinstance(result.get("level"), (int, str, list))
            and not isinstance(result.get("level"), bool)
            and isinstance(result.get("width", 1.0), (int, float, str, list))):
        raise UserError(f"{path} is malformed (no 'model' string and 'level'): it was not "
                        f"written by fnet_tf.keras3_float; train it again")
    return result


def read_weights(path, max_bytes=MAX_WEIGHTS_BYTES, remedy="train it again"):
    """The arrays of a weights ``.npz`` (from another machine: untrusted), their declared sizes
    checked from the headers before anything is decompressed; no pickles. ``remedy``: what a
    corrupt file's error tells the user to do."""

    try:
        total = sum(declared_bytes(shape, dtype) for _, shape, dtype in array_headers(path))
    except RunError as e:
        raise UserError(f"cannot read {path}: {e}; the file is corrupt: {remedy}") from None
    if total > max_bytes:
        raise UserError(f"{path} declares {total / 2**20:,.0f} MB of weights, over the "
                        f"{max_bytes >> 20} MB limit for a model: refusing to decompress it")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {path} ({e.__class__.__name__}): the file is corrupt; "
                        f"{remedy}") from None


def weights_by_layer(model):
    """{'<layer>/<i>': array} for every layer with weights, in each layer's own order."""
    return {f"{layer.name}/{i}": np.asarray(w)
            for layer in model.layers for i, w in enumerate(layer.get_weights())}


def load_weights_by_layer(model, arrays, skip=()):
    """Set ``model``'s weights from ``weights_by_layer`` output; every layer (but those named
    in ``skip``, which keep their own) must be there with the same shapes (a different spec is
    an error naming the first mismatch)."""
    for layer in model.layers:
        current = layer.get_weights()
        if not current or layer.name in skip:
            continue
        values = []
        for i, w in enumerate(current):
            key = f"{layer.name}/{i}"
            if key not in arrays:
                raise UserError(f"imported weights lack {key}: they were trained for another model")
            if arrays[key].shape != w.shape:
                raise UserError(f"imported weight {key} has shape {arrays[key].shape}, the model "
                                f"wants {w.shape}: they were trained for another model/level/width")
            values.append(arrays[key])
        layer.set_weights(values)
    return model
