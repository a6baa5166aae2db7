"""Tune the training recipe on the validation split: ``python -m fnet_tf.tune ...``.

Trains the base recipe and one variant per changed setting (one factor at a time), each a
float run of ``fnet_tf.train`` with ``--evaluate_test=false`` in ``OUT/trials/<trial>/``, and
ranks them by the validation accuracy of their last epoch (the last ``--val_split`` training
images, the last 500 of each class for CIFAR-10). The test split is never scored, so the
recipe it picks can be tested once per released model. A killed tuning run resumes: finished
trials are reused and the trial in progress continues from its last epoch.

    python -m fnet_tf.tune --model factorizenet --level 7 --data ../shared/data/cifar10-jpeg.tar.gz \\
        --epochs 15 --out tuning/factorizenet-l7 \\
        --vary label_smoothing=0.1 --vary weight_decay=2.5e-3,1e-2 --vary lr=0.05,0.2

``OUT`` gets ``tune.csv`` (one row per trial), ``tune.md`` (ranked table), ``chosen.json``
(the winning settings), ``chosen.flags`` (the same as an absl flagfile: ``fnet_tf.train
--flagfile OUT/chosen.flags``, ``fnet_tf.sweep --recipe_flags OUT/chosen.flags``) and
``val_curves.png`` (validation accuracy per epoch).

``--search tpe --space lr=0.02:0.5:log ...`` lets Optuna's TPE sampler propose the trials
instead (``fnet_tf/search/recipe_search.py``), and ``--executor ray`` trains them as Ray tasks
(``fnet_tf/search/executors.py``; docs/sweeps.md).
"""
import csv
import functools
import io
import os

from absl import flags

from fnet_tf.arch import flags as arch_flags
from fnet_tf.core import cli
from fnet_tf.core.errors import UserError
from fnet_tf.core.wording import count
from fnet_tf.search import executors, recipe_grid, recipe_search
from fnet_tf.search.recipe_grid import BASE, plan_trials

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "factorizenet", "Registered model.")
arch_flags.define_level(0)
arch_flags.define_width()
flags.DEFINE_string("data", None, "Dataset (as fnet_tf.train --data).")
flags.DEFINE_string("out", None, "Tuning directory (trials/, tune.csv, tune.md, chosen.json).")
flags.DEFINE_integer("epochs", 15, "Float epochs per trial (the same for every trial).")
flags.DEFINE_integer("val_split", 5000, "Training images held out for validation (> 0).")
flags.DEFINE_list("base", [], "Settings of the base recipe that differ from fnet_tf.train's "
                  "defaults, e.g. 'lr=0.1,weight_decay=5e-3'.")
flags.DEFINE_multi_string("vary", [], "SETTING=V1,V2,...: one trial per value, the other "
                          "settings as in the base recipe. Repeatable.")
flags.DEFINE_integer("seed", 0, "Seed of every trial (weights, data order, augmentation).")
flags.DEFINE_integer("threads", 0, "CPU threads for training (0: all cores).")
flags.DEFINE_string("cache_dir", None, "Dataset cache directory.")
flags.DEFINE_bool("report", False, "Only rank the finished trials in --out; trains nothing.")
flags.DEFINE_enum("search", "grid", ["grid", "tpe"], "'grid': the base recipe and one "
                  "--vary change at a time; 'tpe': Optuna's TPE sampler over --space for --trials "
                  "trials (fnet_tf/search/recipe_search.py).")
flags.DEFINE_multi_string("space", [], "--search tpe: SETTING=LOW:HIGH[:log] or "
                          "SETTING=CHOICE,CHOICE. Repeatable.")
flags.DEFINE_integer("trials", 12, "--search tpe: trials in all.")
flags.DEFINE_integer("trials_at_once", 2, "--search tpe: trials the sampler proposes at once "
                     "(trained side by side with --executor ray).")
executors.define_flags()

COLUMNS = ["trial", "setting", "value", "val_accuracy", "best_val_accuracy", "best_epoch",
           "epochs", "mean_epoch_seconds"]


def train_args(settings, threads, data, cache_dir):
    """A trial's fnet_tf.train arguments, all but --run_dir."""
    args = ["-m", "fnet_tf.train", "--model", FLAGS.model, "--level", str(FLAGS.level),
            "--width", str(FLAGS.width), "--data", data, "--epochs", str(FLAGS.epochs),
            "--qat_epochs", "0", "--val_split", str(FLAGS.val_split), "--seed", str(FLAGS.seed),
            "--threads", str(threads), "--evaluate_test=false", "--layer_stats=false",
            "--verbose", "2"]
    args += [f"--{k}={v}" for k, v in settings.items()]
    return args + (["--cache_dir", cache_dir] if cache_dir else [])


def run_trials(trials, executor):
    executor.run(trial_jobs(trials, executor), FLAGS.out)


def trial_jobs(trials, executor):
    """One executor job per trial, each training it (or reusing it when finished)."""
    spread = executor.name != "local"  # a Ray task runs in another folder, maybe elsewhere
    place = os.path.abspath if spread else (lambda path: path)
    data = place(FLAGS.data)
    cache_dir = place(FLAGS.cache_dir) if FLAGS.cache_dir else None
    threads = executor.threads if executor.threads is not None else FLAGS.threads
    jobs = []
    for i, (name, _, _, settings) in enumerate(trials, 1):
        run_dir = place(os.path.join(FLAGS.out, "trials", name))
        args = train_args(settings, threads, data, cache_dir)
        jobs.append(executors.Job(name, run_dir, functools.partial(
            recipe_grid.run_trial, args, f"trial {i}/{len(trials)} {name}", FLAGS.epochs),
            recipe_grid.trial_finished))
    return jobs


def report(out, trials):
    """Rank the finished trials by last-epoch validation accuracy; write the four outputs."""
    from fnet_tf.analysis import plots
    from fnet_tf.core import fileio

    searched = any(setting == "search" for _, setting, _, _ in trials)
    rows = []
    for name, setting, value, settings in trials:
        result = recipe_grid.trial_result(os.path.join(out, "trials", name))
        if result:
            rows.append({"trial": name, "setting": setting, "value": value,
                         "settings": settings, **result})
    if not rows:
        raise UserError(f"no finished trial in {out}/trials: run the tuning first")
    rows.sort(key=lambda r: -r["val_accuracy"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text(os.path.join(out, "tune.csv"), buf.getvalue())
    base = next((r for r in rows if r["trial"] == BASE), None)
    epochs = "/".join(str(e) for e in sorted({r["epochs"] for r in rows}))  # as trained
    lines = [f"# Recipe tuning: {FLAGS.model} level {FLAGS.level}, {epochs} epochs per "
             f"trial, validation split ({FLAGS.val_split} held-out training images), seed "
             f"{FLAGS.seed}", "",
             (f"Optuna's TPE sampler (seed {FLAGS.seed}) over " + ", ".join(FLAGS.space)
              + f"; {count(len(trials), 'trial')} proposed" if searched else
              "Base recipe: fnet_tf.train's defaults"
              + (f" with {', '.join(f'{k}={v}' for k, v in trials[0][3].items())}"
                 if trials[0][3] else "") + "; each other trial changes one setting."), "",
             f"| rank | trial | val top-1 (last epoch) | {'settings' if searched else 'vs base'} "
             f"| best val (epoch) | s/epoch |",
             "| --- | --- | --- | --- | --- | --- |"]
    for rank, r in enumerate(rows, 1):
        delta = f"{100 * (r['val_accuracy'] - base['val_accuracy']):+.2f}" if base else "?"
        delta = r["value"] if searched else delta
        secs = f"{r['mean_epoch_seconds']:.1f}" if r["mean_epoch_seconds"] else "?"
        lines.append(f"| {rank} | {r['trial']} | {100 * r['val_accuracy']:.2f}% | {delta} | "
                     f"{100 * r['best_val_accuracy']:.2f}% ({r['best_epoch']}) | {secs} |")
    missing = [t[0] for t in trials if t[0] not in {r["trial"] for r in rows}]
    if missing:
        lines += ["", f"Not finished: {', '.join(missing)}."]
    chosen = rows[0]
    shown = ", ".join(f"{k}={v}" for k, v in chosen["settings"].items()) or "the defaults"
    lines += ["", f"Chosen: **{chosen['trial']}** ({shown}; ranked by the last epoch's validation "
              f"accuracy; one seed, so differences of a few tenths of a point are within "
              f"seed noise)."]
    fileio.write_text(os.path.join(out, "tune.md"), "\n".join(lines) + "\n")
    fileio.write_json(os.path.join(out, "chosen.json"), {
        "trial": chosen["trial"], "settings": chosen["settings"],
        "train_flags": [f"--{k}={v}" for k, v in chosen["settings"].items()],
        "val_accuracy": chosen["val_accuracy"], "epochs_per_trial": epochs,
        "model": FLAGS.model, "level": FLAGS.level, "seed": FLAGS.seed,
        "finished_trials": len(rows), "planned_trials": len(trials)})
    fileio.write_text(os.path.join(out, "chosen.flags"),
                      "".join(f"--{k}={v}\n" for k, v in chosen["settings"].items()))
    plots.val_curves({r["trial"]: r["curve"] for r in rows}, os.path.join(out, "val_curves.png"),
                     f"{FLAGS.model} level {FLAGS.level}: validation accuracy per epoch")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])!r}: flags only")
    if not FLAGS.out:
        raise UserError("--out is required: the tuning directory, e.g. tuning/factorizenet-l7")
    if FLAGS.val_split <= 0:
        raise UserError(f"--val_split must be positive (tuning scores the validation split), "
                        f"got {FLAGS.val_split}")
    if FLAGS.epochs < 1:
        raise UserError(f"--epochs must be 1 or more, got {FLAGS.epochs}")
    tpe = FLAGS.search == "tpe"
    if tpe and (FLAGS.vary or FLAGS.trials < 1 or FLAGS.trials_at_once < 1):
        raise UserError("--search tpe takes --space ranges (not --vary) and --trials and "
                        "--trials_at_once of 1 or more")
    space = recipe_grid.parse_space(FLAGS.space) if tpe else None
    trials = plan_trials(FLAGS.base, FLAGS.vary)
    base = trials[0][3]
    if tpe:
        trials = recipe_search.recorded_trials(base, FLAGS.out)  # what --report ranks
    if not FLAGS.report:
        from fnet_tf.arch import architectures
        from fnet_tf.data import datasets as data_lib

        if not FLAGS.data:
            raise UserError("--data is required to train (e.g. ../shared/data/cifar10-jpeg.tar.gz)")
        architectures.model_spec(FLAGS.model, FLAGS.level, FLAGS.width)  # fails fast if unknown
        data_lib.check_source(FLAGS.data)
        executor = executors.from_flags(FLAGS)
        if tpe:
            recipe_search.import_optuna()  # says so before any work
            trials = recipe_search.search(space, base, FLAGS.trials, FLAGS.trials_at_once,
                                          FLAGS.seed, FLAGS.out,
                                          lambda batch: run_trials(batch, executor))
        else:
            run_trials(trials, executor)
    print(report(FLAGS.out, trials))
    return 0


if __name__ == "__main__":
    cli.run(main)
