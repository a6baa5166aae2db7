"""``--distribute``: the tf.distribute strategy, and who writes the run directory.

With ``multi_worker`` every machine runs the same ``python -m fnet_tf.train`` command with its
own ``TF_CONFIG`` (TensorFlow's cluster description). All workers compute the same weights;
**only the chief writes ``--run_dir``** (the ``chief`` task, or ``worker`` 0 when the cluster
has no chief). Every other worker reads the run directory to resume from the same epoch and
writes into a private copy instead: ``--worker_dir`` if given, else a temporary directory that
is deleted when the worker finishes. So one run directory on a shared file system is written
by one process, and a restarted job resumes on every worker from the chief's last checkpoint.
"""
import contextlib
import json
import os
import shutil
import tempfile

from fnet_tf.core import backend
from fnet_tf.core.errors import UserError

# What a non-chief worker copies from the run directory to resume like the chief.
RESUME_STATE = ("config.json", "run.json", "history.csv", "layer_stats.jsonl",
                "model_float.keras", "model_qat.weights.h5", "checkpoints")


def make_strategy(name):
    tf = backend.tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def multi_worker_role(environ=None):
    """(is_chief, 'worker 1') from ``TF_CONFIG``; a missing or malformed one is a UserError."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG")
    if not text:
        raise UserError("--distribute multi_worker needs TF_CONFIG on every machine, e.g. "
                        "TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, "
                        "\"task\": {\"type\": \"worker\", \"index\": 0}}' (README: several machines)")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        kind, index = task["type"], int(task.get("index", 0))
        members = cluster[kind]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"TF_CONFIG is malformed ({type(e).__name__}: {e}): it needs "
                        f"'cluster' with this task's type and 'task' with 'type' and 'index'") from None
    if not 0 <= index < len(members):
        raise UserError(f"TF_CONFIG task index {index} is outside its cluster's {len(members)} "
                        f"{kind} address(es)")
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return chief, f"{kind} {index}"


@contextlib.contextmanager
def writable_run_path(run_path, distribute, worker_dir=None):
    """The directory this process writes the run into: ``run_path`` itself, except on a
    non-chief worker of a multi-worker job, where it is a private copy (see module docstring)."""
    if distribute != "multi_worker":
        yield run_path, None
        return
    chief, task = multi_worker_role()
    if chief:
        yield run_path, task
        return
    private = worker_dir is None
    target = tempfile.mkdtemp(prefix="fnet_tf-worker-") if private else worker_dir
    if os.path.abspath(target) == os.path.abspath(run_path):
        raise UserError("--worker_dir is the run directory itself: a non-chief worker must "
                        "write elsewhere")
    os.makedirs(target, exist_ok=True)
    try:
        for name in RESUME_STATE:  # read-only: the chief's state, to resume where it is
            source = os.path.join(run_path, name)
            destination = os.path.join(target, name)
            if os.path.isdir(source):
                shutil.copytree(source, destination, dirs_exist_ok=True)
            elif os.path.isfile(source):
                shutil.copy2(source, destination)
        yield target, task
    finally:
        if private:
            shutil.rmtree(target, ignore_errors=True)
