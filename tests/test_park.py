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
    from fnet_tf.run.artifacts import load_keras_model

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
    (tmp_path / "zeros").write_bytes(bytes(50 << 20))  # 50 MB that packs into ~50 KB
    with tarfile.open(tmp_path / "bomb.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "manifest.json", arcname="PARKED.json")
        tar.add(tmp_path / "zeros", arcname="parked/zeros")
    cases.append(run_module([PARK, "restore", "bomb.tar.gz", "--to", "x"], cwd=tmp_path))
    (tmp_path / "big.json").write_text(json.dumps({"path": "x", "pad": os.urandom(700_000).hex()}))
    with tarfile.open(tmp_path / "big.tar.gz", "w:gz") as tar:  # a manifest over its bound
        tar.add(tmp_path / "big.json", arcname="PARKED.json")
    cases.append(run_module([PARK, "restore", "big.tar.gz", "--to", "x"], cwd=tmp_path))
    with tarfile.open(tmp_path / "folder.tar.gz", "w:gz") as tar:  # the manifest is a folder
        folder = tarfile.TarInfo("PARKED.json")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    cases.append(run_module([PARK, "restore", "folder.tar.gz", "--to", "x"], cwd=tmp_path))
    for result, needle in zip(cases, ["already exists", "not a whole parked archive",
                                      "unsafe entry", "not a directory", "decompression bomb",
                                      "over the 1 MB limit", "not a whole parked archive"]):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-1500:]
        assert needle in last_line(result.stderr), last_line(result.stderr)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "x").exists()

    moved = run_module([PARK, "restore", "a.tar.gz", "--to", "elsewhere"], cwd=tmp_path)
    assert moved.returncode == 0 and (tmp_path / "elsewhere" / "runs" / "r" / "config.json").exists()


def test_a_finished_sweep_run_travels_as_its_results_and_is_not_retrained(tiny_archive, tmp_path):
    sweep = ["-m", "fnet_tf.sweep", "--levels", "1", "--width", "0.25", "--data", tiny_archive,
             "--out", "sweep", "--epochs", "1", "--qat_epochs", "1", "--batch_size", "8",
             "--val_split", "20", "--check_images", "20", "--latency_runs", "5",
             "--sensitivity_images", "10"]
    first = run_module(sweep, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "sweep" / "runs" / "factorizenet-l1-s0-he_normal"
    timed = ("model_int8.tflite", "analysis/metrics.json")
    mtimes = {name: (run / name).stat().st_mtime for name in timed}

    kept = run_module([PARK, "save", "sweep", "--out", "kept.tar.gz", "--keep_finished_models"],
                      cwd=tmp_path)
    saved = run_module([PARK, "save", "sweep", "--out", "done.tar.gz"], cwd=tmp_path)
    assert kept.returncode == 0 and saved.returncode == 0, saved.stderr[-2000:]
    assert "results only" in saved.stdout and "results only" not in kept.stdout
    with tarfile.open(tmp_path / "kept.tar.gz") as tar:
        assert any(n.endswith("model_float.keras") for n in tar.getnames())
    with tarfile.open(tmp_path / "done.tar.gz") as tar:
        names = tar.getnames()
    assert not any(n.endswith(("model_float.keras", "model_qat.weights.h5")) or "checkpoints/" in n
                   for n in names), names
    for needed in ("model_int8.tflite", "model_ptq_int8.tflite", "analysis/metrics.json",
                   "analysis/sensitivity.csv", "run.json", "metrics.json", "history.csv"):
        assert any(n.endswith("factorizenet-l1-s0-he_normal/" + needed) for n in names), needed

    shutil.rmtree(tmp_path / "sweep")
    restored = run_module([PARK, "restore", "done.tar.gz"], cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert not (run / "model_float.keras").exists()
    for name, mtime in mtimes.items():  # the analysis stays newer than the file it describes
        assert abs((run / name).stat().st_mtime - mtime) < 1e-3, name

    again = run_module(sweep, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    for step in ("train", "export QAT int8", "export PTQ int8", "sensitivity", "analyze"):
        assert f"level 1 (1/1) seed 0 he_normal: {step} complete, reusing" in again.stdout, step
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["qat_int8_accuracy"]) >= 0, rows


def test_a_teacher_bank_travels_into_the_new_machines_cache(tmp_path):
    key = "0123456789abcdef01234567"
    folder = tmp_path / "old-cache" / "teacher_banks" / key
    folder.mkdir(parents=True)
    (folder / "key.json").write_text('{"tta": "flip"}')
    logits = np.arange(30, dtype=np.float32).reshape(3, 10)
    for epoch in range(2):
        np.save(folder / f"epoch_{epoch:04d}.npy", logits + epoch)
    (folder / ".epoch_0002.npy.tmp").write_text("half-written")  # not carried
    archive = tmp_path / "bank.tar.gz"
    saved = run_module([PARK, "save_bank", str(folder), "--out", str(archive)])
    assert saved.returncode == 0, saved.stderr[-2000:]
    assert "2 bank epochs" in saved.stdout

    cache = tmp_path / "new-cache"
    env = {"FNET_TF_CACHE": str(cache)}
    (cache / "teacher_banks" / key).mkdir(parents=True)
    np.save(cache / "teacher_banks" / key / "epoch_0001.npy", logits + 1)  # computed here already
    restored = run_module([PARK, "restore", str(archive)], env=env)
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert "restored 2 files" in restored.stdout and "(1 there already)" in restored.stdout
    landed = cache / "teacher_banks" / key
    assert sorted(os.listdir(landed)) == ["epoch_0000.npy", "epoch_0001.npy", "key.json"]
    np.testing.assert_array_equal(np.load(landed / "epoch_0000.npy"), logits)

    not_a_bank = run_module([PARK, "save_bank", str(tmp_path)])
    assert not_a_bank.returncode == 2 and "not a teacher bank folder" in last_line(not_a_bank.stderr)
    forged = tmp_path / "forged.tar.gz"  # a bank manifest with a file a bank never holds
    with tarfile.open(forged, "w:gz") as tar:
        manifest = tmp_path / "PARKED.json"
        manifest.write_text(json.dumps({"bank": key}))
        tar.add(manifest, arcname="PARKED.json")
        tar.add(folder / "key.json", arcname="parked/run.py")
    refused = run_module([PARK, "restore", str(forged)], env=env)
    assert refused.returncode == 2 and "not a bank" in last_line(refused.stderr)
    assert not os.path.exists(landed / "run.py")
