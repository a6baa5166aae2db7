#!/usr/bin/env python3
"""Derive the released models' float weights from their INT8 files, and measure them.

    python tools/derive_float_weights.py --data ../shared/data/cifar10-jpeg.tar.gz
    python tools/derive_float_weights.py --data ... --models factorizenet-l3,resnet8

For each model (every released one by default), ``fnet_tf.release.float_weights.derive`` builds the float
tf_keras model of its card's spec from ``model_int8.tflite``, its BN statistics taken on
``--calibration_images`` training images (a fixed draw: ``--seed``); ``float_weights.npz`` is
written beside the file (atomically). The float model's top-1 on the whole test split and its
top-1 agreement there with the INT8 file (LiteRT) go into ``metrics.json`` under
``float_weights``, with the file's sha256, and the card is rendered again. The card's own
``float_accuracy`` stays the original float model's, which was not kept.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from fnet_tf.release import zoo
from fnet_tf.core import cli
from fnet_tf.core import fileio  # noqa: E402
from fnet_tf.core.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", [], "Released model names (default: every released model).")
flags.DEFINE_string("data", None, "The dataset the models were released on: calibration images "
                    "from its training split, the measures on its test split.")
flags.DEFINE_integer("calibration_images", 2000, "Training images the BN statistics are "
                     "estimated on.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the calibration images' draw.")
flags.DEFINE_string("zoo", None, "Models folder (default: the repo's models/).")
flags.DEFINE_string("cache_dir", None, "Dataset cache directory.")


def measure(model, content, test):
    """(float top-1, top-1 agreement with the INT8 file) on the whole ``test`` split."""
    import numpy as np

    from fnet_tf.tflite import convert as export

    float_top1 = model.predict(test.images.astype(np.float32), batch_size=250,
                               verbose=0).argmax(1)
    int8_top1 = export.predict(content, test.images).argmax(1)
    return float(np.mean(float_top1 == test.labels)), float(np.mean(float_top1 == int8_top1))


def derive_one(name, dataset, calibration):
    """Derive, write and measure one released model's float weights; its card's entry."""
    from fnet_tf.release import card as model_card
    from fnet_tf.release import float_weights as zoo_float
    from fnet_tf.arch.architectures import model_spec

    card = zoo.metrics(name)
    if card.get("data") != dataset.source:
        raise UserError(f"{name}: released on {card.get('data')}, not {dataset.source}: pass "
                        f"the --data it was measured on")
    tflite = zoo.load(name)
    model = zoo_float.derive(tflite, model_spec(card["model"], card["level"], card["width"]),
                             calibration)
    path = zoo.float_weights_path(name)
    zoo_float.write(path, model)
    with open(tflite, "rb") as f:
        float_accuracy, agreement = measure(model, f.read(), dataset.test)
    entry = dict(card, float_weights={
        "source": zoo_float.SOURCE.format(images=len(calibration)), "file": zoo_float.FILE,
        "sha256": fileio.sha256_file(path), "float_accuracy": float_accuracy,
        "int8_agreement": agreement, "test_images": len(dataset.test), "data": dataset.source})
    folder = os.path.dirname(tflite)
    fileio.write_json(os.path.join(folder, zoo.METRICS), entry)
    fileio.write_text(os.path.join(folder, zoo.CARD), model_card.card_text(entry))
    print(f"{name}: float top-1 {100 * float_accuracy:.2f}% (original float "
          f"{100 * card['float_accuracy']:.2f}%, INT8 {100 * card['int8_accuracy']:.2f}%), "
          f"INT8 agreement {100 * agreement:.2f}%, {os.path.getsize(path):,} bytes", flush=True)
    return entry


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}: name models with --models")
    if FLAGS.zoo:
        os.environ["FNET_TF_ZOO"] = FLAGS.zoo
    if not FLAGS.data:
        raise UserError("--data is required: the dataset the models were released on")
    names = FLAGS.models or zoo.names()
    if not names:
        raise UserError(f"no released models in {zoo.zoo_dir()}")
    for name in names:
        zoo.load(name)  # a UserError listing the released names, before any work
    import numpy as np

    from fnet_tf.data import datasets as data_lib

    data_lib.check_source(FLAGS.data)
    datasets = {}
    for name in names:
        # calibrate on the images the model trained on, never its validation split, which
        # fnet-analyze zoo:NAME --sensitivity measures on
        held_out = (zoo.metrics(name).get("recipe") or {}).get("val_split") or 0
        if held_out not in datasets:
            dataset = data_lib.load(FLAGS.data, cache_dir=FLAGS.cache_dir, val_split=held_out)
            count = min(FLAGS.calibration_images, len(dataset.train))
            pick = np.random.default_rng(FLAGS.seed).choice(len(dataset.train), count,
                                                            replace=False)
            datasets[held_out] = dataset, dataset.train.images[np.sort(pick)]
        derive_one(name, *datasets[held_out])
    return 0


if __name__ == "__main__":
    cli.run(main)
