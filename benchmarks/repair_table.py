"""Post-training INT8 before and after the repairs, per model: the issue-40 table.

    python benchmarks/repair_table.py --data ../shared/data/cifar10-jpeg.tar.gz \\
        --models runs/repair/factorizenet-l7-s1-normal_std1.0,zoo:factorizenet-l7 \\
        --out results/repair

For each float model (a run directory, a model file or ``zoo:NAME``) and each post-training
scheme (``ptq``: weights per channel; ``ptq_per_tensor``: one scale per layer), the model is
converted as it is, after cross-layer equalization (``cle``) and after CLE + bias correction
(``cle,bias_correction``), all calibrated on the same ``--calibration_samples`` training images,
and each file's top-1 is measured with LiteRT on every test image (1 thread). Also per model:
the widest BN-folded channel-range ratio over the equalized layers, before and after CLE.
Writes ``repair.csv``, ``repair.md`` and ``repair.png`` to ``--out``; a later call with other
``--models`` adds their rows to the table (a model measured again replaces its rows).
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
flags.DEFINE_integer("calibration_samples", 500, "Training images to calibrate and correct.")
flags.DEFINE_integer("limit", None, "Test images (default: all).")
flags.DEFINE_string("out", "results/repair", "Output folder.")
flags.DEFINE_integer("threads", 1, "CPU threads.")

SCHEMES = ("ptq", "ptq_per_tensor")
VARIANTS = ((), ("cle",), ("cle", "bias_correction"))
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


def measure(target, dataset, calibration):
    from fnet_tf.data import datasets as data_lib
    from fnet_tf.quantization import repair
    from fnet_tf.quantization.schemes import get_scheme
    from fnet_tf.tflite import convert, measure as litert

    model = load_float(target)
    _, unrepaired = repair.repaired(model, ("cle",))  # the ratios before CLE, for every row
    rows = []
    for scheme_name in SCHEMES:
        scheme = get_scheme(scheme_name)
        for repairs in VARIANTS:
            fixed, report = (repair.repaired(model, repairs, calibration,
                                             per_channel=scheme.per_channel)
                             if repairs else (model, None))
            representative = data_lib.representative_dataset(dataset.train,
                                                             FLAGS.calibration_samples)
            content = convert.convert_int8(fixed, representative, scheme)
            result = litert.evaluate_tflite(content, dataset.test, FLAGS.limit, progress=False)
            ratios = report.ratio_after if "cle" in repairs else unrepaired.ratio_before
            widest = max(ratios, key=ratios.get) if ratios else ""
            rows.append({"model": label(target), "scheme": scheme_name,
                         "repair": ",".join(repairs) or "none",
                         "accuracy": round(result["accuracy_top1"], 4),
                         "num_images": result["num_images"],
                         "widest_ratio": round(ratios[widest], 1) if widest else "",
                         "widest_ratio_layer": widest})
            print(f"{rows[-1]['model']} {scheme_name} {rows[-1]['repair']}: "
                  f"{100 * result['accuracy_top1']:.2f}% (widest ratio "
                  f"{rows[-1]['widest_ratio']} at {widest})", flush=True)
    return rows


def write(rows):
    from fnet_tf.core import fileio

    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text(os.path.join(FLAGS.out, "repair.csv"), buf.getvalue())
    models = list(dict.fromkeys(r["model"] for r in rows))
    at = {(r["model"], r["scheme"], r["repair"]): r for r in rows}
    lines = ["# Post-training INT8 before and after the repairs", "",
             f"Top-1 with LiteRT on {rows[0]['num_images']:,} test images; calibration and "
             f"bias correction on {FLAGS.calibration_samples} training images; "
             "`benchmarks/repair_table.py`.", "",
             "| model | per-channel | per-tensor | + CLE | + CLE + bias corr. | per-channel "
             "+ CLE + bias corr. | widest ratio before -> after CLE |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for m in models:
        def acc(scheme, rep):
            return f"{100 * at[(m, scheme, rep)]['accuracy']:.2f}%"
        before = at[(m, "ptq_per_tensor", "none")]
        after = at[(m, "ptq_per_tensor", "cle")]
        lines.append(f"| {m} | {acc('ptq', 'none')} | {acc('ptq_per_tensor', 'none')} | "
                     f"{acc('ptq_per_tensor', 'cle')} | "
                     f"{acc('ptq_per_tensor', 'cle,bias_correction')} | "
                     f"{acc('ptq', 'cle,bias_correction')} | {before['widest_ratio']} "
                     f"({before['widest_ratio_layer']}) -> {after['widest_ratio']} "
                     f"({after['widest_ratio_layer']}) |")
    fileio.write_text(os.path.join(FLAGS.out, "repair.md"), "\n".join(lines) + "\n")
    plot(models, at)
    print("\n".join(lines))


def plot(models, at):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fnet_tf.core import fileio

    bars = [("ptq", "none", "per-channel"), ("ptq_per_tensor", "none", "per-tensor"),
            ("ptq_per_tensor", "cle", "per-tensor + CLE"),
            ("ptq_per_tensor", "cle,bias_correction", "per-tensor + CLE + BC")]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(models)), 4))
    x = np.arange(len(models))
    for i, (scheme, rep, name) in enumerate(bars):
        ax.bar(x + (i - 1.5) * 0.2, [100 * at[(m, scheme, rep)]["accuracy"] for m in models],
               0.2, label=name)
    ax.set_xticks(x, models, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("INT8 top-1 (%)")
    ax.set_title("Post-training INT8 before and after the repairs")
    ax.legend(fontsize=8, loc="lower left")
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
    measured = []
    for target in FLAGS.models:
        measured += measure(target, dataset, calibration)
    write(kept_rows({r["model"] for r in measured}) + measured)


def kept_rows(remeasured):
    """The rows of models measured by an earlier call (the table grows model by model)."""
    path = os.path.join(FLAGS.out, "repair.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [dict(r, accuracy=float(r["accuracy"]), num_images=int(r["num_images"]))
                for r in csv.DictReader(f) if r["model"] not in remeasured]


if __name__ == "__main__":
    app.run(main)
