"""Atomic writes: a failure leaves the old file (or nothing), never a partial one."""
import os

import pytest

from fnet_tf.core import fileio


def test_write_and_replace(tmp_path):
    path = tmp_path / "a.json"
    fileio.write_json(path, {"x": 1})
    fileio.write_json(path, {"x": 2})
    assert path.read_text().strip().endswith("}") and '"x": 2' in path.read_text()
    assert os.listdir(tmp_path) == ["a.json"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "model.bin"
    fileio.write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_atomic_dir_replaces_whole(tmp_path):
    target = tmp_path / "ckpt"
    with fileio.atomic_dir(target) as tmp:
        open(os.path.join(tmp, "a"), "w").write("1")
    with fileio.atomic_dir(target) as tmp:
        open(os.path.join(tmp, "b"), "w").write("2")
    assert sorted(os.listdir(target)) == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert fileio.sha256_file(tmp_path / "f").startswith("ba7816bf")


def test_temporary_name_keeps_the_whole_suffix(tmp_path):
    # Keras picks the weights format from the ending: ".weights.h5" must survive.
    with fileio.atomic_path(tmp_path / "model_qat.weights.h5") as tmp:
        assert tmp.endswith(".weights.h5") and os.path.basename(tmp).startswith(".model_qat.")
        open(tmp, "wb").close()
    assert os.listdir(tmp_path) == ["model_qat.weights.h5"]
