"""Variants of one model trained, exported and measured alike, in one table.

``--study low_bit`` (issue 16): int8 QAT, hybrid ternary filter banks and DBQ from one float
model. ``--study qat_recipes`` (issue 17): finetune, scratch, statassist and statassist +
GradBoost at one float-equivalent epoch budget (``--budget_epochs``), from scratch; with
``--variants``, also ``statassist-ramp`` (and ``-gradboost``): the warm-up LR as the reference
code runs it (``--statassist_warmup ramp``).

    python benchmarks/low_bit.py --model factorizenet --level 3 \\
        --init_from results/float-keras3-e80/factorizenet-l3 \\
        --data ../shared/data/cifar10-jpeg.tar.gz --results results/low-bit

Every variant QAT-trains from the same float weights with the same budget (``--qat_epochs``,
the QAT learning rate of ``fnet_tf.train``), as its own resumable run directory under
``--out``; the ``sensitivity`` allocations use ``fnet_tf.analyze --sensitivity`` of the int8
run's float model (validation split). Each run is exported to a verified fully-int8 ``.tflite``
and measured with the LiteRT interpreter on the whole test split (1 thread), its weights
accounted by ``fnet_tf.analysis.bit_budget`` (packed size, ternary MAC share, energy), and all
files are timed interleaved in one pass. Writes ``<results>/<model>-l<level>.csv`` and ``.md``,
then re-plots every table under ``--results`` (low_bit: accuracy vs packed size and vs energy;
qat_recipes: ``qat_recipes.png`` and ``summary.md``, every model's recipes side by side).
A killed run resumes with the same command; finished steps are reused.
"""
import csv
import io
import os
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fnet_tf.arch import flags as arch_flags
from fnet_tf.core import cli  # noqa: E402
from fnet_tf.core.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "factorizenet", "Registered model.")
arch_flags.define_level(3)
flags.DEFINE_string("init_from", None, "The float model every variant starts from (as "
                    "fnet_tf.train --init_from).")
flags.DEFINE_string("data", None, "Dataset (as fnet_tf.train --data).")
flags.DEFINE_string("out", None, "Run directories (default sweeps/low-bit/<model>-l<level>).")
flags.DEFINE_string("results", "results/low-bit", "Where the tables and plots go.")
flags.DEFINE_integer("qat_epochs", 3, "QAT epochs of every variant.")
flags.DEFINE_integer("threads", 0, "CPU threads for training (0: all).")
flags.DEFINE_list("variants", None, "Variants to run (default: all of VARIANTS).")
flags.DEFINE_integer("check_images", 2000, "Test images for the export's Keras/LiteRT check.")
flags.DEFINE_integer("latency_runs", 300, "Timed invokes per model in the interleaved pass.")
flags.DEFINE_string("cache_dir", None, "Dataset cache directory.")
flags.DEFINE_bool("plots_only", False, "Only re-plot the tables under --results.")
flags.DEFINE_enum("study", "low_bit", ["low_bit", "qat_recipes"], "low_bit: the sub-8-bit "
                  "schemes from one float model (issue 16); qat_recipes: finetune, scratch, "
                  "statassist and statassist + GradBoost at one epoch budget (issue 17).")
flags.DEFINE_integer("budget_epochs", 20, "--study qat_recipes: float-equivalent epochs of every "
                     "recipe (finetune: budget - 3 float + 3 QAT; scratch: all QAT; statassist: "
                     "1 float warm-up + the rest QAT).")
flags.DEFINE_string("recipe_flags", None, "--study qat_recipes: a flagfile of recipe settings "
                    "for every run (e.g. the tuner's chosen.flags).")

SENSITIVITY = "@sensitivity"  # replaced by the int8 run's sensitivity.csv
VARIANTS = {
    "int8": [],
    "hybrid-0.5-uniform": ["--qat_scheme", "ternary_hybrid", "--ternary_fraction", "0.5"],
    "hybrid-0.5-sensitivity": ["--qat_scheme", "ternary_hybrid", "--ternary_fraction", "0.5",
                               "--ternary_allocation", "sensitivity",
                               "--sensitivity_csv", SENSITIVITY],
    "hybrid-0.75-uniform": ["--qat_scheme", "ternary_hybrid", "--ternary_fraction", "0.75"],
    "hybrid-0.75-sensitivity": ["--qat_scheme", "ternary_hybrid", "--ternary_fraction", "0.75",
                                "--ternary_allocation", "sensitivity",
                                "--sensitivity_csv", SENSITIVITY],
    "hybrid-0.6-sensitivity": ["--qat_scheme", "ternary_hybrid", "--ternary_fraction", "0.6",
                               "--ternary_allocation", "sensitivity",
                               "--sensitivity_csv", SENSITIVITY],
    "dbq-k1": ["--qat_scheme", "dbq", "--dbq_branches", "1"],
    "dbq-k2": ["--qat_scheme", "dbq", "--dbq_branches", "2"],
}
def recipe_variants(budget):
    """--study qat_recipes: each recipe's training flags at ``budget`` float-equivalent epochs."""
    statassist = ["--qat_recipe", "statassist", "--statassist_epochs", "1",
                  "--qat_epochs", str(budget - 1)]
    return {"finetune": ["--epochs", str(budget - 3), "--qat_epochs", "3"],
            "scratch": ["--qat_recipe", "scratch", "--epochs", "0", "--qat_epochs", str(budget)],
            "statassist": statassist,
            "statassist-gradboost": [*statassist, "--optimizer", "sgd_gradboost"],
            # opt-in (--variants): the warm-up LR as the reference code runs it
            "statassist-ramp": [*statassist, "--statassist_warmup", "ramp"],
            "statassist-ramp-gradboost": [*statassist, "--statassist_warmup", "ramp",
                                          "--optimizer", "sgd_gradboost"]}


RECIPES_BY_DEFAULT = ("finetune", "scratch", "statassist", "statassist-gradboost")


def variants():
    return VARIANTS if FLAGS.study == "low_bit" else recipe_variants(FLAGS.budget_epochs)


COLUMNS = ["variant", "scheme", "float_epochs", "qat_epochs", "optimizer", "float_top1",
           "litert_top1", "litert_top5", "keras_qat_top1", "agreement",
           "packed_bytes", "int8_bytes", "packed_vs_int8", "ternary_weight_share",
           "branch_weight_share", "ternary_mac_share", "energy_nj", "energy_nj_int8",
           "latency_p50_ms", "latency_p90_ms", "file_bytes", "num_images"]
RESULT = "low_bit.json"


def _run_dir(variant):
    return os.path.join(FLAGS.out, variant)


def _sensitivity_csv():
    return os.path.join(_run_dir("int8"), "analysis", "sensitivity.csv")


def _train_args(variant):
    extra = [_sensitivity_csv() if a == SENSITIVITY else a for a in variants()[variant]]
    args = ["-m", "fnet_tf.train", "--model", FLAGS.model, "--level", str(FLAGS.level),
            "--data", FLAGS.data, "--run_dir", _run_dir(variant),
            "--threads", str(FLAGS.threads), "--verbose", "2"]
    if FLAGS.study == "low_bit":
        args += ["--epochs", "0", "--init_from", FLAGS.init_from,
                 "--qat_epochs", str(FLAGS.qat_epochs)]
    elif FLAGS.recipe_flags:
        args += ["--flagfile", os.path.abspath(FLAGS.recipe_flags)]
    return args + extra + (["--cache_dir", FLAGS.cache_dir] if FLAGS.cache_dir else [])


def _steps(variant):
    """(name, done, args) of one variant, in order."""
    from fnet_tf.run.rundir import RunDir

    run = RunDir(_run_dir(variant))
    cache = ["--cache_dir", FLAGS.cache_dir] if FLAGS.cache_dir else []
    steps = [("train", lambda: run.is_complete("qat"), _train_args(variant)),
             ("export", lambda: run.is_complete("export:model_int8.tflite"),
              ["-m", "fnet_tf.to_tflite", run.path, "--check_images", str(FLAGS.check_images),
               *cache])]
    if variant == "int8" and any(SENSITIVITY in variants()[v] for v in FLAGS.variants):
        steps.append(("sensitivity", lambda: os.path.isfile(_sensitivity_csv()),
                      ["-m", "fnet_tf.analyze", run.path, "--sensitivity", *cache]))
    return steps


def _measure(variant, dataset):
    """Test accuracy (LiteRT) and bit budget of one exported variant, cached in its run."""
    from fnet_tf.tflite import measure as benchmark
    from fnet_tf.core import fileio
    from fnet_tf.analysis.bit_budget import bit_budget
    from fnet_tf.run.rundir import RunDir

    run = RunDir(_run_dir(variant))
    path = run.file("model_int8.tflite")
    cached = run.read_json(RESULT, None)
    measured = set(COLUMNS) - {"latency_p50_ms", "latency_p90_ms"}
    if cached and cached.get("file_bytes") == os.path.getsize(path) and measured <= set(cached):
        return cached
    with open(path, "rb") as f:
        content = f.read()
    print(f"{variant}: evaluating {path} on {len(dataset.test):,} test images", flush=True)
    accuracy = benchmark.evaluate_tflite(content, dataset.test, progress=False)
    _, budget = bit_budget(content)
    metrics = run.read_json(run.METRICS, {}) or {}
    qat, float_phase = metrics.get("qat", {}), metrics.get("float", {})
    config = run.config()
    export_step = run.manifest()["steps"].get("export:model_int8.tflite", {})
    row = {"variant": variant, "scheme": run.manifest()["steps"]["qat"].get("scheme"),
           "float_epochs": float_phase.get("epochs"), "qat_epochs": qat.get("epochs"),
           "optimizer": config.get("optimizer"), "float_top1": float_phase.get("test_accuracy"),
           "litert_top1": accuracy["accuracy_top1"], "litert_top5": accuracy["accuracy_top5"],
           "keras_qat_top1": qat.get("test_accuracy"), "agreement": export_step.get("agreement"),
           "packed_bytes": budget["packed_bytes"], "int8_bytes": budget["int8_bytes"],
           "packed_vs_int8": budget["packed_vs_int8"],
           "ternary_weight_share": budget["ternary_weight_share"],
           "branch_weight_share": budget["branch_weight_share"],
           "ternary_mac_share": budget["ternary_mac_share"],
           "energy_nj": budget["energy_pj"] / 1e3, "energy_nj_int8": budget["energy_pj_int8"] / 1e3,
           "file_bytes": len(content), "num_images": accuracy["num_images"]}
    fileio.write_json(run.file(RESULT), row)
    return row


def _percent(value):
    return "-" if value is None or value == "" else f"{float(value):.2%}"


def _recipes_markdown(rows, title):
    lines = [f"# {title}", "",
             "| recipe | optimizer | float + QAT epochs | float top-1 (Keras) | QAT top-1 (Keras) "
             "| **INT8 top-1 (LiteRT)** | INT8/Keras agreement | p50 ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        # scratch has no float phase: its 'float' figure is the untrained model's
        float_top1 = _percent(r["float_top1"]) if int(r["float_epochs"] or 0) else "-"
        lines.append(f"| {r['variant']} | {r['optimizer']} | {r['float_epochs'] or 0} + "
                     f"{r['qat_epochs']} | {float_top1} | "
                     f"{_percent(r['keras_qat_top1'])} | **{_percent(r['litert_top1'])}** | "
                     f"{_percent(r['agreement'])} | {r['latency_p50_ms']:.3f} |")
    lines += ["", f"Every row: {rows[0]['num_images']:,} test images; the float top-1 is the "
              "float phase's own (after the warm-up alone for statassist); agreement on the "
              "export check's images."]
    return "\n".join(lines) + "\n"


def _markdown(rows, title):
    if FLAGS.study == "qat_recipes":
        return _recipes_markdown(rows, title)
    lines = [f"# {title}", "",
             "| variant | LiteRT top-1 | packed bytes | vs int8 | ternary weights | ternary MACs "
             "| energy nJ | p50 ms |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['litert_top1']:.2%} | {r['packed_bytes']:,.0f} | "
                     f"{r['packed_vs_int8']:.1%} | {r['branch_weight_share']:.1%} | "
                     f"{r['ternary_mac_share']:.1%} | {r['energy_nj']:,.1f} | "
                     f"{r['latency_p50_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def _write_table(rows, name):
    from fnet_tf.core import fileio

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in COLUMNS})
    fileio.write_text(os.path.join(FLAGS.results, f"{name}.csv"), text.getvalue())
    title = (f"{name}: {FLAGS.qat_epochs} QAT epochs per variant from {FLAGS.init_from}"
             if FLAGS.study == "low_bit" else
             f"{name}: QAT recipes at {FLAGS.budget_epochs} float-equivalent epochs"
             + (f" ({os.path.basename(FLAGS.recipe_flags)}: {open(FLAGS.recipe_flags).read().split()})"
                if FLAGS.recipe_flags else ""))
    fileio.write_text(os.path.join(FLAGS.results, f"{name}.md"), _markdown(rows, title))


def _read_tables(results):
    """{model-l<level>: rows} of every table (CSV) under ``results``."""
    tables = {}
    for name in sorted(os.listdir(results)):
        if name.endswith(".csv"):
            with open(os.path.join(results, name), newline="") as f:
                tables[name[:-4]] = list(csv.DictReader(f))
    return tables


def recipes_summary(top1, recipes, budget):
    """summary.md of --study qat_recipes from {model: {recipe: INT8 top-1}}: each recipe on
    every model and its difference from ``finetune`` (today's default) at the same budget."""
    models = sorted(top1)
    lines = [f"# QAT recipes at {budget} float-equivalent epochs: INT8 test top-1 (LiteRT)", "",
             "| recipe | " + " | ".join(f"{m} | vs finetune" for m in models) + " |",
             "| --- |" + " ---: | ---: |" * len(models)]
    for recipe in recipes:
        cells = []
        for m in models:
            value, base = top1[m].get(recipe), top1[m].get("finetune")
            cells += [_percent(value), "-" if value is None or base is None or recipe == "finetune"
                      else f"{100 * (value - base):+.2f} pts"]
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell is one training seed (seed 0) on the whole test split; the per-model "
              "tables beside this file give the float and Keras QAT figures and the latencies."]
    return "\n".join(lines) + "\n"


def recipes_report(results):
    """qat_recipes.png and summary.md from every table under ``results``."""
    from fnet_tf.core import fileio
    from fnet_tf.analysis import plots

    tables = _read_tables(results)
    if not tables:
        return
    top1 = {m: {r["variant"]: float(r["litert_top1"]) for r in rows} for m, rows in tables.items()}
    recipes = [r for r in recipe_variants(FLAGS.budget_epochs) if any(r in t for t in top1.values())]
    fileio.write_text(os.path.join(results, "summary.md"),
                      recipes_summary(top1, recipes, FLAGS.budget_epochs))
    plots.qat_recipes(top1, recipes, os.path.join(results, "qat_recipes.png"),
                      f"QAT recipes at {FLAGS.budget_epochs} float-equivalent epochs "
                      "(one seed each)")


def replot(results):
    """accuracy_vs_packed_size.png, accuracy_vs_energy.png of every table in ``results``."""
    from fnet_tf.analysis import plots

    tables = _read_tables(results)
    if not tables:
        return
    for x, label, fname in (("packed_bytes", "packed weight size (bytes)", "accuracy_vs_packed_size"),
                            ("energy_nj", "energy per inference (nJ, 45 nm estimate)",
                             "accuracy_vs_energy")):
        plots.low_bit(tables, x, label, os.path.join(results, f"{fname}.png"),
                      f"INT8 test top-1 (LiteRT) vs {label.split(' (')[0]}")


def main(argv):
    from fnet_tf.core.child import run_streamed

    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])!r}: flags only")
    if FLAGS.plots_only:
        (replot if FLAGS.study == "low_bit" else recipes_report)(FLAGS.results)
        return 0
    if not FLAGS.data or (FLAGS.study == "low_bit" and not FLAGS.init_from):
        raise UserError("pass --data, and --init_from (the float weights) for --study low_bit")
    if FLAGS.study == "qat_recipes" and FLAGS.budget_epochs < 4:
        raise UserError(f"--budget_epochs must be 4 or more, got {FLAGS.budget_epochs}")
    table = variants()
    FLAGS.variants = FLAGS.variants or list(table if FLAGS.study == "low_bit" else
                                            RECIPES_BY_DEFAULT)
    unknown = [v for v in FLAGS.variants if v not in table]
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r}: choose from {', '.join(table)}")
    if any(SENSITIVITY in table[v] for v in FLAGS.variants) and "int8" not in FLAGS.variants:
        FLAGS.variants.insert(0, "int8")  # its float run gives the sensitivity table
    study_dir = "low-bit" if FLAGS.study == "low_bit" else f"qat-recipes-e{FLAGS.budget_epochs}"
    FLAGS.out = FLAGS.out or os.path.join("sweeps", study_dir,
                                          f"{FLAGS.model}-l{FLAGS.level}".replace(".", "_"))
    order = sorted(FLAGS.variants, key=lambda v: v != "int8")
    for index, variant in enumerate(order, 1):
        for step, done, args in _steps(variant):
            prefix = f"{variant} ({index}/{len(order)}) {step}"
            if done():
                print(f"{prefix}: complete, reusing", flush=True)
                continue
            started = time.time()
            run_streamed(args, prefix)
            print(f"{prefix}: done in {time.time() - started:.0f}s", flush=True)

    from fnet_tf.tflite import measure as benchmark
    from fnet_tf.data import datasets as data_lib

    dataset = data_lib.load(FLAGS.data, cache_dir=FLAGS.cache_dir)
    rows = [_measure(v, dataset) for v in order]
    contents = [open(os.path.join(_run_dir(v), "model_int8.tflite"), "rb").read() for v in order]
    print(f"timing {len(contents)} files interleaved, {FLAGS.latency_runs} invokes each", flush=True)
    for row, timing in zip(rows, benchmark.latency(contents, threads=1, runs=FLAGS.latency_runs)):
        row.update(latency_p50_ms=timing["p50"], latency_p90_ms=timing["p90"])
    name = f"{FLAGS.model}-l{FLAGS.level}"
    _write_table(rows, name)
    (replot if FLAGS.study == "low_bit" else recipes_report)(FLAGS.results)
    print(_markdown(rows, name))
    print(f"wrote {FLAGS.results}/{name}.csv, .md and the plots"
          f"{'' if FLAGS.study == 'low_bit' else ' (qat_recipes.png, summary.md)'}")
    return 0


if __name__ == "__main__":
    cli.entry_point(main)()
