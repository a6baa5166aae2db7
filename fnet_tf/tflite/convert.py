"""Keras model -> fully-integer TFLite flatbuffer, verified with the LiteRT interpreter.

The int8 file's input is int8 with the quantization the converter chose from calibration on
raw pixels 0..255: scale 1, zero point -128, i.e. ``pixel - 128``, as the MLPerf Tiny
reference does. The output is int8 logits. Class names travel inside the file as an appended
zip holding ``labels.txt`` (the TFLite Support convention for associated files), which the
interpreter ignores and ``export/run_tflite.py`` reads with the standard library.
"""
import collections
import contextlib
import io
import sys
import time
import warnings
import zipfile

import numpy as np

from fnet_tf.core import backend
from fnet_tf.core.errors import UserError
from fnet_tf.device.run_tflite import XNNPACK_NOTICE, stderr_filtered

LABELS_FILE = "labels.txt"
ALLOWED_DTYPES = (np.int8, np.int32)  # int32: biases and shape/axis operands


def float_reference_name(int8_name):
    """The float32 file's name beside an INT8 file: ``x_int8.tflite`` -> ``x_float32.tflite``
    (``model_int8.tflite`` -> ``model_float32.tflite``), any other ``y.tflite`` ->
    ``y_float32.tflite``. The exporter writes it, the analyzer looks for it."""
    stem = int8_name[:-len(".tflite")] if int8_name.endswith(".tflite") else int8_name
    if stem.endswith("_int8"):
        stem = stem[:-len("_int8")]
    return f"{stem}_float32.tflite"


def _first_line(error):
    text = str(error).strip()
    lines = [line for line in text.splitlines() if "error" in line.lower()] or text.splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


def with_input_transform(model, scale, offset):
    """Wrap a foreign model that expects ``pixel * scale + offset`` so it takes raw pixels."""
    if hasattr(model, "with_input_transform"):  # a keras3_models.ForeignModel
        return model.with_input_transform(scale, offset)
    keras = backend.keras

    inputs = keras.Input(model.input_shape[1:], name="image")
    x = keras.layers.Rescaling(scale, offset, name="input_transform")(inputs)
    return keras.Model(inputs, model(x), name=f"{model.name}_raw_pixels")


def _converter(model):
    """The TFLite converter of a tf_keras model, or of a ``keras3_models.ForeignModel`` (a Keras
    3 model or a bare SavedModel: its inference call as a concrete function)."""
    tf = backend.tf

    if hasattr(model, "converter"):
        return model.converter()
    return tf.lite.TFLiteConverter.from_keras_model(model)


# printed on every full-integer conversion, and harmless here: the input statistics come from
# the representative dataset (a Python warning), and the quantizer's settings (a C++ line)
CONVERTER_WARNING = "Statistics for quantized inputs were expected"
CONVERTER_NOTICE = "fully_quantize: "


@contextlib.contextmanager
def _converter_notices_filtered():

    with warnings.catch_warnings(), stderr_filtered([CONVERTER_NOTICE]):
        warnings.filterwarnings("ignore", message=CONVERTER_WARNING)
        yield


def convert_int8(model, representative, scheme):
    """Full-integer conversion. Ops without an int8 kernel fall back to float here, so that
    ``inspect`` can name them instead of the converter failing with a stack trace."""
    tf = backend.tf

    converter = _converter(scheme.export_form(model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    scheme.configure_converter(converter)
    try:
        with _converter_notices_filtered():
            return converter.convert()
    except Exception as e:  # noqa: BLE001  (the converter raises many types)
        hint = getattr(model, "conversion_hint", None)
        if hint:
            raise UserError(f"the TFLite converter rejected the model: {hint}") from None
        raise UserError(f"the TFLite converter rejected the model ({_first_line(e)}): it uses an "
                        f"op with no TFLite builtin kernel") from None


def convert_float32(model):
    try:
        return _converter(model).convert()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"the TFLite converter rejected the model ({_first_line(e)})") from None


def interpreter(content, delegates=False, num_threads=1, preserve_all_tensors=False):
    """A LiteRT interpreter over ``content``; without delegates it shows the original ops."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = (OpResolverType.AUTO if delegates
                else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)

    try:
        with stderr_filtered([XNNPACK_NOTICE]):
            it = Interpreter(model_content=bytes(content), num_threads=num_threads,
                             experimental_op_resolver_type=resolver,
                             experimental_preserve_all_tensors=preserve_all_tensors)
            it.allocate_tensors()
        # Read every name and detail now: a damaged file can hold names that are not UTF-8,
        # which LiteRT would only trip over later, deep inside an analysis.
        it.get_input_details(), it.get_output_details(), it.get_tensor_details()
        if hasattr(it, "_get_ops_details"):
            it._get_ops_details()
    except (ValueError, RuntimeError) as e:  # UnicodeDecodeError is a ValueError
        raise UserError(f"not a valid .tflite model ({_first_line(e)}): re-export it") from None
    return it


def inspect(content):
    """Ops, I/O quantization and the int8 problems of a flatbuffer (its params, MACs and
    memory are ``fnet_tf.tflite.measure.graph_stats``)."""
    it = interpreter(content)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    inputs, outputs = it.get_input_details(), it.get_output_details()
    problems = []
    for d in inputs + outputs:
        if d["dtype"] != np.int8:
            problems.append(f"model {'input' if d in inputs else 'output'} {d['name']} is "
                            f"{np.dtype(d['dtype']).name}, not int8")
    for op in ops:
        name = op["op_name"]
        if name.startswith("Flex") or name == "CUSTOM" or name.startswith("Custom"):
            problems.append(f"op {op['index']} {name} is not a builtin op")
            continue
        dtypes = {np.dtype(tensors[i]["dtype"]).name for i in list(op["inputs"]) + list(op["outputs"])
                  if i >= 0}
        bad = sorted(d for d in dtypes if np.dtype(d) not in [np.dtype(a) for a in ALLOWED_DTYPES])
        if bad:
            problems.append(f"op {op['index']} {name} has {'/'.join(bad)} tensors")
    scale, zero = inputs[0]["quantization"]
    return {
        "ops": dict(collections.Counter(op["op_name"] for op in ops)),
        "input": {"dtype": np.dtype(inputs[0]["dtype"]).name,
                  "shape": [int(s) for s in inputs[0]["shape"]],
                  "scale": float(scale), "zero_point": int(zero)},
        "output": {"dtype": np.dtype(outputs[0]["dtype"]).name,
                   "shape": [int(s) for s in outputs[0]["shape"]]},
        "problems": problems,
    }


def attach_labels(content, classes):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(LABELS_FILE, "\n".join(classes) + "\n")
    return bytes(content) + buf.getvalue()


def quantize_input(images, detail):
    """Raw pixels -> the model's input tensor, with the input quantization read from the model."""
    images = np.asarray(images, np.float32)
    if detail["dtype"] == np.float32:
        return images
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(images / scale + zero), info.min, info.max).astype(detail["dtype"])


def predict(content, images, num_threads=1, progress=False):
    """Dequantized outputs of the flatbuffer on raw-pixel ``images`` (one invoke per image);
    ``progress`` prints a line every 2,000 images to stderr."""
    it = interpreter(content, delegates=True, num_threads=num_threads)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = out["quantization"]
    results, started = [], time.time()
    for i, image in enumerate(images):
        it.set_tensor(inp["index"], quantize_input(image[None], inp))
        it.invoke()
        raw = it.get_tensor(out["index"]).astype(np.float32)
        results.append((raw - zero) * scale if scale else raw)
        if progress and (i + 1) % 2000 == 0:
            print(f"  evaluated {i + 1}/{len(images)} images ({time.time() - started:.0f}s)",
                  file=sys.stderr, flush=True)
    return np.concatenate(results)
