"""tools/park.py: a run's resume state carried to a new machine in a commit."""
import csv
import json
import os
import shutil
import signal
import tarfile

import numpy as np

from conftest import REPO, last_line, run_module

PARK = os.path.join(REPO, "tools", "park.py")
TRAIN = ["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "3", "--width", "0.25",
         "--batch_size", "8", "--val_split", "0", "--verbose", "0", "--epochs", "4"]


def _float_epochs(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r["phase"] == "float"]


def _weights(path):
    from fnet_tf.artifacts import load_keras_model

    return load_keras_model(path).get_weights()


def test_a_parked_run_resumes_on_a_new_machine_as_if_never_stopped(tiny_archive, tmp_path):
    run_rel = os.path.join("sweep", "runs", "run")
    args = [*TRAIN, "--data", tiny_archive, "--run_dir", run_rel]
    killed = run_module(args, cwd=tmp_path, env={"FNET_TF_CRASH_AT": "atomic-dir/epoch-0003:1"})
    assert killed.returncode == -signal.SIGKILL  # the session ended during epoch 3's checkpoint

    saved = run_module([PARK, "save", "sweep", "--out", "park.tar.gz"], cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr[-2000:]
    assert "float epoch 2 of 4" in saved.stdout
    with tarfile.open(tmp_path / "park.tar.gz") as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("PARKED.json"))
    assert manifest["path"] == "sweep" and manifest["runs"][0]["epochs_done"] == {"float": 2}
    assert any("checkpoints/float/epoch-0002/" in n for n in names)
    assert not any("epoch-0001" in n or "tensorboard" in n or ".tmp" in n for n in names)

    shutil.rmtree(tmp_path / "sweep")  # the machine is gone; the archive was committed
    restored = run_module([PARK, "restore", "park.tar.gz"], cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr[-2000:]
    resumed = run_module(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _float_epochs(tmp_path / run_rel) == [1, 2, 3, 4]
    # a finished phase travels as its model, without its checkpoints
    done = run_module([PARK, "save", "sweep", "--out", "done.tar.gz"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    with tarfile.open(tmp_path / "done.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("model_float.keras") for n in names)
    assert not any("checkpoints/float/" in n for n in names)

    straight = run_module([*TRAIN, "--data", tiny_archive, "--run_dir", "straight"], cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    resumed_w = _weights(str(tmp_path / run_rel / "model_float.keras"))
    straight_w = _weights(str(tmp_path / "straight" / "model_float.keras"))
    diff = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))
               for a, b in zip(resumed_w, straight_w))
    assert diff < 1e-3, diff


def test_restore_refuses_to_overwrite_and_bad_archives_are_one_line(tmp_path):
    run = tmp_path / "d" / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    assert run_module([PARK, "save", "d", "--out", "a.tar.gz"], cwd=tmp_path).returncode == 0

    cases = []
    cases.append(run_module([PARK, "restore", "a.tar.gz"], cwd=tmp_path))  # d/ is still there
    (tmp_path / "torn.tar.gz").write_bytes((tmp_path / "a.tar.gz").read_bytes()[:40])
    cases.append(run_module([PARK, "restore", "torn.tar.gz"], cwd=tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"path": "x", "runs": []}))
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tar:  # a whole archive, a bad entry
        tar.add(tmp_path / "manifest.json", arcname="PARKED.json")
        tar.add(tmp_path / "a.tar.gz", arcname="parked/../../escape")
    cases.append(run_module([PARK, "restore", "evil.tar.gz", "--to", "x"], cwd=tmp_path))
    cases.append(run_module([PARK, "save", "nothing-here"], cwd=tmp_path))
    for result, needle in zip(cases, ["already exists", "not a whole parked archive",
                                      "unsafe entry", "not a directory"]):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-1500:]
        assert needle in last_line(result.stderr), last_line(result.stderr)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "x").exists()

    moved = run_module([PARK, "restore", "a.tar.gz", "--to", "elsewhere"], cwd=tmp_path)
    assert moved.returncode == 0 and (tmp_path / "elsewhere" / "runs" / "r" / "config.json").exists()
