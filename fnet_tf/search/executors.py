"""Where a sweep's points and a tuning's trials run: here, one after another, or as Ray tasks.

A job is one run directory's worth of resumable work (a sweep point, a tuning trial). Its
``work(run_dir)`` runs every missing step there as child processes, so a job that stops
anywhere resumes from its last checkpoint when it runs again, and its ``finished(run_dir)``
says whether anything is left. The run directory is the contract: the report, ``--select``,
the plots and the release tool read the same folders whichever executor filled them.

``local`` (the default) runs the jobs in order in this process's children. ``ray`` runs each
unfinished job as a Ray task with ``cpus_per_run`` CPUs (its threads) and ``gpus_per_run``
GPUs, on a Ray cluster started here (``ray.init()``) or joined (``address``: ``HOST:PORT`` or
``auto``). Ray retries a task whose worker died or whose step was killed by a signal, and the
retry resumes from the job's last checkpoint.

Where results live. Each run records in ``OUT`` a token file; a task that reads the same
token there shares the driver's file system (NFS, one machine) and works in ``OUT`` itself.
A task that does not works in a node-local folder (``<cache>/ray_runs/<sweep>/<job>``) and
returns the run directory's small files (all but ``checkpoints/``) to the driver, which
writes them into ``OUT`` in one rename: ``OUT`` never holds half a run. Checkpoints stay on
the node, so a re-run resumes an unfinished job only where it lands on that node, and trains
it again elsewhere; a finished job is in ``OUT`` and is skipped.
"""
import dataclasses
import hashlib
import os
import secrets
import shutil
import time
from typing import Callable

from absl import flags

from fnet_tf.core import fileio
from fnet_tf.core.child import StepKilled
from fnet_tf.core.errors import UserError, first_line
from fnet_tf.core.wording import count
from fnet_tf.data import datasets as data_lib

TOKEN_FILE = ".executor-token"  # in --out: a task that reads the driver's token shares OUT
LEFT_ON_NODE = ("checkpoints",)  # what a task without a shared OUT does not send back
RETURN_LIMIT = 1 << 30  # bytes: a run directory sent back to the driver (models are ~1 MB)
FORWARDED_ENV = (fileio.CRASH_ENV, fileio.CRASH_ONCE_ENV)  # the fault tests' hooks


@dataclasses.dataclass(frozen=True)
class Job:
    """One run directory's resumable work (``work``/``finished`` must pickle for Ray:
    module-level functions or ``functools.partial`` of them)."""

    name: str
    run_dir: str  # where its results belong, under --out
    work: Callable  # work(run_dir): every missing step, in run_dir
    finished: Callable  # finished(run_dir) -> bool


class LocalExecutor:
    """Every job in order, in this process's children (the default; needs nothing new)."""

    name = "local"
    threads = None  # the command's own --threads

    def run(self, jobs, out):
        for job in jobs:
            job.work(job.run_dir)


class RayExecutor:
    """Each unfinished job as a Ray task (see the module)."""

    name = "ray"

    def __init__(self, address=None, cpus_per_run=1, gpus_per_run=0.0, retries=3):
        self.address, self.cpus, self.gpus, self.retries = (
            address, int(cpus_per_run), float(gpus_per_run), int(retries))
        self.threads = self.cpus  # each job's training uses the CPUs its task holds

    def run(self, jobs, out):
        ray = import_ray()
        out = os.path.abspath(out)
        os.makedirs(out, exist_ok=True)
        token = secrets.token_hex(16)
        fileio.write_text(os.path.join(out, TOKEN_FILE), token)
        todo = [job for job in jobs if not job.finished(job.run_dir)]
        for job in jobs:
            if job not in todo:
                print(f"{job.name}: complete, reusing {job.run_dir}", flush=True)
        if not todo:
            return
        started = time.time()
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True,
                     configure_logging=False)
        except Exception as error:  # noqa: BLE001  (ConnectionError, ValueError, ...)
            raise UserError(f"cannot reach a Ray cluster at --ray_address {self.address!r} "
                            f"({first_line(error)}): start one with `ray start --head` and pass "
                            f"its address, or leave --ray_address out for a local one") from None
        try:
            resources = ray.cluster_resources()
            print(f"ray: {count(len(todo), 'job')} on {count(len(ray.nodes()), 'node')} "
                  f"({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs), "
                  f"{self.cpus:g} CPUs and {self.gpus:g} GPUs each; cluster up in "
                  f"{time.time() - started:.1f}s", flush=True)
            self._check_fits(resources)
            task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries,
                              retry_exceptions=[StepKilled])(run_job_task)
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            pending = {task.remote(job, out, token, env, os.getcwd()): job for job in todo}
            failed = []
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    job = pending.pop(ready[0])
                    try:
                        returned = ray.get(ready[0])
                    except Exception as error:  # noqa: BLE001  (the task's, after retries)
                        failed.append(f"{job.name}: {_task_error(error)}")
                        continue
                    if returned is not None:
                        write_back(returned, job.run_dir)
            except KeyboardInterrupt:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
            if failed:
                raise UserError(f"{count(len(failed), 'job')} failed ({failed[0]}); fix that and "
                                f"run the same command: finished jobs are kept")
        finally:
            ray.shutdown()

    def _check_fits(self, resources):
        if self.cpus > resources.get("CPU", 0) or self.gpus > resources.get("GPU", 0):
            raise UserError(f"a run asks {self.cpus:g} CPUs and {self.gpus:g} GPUs but the "
                            f"cluster has {resources.get('CPU', 0):g} CPUs and "
                            f"{resources.get('GPU', 0):g} GPUs: lower --cpus_per_run/"
                            f"--gpus_per_run or add nodes")


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(name, address=None, cpus_per_run=1, gpus_per_run=0.0):
    """The executor named by ``--executor`` (UserError for an unknown name or bad sizes)."""
    if name not in EXECUTORS:
        raise UserError(f"--executor {name!r} is not one of {', '.join(EXECUTORS)}")
    if name == "local":
        if address:
            raise UserError("--ray_address needs --executor ray")
        return LocalExecutor()
    if cpus_per_run < 1 or gpus_per_run < 0:
        raise UserError(f"--cpus_per_run must be 1 or more and --gpus_per_run 0 or more, got "
                        f"{cpus_per_run} and {gpus_per_run}")
    import_ray()  # says so now, before any work, when Ray is not installed
    return RayExecutor(address, cpus_per_run, gpus_per_run)


def import_ray():
    try:
        import ray  # noqa: PLC0415  (heavy and optional: loaded only for --executor ray)
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install \"fnet_tf[ray]\" (or pip "
                        "install ray) on this machine and on every node") from None
    return ray


def _task_error(error):
    cause = getattr(error, "cause", None)  # RayTaskError wraps the task's own exception
    return first_line(cause if isinstance(cause, Exception) else error)


def node_run_dir(out, name):
    """A node-local folder for a job whose ``out`` this node does not share."""
    sweep = hashlib.sha256(out.encode()).hexdigest()[:16]
    return os.path.join(data_lib.default_cache_dir(), "ray_runs", sweep, name)


def shares_out(out, token):
    path = os.path.join(out, TOKEN_FILE)
    try:
        return os.path.isfile(path) and fileio.read_text(path, 1024).strip() == token
    except (OSError, UserError):
        return False


def run_job_task(job, out, token, env, cwd):
    """A Ray task: the job's work in ``OUT`` when this node shares it (returns None), else in a
    node-local folder, returning ``{relative path: bytes}`` of the finished run directory.
    It runs in the driver's folder where the node has it, so relative paths inside a recipe
    flagfile mean what they mean there."""
    os.environ.update(env)
    if os.path.isdir(cwd):
        os.chdir(cwd)
    if shares_out(out, token):
        job.work(job.run_dir)
        return None
    local = node_run_dir(out, job.name)
    job.work(local)
    print(f"{job.name}: done on a node without {out}; sending its run directory back",
          flush=True)
    return collect_run_files(local)


def collect_run_files(run_dir):
    """``{relative path: bytes}`` of a run directory, without ``checkpoints/`` and temporary
    files, bounded by RETURN_LIMIT."""
    files, total = {}, 0
    for folder, dirs, names in os.walk(run_dir):
        dirs[:] = sorted(d for d in dirs if d not in LEFT_ON_NODE and not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or ".tmp" in name:
                continue
            path = os.path.join(folder, name)
            total += os.path.getsize(path)
            if total > RETURN_LIMIT:
                raise UserError(f"{run_dir} holds over {RETURN_LIMIT >> 20} MB besides its "
                                f"checkpoints: share --out between the nodes instead")
            with open(path, "rb") as f:
                files[os.path.relpath(path, run_dir)] = f.read()
    return files


def write_back(files, run_dir):
    """Write a returned run directory into place in one rename (a run already there from an
    earlier executor is replaced whole)."""
    parent = os.path.dirname(os.path.abspath(run_dir))
    os.makedirs(parent, exist_ok=True)
    incoming = os.path.join(parent, f".{os.path.basename(run_dir)}.incoming-"
                                    f"{secrets.token_hex(4)}")
    for rel, data in files.items():
        target = os.path.normpath(os.path.join(incoming, rel))
        if os.path.isabs(rel) or not target.startswith(incoming + os.sep):
            raise UserError(f"a returned run directory names {rel!r} outside itself")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
    old = None
    if os.path.exists(run_dir):
        old = f"{incoming}.old"
        os.rename(run_dir, old)
    os.rename(incoming, run_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def define_flags():
    """--executor, --ray_address, --cpus_per_run, --gpus_per_run for a command (sweep, tune)."""
    flags.DEFINE_enum("executor", "local", list(EXECUTORS), "Where the runs train: 'local' "
                      "(one after another here) or 'ray' (each a Ray task: pip install "
                      "\"fnet_tf[ray]\"; docs/sweeps.md).")
    flags.DEFINE_string("ray_address", None, "--executor ray: the cluster, HOST:PORT or 'auto' "
                        "(from `ray start --head`); default: a Ray cluster of this machine.")
    flags.DEFINE_integer("cpus_per_run", 1, "--executor ray: CPUs each run holds (its threads).")
    flags.DEFINE_float("gpus_per_run", 0.0, "--executor ray: GPUs each run holds.")


def from_flags(values):
    """The executor the flags of ``define_flags`` name."""
    return make_executor(values.executor, values.ray_address, values.cpus_per_run,
                         values.gpus_per_run)
