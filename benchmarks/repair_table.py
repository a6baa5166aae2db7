"""Post-training quantization before and after the repairs, per model: the issue-40 tables.

    python benchmarks/repair_table.py --data ../shared/data/cifar10-jpeg.tar.gz \\
        --models runs/repair/factorizenet-l7-s1-normal_std1.0,zoo:factorizenet-l7 \\
        --out results/repair

For each float model (a run directory, a model file or ``zoo:NAME``), every row of ``VARIANTS``:

- ``ptq`` (weights per channel) and ``ptq_per_tensor`` (one scale per layer) INT8 files, as
  they are and after the repairs named, all calibrated on the same ``--calibration_samples``
  training images; top-1 with LiteRT on every test image (1 thread);
- ``w4``: 4-bit weights per output channel (BN folded), activations float, in Keras
  (``fnet_tf.analysis.repair_effect.four_bit_model``): nearest rounding, or AdaRound; and the
  float model itself.

Also per model: the widest BN-folded channel-range ratio over the equalizable layers, before
and after CLE. Writes ``repair.csv``, ``repair.md`` and ``repair.png`` to ``--out``. A later
call adds what is missing: rows already in ``repair.csv`` are kept, not measured again, unless
``--remeasure``.
"""
import csv
import io
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fnet_tf.core.backend import configure_threads  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", None, "Run directories, model files or zoo:NAME.")
flags.DEFINE_string("data", "../shared/data/cifar10-jpeg.tar.gz", "Dataset (calibration from "
                    "its training split, accuracy on its test split).")
flags.DEFINE_integer("calibration_samples", 500, "Training images to calibrate and repair on.")
flags.DEFINE_integer("adaround_iterations", 1000, "AdaRound's optimisation steps per layer.")
flags.DEFINE_integer("limit", None, "Test images (default: all).")
flags.DEFINE_string("out", "results/repair", "Output folder.")
flags.DEFINE_integer("threads", 1, "CPU threads.")
flags.DEFINE_bool("remeasure", False, "Measure again the rows already in repair.csv.")

VARIANTS = (("float", "none"),
            ("ptq", "none"), ("ptq_per_tensor", "none"),
            ("ptq_per_tensor", "cle"), ("ptq_per_tensor", "cle,bias_correction"),
            ("ptq_per_tensor", "cle,bias_absorption,bias_correction"),
            ("ptq_per_tensor", "cle,adaround"),
            ("ptq", "cle,bias_correction"),
            ("w4", "none"), ("w4", "adaround"))
COLUMNS = ["model", "scheme", "repair", "accuracy", "num_images", "widest_ratio",
           "widest_ratio_layer"]


def load_float(target):
    from fnet_tf.release import zoo
    from fnet_tf.run import artifacts
    from fnet_tf.run.rundir import RunDir

    name = zoo.released_name(target)
    if name:
        return zoo.keras_model(name)
    if artifacts.is_run_dir(target):
        return artifacts.float_model(RunDir(target))
    return artifacts.load_keras_model(target)


def label(target):
    return target.rstrip("/").split("/")[-1].replace("zoo:", "")


def measure(target, dataset, calibration, done):
    """The rows of ``VARIANTS`` not in ``done`` ({(scheme, repair)}) for one model."""
    from fnet_tf.analysis import repair_effect
    from fnet_tf.data import datasets as data_lib
    from fnet_tf.quantization import repair
    from fnet_tf.quantization.adaround import AdaRoundSettings
    from fnet_tf.quantization.schemes import get_scheme
    from fnet_tf.tflite import convert, measure as litert

    model = load_float(target)
    _, unrepaired = repair.repaired(model, ("cle",))  # the ratios before CLE, for every row
    settings = AdaRoundSettings(iterations=FLAGS.adaround_iterations)
    count = len(dataset.test) if FLAGS.limit is None else min(FLAGS.limit, len(dataset.test))
    rows = []
    for scheme_name, repairs_text in VARIANTS:
        if (scheme_name, repairs_text) in done:
            continue
        repairs = repair.parse_repairs("" if repairs_text == "none" else repairs_text)
        report = None
        if scheme_name == "float":
            accuracy = repair_effect.keras_accuracy(model, dataset.test, FLAGS.limit)
        elif scheme_name == "w4":
            quantized, _, _ = repair_effect.four_bit_model(model, repairs, calibration, settings)
            accuracy = repair_effect.keras_accuracy(quantized, dataset.test, FLAGS.limit)
        else:
            scheme = get_scheme(scheme_name)
            context = repair.Context(images=calibration, per_channel=scheme.per_channel,
                                     rounding=settings)
            fixed, report = (repair.repaired(model, repairs, context=context) if repairs
                             else (model, None))
            representative = data_lib.representative_dataset(dataset.train,
                                                             FLAGS.calibration_samples)
            content = convert.convert_int8(fixed, representative, scheme)
            accuracy = litert.evaluate_tflite(content, dataset.test, FLAGS.limit,
                                              progress=False)["accuracy_top1"]
        ratios = (report.ratio_after if report is not None and "cle" in repairs
                  else unrepaired.ratio_before)
        widest = max(ratios, key=ratios.get) if ratios else ""
        rows.append({"model": label(target), "scheme": scheme_name, "repair": repairs_text,
                     "accuracy": round(accuracy, 4), "num_images": count,
                     "widest_ratio": round(ratios[widest], 1) if widest else "",
                     "widest_ratio_layer": widest})
        print(f"{rows[-1]['model']} {scheme_name} {repairs_text}: {100 * accuracy:.2f}% "
              f"(widest ratio {rows[-1]['widest_ratio']} at {widest})", flush=True)
    return rows


def write(rows):
    from fnet_tf.core import fileio

    rows = sorted(rows, key=lambda r: (_model_order(rows).index(r["model"]),
                                       _variant_order(r)))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text(os.path.join(FLAGS.out, "repair.csv"), buf.getvalue())
    models = _model_order(rows)
    at = {(r["model"], r["scheme"], r["repair"]): r for r in rows}

    def acc(m, scheme, rep):
        row = at.get((m, scheme, rep))
        return f"{100 * row['accuracy']:.2f}%" if row else "-"

    images = rows[0]["num_images"]
    lines = ["# Post-training quantization before and after the repairs", "",
             f"`benchmarks/repair_table.py`: calibration and repairs on "
             f"{FLAGS.calibration_samples} training images; top-1 on {images:,} test images.", "",
             "## INT8 (LiteRT)", "",
             "| model | float | per-channel | per-tensor | + CLE | + CLE + bias corr. | "
             "+ CLE + bias abs. + bias corr. | + CLE + AdaRound | per-channel + CLE + bias corr. "
             "| widest ratio before -> after CLE |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for m in models:
        before = at.get((m, "ptq_per_tensor", "none"), {})
        after = at.get((m, "ptq_per_tensor", "cle"), {})
        lines.append(
            f"| {m} | {acc(m, 'float', 'none')} | {acc(m, 'ptq', 'none')} | "
            f"{acc(m, 'ptq_per_tensor', 'none')} | {acc(m, 'ptq_per_tensor', 'cle')} | "
            f"{acc(m, 'ptq_per_tensor', 'cle,bias_correction')} | "
            f"{acc(m, 'ptq_per_tensor', 'cle,bias_absorption,bias_correction')} | "
            f"{acc(m, 'ptq_per_tensor', 'cle,adaround')} | "
            f"{acc(m, 'ptq', 'cle,bias_correction')} | {_ratio_change(before, after)} |")
    lines += ["", "## 4-bit weights (per output channel, BN folded; activations float; Keras)", "",
              "| model | float | nearest rounding | AdaRound | AdaRound - float (pts) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for m in models:
        gap = ""
        if (m, "w4", "adaround") in at and (m, "float", "none") in at:
            gap = (f"{100 * (at[(m, 'w4', 'adaround')]['accuracy'] - at[(m, 'float', 'none')]['accuracy']):+.2f}")
        lines.append(f"| {m} | {acc(m, 'float', 'none')} | {acc(m, 'w4', 'none')} | "
                     f"{acc(m, 'w4', 'adaround')} | {gap} |")
    fileio.write_text(os.path.join(FLAGS.out, "repair.md"), "\n".join(lines) + "\n")
    plot(models, at)
    print("\n".join(lines))


def _ratio_change(before, after):
    if not before.get("widest_ratio_layer"):
        return "no equalizable pair"
    return (f"{before['widest_ratio']} ({before['widest_ratio_layer']}) -> "
            f"{after.get('widest_ratio', '')} ({after.get('widest_ratio_layer', '')})")


def _model_order(rows):
    return list(dict.fromkeys(r["model"] for r in rows))


def _variant_order(row):
    key = (row["scheme"], row["repair"])
    return VARIANTS.index(key) if key in VARIANTS else len(VARIANTS)


def plot(models, at):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fnet_tf.core import fileio

    panels = ((("ptq", "none", "per-channel"), ("ptq_per_tensor", "none", "per-tensor"),
               ("ptq_per_tensor", "cle", "per-tensor + CLE"),
               ("ptq_per_tensor", "cle,bias_correction", "per-tensor + CLE + BC"),
               ("ptq_per_tensor", "cle,adaround", "per-tensor + CLE + AdaRound")),
              (("float", "none", "float"), ("w4", "none", "4-bit, nearest"),
               ("w4", "adaround", "4-bit, AdaRound")))
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 3.2 * len(models)), 4.5))
    x = np.arange(len(models))
    for ax, bars, title in zip(axes, panels, ("INT8 (LiteRT)", "4-bit weights, float activations")):
        width = 0.8 / len(bars)
        for i, (scheme, rep, name) in enumerate(bars):
            values = [100 * at[(m, scheme, rep)]["accuracy"] if (m, scheme, rep) in at else np.nan
                      for m in models]
            ax.bar(x + (i - (len(bars) - 1) / 2) * width, values, width, label=name)
        ax.set_xticks(x, models, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(title)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Post-training quantization before and after the repairs")
    fig.tight_layout()
    with fileio.atomic_path(os.path.join(FLAGS.out, "repair.png")) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if not FLAGS.models:
        sys.exit("--models is required")
    configure_threads(FLAGS.threads)
    from fnet_tf.data import datasets as data_lib

    os.makedirs(FLAGS.out, exist_ok=True)
    dataset = data_lib.load(FLAGS.data)
    calibration = dataset.train.images[:FLAGS.calibration_samples].astype("float32")
    rows = earlier_rows()
    if FLAGS.remeasure:
        labels = {label(t) for t in FLAGS.models}
        rows = [r for r in rows if r["model"] not in labels]
    for target in FLAGS.models:
        done = {(r["scheme"], r["repair"]) for r in rows if r["model"] == label(target)}
        rows += measure(target, dataset, calibration, done)
        write(rows)  # after each model: an interrupted call keeps what it measured


def earlier_rows():
    """The rows an earlier call measured (the table grows model by model)."""
    path = os.path.join(FLAGS.out, "repair.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [dict(r, accuracy=float(r["accuracy"]), num_images=int(r["num_images"]))
                for r in csv.DictReader(f)]


if __name__ == "__main__":
    app.run(main)
