"""--distribute multi_worker: two workers on 127.0.0.1 train as one, and only the chief writes
the shared run directory."""
import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_module

TRAIN = ["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "5", "--width", "0.25",
         "--batch_size", "16", "--val_split", "0", "--verbose", "0", "--epochs", "1",
         "--threads", "1", "--distribute", "multi_worker", "--layer_stats=false"]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _tf_config(cluster, index):
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def test_two_workers_share_one_run_directory_and_end_with_identical_weights(tiny_tree, tmp_path):
    run_dir, worker_dir = tmp_path / "shared-run", tmp_path / "worker1-private"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes = []
    for index in range(2):
        args = [*TRAIN, "--data", tiny_tree, "--run_dir", str(run_dir)]
        if index == 1:
            args += ["--worker_dir", str(worker_dir)]
        env = dict(os.environ, TF_CONFIG=_tf_config(cluster, index))
        processes.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    try:
        for process in processes:
            results.append(process.communicate(timeout=300))
    finally:
        for process in processes:
            process.kill()
    for process, (out, err) in zip(processes, results):
        assert process.returncode == 0, err[-3000:]
    assert "worker 0; it writes" in results[0][0]
    assert f"this worker writes only {worker_dir}" in results[1][0]

    from fnet_tf.run.artifacts import load_keras_model

    chief = load_keras_model(str(run_dir / "model_float.keras")).get_weights()
    other = load_keras_model(str(worker_dir / "model_float.keras")).get_weights()
    assert len(chief) == len(other)
    for a, b in zip(chief, other):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # one writer: one history row for the one epoch, one checkpoint, no stray temp files
    with open(run_dir / "history.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]
    assert os.listdir(run_dir / "checkpoints" / "float") == ["epoch-0001"]
    assert not [n for n in os.listdir(run_dir) if n.startswith(".")]


def test_a_non_chief_worker_resumes_from_the_chief_state_and_writes_elsewhere(tmp_path,
                                                                            monkeypatch):
    from fnet_tf.training import distribute

    shared = tmp_path / "run"
    (shared / "checkpoints" / "float" / "epoch-0001").mkdir(parents=True)
    (shared / "config.json").write_text("{}")
    monkeypatch.setenv("TF_CONFIG", _tf_config({"worker": ["a:1", "b:2"]}, 1))
    before = sorted(str(p) for p in shared.rglob("*"))
    with distribute.writable_run_path(str(shared), "multi_worker") as (path, task):
        assert task == "worker 1" and path != str(shared)
        assert os.path.isfile(os.path.join(path, "config.json"))
        assert os.path.isdir(os.path.join(path, "checkpoints", "float", "epoch-0001"))
        (tmp_path / "private").write_text(path)
    assert not os.path.exists((tmp_path / "private").read_text())  # the temporary copy is gone
    assert sorted(str(p) for p in shared.rglob("*")) == before

    monkeypatch.setenv("TF_CONFIG", _tf_config({"worker": ["a:1", "b:2"]}, 0))
    with distribute.writable_run_path(str(shared), "multi_worker") as (path, task):
        assert (path, task) == (str(shared), "worker 0")


@pytest.mark.parametrize("tf_config,needle", [
    (None, "needs TF_CONFIG"), ("{not json", "TF_CONFIG is malformed"),
    (_tf_config({"worker": ["a:1"]}, 3), "task index 3"),
])
def test_multi_worker_without_a_valid_tf_config_is_one_line(tiny_tree, tmp_path, tf_config,
                                                            needle):
    env = {"TF_CONFIG": tf_config} if tf_config else {}
    if tf_config is None:
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        result = subprocess.run([sys.executable, *TRAIN, "--data", tiny_tree, "--run_dir",
                                 str(tmp_path / "r")], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=300)
    else:
        result = run_module([*TRAIN, "--data", tiny_tree, "--run_dir", str(tmp_path / "r")],
                            env=env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and needle in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
