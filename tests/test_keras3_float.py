"""One spec, two builders: Keras 3 float training and its import into tf_keras for QAT.

Here Keras 3 runs on its TensorFlow backend (the venv has TensorFlow); on the accelerator
machine the same code runs on JAX.
"""
import json
import os

import numpy as np
import pytest

from conftest import last_line, run_module
from fnet_tf.arch import architectures
from fnet_tf.run.portable_weights import load_weights_by_layer, weights_by_layer
from fnet_tf.arch.spec import build_model

keras3 = pytest.importorskip("keras")


@pytest.mark.parametrize("name,level", [(m, lvl) for m in architectures.list_models()
                                        for lvl in (0, 3)])
def test_keras3_and_tf_keras_builds_compute_the_same(name, level):
    if not keras3.__version__.startswith("3."):
        pytest.skip("Keras 3 is not installed")
    spec = architectures.model_spec(name, min(level, architectures.model_spec(name).meta["max_level"]),
                                    width=0.5)
    keras3.utils.set_random_seed(0)
    k3 = build_model(spec, keras=keras3)
    tfk = load_weights_by_layer(build_model(spec), weights_by_layer(k3))
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(k3(x, training=False)), tfk(x, training=False).numpy(),
                               rtol=1e-4, atol=1e-3)
    assert k3.count_params() == tfk.count_params() == spec.cost().params


def test_import_refuses_weights_of_another_level():
    from fnet_tf.core.errors import UserError

    weights = weights_by_layer(build_model(architectures.model_spec("factorizenet", 2, 0.25)))
    with pytest.raises(UserError, match="another model"):
        load_weights_by_layer(build_model(architectures.model_spec("factorizenet", 3, 0.25)),
                              weights)


def test_keras3_float_then_qat_in_tf_keras(tiny_archive, tmp_path):
    out = tmp_path / "k3"
    common = ["--model", "factorizenet", "--level", "3", "--width", "0.25", "--data",
              tiny_archive, "--val_split", "0", "--batch_size", "8"]
    trained = run_module(["-m", "fnet_tf.keras3_float", *common, "--epochs", "2", "--out",
                          str(out)], env={"KERAS_BACKEND": "tensorflow"})
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = json.loads((out / "keras3_result.json").read_text())
    assert result["level"] == 3 and result["backend"] == "tensorflow"
    assert 0 <= result["test_accuracy"] <= 1 and (out / "float_weights.npz").is_file()

    student = tmp_path / "k3-student"  # distilled from it, with GradBoost
    distilled = run_module(["-m", "fnet_tf.keras3_float", *common, "--level", "5", "--epochs",
                            "1", "--out", str(student), "--teacher", str(out), "--optimizer",
                            "sgd_gradboost"], env={"KERAS_BACKEND": "tensorflow"})
    assert distilled.returncode == 0, distilled.stderr[-3000:]
    recipe = json.loads((student / "keras3_result.json").read_text())["recipe"]
    assert recipe["teacher"] == str(out) and recipe["optimizer"] == "sgd_gradboost"

    run_dir = tmp_path / "run"
    qat = run_module(["-m", "fnet_tf.train", *common, "--epochs", "0", "--init_from", str(out),
                      "--qat_epochs", "1", "--run_dir", str(run_dir), "--verbose", "0"])
    assert qat.returncode == 0, qat.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the same weights measured in tf_keras give the accuracy Keras 3 measured
    assert metrics["float"]["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-9)
    assert metrics["float"]["trained_in"].startswith("Keras 3")
    assert "qat" in metrics

    wrong = run_module(["-m", "fnet_tf.train", *common[:2], "--level", "2", *common[4:],
                        "--epochs", "0", "--init_from", str(out), "--qat_epochs", "1",
                        "--run_dir", str(tmp_path / "wrong")])
    assert wrong.returncode == 2 and "--level=3" in last_line(wrong.stderr)
    os.remove(out / "float_weights.npz")
    again = run_module(["-m", "fnet_tf.train", *common, "--epochs", "0", "--init_from", str(out),
                        "--qat_epochs", "1", "--run_dir", str(tmp_path / "again")])
    assert again.returncode == 2 and "did not finish" in last_line(again.stderr)
