"""Where sweeps and tunings run (issue 39): the local executor and Ray tasks on a two-node
cluster on this machine, a killed task retried and resumed, and a node without the shared
``--out`` sending its run directory back whole."""
import csv
import functools
import os

import pytest

from conftest import last_line, run_module
from fnet_tf.core.errors import UserError
from fnet_tf.search import executors

# sweep.csv compares whole but for the latency (timed in the driver, machine noise) and the
# run's own path
LEFT_OUT = ("latency_p50_ms", "run")


def _sweep(archive, out, *extra):
    return ["-m", "fnet_tf.sweep", "--levels", "0-1", "--seeds", "2", "--width", "0.25",
            "--data", archive, "--out", str(out), "--epochs", "2", "--qat_epochs", "1",
            "--batch_size", "8", "--val_split", "20", "--check_images", "20",
            "--latency_runs", "5", "--ptq_per_tensor=false", "--threads", "1", *extra]


def _rows(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in LEFT_OUT}
                for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of two nodes of one CPU each, on this machine."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    node = {"num_cpus": 1, "object_store_memory": 80 << 20, "include_dashboard": False}
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args=node)
    cluster.add_node(num_cpus=1, object_store_memory=80 << 20)
    yield cluster
    cluster.shutdown()


def test_a_ray_sweep_on_two_nodes_equals_the_local_one_and_survives_a_killed_task(
        tiny_archive, tmp_path, two_nodes):
    local = run_module(_sweep(tiny_archive, tmp_path / "local"))
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]

    marker = tmp_path / "killed-once"
    spread = run_module(_sweep(tiny_archive, tmp_path / "ray", "--executor", "ray",
                               "--ray_address", two_nodes.address, "--cpus_per_run", "1"),
                        env={"FNET_TF_CRASH_AT": "atomic-dir/epoch-0002:1",
                             "FNET_TF_CRASH_ONCE": str(marker)})
    printed = spread.stdout + spread.stderr
    assert spread.returncode == 0, printed[-4000:]
    assert "4 jobs on 2 nodes" in printed, printed[-3000:]
    # one training was SIGKILLed writing its epoch-2 checkpoint; Ray ran the task again and
    # it went on from epoch 1
    assert marker.exists() and "killed by signal 9" in printed, printed[-3000:]
    assert "resuming after epoch 1" in printed, printed[-3000:]
    assert not [n for n in os.listdir(tmp_path / "ray" / "runs") if n.startswith(".")]

    ray_rows, local_rows = _rows(tmp_path / "ray" / "sweep.csv"), _rows(tmp_path / "local" / "sweep.csv")
    assert len(ray_rows) == 4 and {r["seed"] for r in ray_rows} == {"0", "1"}
    assert ray_rows == local_rows  # every accuracy, size and MAC count to the last digit

    # the same command again trains nothing; the report merges the folders as ever
    again = run_module(_sweep(tiny_archive, tmp_path / "ray", "--executor", "ray",
                              "--ray_address", two_nodes.address))
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("complete, reusing") == 4, again.stdout[-2000:]
    assert "ray:" not in again.stdout  # nothing left to send to the cluster


def test_a_tpe_search_trains_each_batch_of_trials_as_ray_tasks(tiny_archive, tmp_path,
                                                                two_nodes):
    args = ["-m", "fnet_tf.tune", "--level", "3", "--width", "0.25", "--data", tiny_archive,
            "--epochs", "1", "--val_split", "20", "--base", "batch_size=8",
            "--out", str(tmp_path / "tune"), "--search", "tpe", "--space", "lr=0.01:0.3:log",
            "--trials", "2", "--trials_at_once", "2", "--executor", "ray",
            "--ray_address", two_nodes.address]
    result = run_module(args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "2 jobs on 2 nodes" in result.stdout  # the sampler's batch, side by side
    with open(tmp_path / "tune" / "tune.csv") as f:
        assert sorted(r["trial"] for r in csv.DictReader(f)) == ["search-000", "search-001"]


def _fake_work(run_dir):
    """A job's work: a run directory with results and a checkpoint."""
    os.makedirs(os.path.join(run_dir, "checkpoints", "float"), exist_ok=True)
    os.makedirs(os.path.join(run_dir, "analysis"), exist_ok=True)
    for rel, text in (("config.json", "{}"), ("analysis/report.md", "# r"),
                      ("checkpoints/float/ckpt", "weights")):
        with open(os.path.join(run_dir, rel), "w") as f:
            f.write(text)


def test_a_node_without_the_shared_out_sends_the_run_back_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("FNET_TF_CACHE", str(tmp_path / "node-cache"))
    out = tmp_path / "out"
    (out / "runs" / "p").mkdir(parents=True)
    (out / "runs" / "p" / "stale.txt").write_text("from an earlier executor")
    (out / executors.TOKEN_FILE).write_text("the driver's token")
    job = executors.Job("p", str(out / "runs" / "p"), _fake_work, lambda d: False)

    # a node that reads another token (its own disk at that path) works in its cache
    files = executors.run_job_task(job, str(out), "another token", {}, str(tmp_path))
    assert sorted(files) == ["analysis/report.md", "config.json"]  # no checkpoints travel
    node_dir = executors.node_run_dir(str(out), "p")
    assert node_dir.startswith(str(tmp_path / "node-cache"))
    assert os.path.isfile(os.path.join(node_dir, "checkpoints", "float", "ckpt"))  # kept there

    executors.write_back(files, job.run_dir)
    assert sorted(os.listdir(out / "runs")) == ["p"]  # replaced whole, no leftovers
    assert (out / "runs" / "p" / "analysis" / "report.md").read_text() == "# r"
    assert not (out / "runs" / "p" / "stale.txt").exists()

    # a node that shares OUT works in it and returns nothing
    shared = executors.Job("q", str(out / "runs" / "q"), _fake_work, lambda d: False)
    assert executors.run_job_task(shared, str(out), "the driver's token", {}, str(tmp_path)) is None
    assert (out / "runs" / "q" / "checkpoints" / "float" / "ckpt").exists()

    with pytest.raises(UserError, match="outside itself"):
        executors.write_back({"../escape.txt": b"x"}, str(out / "runs" / "r"))


def test_the_local_executor_runs_every_job_in_order(tmp_path):
    done = []
    jobs = [executors.Job(n, str(tmp_path / n), functools.partial(lambda n, d: done.append(n), n),
                          lambda d: False) for n in ("a", "b", "c")]
    executors.LocalExecutor().run(jobs, str(tmp_path))
    assert done == ["a", "b", "c"]


@pytest.mark.parametrize("args, message", [
    (["--executor", "ray", "--cpus_per_run", "0"], "--cpus_per_run must be 1 or more"),
    (["--ray_address", "auto"], "--ray_address needs --executor ray"),
    (["--executor", "spark"], "--executor"),
])
def test_bad_executor_flags_are_one_line(tiny_archive, tmp_path, args, message):
    result = run_module(["-m", "fnet_tf.sweep", "--levels", "0", "--data", tiny_archive,
                         "--out", str(tmp_path / "s"), *args])
    assert result.returncode == 2 and message in last_line(result.stderr), result.stderr[-800:]


def test_without_ray_installed_the_ray_executor_says_so_in_one_line(tiny_archive, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['fnet-sweep', '--levels', '0', "
            f"'--data', {tiny_archive!r}, '--out', {str(tmp_path / 's')!r}, "
            "'--executor', 'ray']; from fnet_tf import sweep; sweep.console()")
    result = run_module(["-c", code])
    assert result.returncode == 2, result.stderr[-800:]
    assert 'pip install "fnet_tf[ray]"' in last_line(result.stderr)
    assert not (tmp_path / "s").exists()  # refused before any work
