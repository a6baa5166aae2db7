"""Shared fixtures: tiny image-folder datasets made on the fly (nothing downloads)."""
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_ARCHIVE = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")
CLASSES = tuple(f"class{i}" for i in range(10))


def make_image_tree(root, train_per_class=12, test_per_class=8, classes=CLASSES, seed=0):
    """``root/tiny/{train,test}/<class>/NNNN.jpg``: class ``i`` is a colour plus noise, so a
    model learns it within a few steps."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 225, (len(classes), 3))
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, cls in enumerate(classes):
            folder = os.path.join(root, "tiny", split, cls)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                noise = rng.normal(0, 25, (32, 32, 3))
                pixels = np.clip(colours[label] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)
    return os.path.join(root, "tiny")


def make_archive(tree, path):
    with tarfile.open(path, "w:gz") as t:
        t.add(tree, arcname=os.path.basename(tree))
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FNET_TF_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory):
    return make_image_tree(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="session")
def tiny_archive(tiny_tree, tmp_path_factory):
    return make_archive(tiny_tree, str(tmp_path_factory.mktemp("archive") / "tiny.tar.gz"))


def run_module(args, cwd=None, timeout=600, env=None):
    """Run ``python -m ...`` (or a script) in a subprocess; return the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="session")
def qat_run(tiny_archive, tmp_path_factory):
    """A run directory trained on the tiny data: 3 float epochs, then 2 QAT epochs (int8)."""
    run_dir = tmp_path_factory.mktemp("qat") / "run"
    result = run_module(["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "3",
                         "--width", "0.25", "--data", tiny_archive, "--epochs", "3",
                         "--qat_epochs", "2", "--batch_size", "8", "--val_split", "0",
                         "--run_dir", str(run_dir), "--verbose", "0"])
    assert result.returncode == 0, result.stderr[-3000:]
    return str(run_dir)


def train_and_export(train_args, run_dir, check_images=40):
    """Train with ``train_args`` (+ ``--run_dir``), export with the verification, and return
    (the .tflite's bytes, the exporter's stdout); assert both steps succeed."""
    trained = run_module([*train_args, "--run_dir", str(run_dir)])
    assert trained.returncode == 0, trained.stderr[-2000:]
    exported = run_module([os.path.join(REPO, "export", "to_tflite.py"), str(run_dir),
                           "--check_images", str(check_images)])
    assert exported.returncode == 0, exported.stderr[-2000:]
    with open(os.path.join(str(run_dir), "model_int8.tflite"), "rb") as f:
        return f.read(), exported.stdout
