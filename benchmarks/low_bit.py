"""Below 8 bits (issue 16): int8 QAT, hybrid ternary filter banks and DBQ from one float model.

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
then re-plots every table under ``--results`` (accuracy vs packed size and vs energy).
A killed run resumes with the same command; finished steps are reused.
"""
import csv
import io
import os
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fnet_tf import cli  # noqa: E402
from fnet_tf.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "factorizenet", "Registered model.")
cli.define_level(3)
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
COLUMNS = ["variant", "scheme", "litert_top1", "litert_top5", "keras_qat_top1", "agreement",
           "packed_bytes", "int8_bytes", "packed_vs_int8", "ternary_weight_share",
           "branch_weight_share", "ternary_mac_share", "energy_nj", "energy_nj_int8",
           "latency_p50_ms", "latency_p90_ms", "file_bytes", "num_images"]
RESULT = "low_bit.json"


def _run_dir(variant):
    return os.path.join(FLAGS.out, variant)


def _sensitivity_csv():
    return os.path.join(_run_dir("int8"), "analysis", "sensitivity.csv")


def _train_args(variant):
    extra = [_sensitivity_csv() if a == SENSITIVITY else a for a in VARIANTS[variant]]
    args = ["-m", "fnet_tf.train", "--model", FLAGS.model, "--level", str(FLAGS.level),
            "--data", FLAGS.data, "--run_dir", _run_dir(variant), "--epochs", "0",
            "--init_from", FLAGS.init_from, "--qat_epochs", str(FLAGS.qat_epochs),
            "--threads", str(FLAGS.threads), "--verbose", "2", *extra]
    return args + (["--cache_dir", FLAGS.cache_dir] if FLAGS.cache_dir else [])


def _steps(variant):
    """(name, done, args) of one variant, in order."""
    from fnet_tf.rundir import RunDir

    run = RunDir(_run_dir(variant))
    cache = ["--cache_dir", FLAGS.cache_dir] if FLAGS.cache_dir else []
    steps = [("train", lambda: run.is_complete("qat"), _train_args(variant)),
             ("export", lambda: run.is_complete("export:model_int8.tflite"),
              ["-m", "fnet_tf.to_tflite", run.path, "--check_images", str(FLAGS.check_images),
               *cache])]
    if variant == "int8" and any(SENSITIVITY in VARIANTS[v] for v in FLAGS.variants):
        steps.append(("sensitivity", lambda: os.path.isfile(_sensitivity_csv()),
                      ["-m", "fnet_tf.analyze", run.path, "--sensitivity", *cache]))
    return steps


def _measure(variant, dataset):
    """Test accuracy (LiteRT) and bit budget of one exported variant, cached in its run."""
    from fnet_tf import benchmark, fileio
    from fnet_tf.analysis.bit_budget import bit_budget
    from fnet_tf.rundir import RunDir

    run = RunDir(_run_dir(variant))
    path = run.file("model_int8.tflite")
    cached = run.read_json(RESULT, None)
    if cached and cached.get("file_bytes") == os.path.getsize(path):
        return cached
    with open(path, "rb") as f:
        content = f.read()
    print(f"{variant}: evaluating {path} on {len(dataset.test):,} test images", flush=True)
    accuracy = benchmark.evaluate_tflite(content, dataset.test, progress=False)
    _, budget = bit_budget(content)
    qat = (run.read_json(run.METRICS, {}) or {}).get("qat", {})
    export_step = run.manifest()["steps"].get("export:model_int8.tflite", {})
    row = {"variant": variant, "scheme": run.manifest()["steps"]["qat"].get("scheme"),
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


def _markdown(rows, title):
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
    from fnet_tf import fileio

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in COLUMNS})
    fileio.write_text(os.path.join(FLAGS.results, f"{name}.csv"), text.getvalue())
    fileio.write_text(os.path.join(FLAGS.results, f"{name}.md"), _markdown(
        rows, f"{name}: {FLAGS.qat_epochs} QAT epochs per variant from {FLAGS.init_from}"))


def replot(results):
    """accuracy_vs_packed_size.png, accuracy_vs_energy.png of every table in ``results``."""
    from fnet_tf.analysis import plots

    tables = {}
    for name in sorted(os.listdir(results)):
        if name.endswith(".csv"):
            with open(os.path.join(results, name), newline="") as f:
                tables[name[:-4]] = list(csv.DictReader(f))
    if not tables:
        return
    for x, label, fname in (("packed_bytes", "packed weight size (bytes)", "accuracy_vs_packed_size"),
                            ("energy_nj", "energy per inference (nJ, 45 nm estimate)",
                             "accuracy_vs_energy")):
        plots.low_bit(tables, x, label, os.path.join(results, f"{fname}.png"),
                      f"INT8 test top-1 (LiteRT) vs {label.split(' (')[0]}")


def main(argv):
    from fnet_tf.child import run_streamed

    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])!r}: flags only")
    if FLAGS.plots_only:
        replot(FLAGS.results)
        return 0
    if not FLAGS.init_from or not FLAGS.data:
        raise UserError("pass --init_from (the float weights) and --data")
    FLAGS.variants = FLAGS.variants or list(VARIANTS)
    unknown = [v for v in FLAGS.variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    if any(SENSITIVITY in VARIANTS[v] for v in FLAGS.variants) and "int8" not in FLAGS.variants:
        FLAGS.variants.insert(0, "int8")  # its float run gives the sensitivity table
    FLAGS.out = FLAGS.out or os.path.join("sweeps", "low-bit", f"{FLAGS.model}-l{FLAGS.level}")
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

    from fnet_tf import benchmark, data as data_lib

    dataset = data_lib.load(FLAGS.data, cache_dir=FLAGS.cache_dir)
    rows = [_measure(v, dataset) for v in order]
    contents = [open(os.path.join(_run_dir(v), "model_int8.tflite"), "rb").read() for v in order]
    print(f"timing {len(contents)} files interleaved, {FLAGS.latency_runs} invokes each", flush=True)
    for row, timing in zip(rows, benchmark.latency(contents, threads=1, runs=FLAGS.latency_runs)):
        row.update(latency_p50_ms=timing["p50"], latency_p90_ms=timing["p90"])
    name = f"{FLAGS.model}-l{FLAGS.level}"
    _write_table(rows, name)
    replot(FLAGS.results)
    print(_markdown(rows, name))
    print(f"wrote {FLAGS.results}/{name}.csv, .md and the plots")
    return 0


if __name__ == "__main__":
    cli.entry_point(main)()
