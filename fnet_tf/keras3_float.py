"""Float training in Keras 3 where TensorFlow is absent (the accelerator machine, JAX backend).

``python -m fnet_tf.keras3_float --model factorizenet --level 3 --data ARCHIVE --out DIR``

The same ``ModelSpec`` that ``fnet_tf.train`` builds in tf_keras is built here in Keras 3
(``fnet_tf.arch.spec.build_model(spec, keras=<Keras 3>)``), trained in float with the same recipe
(SGD Nesterov, warm-up + cosine, decoupled weight decay off BN/biases/depthwise kernels, the
same numpy augmentation and epoch order), and written to ``DIR`` as

- ``float_weights.npz``: every layer's weights by layer name (``<layer>/<index>``), the
  format ``fnet_tf.train --init_from DIR`` imports into the tf_keras model for QAT and export;
- ``keras3_result.json``: the spec, recipe, backend, device, epoch times and the validation /
  test accuracy measured here (the importer measures the test accuracy again in tf_keras);
- ``history.csv``: one row per epoch.

This is the second of two places that import Keras: it imports Keras 3 on purpose, for float
training only. QAT and export always run in tf_keras (``fnet_tf.core.backend``).
Float training only, no resume: a run that is cut off leaves no ``float_weights.npz``.
"""
import csv
import io
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from fnet_tf.arch import flags as arch_flags
from fnet_tf.core import fileio  # noqa: E402
from fnet_tf.core import cli
from fnet_tf.core.errors import UserError  # noqa: E402
from fnet_tf.run.portable_weights import RESULT, WEIGHTS, weights_by_layer  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "factorizenet", "Registered model.")
arch_flags.define_level(0)
arch_flags.define_width()
flags.DEFINE_string("data", None, "Image-folder tree or its .tar.gz/.zip (no TensorFlow here, "
                    "so not 'cifar10').")
flags.DEFINE_string("out", None, "Output directory (float_weights.npz, keras3_result.json).")
flags.DEFINE_string("cache_dir", None, "Dataset cache directory.")
flags.DEFINE_integer("val_split", 5000, "Training images held out for validation.")
flags.DEFINE_integer("epochs", 150, "Float training epochs.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("lr", 0.1, "Peak learning rate (SGD, Nesterov momentum 0.9).")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "sgd_gradboost"], "sgd_gradboost: with FrostNet's "
                  "GradBoost noise (fnet_tf/training/gradboost.py).")
flags.DEFINE_string("teacher", None, "Distill from a Keras 3 --out directory's float model "
                    "(its logits on each augmented epoch; fnet_tf/training/distill.py).")
flags.DEFINE_float("kd_alpha", 0.5, "--teacher: weight of the distillation term.")
flags.DEFINE_float("kd_temperature", 4.0, "--teacher: softmax temperature of the distillation.")
flags.DEFINE_float("gradboost_clip", 1e-3, "GradBoost: the noise is clipped to +-this.")
flags.DEFINE_float("gradboost_decay", 1e-2, "GradBoost: the noise scales by (1 - decay)^step.")
flags.DEFINE_float("warmup_epochs", 2.0, "Linear warm-up (capped at 20% of training).")
flags.DEFINE_float("weight_decay", 5e-3, "Decoupled weight decay (w -= lr*wd*w each step).")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing.")
flags.DEFINE_integer("cutout", 0, "Cutout square side (0: off).")
flags.DEFINE_integer("seed", 0, "Seed of weights, data order and augmentation.")
flags.DEFINE_string("init", "he_normal", "Kernel initializer.")

NO_DECAY = ("gamma", "beta", "bias")  # plus depthwise kernels, excluded by object


def import_keras3():
    """Keras 3 (never tf_keras): the backend comes from KERAS_BACKEND (jax by default here)."""
    import keras

    if not keras.__version__.startswith("3."):
        raise UserError(f"fnet_tf.keras3_float needs Keras 3, found {keras.__version__}")
    return keras


def make_optimizer(keras, model, steps_per_epoch):
    total = max(FLAGS.epochs * steps_per_epoch, 1)
    warmup = min(int(FLAGS.warmup_epochs * steps_per_epoch), total // 5)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(total - warmup, 1), alpha=0.0,
        warmup_target=FLAGS.lr, warmup_steps=warmup)
    sgd, extra = keras.optimizers.SGD, {}
    if FLAGS.optimizer == "sgd_gradboost":
        from fnet_tf.training.gradboost import with_gradboost_keras3

        sgd = with_gradboost_keras3(sgd, keras)
        extra = {"gradboost_clip": FLAGS.gradboost_clip, "gradboost_decay": FLAGS.gradboost_decay}
    optimizer = sgd(schedule, momentum=0.9, nesterov=True,
                    weight_decay=FLAGS.weight_decay or None, **extra)
    if FLAGS.weight_decay:
        depthwise = [layer.kernel for layer in model.layers
                     if type(layer).__name__ == "DepthwiseConv2D"]
        optimizer.exclude_from_weight_decay(var_list=depthwise, var_names=list(NO_DECAY))
    return optimizer


def _keras3_teacher(keras, path, num_classes):
    """A Keras 3 --out directory's float model, built from the spec it names."""
    from dataclasses import replace

    from fnet_tf.arch import architectures
    from fnet_tf.arch.spec import build_model
    from fnet_tf.run.portable_weights import load_weights_by_layer, read_result, read_weights

    if not os.path.isfile(os.path.join(path, WEIGHTS)):
        raise UserError(f"--teacher {path} has no {WEIGHTS}: pass a finished Keras 3 --out "
                        f"directory")
    theirs = read_result(path)
    spec = replace(architectures.model_spec(theirs["model"], theirs["level"],
                                            theirs.get("width", 1.0)), num_classes=num_classes)
    return load_weights_by_layer(build_model(spec, keras=keras),
                                 read_weights(os.path.join(path, WEIGHTS)))


def _one_hot(labels, n):
    return np.eye(n, dtype=np.float32)[labels]


def _epoch_arrays(split, epoch):
    from fnet_tf.data import datasets as data_lib

    batches = list(data_lib.epoch_batches(split, FLAGS.batch_size, seed=FLAGS.seed,
                                          epoch=epoch, cutout=FLAGS.cutout))
    return (np.concatenate([b[0] for b in batches]).astype(np.float32),
            np.concatenate([b[1] for b in batches]))


def _accuracy(model, split):
    logits = model.predict(split.images.astype(np.float32), batch_size=1000, verbose=0)
    return float((np.asarray(logits).argmax(axis=1) == split.labels).mean())


def _device(keras):
    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    return platform.processor() or platform.machine()


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])!r}: flags only")
    if not FLAGS.out:
        raise UserError("--out is required: the directory for float_weights.npz")
    if not FLAGS.data or FLAGS.data == "cifar10":
        raise UserError("--data must be an image-folder tree or its archive (tensorflow-datasets "
                        "needs TensorFlow, which this trainer runs without)")
    if FLAGS.epochs <= 0:
        raise UserError(f"--epochs must be positive, got {FLAGS.epochs}")
    from dataclasses import replace

    from fnet_tf.arch import architectures
    from fnet_tf.arch.spec import build_model, summarize
    from fnet_tf.data import datasets as data_lib

    spec = architectures.model_spec(FLAGS.model, FLAGS.level, FLAGS.width)
    data_lib.check_source(FLAGS.data)
    if os.path.isfile(os.path.join(FLAGS.out, WEIGHTS)):
        print(f"{FLAGS.out} already holds {WEIGHTS}; nothing to do")
        return 0
    keras = import_keras3()
    keras.utils.set_random_seed(FLAGS.seed)
    dataset = data_lib.load(FLAGS.data, cache_dir=FLAGS.cache_dir, val_split=FLAGS.val_split)
    spec = replace(spec, num_classes=len(dataset.classes))
    n = len(dataset.classes)
    model = build_model(spec, keras=keras, kernel_initializer=FLAGS.init)
    from fnet_tf.arch import whitening as teacher_init

    teacher_init.prepare(model, dataset.train.images, FLAGS.seed)  # airbench_whitened's stem
    steps = -(-len(dataset.train) // FLAGS.batch_size)
    teacher = _keras3_teacher(keras, FLAGS.teacher, n) if FLAGS.teacher else None
    if teacher is not None:
        from fnet_tf.training import distill

        loss, accuracy = distill.loss_and_accuracy(keras, n, FLAGS.kd_alpha, FLAGS.kd_temperature,
                                                   distill.keras3_ops(keras), FLAGS.label_smoothing)
        model.compile(optimizer=make_optimizer(keras, model, steps), loss=loss, metrics=[accuracy])
    else:
        model.compile(optimizer=make_optimizer(keras, model, steps),
                      loss=keras.losses.CategoricalCrossentropy(
                          from_logits=True, label_smoothing=FLAGS.label_smoothing),
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    print(f"{spec.name} on {keras.backend.backend()} ({_device(keras)}): "
          f"{dataset.describe()}", flush=True)
    history, start = [], time.time()
    val = ((dataset.val.images.astype(np.float32), _one_hot(dataset.val.labels, n))
           if dataset.val is not None else None)
    for epoch in range(FLAGS.epochs):
        t0 = time.time()
        x, y = _epoch_arrays(dataset.train, epoch)
        targets = _one_hot(y, n)
        if teacher is not None:  # the teacher's logits on this epoch's augmented images
            targets = np.concatenate([targets, np.asarray(teacher.predict(
                x, batch_size=1000, verbose=0), np.float32)], axis=1)
        logs = model.fit(x, targets, batch_size=FLAGS.batch_size, epochs=epoch + 1,
                         initial_epoch=epoch, shuffle=False, validation_data=val,
                         verbose=0).history
        row = {"epoch": epoch + 1, "seconds": round(time.time() - t0, 3),
               **{k: round(float(v[-1]), 5) for k, v in logs.items()}}
        history.append(row)
        print(f"[{spec.name}] epoch {epoch + 1}/{FLAGS.epochs} " +
              " ".join(f"{k} {v}" for k, v in row.items() if k != "epoch"), flush=True)
    test_accuracy = _accuracy(model, dataset.test)
    os.makedirs(FLAGS.out, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    fileio.write_text(os.path.join(FLAGS.out, "history.csv"), text.getvalue())
    seconds = [r["seconds"] for r in history]
    fileio.write_json(os.path.join(FLAGS.out, RESULT), {
        "model": FLAGS.model, "level": FLAGS.level, "width": FLAGS.width, "spec": spec.name,
        **summarize(spec), "data": dataset.source, "classes": list(dataset.classes),
        "val_split": FLAGS.val_split,
        "recipe": {k: getattr(FLAGS, k) for k in ("epochs", "batch_size", "lr", "warmup_epochs",
                                                  "weight_decay", "label_smoothing", "cutout",
                                                  "seed", "init", "optimizer", "gradboost_clip",
                                                  "gradboost_decay", "teacher", "kd_alpha",
                                                  "kd_temperature")},
        "keras": keras.__version__, "backend": keras.backend.backend(), "device": _device(keras),
        "python": sys.version.split()[0], "total_seconds": round(time.time() - start, 1),
        "median_epoch_seconds": float(np.median(seconds)),
        "val_accuracy": history[-1].get("val_accuracy"), "test_accuracy": test_accuracy,
        "num_test_images": len(dataset.test)})
    # the weights last: their presence marks the run complete
    with fileio.atomic_path(os.path.join(FLAGS.out, WEIGHTS)) as tmp:
        np.savez(tmp, **weights_by_layer(model))
    print(f"[{spec.name}] test accuracy {test_accuracy:.4f} ({keras.backend.backend()}); "
          f"weights: {os.path.join(FLAGS.out, WEIGHTS)}", flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
