"""What QAT buys a Keras 3 user: float vs PTQ INT8 vs QAT INT8 top-1 of one Keras 3 CNN.

    python benchmarks/keras3_qat.py --data ../shared/data/cifar10-jpeg.tar.gz \
        --epochs 8 --qat_epochs 2 --out results/keras3-qat

Trains a plain Keras 3 CNN (RandomFlip, Rescaling, Conv2D, DepthwiseConv2D, BatchNormalization,
ReLU, GlobalAveragePooling2D, Dense; Keras 3 on its TensorFlow backend) on the training split,
saves it as ``model.keras``, then goes the user's way with the repo's commands: PTQ with
``export/to_tflite.py model.keras``, QAT with ``fnet_tf.train --init_from model.keras
--epochs 0 --qat_epochs N`` and its export. Every accuracy is on the whole test split, the INT8
ones with the LiteRT interpreter. Writes ``results.json`` and ``summary.md`` to ``--out``.
"""
import json
import os
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "../shared/data/cifar10-jpeg.tar.gz", "Image-folder archive.")
flags.DEFINE_integer("epochs", 8, "Keras 3 float epochs.")
flags.DEFINE_integer("qat_epochs", 2, "QAT epochs (fnet_tf.train).")
flags.DEFINE_integer("threads", 1, "CPU threads.")
flags.DEFINE_string("out", "results/keras3-qat", "Output folder.")
flags.DEFINE_string("work", "runs/keras3-qat", "Working folder (the model and the QAT run).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(keras, classes):
    layers = keras.layers
    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.RandomFlip("horizontal")(inputs)
    x = layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = layers.Conv2D(32, 3, padding="same", use_bias=False)(x)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for filters, stride in ((64, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2)):
        x = layers.DepthwiseConv2D(3, stride, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        x = layers.Conv2D(filters, 1, use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="keras3_cnn")


def command(args):
    print("+ " + " ".join(args), flush=True)
    started = time.time()
    subprocess.run([sys.executable, *args], cwd=REPO, check=True)
    return time.time() - started


def main(argv):
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(FLAGS.threads))
    import fnet_tf  # noqa: F401  (TF_USE_LEGACY_KERAS; Keras 3 is still `import keras`)
    from fnet_tf.tflite import measure as benchmark
    from fnet_tf.data import datasets as data_lib
    from fnet_tf.core.backend import configure_threads

    configure_threads(FLAGS.threads)
    import keras
    import numpy as np

    work = os.path.join(REPO, FLAGS.work)
    os.makedirs(work, exist_ok=True)
    dataset = data_lib.load(FLAGS.data, val_split=5000)
    path = os.path.join(work, "model.keras")
    model = build(keras, len(dataset.classes))
    steps = FLAGS.epochs * int(np.ceil(len(dataset.train) / 128))
    model.compile(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.1, steps),
                                       momentum=0.9, nesterov=True),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    started = time.time()
    model.fit(dataset.train.images.astype("float32"), dataset.train.labels, batch_size=128,
              epochs=FLAGS.epochs, verbose=2, shuffle=True)
    train_seconds = time.time() - started
    model.save(path)
    logits = model.predict(dataset.test.images.astype("float32"), batch_size=500, verbose=0)
    float_top1 = float(np.mean(logits.argmax(1) == dataset.test.labels))
    ptq_file = os.path.join(work, "model_int8.tflite")
    command(["export/to_tflite.py", path, "--data", FLAGS.data, "--threads", str(FLAGS.threads)])
    run_dir = os.path.join(work, "qat")
    command(["-m", "fnet_tf.train", "--init_from", path, "--epochs", "0", "--qat_epochs",
             str(FLAGS.qat_epochs), "--data", FLAGS.data, "--run_dir", run_dir, "--threads",
             str(FLAGS.threads), "--verbose", "2"])
    command(["export/to_tflite.py", run_dir, "--threads", str(FLAGS.threads)])
    results = {"float_keras3": float_top1, "data": FLAGS.data, "epochs": FLAGS.epochs,
               "qat_epochs": FLAGS.qat_epochs, "threads": FLAGS.threads,
               "train_seconds": train_seconds, "keras": keras.__version__,
               "params": model.count_params()}
    for name, file in (("ptq_int8", ptq_file), ("qat_int8", os.path.join(run_dir,
                                                                          "model_int8.tflite"))):
        with open(file, "rb") as f:
            content = f.read()
        results[name] = benchmark.evaluate_tflite(content, dataset.test, None,
                                                  FLAGS.threads)["accuracy_top1"]
    out = os.path.join(REPO, FLAGS.out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    summary = (f"# A Keras 3 CNN: float vs PTQ vs QAT INT8\n\n"
               f"{results['params']:,} params, Keras {results['keras']} (TensorFlow backend), "
               f"{FLAGS.epochs} float epochs, {FLAGS.qat_epochs} QAT epochs (fnet_tf.train "
               f"--init_from model.keras), {FLAGS.threads} thread{'' if FLAGS.threads == 1 else 's'}; data {FLAGS.data} "
               f"(45,000 train, all 10,000 test images; INT8 with LiteRT).\n\n"
               f"| model | top-1 |\n| --- | ---: |\n"
               f"| Keras 3 float | {float_top1:.2%} |\n"
               f"| PTQ INT8 (export/to_tflite.py model.keras) | {results['ptq_int8']:.2%} |\n"
               f"| QAT INT8 | {results['qat_int8']:.2%} |\n")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary)
    print(summary)


if __name__ == "__main__":
    app.run(main)
