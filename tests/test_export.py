"""export/to_tflite.py and export/run_tflite.py, end to end."""
import json
import os

import numpy as np
import pytest

from conftest import REPO, last_line, run_module
from fnet_tf.tflite import convert as export

TO_TFLITE = os.path.join(REPO, "export", "to_tflite.py")
RUN_TFLITE = os.path.join(REPO, "export", "run_tflite.py")
PEER = os.path.join(REPO, "..", "shared", "peers", "mlperf-tiny-ic", "resnet8_int8.tflite")


@pytest.fixture(scope="module")
def exported(qat_run):
    result = run_module([TO_TFLITE, qat_run, "--check_images", "64", "--float32"])
    assert result.returncode == 0, result.stderr[-3000:]
    return os.path.join(qat_run, "model_int8.tflite"), result.stdout


def test_qat_run_exports_a_verified_int8_file(exported, qat_run):
    path, stdout = exported
    with open(path, "rb") as f:
        content = f.read()
    report = export.inspect(content)
    assert report["problems"] == []
    assert report["input"]["dtype"] == "int8" and report["output"]["dtype"] == "int8"
    assert (report["input"]["scale"], report["input"]["zero_point"]) == (pytest.approx(1.0, rel=0.02), -128)
    assert not any(op.startswith("Flex") for op in report["ops"])
    assert os.path.isfile(os.path.join(qat_run, "model_float32.tflite"))
    manifest = json.load(open(os.path.join(qat_run, "run.json")))
    assert manifest["steps"]["export:model_int8.tflite"]["scheme"] == "int8"
    assert not [n for n in os.listdir(qat_run) if n.startswith(".")]  # no temp files left


def test_int8_file_agrees_with_the_qat_keras_model(exported, qat_run, tiny_archive):
    from fnet_tf.run import artifacts
    from fnet_tf.data import datasets as data
    from fnet_tf.run.rundir import RunDir

    path, stdout = exported
    model, _ = artifacts.qat_model(RunDir(qat_run))
    images = data.load(tiny_archive).test.images[:64]
    keras_top1 = np.argmax(model.predict(images.astype(np.float32), verbose=0), -1)
    tflite_top1 = np.argmax(export.predict(open(path, "rb").read(), images), -1)
    assert np.mean(keras_top1 == tflite_top1) >= 0.95
    assert "top-1 agreement with the Keras model" in stdout


def test_run_tflite_uses_embedded_labels(exported, tiny_tree):
    path, _ = exported
    image = os.path.join(tiny_tree, "test", "class3", "0000.jpg")
    result = run_module([RUN_TFLITE, path, image, "--top", "3"])
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(image) and "class" in line.split(": ")[1]


def test_run_tflite_needs_only_numpy_litert_and_pillow(exported, tiny_tree):
    """The device script with TensorFlow, tf_keras, TF-MOT and fnet_tf made unimportable."""
    path, _ = exported
    image = os.path.join(tiny_tree, "test", "class1", "0001.jpg")
    code = ("import sys, runpy\n"
            "for m in ('tensorflow', 'tf_keras', 'keras', 'tensorflow_model_optimization', "
            "'fnet_tf', 'absl'):\n    sys.modules[m] = None\n"
            f"sys.argv = ['run_tflite.py', {path!r}, {image!r}, '--benchmark', '20']\n"
            f"runpy.run_path({RUN_TFLITE!r}, run_name='__main__')\n")
    result = run_module(["-c", code])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "p50" in result.stdout and image in result.stdout


@pytest.mark.skipif(not os.path.exists(PEER), reason="../shared/peers absent")
def test_mlperf_reference_runs_unchanged(tiny_tree):
    image = os.path.join(tiny_tree, "test", "class0", "0000.jpg")
    result = run_module([RUN_TFLITE, PEER, image])
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().split(": ")[1].split(", ")) == 5


def test_foreign_keras_model_exports_int8(tmp_path, tiny_archive):
    """MobileNetV2 expects pixels in [-1, 1]: the transform is folded into the int8 graph."""
    from fnet_tf.core.backend import keras

    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=10,
                                           alpha=0.35)
    path = str(tmp_path / "mobilenetv2.keras")
    model.save(path)
    result = run_module([TO_TFLITE, path, "--data", tiny_archive, "--input_scale",
                         str(1 / 127.5), "--input_offset", "-1", "--calibration_samples", "32",
                         "--check_images", "16"])
    assert result.returncode == 0, result.stderr[-3000:]
    content = open(str(tmp_path / "mobilenetv2_int8.tflite"), "rb").read()
    assert export.inspect(content)["problems"] == []


def _sin(t):
    from fnet_tf.core.backend import tf

    return tf.math.sin(t)


def test_model_with_a_float_op_is_rejected(tmp_path, tiny_archive):
    from fnet_tf.core.backend import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Lambda(_sin)(x)  # SIN has no int8 kernel
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    path = str(tmp_path / "sin_savedmodel")  # a SavedModel directory: the Lambda needs no pickling
    model.save(path, save_format="tf")
    out = str(tmp_path / "sin_savedmodel_int8.tflite")
    # our own Lambda: trusted explicitly (model files with code are refused otherwise)
    result = run_module([TO_TFLITE, path, "--data", tiny_archive, "--calibration_samples", "8",
                         "--check_images", "0", "--trust_model_code"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith("error: ") and "not fully int8" in result.stderr
    assert "SIN" in last_line(result.stderr)
    assert not os.path.exists(out)
    allowed = run_module([TO_TFLITE, path, "--data", tiny_archive, "--calibration_samples", "8",
                          "--check_images", "0", "--allow_float", "--trust_model_code"])
    assert allowed.returncode == 0 and "warning:" in allowed.stderr and os.path.exists(out)


@pytest.mark.parametrize("make,message", [
    (lambda d: str(d / "missing"), "does not exist"),
    (lambda d: (d / "config.json").write_text("{}") and str(d), "float training did not finish"),
    (lambda d: (d / "m.keras").write_bytes(b"garbage") and str(d / "m.keras"), "cannot load Keras model"),
    (lambda d: (d / "m.txt").write_text("x") and str(d / "m.txt"), "is not a run directory"),
])
def test_bad_targets_are_one_line_errors(tmp_path, make, message, tiny_archive):
    target = make(tmp_path)
    result = run_module([TO_TFLITE, target, "--data", tiny_archive])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert last_line(result.stderr).startswith("error: ") and message in last_line(result.stderr)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tflite")]


def test_qat_scheme_mismatch_and_unknown_scheme(qat_run):
    result = run_module([TO_TFLITE, qat_run, "--scheme", "int8_per_tensor"])
    assert result.returncode == 2 and "QAT-trained with int8" in last_line(result.stderr)
    result = run_module([TO_TFLITE, qat_run, "--scheme", "int3"])
    assert result.returncode == 2 and "unknown quantization scheme" in last_line(result.stderr)


def test_unknown_qat_scheme_in_training_is_refused(tmp_path, tiny_archive):
    result = run_module(["-m", "fnet_tf.train", "--data", tiny_archive, "--qat_epochs", "1",
                         "--qat_scheme", "int3", "--run_dir", str(tmp_path / "r")])
    assert result.returncode == 2 and "unknown quantization scheme 'int3'" in last_line(result.stderr)


def test_run_tflite_errors(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x18\x00\x00\x00TFL3" + b"\x00" * 64)
    for args, message in [([str(tmp_path / "none.tflite"), "a.jpg"], "does not exist"),
                          ([str(bad), "a.jpg"], "corrupt .tflite"),
                          ([os.path.join(REPO, "README.md"), "a.jpg"], "not a .tflite file")]:
        result = run_module([RUN_TFLITE, *args])
        assert result.returncode == 2 and last_line(result.stderr).startswith("error: ")
        assert message in last_line(result.stderr) and "Traceback" not in result.stderr
