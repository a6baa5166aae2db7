"""Users' Keras 3 models: which Keras wrote a file, loading it with that Keras, and the one
interface the exporter and analyzer need from a model that is not fnet_tf's tf_keras.

``pip install tensorflow`` brings Keras 3, so ``model.save("m.keras")``, ``model.save("m.h5")``
and ``model.export("dir")`` write Keras 3 files, which tf_keras (fnet_tf's Keras, the one TF-MOT
needs) cannot load. Such a file is inspected like any model file (``fnet_tf.run.model_safety``),
then loaded here with Keras 3 (with the TensorFlow backend, in this process) and wrapped in a
``ForeignModel``; a ``model.export()`` SavedModel, which holds no Keras config at all, is loaded
with ``tf.saved_model.load`` after the same graph inspection and wrapped the same way.

A ``ForeignModel`` predicts in inference mode (random augmentation layers are the identity,
preprocessing layers such as ``Rescaling`` and ``Normalization`` run) and gives the TFLite
converter a concrete function of that call. QAT needs a tf_keras model: see
``fnet_tf.run.keras3_translate``.
"""
import json
import os
import zipfile

import numpy as np

from fnet_tf.core import backend
from fnet_tf.core.errors import UserError, first_line

KERAS3 = "keras3"          # a .keras/.h5 file that Keras 3 wrote
TF_KERAS = "tf_keras"      # a file that tf_keras (Keras 2) wrote
SAVED_MODEL = "saved_model"  # a SavedModel without Keras metadata (Keras 3's model.export())
MAX_METADATA_BYTES = 1 << 20


def _major(version):
    text = str(version or "").strip()
    return int(text.split(".")[0]) if text.split(".")[0].isdigit() else None


def file_kind(path):
    """KERAS3, TF_KERAS or SAVED_MODEL for a model file or SavedModel directory, read from its
    metadata with bounded reads (nothing is deserialized)."""
    if os.path.isdir(path):
        return TF_KERAS if os.path.isfile(os.path.join(path, "keras_metadata.pb")) else SAVED_MODEL
    lower = path.lower()
    version = None
    if lower.endswith(".keras"):
        try:
            with zipfile.ZipFile(path) as z:
                info = z.getinfo("metadata.json")
                if info.file_size <= MAX_METADATA_BYTES:
                    with z.open(info) as f:
                        version = json.loads(f.read(MAX_METADATA_BYTES + 1)).get("keras_version")
        except (KeyError, zipfile.BadZipFile, OSError, ValueError, AttributeError):
            version = None  # the safety inspection names what is wrong with the file
    elif lower.endswith((".h5", ".hdf5")):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                version = f.attrs.get("keras_version")
        except (OSError, ValueError):
            version = None
        if isinstance(version, bytes):
            version = version.decode("utf-8", "replace")
    return KERAS3 if (_major(version) or 2) >= 3 else TF_KERAS


def load_keras3(path, trust_code=False):
    """The Keras 3 model in a ``.keras``/``.h5`` file Keras 3 wrote (inspect it first)."""
    import keras as keras3

    try:
        return keras3.saving.load_model(path, compile=False, safe_mode=not trust_code)
    except Exception as e:  # noqa: BLE001  (Keras raises many types for a bad file)
        raise UserError(f"cannot load Keras 3 model {path!r} ({first_line(e)}): the file is "
                        f"corrupt or needs code that is not in it; re-save it with "
                        f"model.save()") from None


class ForeignModel:
    """A model fnet_tf did not build (Keras 3, or a bare SavedModel) behind the interface the
    exporter uses: ``input_shape``, ``output_shape``, ``name``, ``predict`` and ``converter``.

    ``fn`` maps a float32 batch of raw pixels (after ``input_scale``/``input_offset``, see
    ``with_input_transform``) to logits in inference mode. ``owner`` holds the variables ``fn``
    reads (the Keras 3 model, or the loaded SavedModel), kept alive here."""

    def __init__(self, fn, input_shape, output_shape, name, owner):
        self.fn, self.name, self.owner = fn, name, owner
        self.input_shape, self.output_shape = tuple(input_shape), tuple(output_shape)
        self.conversion_hint = None  # what to say when the TFLite converter refuses it

    def predict(self, images, batch_size=256, verbose=0):
        tf = backend.tf

        out = [np.asarray(self.fn(tf.constant(np.asarray(images[i:i + batch_size], np.float32))))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.output_shape[-1]), np.float32)

    def concrete_function(self):
        tf = backend.tf

        spec = tf.TensorSpec((1, *self.input_shape[1:]), tf.float32, name="image")
        return tf.function(lambda images: self.fn(images)).get_concrete_function(spec)

    def converter(self):
        """A TFLite converter over the inference call, batch 1 (as on the device). Its variables
        are frozen by the converter's older path: handing it ``owner`` (the newer one) left
        READ_VARIABLE ops in MobileNetV3Small, which failed during calibration."""
        tf = backend.tf

        return tf.lite.TFLiteConverter.from_concrete_functions([self.concrete_function()])

    def with_input_transform(self, scale, offset):
        """The model taking raw pixels, for one that expects ``pixel * scale + offset``."""
        fn = self.fn
        return ForeignModel(lambda images: fn(images * scale + offset), self.input_shape,
                            self.output_shape, f"{self.name}_raw_pixels", self.owner)


def _check_image_classifier(path, input_shape, output_shape):
    if len(input_shape) != 4 or input_shape[-1] not in (1, 3) or None in input_shape[1:]:
        raise UserError(f"model {path} takes input {tuple(input_shape)}, not a batch of "
                        f"fixed-size images (None, H, W, 3): give the Input layer a fixed "
                        f"height and width, e.g. keras.Input((96, 96, 3))")
    if len(output_shape) != 2:
        raise UserError(f"model {path} outputs {tuple(output_shape)}, not one vector of class "
                        f"scores per image (None, classes)")


def wrap_keras3(model, path):
    """A ForeignModel over a loaded Keras 3 model (one image input, one output)."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(f"model {path} has {len(model.inputs)} inputs and {len(model.outputs)} "
                        f"outputs: fnet_tf exports image classifiers with one of each")
    input_shape = tuple(model.inputs[0].shape)
    output_shape = tuple(model.outputs[0].shape)
    _check_image_classifier(path, input_shape, output_shape)
    return ForeignModel(lambda images: model(images, training=False), input_shape,
                        output_shape, model.name, model)


def load_saved_model(path):
    """A ForeignModel over a SavedModel without Keras metadata (``model.export()``): its
    ``serve`` endpoint, or its one serving signature. Inspect the graph first."""
    tf = backend.tf

    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot load SavedModel {path!r} ({first_line(e)}): it is corrupt; "
                        f"re-export it") from None
    serve = getattr(loaded, "serve", None)
    if serve is not None and hasattr(serve, "concrete_functions") and serve.concrete_functions:
        concrete = serve.concrete_functions[0]
        specs = [s for s in concrete.structured_input_signature[0]]
        if len(specs) != 1:
            raise UserError(f"SavedModel {path}: its serve endpoint takes {len(specs)} "
                            f"arguments, not one batch of images")
        shape = tuple(specs[0].shape)

        def fn(images):
            return serve(images)
    else:
        signatures = dict(getattr(loaded, "signatures", {}))
        if len(signatures) != 1:
            raise UserError(f"SavedModel {path} has no 'serve' endpoint and "
                            f"{len(signatures)} signatures: export it with model.export()")
        signature = next(iter(signatures.values()))
        inputs = signature.structured_input_signature[1]
        outputs = signature.structured_outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"SavedModel {path}: its signature has {len(inputs)} inputs and "
                            f"{len(outputs)} outputs, not one of each")
        (key, spec), = inputs.items()
        out_key = next(iter(outputs))
        shape = tuple(spec.shape)

        def fn(images):
            return signature(**{key: images})[out_key]
    traced = tf.function(fn).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    graph = traced.graph.as_graph_def()
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function
                                         for n in f.node_def}
    random_ops = sorted(op for op in ops if "Random" in op)
    sample = tf.zeros((1, *[d or 1 for d in shape[1:]]), tf.float32)
    try:
        output_shape = (None, *tuple(fn(sample).shape)[1:])
    except Exception as e:  # noqa: BLE001
        raise UserError(f"SavedModel {path} cannot be called on a float32 image batch of shape "
                        f"{tuple(shape)} ({first_line(e)})") from None
    shape = (None, *shape[1:])
    _check_image_classifier(path, shape, output_shape)
    name = os.path.basename(os.path.normpath(path))
    model = ForeignModel(fn, shape, output_shape, name, loaded)
    if random_ops:  # random augmentation layers, kept in the program by model.export()
        model.conversion_hint = (f"the SavedModel holds random ops ({', '.join(random_ops[:2])}"
                                 f"): a SavedModel keeps its augmentation layers (RandomFlip, "
                                 f"...); export the .keras file instead, where they are the "
                                 f"identity at inference")
    return model
