"""Loading the models a run directory (or a user's file) holds, with one-line errors.

A run stores ``model_float.keras`` and, after QAT, ``model_qat.weights.h5``: a QAT model does
not survive the ``.keras`` format (TF-MOT's quantize_layer variables do not reload), so it is
rebuilt from the float model with the scheme recorded in ``run.json`` and its weights loaded.
"""
import os

from fnet_tf.arch import grouped
from fnet_tf.core import backend
from fnet_tf.core.errors import UserError, first_line
from fnet_tf.quantization.schemes import get_scheme
from fnet_tf.run import keras3_models, model_safety
from fnet_tf.run.keras3_translate import to_tf_keras
from fnet_tf.run.rundir import RunDir

FLOAT_MODEL = "model_float.keras"
QAT_WEIGHTS = "model_qat.weights.h5"
KERAS_EXTENSIONS = (".keras", ".h5", ".hdf5")


def is_run_dir(path):
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, RunDir.CONFIG)) or
                                    os.path.isfile(os.path.join(path, RunDir.MANIFEST)))


def _check_model_path(path, trust_code):

    is_saved_model = os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))
    if not os.path.exists(path):
        raise UserError(f"model {path!r} does not exist: pass a run directory, a .keras/.h5 file "
                        f"or a SavedModel directory")
    if not (is_saved_model or path.lower().endswith(KERAS_EXTENSIONS)):
        raise UserError(f"{path!r} is not a run directory, a .keras/.h5 file or a SavedModel "
                        f"directory")
    if not trust_code:
        model_safety.check_model_file(path)


def load_model(path, trust_code=False):
    """The model in a user's file for export and evaluation: a tf_keras model, or a
    ``keras3_models.ForeignModel`` for a file Keras 3 wrote or a SavedModel without Keras
    metadata (``model.export()``). Inspected first, as ``load_keras_model``."""

    _check_model_path(path, trust_code)
    kind = keras3_models.file_kind(path)
    if kind == keras3_models.KERAS3:
        return keras3_models.wrap_keras3(keras3_models.load_keras3(path, trust_code), path)
    if kind == keras3_models.SAVED_MODEL:
        return keras3_models.load_saved_model(path)
    return _load_tf_keras(path, trust_code)


def load_keras_model(path, trust_code=False):
    """A tf_keras model from a ``.keras``/``.h5`` file or a SavedModel directory.

    The file is inspected first (``fnet_tf.run.model_safety``): one holding Python code or file
    ops is refused unless ``trust_code`` (``--trust_model_code``), which also turns off
    Keras' safe mode. A file Keras 3 wrote is loaded with Keras 3 and translated into its
    tf_keras twin (``fnet_tf.run.keras3_translate``), so QAT and the analyses can use it.
    """

    _check_model_path(path, trust_code)
    kind = keras3_models.file_kind(path)
    if kind == keras3_models.KERAS3:

        return to_tf_keras(keras3_models.load_keras3(path, trust_code), path)
    if kind == keras3_models.SAVED_MODEL:
        raise UserError(f"{path} is a SavedModel without Keras layers (model.export() writes "
                        f"one): it can be exported with post-training quantization, but QAT "
                        f"and the layer analyses need the Keras file, model.save('m.keras')")
    return _load_tf_keras(path, trust_code)


def _load_tf_keras(path, trust_code):
    keras = backend.keras

    grouped.keras_classes()  # registered with Keras before a file that names them loads
    try:
        return keras.models.load_model(path, compile=False, safe_mode=not trust_code)
    except Exception as e:  # noqa: BLE001  (Keras raises many types for a bad file)
        first = first_line(e)
        if "safe_mode" in str(e):
            raise UserError(f"model {path} is unsafe to load: Keras' safe mode refused it "
                            f"({first[:100]}); {model_safety.TRUST_HINT}") from None
        raise UserError(f"cannot load Keras model {path!r} ({first}): the file is corrupt or not "
                        f"a Keras model; re-export or retrain it") from None


def float_model(run, trust_code=False):
    if not run.verified("float"):
        raise UserError(f"no trained float model in {run.path}: run python -m fnet_tf.train "
                        f"--run_dir {run.path} first")
    return load_keras_model(run.file(FLOAT_MODEL), trust_code)


def qat_scheme_name(run):
    entry = run.manifest()["steps"].get("qat")
    return entry.get("scheme") if entry else None


def qat_model(run, trust_code=False):
    """The QAT Keras model of ``run``: its float model, wrapped by the recorded scheme,
    with the QAT weights."""

    if not run.verified("qat"):
        raise UserError(f"no QAT model in {run.path}: run python -m fnet_tf.train --run_dir "
                        f"{run.path} --qat_epochs N first")
    entry = run.manifest()["steps"]["qat"]
    scheme = get_scheme(entry.get("scheme")).configured(**entry.get("options", {}))
    model = scheme.quantize(float_model(run, trust_code))
    try:
        model.load_weights(run.file(QAT_WEIGHTS))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"QAT weights {run.file(QAT_WEIGHTS)} do not load ({str(e)[:120]}): "
                        f"delete checkpoints/qat and {QAT_WEIGHTS} and run QAT again") from None
    return model, scheme
