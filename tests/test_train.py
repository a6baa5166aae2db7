"""``python -m fnet_tf.train``: artifacts, resume after kill -9, one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, last_line, run_module
from fnet_tf.core import fileio


def _train_args(archive, run_dir, epochs, *extra):
    return ["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "5", "--width", "0.25",
            "--data", archive, "--epochs", str(epochs), "--batch_size", "8", "--val_split", "20",
            "--run_dir", str(run_dir), "--verbose", "0", "--threads", "1", *extra]


def _float_epochs(run_dir):
    import csv

    with open(os.path.join(run_dir, "history.csv")) as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r["phase"] == "float"]


def test_resume_after_sigkill_mid_training(tiny_archive, tmp_path):
    run_dir = tmp_path / "run"
    epochs = 40
    proc = subprocess.Popen([sys.executable, *_train_args(tiny_archive, run_dir, epochs)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run_dir / "checkpoints" / "float" / "epoch-0002" / "meta.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere inside a later epoch
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "run.json").exists()  # not complete
    done_before = max(_float_epochs(run_dir))
    assert done_before >= 2

    result = run_module(_train_args(tiny_archive, run_dir, epochs, "--verbose", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = [line for line in result.stdout.splitlines() if "resuming after epoch" in line]
    assert resumed
    after = int(resumed[0].split("resuming after epoch ")[1].split()[0])
    assert after >= 2
    # Keras' bar counts the phase's epochs, though each epoch is a fit of its own
    assert f"Epoch {after + 1}/{epochs}" in result.stdout
    assert f"Epoch {epochs}/{epochs}" in result.stdout
    assert _float_epochs(run_dir) == list(range(1, epochs + 1))  # no epoch lost or repeated
    manifest = json.loads((run_dir / "run.json").read_text())
    digest = manifest["steps"]["float"]["artifacts"]["model_float.keras"]
    assert digest == fileio.sha256_file(run_dir / "model_float.keras")
    metrics = json.loads((run_dir / "metrics.json").read_text())["float"]
    assert metrics["num_test_images"] == 80 and 0 <= metrics["test_accuracy"] <= 1
    assert metrics["test_accuracy"] > 0.3  # the tiny classes are colours: learnable
    leftovers = [n for n in os.listdir(run_dir) if n.startswith(".")]
    assert leftovers == []

    again = run_module(_train_args(tiny_archive, run_dir, epochs))
    assert again.returncode == 0 and "already complete" in again.stdout


def test_resume_with_other_flags_is_refused(tiny_archive, tmp_path):
    run_dir = tmp_path / "run"
    assert run_module(_train_args(tiny_archive, run_dir, 1)).returncode == 0
    result = run_module(_train_args(tiny_archive, run_dir, 1, "--lr", "0.01"))
    assert result.returncode == 2
    assert last_line(result.stderr).startswith("error: run directory")
    assert "--lr=0.1" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--level", "99"], "unknown level 99 for factorizenet"),
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--epochs", "-1"], "--epochs must be 0 or more"),
    (["--threads", "-2"], "--threads must be"),
    (["--epochs", "two"], "flag --epochs=two"),
    (["--data", "/no/such/archive.tar.gz"], "does not exist"),
    (["--init", "not_an_init", "--data", "cifar10"], "unknown --init"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = run_module(["-m", "fnet_tf.train", "--run_dir", str(tmp_path / "r"), *args])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert last_line(result.stderr).startswith("error: ") and message in last_line(result.stderr)


def test_models_table_lists_every_level():
    result = run_module(["-m", "fnet_tf.models"])
    assert result.returncode == 0
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(r[0], int(r[1])) for r in rows if r[0] == "factorizenet"] == [
        ("factorizenet", level) for level in range(8)]
    assert any(r[0] == "resnet8" for r in rows)


def test_init_from_a_float_run_trains_qat_only(qat_run, tiny_archive, tmp_path):
    run_dir = tmp_path / "per-tensor"
    args = ["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "3", "--width", "0.25",
            "--data", tiny_archive, "--epochs", "0", "--init_from", qat_run, "--qat_epochs", "1",
            "--qat_scheme", "int8_per_tensor", "--batch_size", "8", "--val_split", "0",
            "--run_dir", str(run_dir), "--verbose", "0"]
    result = run_module(args)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["steps"]["float"]["init_from"].endswith("model_float.keras")
    assert manifest["steps"]["qat"]["scheme"] == "int8_per_tensor"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    source = json.loads(open(os.path.join(qat_run, "metrics.json")).read())
    assert metrics["float"]["test_accuracy"] == pytest.approx(source["float"]["test_accuracy"])
    assert _float_epochs(run_dir) == []  # no float training here
    wrong = run_module([a if a != "3" else "2" for a in args])  # another level than the source
    assert wrong.returncode == 2 and "--init_from" in last_line(wrong.stderr)


def test_mirrored_strategy_trains(tiny_archive, tmp_path):
    """--distribute mirrored (one CPU replica here): variables are MirroredVariables."""
    run_dir = tmp_path / "mirrored"
    result = run_module(_train_args(tiny_archive, run_dir, 1, "--distribute", "mirrored"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert _float_epochs(run_dir) == [1] and (run_dir / "model_float.keras").exists()


def test_an_epochs_dataset_is_its_batches_with_the_teachers_logits():
    """An epoch's arrays as a dataset (no Python inside tf.data) yield exactly the batches of
    ``data.epoch_batches``, the short last one included, with the teacher's logits on them."""
    import numpy as np

    from fnet_tf.data import datasets as data
    from fnet_tf.training import loop as training
    from fnet_tf.core.backend import keras

    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (70, 8, 8, 3), dtype=np.uint8),
                       rng.integers(0, 10, 70).astype(np.int32))
    recipe = training.Recipe(batch_size=32, seed=3, cutout=4)
    teacher = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                                keras.layers.Dense(10)])
    expected = list(data.epoch_batches(split, 32, seed=3, epoch=5, cutout=4))
    dataset = training.array_dataset(*training.epoch_arrays(split, recipe, 5), 32, 10, teacher)
    assert dataset.options().autotune.enabled is False  # see training.array_dataset
    got = list(dataset.as_numpy_iterator())
    assert [len(y) for _, y in got] == [32, 32, 6]
    for (images, labels), (x, y) in zip(expected, got):
        np.testing.assert_array_equal(x, images.astype(np.float32))
        np.testing.assert_array_equal(y[:, :10].argmax(axis=1), labels)
        np.testing.assert_allclose(y[:, 10:], teacher(x).numpy(), rtol=1e-5, atol=1e-5)
    other = next(training.array_dataset(*training.epoch_arrays(split, recipe, 6), 32, 10)
                 .as_numpy_iterator())
    assert other[1].shape == (32, 10) and not np.array_equal(other[0], got[0][0])


def test_epoch_arrays_built_ahead_are_the_epochs_own_arrays():
    """The background builder hands each epoch exactly ``epoch_arrays`` (also after a resume
    mid-run and a jump), has the next epoch under way when it hands one over, and builds
    nothing past the last epoch."""
    import numpy as np

    from fnet_tf.data import datasets as data
    from fnet_tf.training import loop as training

    rng = np.random.default_rng(1)
    split = data.Split(rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8),
                       rng.integers(0, 10, 50).astype(np.int32))
    recipe = training.Recipe(batch_size=16, seed=2, cutout=4)
    with training.EpochArraysAhead(split, recipe, epochs=5) as ahead:
        for epoch in (2, 3, 4, 0):
            images, labels = ahead.take(epoch)
            want_images, want_labels = training.epoch_arrays(split, recipe, epoch)
            np.testing.assert_array_equal(images, want_images)
            np.testing.assert_array_equal(labels, want_labels)
            assert sorted(ahead._pending) == ([epoch + 1] if epoch < 4 else [])
    assert not np.array_equal(training.epoch_arrays(split, recipe, 1)[0],
                              training.epoch_arrays(split, recipe, 2)[0])
