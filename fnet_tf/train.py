"""Train a model of the zoo: ``python -m fnet_tf.train --model factorizenet --level 3``.

Float training with SGD (Nesterov) or AdamW, warm-up + cosine LR, decoupled weight decay
(not on BN, biases or depthwise kernels), standard CIFAR augmentation. Every epoch is
checkpointed atomically; re-running the same command on the same ``--run_dir`` resumes after
the last completed epoch (Ctrl-C stops cleanly; ``kill -9`` loses at most the epoch in
progress). The run directory gains config.json, history.csv, run.json, model_float.keras and
metrics.json (test accuracy, measured once at the end).
"""
import dataclasses
import os
import sys
import time
from dataclasses import replace

from absl import flags

from fnet_tf import cli
from fnet_tf.recipe import Recipe
from fnet_tf.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "factorizenet", "Registered model (python -m fnet_tf.models lists them).")
flags.DEFINE_integer("level", 0, "Depth-factorization level (0: the baseline).")
flags.DEFINE_float("width", 1.0, "Channel width multiplier.")
flags.DEFINE_string("data", "cifar10", "'cifar10' (tensorflow-datasets), an image-folder tree, "
                    "or its .tar.gz/.zip, e.g. ../shared/data/cifar10-jpeg.tar.gz.")
flags.DEFINE_string("run_dir", None, "Run directory (default runs/<model>-l<level>).")
flags.DEFINE_string("cache_dir", None, "Where archives are extracted and decoded images cached "
                    "(default $FNET_TF_CACHE or ~/.cache/fnet_tf).")
flags.DEFINE_integer("val_split", 5000, "Training images held out for validation (0: none).")
flags.DEFINE_integer("epochs", 30, "Float training epochs.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adamw"], "Optimizer (SGD: Nesterov momentum 0.9).")
flags.DEFINE_float("lr", None, "Peak learning rate (default 0.1 for sgd, 2e-3 for adamw).")
flags.DEFINE_enum("schedule", "cosine", ["cosine", "constant"], "LR after the warm-up.")
flags.DEFINE_float("warmup_epochs", 2.0, "Linear LR warm-up (capped at 20% of training).")
flags.DEFINE_float("weight_decay", None, "Decoupled weight decay, Keras semantics: each step "
                   "w -= lr*wd*w (default 5e-3 for sgd, about PyTorch's 5e-4 with momentum 0.9; "
                   "0.05 for adamw).")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing of the cross-entropy.")
flags.DEFINE_integer("cutout", 0, "Cutout square side in pixels (0: off).")
flags.DEFINE_integer("seed", 0, "Seed of the weights, data order and augmentation.")
flags.DEFINE_string("init", "he_normal", "Kernel initializer of convs and dense (a Keras name).")
flags.DEFINE_integer("threads", 0, "CPU threads for TensorFlow (0: all cores).")
flags.DEFINE_enum("distribute", "none", ["none", "mirrored", "multi_worker"],
                  "tf.distribute strategy: mirrored (several GPUs), multi_worker (TF_CONFIG).")
flags.DEFINE_integer("verbose", None, "Keras verbosity: 1 progress bar, 2 a line per epoch, "
                     "0 silent (default: 1 on a terminal, 2 otherwise).")

# Settings that may change between a run and its resume without changing the result.
RESUMABLE_ANYWAY = ("threads", "verbose", "run_dir", "cache_dir", "distribute")

OPTIMIZER_DEFAULTS = {"sgd": {"lr": 0.1, "weight_decay": 5e-3},
                      "adamw": {"lr": 2e-3, "weight_decay": 0.05}}


def validate_flags():
    """Check every flag before any time is spent; UserError names the flag and the fix."""
    checks = [
        (FLAGS.epochs >= 0, f"--epochs must be 0 or more, got {FLAGS.epochs}"),
        (FLAGS.batch_size > 0, f"--batch_size must be positive, got {FLAGS.batch_size}"),
        (FLAGS.threads >= 0, f"--threads must be 0 (all cores) or a positive count, got {FLAGS.threads}"),
        (FLAGS.val_split >= 0, f"--val_split must be 0 or more, got {FLAGS.val_split}"),
        (FLAGS.lr is None or FLAGS.lr > 0, f"--lr must be positive, got {FLAGS.lr}"),
        (FLAGS.weight_decay is None or FLAGS.weight_decay >= 0,
         f"--weight_decay must be 0 or more, got {FLAGS.weight_decay}"),
        (0 <= FLAGS.label_smoothing < 1, f"--label_smoothing must be in [0, 1), got {FLAGS.label_smoothing}"),
        (FLAGS.cutout >= 0, f"--cutout must be 0 or more, got {FLAGS.cutout}"),
        (FLAGS.warmup_epochs >= 0, f"--warmup_epochs must be 0 or more, got {FLAGS.warmup_epochs}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def recipe_from_flags():
    defaults = OPTIMIZER_DEFAULTS[FLAGS.optimizer]
    return Recipe(
        epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, optimizer=FLAGS.optimizer,
        lr=FLAGS.lr if FLAGS.lr is not None else defaults["lr"], schedule=FLAGS.schedule,
        warmup_epochs=FLAGS.warmup_epochs,
        weight_decay=(FLAGS.weight_decay if FLAGS.weight_decay is not None
                      else defaults["weight_decay"]),
        label_smoothing=FLAGS.label_smoothing, cutout=FLAGS.cutout, seed=FLAGS.seed)


def make_strategy(name):
    from fnet_tf.backend import tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def check_initializer(name):
    from fnet_tf.backend import keras

    try:
        keras.initializers.get(name)
    except ValueError:
        raise UserError(f"unknown --init {name!r}: use a Keras initializer name such as "
                        f"he_normal, glorot_uniform, he_uniform") from None


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])!r}: fnet_tf.train takes flags only")
    validate_flags()
    from fnet_tf import architectures, data as data_lib
    from fnet_tf.rundir import RunDir

    spec = architectures.model_spec(FLAGS.model, FLAGS.level, FLAGS.width)  # fails fast if unknown
    data_lib.check_source(FLAGS.data)
    recipe = recipe_from_flags()
    run = RunDir(FLAGS.run_dir or os.path.join("runs", spec.name))
    config = {"model": FLAGS.model, "level": FLAGS.level, "width": FLAGS.width,
              "data": FLAGS.data, "val_split": FLAGS.val_split, "init": FLAGS.init,
              **dataclasses.asdict(recipe), **{k: getattr(FLAGS, k) for k in RESUMABLE_ANYWAY}}
    run.bind_config(config, ignore=RESUMABLE_ANYWAY)  # before TensorFlow loads: fails in a second

    if run.is_complete("float"):
        metrics = run.read_json(run.METRICS, {}).get("float", {})
        print(f"float training in {run.path} is already complete "
              f"(test accuracy {metrics.get('test_accuracy', float('nan')):.4f}); nothing to do")
        return 0

    from fnet_tf.backend import configure_threads

    configure_threads(FLAGS.threads)
    strategy = make_strategy(FLAGS.distribute)
    check_initializer(FLAGS.init)
    dataset = data_lib.load(FLAGS.data, cache_dir=FLAGS.cache_dir, val_split=FLAGS.val_split)
    print(dataset.describe(), flush=True)
    spec = replace(spec, num_classes=len(dataset.classes))
    from fnet_tf.spec import build_model, summarize

    print(f"{spec.name}: " + ", ".join(f"{k} {v:,}" for k, v in summarize(spec).items()), flush=True)
    from fnet_tf.training import evaluate, fit_phase
    from fnet_tf import fileio

    verbose = FLAGS.verbose if FLAGS.verbose is not None else (1 if sys.stdout.isatty() else 2)
    started = time.time()
    with strategy.scope():
        model = build_model(spec, kernel_initializer=FLAGS.init)
        finished = fit_phase("float", model, dataset, recipe, run, verbose=verbose)
    if not finished:
        print(f"stopped; resume with the same command (run directory {run.path})")
        return 130

    model_path = run.file("model_float.keras")
    with fileio.atomic_path(model_path) as tmp:
        model.save(tmp)
    test = evaluate(model, dataset.test, len(dataset.classes))
    history = run.history()
    epoch_seconds = [float(r["seconds"]) for r in history if r.get("phase") == "float"]
    run.update_metrics("float", {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "num_test_images": test["num_images"], "epochs": recipe.epochs,
        "mean_epoch_seconds": sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None,
        "data": dataset.source, "classes": list(dataset.classes), **summarize(spec)})
    run.complete("float", [model_path], epochs=recipe.epochs)
    print(f"float test accuracy {test['accuracy']:.4f} on {test['num_images']} images "
          f"({time.time() - started:.0f}s this session); model: {model_path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
