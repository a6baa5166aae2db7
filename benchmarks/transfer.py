"""What a released model's weights are worth on someone else's images: fine-tuned vs from scratch.

    pip install -e ".[transfer]"      # scikit-learn, whose wheel carries the digits
    python benchmarks/transfer.py --out results/transfer

The images: scikit-learn's bundled handwritten digits (UCI "Optical Recognition of Handwritten
Digits", 1,797 8x8 grayscale images, 10 classes; another domain than CIFAR-10's photos, and
nobody here made them). They are written once as an image folder (8x8 -> 32x32 RGB by the
repo's one resize rule), with a stratified held-out test split (``--test_share``). Two regimes:
``--per_class`` training images per class (few) and every training image.

For each released model (``--models``), seed and regime, two runs of ``fnet-train`` with the
same budget (``--freeze_epochs`` + ``--epochs`` float epochs, then ``--qat_epochs`` QAT):
- **fine-tuned**: ``--init_from zoo:NAME`` (its float weights, a new 10-way classifier trained
  alone for ``--freeze_epochs`` first), at ``--finetune_lr``;
- **from scratch**: the same architecture initialised at random, at ``--scratch_lr``.
Both are exported to INT8 with ``export/to_tflite.py`` twice, the QAT model and the float
model quantized after training (PTQ), and their top-1 measured with LiteRT on every held-out
image. Writes ``transfer.csv`` (one row per run), ``summary.md`` (mean +- std per model,
regime and arm), ``transfer.png`` (QAT INT8) and ``transfer_ptq.png`` to ``--out``.
"""
import csv
import json
import os
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["factorizenet-l0-w0_5-kd200", "resnet8-kd200"],
                  "Released models to fine-tune (fnet-zoo list).")
flags.DEFINE_integer("seeds", 3, "Seeds per model, regime and arm.")
flags.DEFINE_integer("per_class", 10, "Training images per class in the few-image regime.")
flags.DEFINE_float("test_share", 0.4, "Share of each class held out for the test split.")
flags.DEFINE_integer("epochs", 15, "Float epochs after the classifier-only ones.")
flags.DEFINE_integer("freeze_epochs", 3, "Fine-tuning: classifier-only epochs first (from "
                     "scratch trains this many more full epochs: the same budget).")
flags.DEFINE_integer("qat_epochs", 2, "QAT epochs.")
flags.DEFINE_integer("qat_calibration_images", 512, "fnet-train --qat_calibration_images (0: "
                     "TF-MOT's [-6, 6] activation ranges to start QAT).")
flags.DEFINE_float("finetune_lr", 0.02, "Peak LR of fine-tuning.")
flags.DEFINE_float("scratch_lr", 0.1, "Peak LR from scratch (the zoo's own).")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("threads", 1, "CPU threads per run.")
flags.DEFINE_string("out", "results/transfer", "Output folder.")
flags.DEFINE_string("work", "runs/transfer", "Working folder (the image folders and the runs).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ("fine-tuned", "from scratch")


def write_digits(root, test_share, per_class, seed=0):
    """The digits as image folders: ``root/all`` and ``root/few`` (``per_class`` training
    images per class), the same held-out test images in both. Returns the two paths."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 17 grey levels
    rng = np.random.default_rng(seed)
    roots = {"all": os.path.join(root, "all"), "few": os.path.join(root, "few")}
    if all(os.path.isfile(os.path.join(r, ".complete")) for r in roots.values()):
        return roots["few"], roots["all"]
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        test = int(round(len(idx) * test_share))
        for i, k in enumerate(idx):
            split = "test" if i < test else "train"
            image = Image.fromarray(np.repeat(pixels[k][:, :, None], 3, axis=2))
            for regime, folder in roots.items():
                if regime == "few" and split == "train" and i >= test + per_class:
                    continue
                path = os.path.join(folder, split, f"digit{label}", f"{k:04d}.png")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                image.save(path)
    for folder in roots.values():
        with open(os.path.join(folder, ".complete"), "w") as f:
            f.write("ok\n")
    return roots["few"], roots["all"]


def run(args):
    print("+ " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=REPO, check=True)


def int8_top1(tflite, folder):
    from fnet_tf.data import datasets as data_lib
    from fnet_tf.tflite import convert as export

    dataset = data_lib.load(folder, image_size=(32, 32))
    with open(tflite, "rb") as f:
        content = f.read()
    logits = export.predict(content, dataset.test.images)
    return float((logits.argmax(-1) == dataset.test.labels).mean()), len(dataset.test)


def one_run(model, regime, folder, arm, seed):
    """Train, export and measure one (model, regime, arm, seed); reuses a finished run."""
    from fnet_tf.release import zoo

    released = zoo.metrics(model)
    budget = (f"test{FLAGS.test_share:g}-few{FLAGS.per_class}-e{FLAGS.epochs}f{FLAGS.freeze_epochs}"
              f"q{FLAGS.qat_epochs}c{FLAGS.qat_calibration_images}-lr{FLAGS.finetune_lr:g}"
              f"_{FLAGS.scratch_lr:g}-b{FLAGS.batch_size}")
    run_dir = os.path.join(FLAGS.work, "runs", budget,
                           f"{model}-{regime}-{arm.replace(' ', '_')}-s{seed}")
    common = ["--data", folder, "--val_split", "0", "--batch_size", str(FLAGS.batch_size),
              "--qat_epochs", str(FLAGS.qat_epochs), "--seed", str(seed), "--run_dir", run_dir,
              "--qat_calibration_images", str(FLAGS.qat_calibration_images),
              "--threads", str(FLAGS.threads), "--verbose", "0", "--layer_stats=false"]
    if arm == "fine-tuned":
        train = ["--init_from", f"zoo:{model}", "--epochs", str(FLAGS.epochs),
                 "--freeze_epochs", str(FLAGS.freeze_epochs), "--lr", str(FLAGS.finetune_lr)]
    else:
        train = ["--model", released["model"], "--level", str(released["level"]),
                 "--width", str(released.get("width", 1.0)),
                 "--epochs", str(FLAGS.epochs + FLAGS.freeze_epochs),
                 "--lr", str(FLAGS.scratch_lr)]
    recipe = (released.get("recipe") or {})
    for key in ("weight_decay", "label_smoothing"):  # the released model's own regularisers
        if recipe.get(key) is not None:
            train += [f"--{key}", str(recipe[key])]
    started = time.time()
    run(["-m", "fnet_tf.train", *common, *train])
    files = {}
    for scheme, name in (("auto", "model_int8.tflite"), ("ptq", "model_ptq_int8.tflite")):
        files[scheme] = os.path.join(run_dir, name)
        if not os.path.isfile(files[scheme]):
            run([os.path.join("export", "to_tflite.py"), run_dir, "--scheme", scheme, "--out",
                 files[scheme], "--check_images", "200", "--threads", str(FLAGS.threads)])
    accuracy, images = int8_top1(files["auto"], folder)
    ptq_accuracy, _ = int8_top1(files["ptq"], folder)
    with open(os.path.join(run_dir, "metrics.json")) as f:
        float_accuracy = json.load(f)["float"]["test_accuracy"]
    return {"model": model, "regime": regime, "arm": arm, "seed": seed,
            "float_top1": round(float_accuracy, 4), "int8_top1": round(accuracy, 4),
            "ptq_int8_top1": round(ptq_accuracy, 4), "test_images": images,
            "seconds": round(time.time() - started, 1)}


def summarize(rows, column="int8_top1"):
    import numpy as np

    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["regime"], r["arm"]), []).append(r[column])
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for k, v in groups.items()}


def plot(stats, path, regimes, what="QAT INT8"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(regimes), figsize=(5 * len(regimes), 4), sharey=True)
    for ax, (regime, title) in zip(axes, regimes):
        for j, arm in enumerate(ARMS):
            xs = range(len(FLAGS.models))
            means = [100 * stats[(m, regime, arm)][0] for m in FLAGS.models]
            stds = [100 * stats[(m, regime, arm)][1] for m in FLAGS.models]
            ax.bar([x + 0.38 * j for x in xs], means, 0.38, yerr=stds, capsize=4, label=arm)
        ax.set_xticks([x + 0.19 for x in range(len(FLAGS.models))])
        ax.set_xticklabels(FLAGS.models, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"{what} top-1 on held-out digits (%)")
    axes[0].legend(loc="lower right")
    fig.suptitle("Released CIFAR-10 models on handwritten digits: fine-tuned vs from scratch "
                 f"(mean +- std of {FLAGS.seeds} seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    del argv
    import fnet_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before anything imports TensorFlow)
    from fnet_tf.core import fileio

    os.makedirs(FLAGS.out, exist_ok=True)
    # the folders and runs are named by every setting that decides them, so a run with other
    # settings never reuses them
    split = f"test{FLAGS.test_share:g}-few{FLAGS.per_class}"
    few, everything = write_digits(os.path.join(FLAGS.work, f"digits-{split}"), FLAGS.test_share,
                                   FLAGS.per_class)
    regimes = [("few", f"{FLAGS.per_class} training images per class"),
               ("all", "every training image")]
    folders = {"few": few, "all": everything}
    rows = []
    for regime, _ in regimes:
        for model in FLAGS.models:
            for seed in range(FLAGS.seeds):
                for arm in ARMS:
                    rows.append(one_run(model, regime, folders[regime], arm, seed))
                    print(json.dumps(rows[-1]), flush=True)
    with fileio.atomic_path(os.path.join(FLAGS.out, "transfer.csv")) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    stats = summarize(rows)
    stats_ptq, stats_float = summarize(rows, "ptq_int8_top1"), summarize(rows, "float_top1")
    lines = ["# Fine-tuned vs from scratch on handwritten digits (INT8 top-1)", "",
             f"Held-out test split: {rows[0]['test_images']} images. Budget per run: "
             f"{FLAGS.freeze_epochs + FLAGS.epochs} float epochs + {FLAGS.qat_epochs} QAT "
             f"epochs (fine-tuned: {FLAGS.freeze_epochs} of them classifier-only, lr "
             f"{FLAGS.finetune_lr:g}; from scratch: lr {FLAGS.scratch_lr:g}), batch "
             f"{FLAGS.batch_size}; QAT's activation ranges set from "
             f"{FLAGS.qat_calibration_images} training images (at most) first. "
             f"{FLAGS.seeds} seeds each; mean +- sample std. QAT INT8: the "
             f"run's QAT model exported; PTQ INT8: its float model quantized after training "
             f"(no QAT); LiteRT, every held-out image.", ""]

    def cell(stat):
        return f"{100 * stat[0]:.2f} +- {100 * stat[1]:.2f}%"

    for title_of, table in (("QAT INT8", stats), ("PTQ INT8", stats_ptq),
                            ("float", stats_float)):
        lines += [f"**{title_of} top-1**", "",
                  "| model | training images | fine-tuned | from scratch | difference |",
                  "| --- | --- | ---: | ---: | ---: |"]
        for regime, title in regimes:
            for model in FLAGS.models:
                ft, sc = table[(model, regime, ARMS[0])], table[(model, regime, ARMS[1])]
                lines.append(f"| `{model}` | {title} | {cell(ft)} | {cell(sc)} | "
                             f"{100 * (ft[0] - sc[0]):+.2f} |")
        lines.append("")
    fileio.write_text(os.path.join(FLAGS.out, "summary.md"), "\n".join(lines) + "\n")
    plot(stats, os.path.join(FLAGS.out, "transfer.png"), regimes)
    plot(stats_ptq, os.path.join(FLAGS.out, "transfer_ptq.png"), regimes, "PTQ INT8")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
