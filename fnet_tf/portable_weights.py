"""Weights by layer name: the format that moves a float model between Keras 3 and tf_keras.

A model trained by ``fnet_tf.keras3_float`` (Keras 3, e.g. on JAX) is saved as an ``.npz`` of
``<layer name>/<index>`` arrays, each layer's ``get_weights()`` in order; ``fnet_tf.train
--init_from DIR`` loads it into the tf_keras model of the same spec. Both Keras versions order
a layer's weights the same way for the layers specs use (Conv2D: kernel, bias; BN: gamma, beta,
moving mean, moving variance; Dense: kernel, bias), which a test checks on every model.
"""
import zipfile

import numpy as np

from fnet_tf.errors import UserError

WEIGHTS = "float_weights.npz"
RESULT = "keras3_result.json"
MAX_WEIGHTS_BYTES = 1 << 30  # declared array bytes; fnet_tf's models hold a few MB


def read_weights(path, max_bytes=MAX_WEIGHTS_BYTES):
    """The arrays of a weights ``.npz`` (from another machine: untrusted), each array's
    declared size checked from its header before anything is decompressed; no pickles."""
    try:
        with zipfile.ZipFile(path) as z:
            total = 0
            for info in z.infolist():
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(f))
                total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if total > max_bytes:
                    raise UserError(f"{path} declares over {max_bytes >> 20} MB of weights, the "
                                    f"limit for a model: refusing to decompress it")
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError,
            RuntimeError) as e:
        raise UserError(f"cannot read {path} ({e.__class__.__name__}): the file is corrupt; "
                        f"train it again") from None


def weights_by_layer(model):
    """{'<layer>/<i>': array} for every layer with weights, in each layer's own order."""
    return {f"{layer.name}/{i}": np.asarray(w)
            for layer in model.layers for i, w in enumerate(layer.get_weights())}


def load_weights_by_layer(model, arrays):
    """Set ``model``'s weights from ``weights_by_layer`` output; every layer must be there with
    the same shapes (a different spec is an error naming the first mismatch)."""
    for layer in model.layers:
        current = layer.get_weights()
        if not current:
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
