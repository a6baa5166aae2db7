"""Points per hour of one sweep, local executor against Ray on this machine, and Ray's overhead.

    pip install -e ".[ray]"
    python benchmarks/ray_sweep.py --out results/ray-sweep

The sweep: ``--levels`` x ``--seeds`` points of FactorizeNet at ``--width``, each trained
``--epochs`` float and ``--qat_epochs`` QAT epochs at one thread (``--threads 1`` locally,
``--cpus_per_run 1`` on Ray), exported (QAT and PTQ INT8) and analyzed, on a class-balanced
slice of the CIFAR-10 JPEG copy (``--per_class`` training and ``--test_per_class`` test images
per class, written once as an archive under ``--work``). The same command runs twice, into
two fresh folders: ``--executor local`` (one point after another) and ``--executor ray`` on a
Ray cluster that the sweep starts on this machine (one CPU per run, so as many points at once
as there are cores). Their sweep.csv must agree but for the timed latency.

Ray's overhead, measured apart: the time ``ray.init()`` takes to start a local cluster, the
time per job of ``--noop_tasks`` empty jobs through the Ray executor on a warm cluster
(connecting, scheduling, pickling a job), and the cost of sending a finished run directory back to
a driver that does not share ``--out`` (``collect_run_files`` + ``write_back`` on one of the
sweep's run directories, its size).

Writes ``ray_sweep.json`` and ``ray_sweep.md`` to ``--out``.
"""
import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "../shared/data/cifar10-jpeg.tar.gz", "The CIFAR-10 JPEG archive.")
flags.DEFINE_integer("per_class", 300, "Training images per class in the slice.")
flags.DEFINE_integer("test_per_class", 100, "Test images per class in the slice.")
flags.DEFINE_integer("val_per_class", 30, "Training images per class held out for validation.")
flags.DEFINE_string("levels", "3,6", "Sweep levels.")
flags.DEFINE_integer("seeds", 2, "Seeds per level.")
flags.DEFINE_float("width", 0.5, "Width multiplier.")
flags.DEFINE_integer("epochs", 3, "Float epochs per point.")
flags.DEFINE_integer("qat_epochs", 1, "QAT epochs per point.")
flags.DEFINE_integer("noop_tasks", 8, "Empty jobs timed through the Ray executor.")
flags.DEFINE_string("out", "results/ray-sweep", "Output folder.")
flags.DEFINE_string("work", "runs/ray-sweep", "Working folder (the slice, the two sweeps).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_slice(source, path, per_class, test_per_class):
    """A class-balanced slice of the JPEG archive (the first N images of each class). The
    archive's listing passes the dataset loader's bounds first (``check_archive``)."""
    if os.path.isfile(path):
        return path
    from fnet_tf.data import datasets as data_lib

    data_lib.check_archive(source, os.path.dirname(os.path.abspath(path)))
    quota = {"train": per_class, "test": test_per_class}
    taken = {}
    tmp = path + ".partial"
    with tarfile.open(source, "r:gz") as src, tarfile.open(tmp, "w:gz") as dst:
        for member in src:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] not in quota:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) >= quota[parts[1]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            dst.addfile(member, src.extractfile(member))
    os.replace(tmp, path)
    return path


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sweep(archive, out, executor_args):
    args = [sys.executable, "-m", "fnet_tf.sweep", "--levels", FLAGS.levels, "--seeds",
            str(FLAGS.seeds), "--width", str(FLAGS.width), "--data", archive, "--out", out,
            "--epochs", str(FLAGS.epochs), "--qat_epochs", str(FLAGS.qat_epochs),
            "--ptq_per_tensor=false", "--latency_runs", "50", "--check_images", "500",
            "--val_split", str(10 * FLAGS.val_per_class), "--threads", "1", *executor_args]
    started = time.time()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    seconds = time.time() - started
    if done.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(executor_args) or 'local'}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def rows(out):
    with open(os.path.join(out, "sweep.csv")) as f:
        return [{k: v for k, v in r.items() if k not in ("latency_p50_ms", "run")}
                for r in csv.DictReader(f)]


def _noop(run_dir):
    pass


def overhead(sample_run):
    import ray
    from ray.cluster_utils import Cluster

    from fnet_tf.search import executors

    started = time.time()
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    init_seconds = time.time() - started  # a local cluster, cold, as --executor ray starts one
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": os.cpu_count()})
    jobs = [executors.Job(f"noop{i}", f"/nonexistent/{i}", _noop, _never)
            for i in range(FLAGS.noop_tasks)]
    executor = executors.RayExecutor(address=cluster.address, cpus_per_run=1)
    scratch = os.path.join(FLAGS.work, "noop")
    executor.run(jobs[:2], scratch)  # warm: the cluster's workers exist afterwards
    started = time.time()
    executor.run(jobs, scratch)  # connect, then every empty job
    per_job = (time.time() - started) / len(jobs)
    cluster.shutdown()

    started = time.time()
    files = executors.collect_run_files(sample_run)
    target = os.path.join(FLAGS.work, "returned", os.path.basename(sample_run))
    executors.write_back(files, target)
    return {"ray_init_seconds": round(init_seconds, 2),
            "seconds_per_empty_job": round(per_job, 3),
            "returned_run_bytes": sum(len(b) for b in files.values()),
            "returned_run_files": len(files),
            "return_seconds": round(time.time() - started, 3)}


def _never(run_dir):
    return False


def main(argv):
    del argv
    os.makedirs(FLAGS.work, exist_ok=True)
    archive = write_slice(FLAGS.data, os.path.join(FLAGS.work, "slice.tar.gz"), FLAGS.per_class,
                          FLAGS.test_per_class)
    figures = {}
    outs = {}
    for name, extra in (("local", []), ("ray", ["--executor", "ray", "--cpus_per_run", "1"])):
        out = os.path.join(FLAGS.work, name)
        shutil.rmtree(out, ignore_errors=True)
        seconds, printed = sweep(archive, out, extra)
        points = len(rows(out))
        figures[name] = {"seconds": round(seconds, 1), "points": points,
                         "points_per_hour": round(3600 * points / seconds, 1)}
        outs[name] = out
        print(f"{name}: {points} points in {seconds:.0f}s", flush=True)
    same = rows(outs["local"]) == rows(outs["ray"])
    sample = sorted(os.listdir(os.path.join(outs["ray"], "runs")))[0]
    figures["ray_overhead"] = overhead(os.path.join(outs["ray"], "runs", sample))
    figures["sweep_csv_equal_but_latency"] = same
    figures["setup"] = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "data": f"CIFAR-10 JPEG slice: {FLAGS.per_class} train + {FLAGS.test_per_class} test "
                f"images per class",
        "sweep": f"levels {FLAGS.levels} x {FLAGS.seeds} seeds, width {FLAGS.width}, "
                 f"{FLAGS.epochs} float + {FLAGS.qat_epochs} QAT epochs, 1 thread per run",
        "date": time.strftime("%Y-%m-%d")}
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "ray_sweep.json"), "w") as f:
        json.dump(figures, f, indent=2)
    o = figures["ray_overhead"]
    text = io.StringIO()
    text.write(f"# Sweep executors: local vs Ray ({figures['setup']['machine']})\n\n"
               f"{figures['setup']['sweep']}; {figures['setup']['data']}; "
               f"{figures['setup']['date']}.\n\n| executor | points | wall s | points/hour |\n"
               "| --- | ---: | ---: | ---: |\n")
    for name in ("local", "ray"):
        r = figures[name]
        text.write(f"| {name} | {r['points']} | {r['seconds']} | {r['points_per_hour']} |\n")
    text.write(f"\nsweep.csv equal but for latency: {same}.\n\nRay's overhead: a local cluster "
               f"starts in {o['ray_init_seconds']} s; an empty job costs "
               f"{o['seconds_per_empty_job']} s through the executor ({FLAGS.noop_tasks} jobs, "
               f"connecting to a warm cluster included); sending a "
               f"run directory back ({o['returned_run_files']} files, "
               f"{o['returned_run_bytes'] / 1e6:.2f} MB) takes {o['return_seconds']} s.\n")
    with open(os.path.join(FLAGS.out, "ray_sweep.md"), "w") as f:
        f.write(text.getvalue())
    print(text.getvalue())


if __name__ == "__main__":
    app.run(main)
