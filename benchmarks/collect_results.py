"""Copy the small results of finished runs into ``results/`` and print their table.

    python benchmarks/collect_results.py runs/baseline-* --out results/float-baselines

For each run directory: config.json, metrics.json, history.csv, run.json and, where present,
layer_stats.jsonl and analysis/ are copied (never checkpoints or models, which stay in runs/),
and one markdown table row is printed from metrics.json, so published figures come from files
the training wrote.
"""
import os
import shutil

from absl import flags

from fnet_tf.core import cli
from fnet_tf.core.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "results", "Destination folder.")

SMALL_FILES = ("config.json", "metrics.json", "history.csv", "run.json", "layer_stats.jsonl")


def row(run):
    config = run.config() or {}
    metrics = run.read_json(run.METRICS, {})
    f = metrics.get("float", {})
    q = metrics.get("qat", {})
    return (f"| {config.get('model')} | {config.get('level')} | {f.get('macs', 0) / 1e6:.2f} | "
            f"{f.get('params', 0):,} | {config.get('epochs')} | {f.get('test_accuracy', float('nan')):.2%} | "
            + (f"{q['test_accuracy']:.2%} ({q['scheme']}, {q['epochs']} ep)" if q else "-")
            + f" | {f.get('mean_epoch_seconds') or 0:.1f} |")


def main(argv):
    from fnet_tf.run import artifacts
    from fnet_tf.core import fileio
    from fnet_tf.run.rundir import RunDir

    runs = [RunDir(p) for p in argv[1:] if artifacts.is_run_dir(p)]
    if not runs:
        raise UserError("pass run directories (e.g. runs/baseline-*)")
    lines = ["| model | level | MACs (M) | params | float epochs | float test top-1 | QAT test top-1 (Keras) | s/epoch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        if not run.is_complete("float"):
            print(f"skipping {run.path}: float training not complete")
            continue
        dest = os.path.join(FLAGS.out, os.path.basename(run.path))
        os.makedirs(dest, exist_ok=True)
        for name in SMALL_FILES:
            if os.path.isfile(run.file(name)):
                shutil.copyfile(run.file(name), os.path.join(dest, name))
        if os.path.isdir(run.file("analysis")):
            shutil.copytree(run.file("analysis"), os.path.join(dest, "analysis"), dirs_exist_ok=True)
        lines.append(row(run))
    table = "\n".join(lines) + "\n"
    fileio.write_text(os.path.join(FLAGS.out, "table.md"), table)
    print(table)


if __name__ == "__main__":
    cli.run(main)
