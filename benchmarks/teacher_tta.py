"""A teacher's float top-1 on the whole test split, plain and with test-time augmentation.

    python benchmarks/teacher_tta.py runs/teachers/airbench_whitened-e24 \
        --data ../shared/data/cifar10-jpeg.tar.gz --out results/teachers/airbench_whitened-e24-tta.json

- ``plain``: the model's logits on each image;
- ``flip``: the mean of its logits on the image and on its mirror (what ``fnet-train
  --teacher_tta flip`` distills, from a bank or batch by batch);
- ``flip_translate``: airbench's level 2, half flip and half the mean of flip on the image
  shifted one pixel up-left and down-right (reflected padding).

The model is the run's ``model_float.keras`` (inspected like any model file).
"""
import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "../shared/data/cifar10-jpeg.tar.gz", "The run's dataset.")
flags.DEFINE_string("out", None, "Write the figures to this JSON file too.")
flags.DEFINE_integer("threads", 1, "CPU threads.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shifted(images, dy, dx):
    """``images`` moved by (dy, dx) pixels, the border filled by reflection."""
    import numpy as np

    pad = max(abs(dy), abs(dx))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = images.shape[1:3]
    return padded[:, pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def tta_logits(model, images):
    """{'plain', 'flip', 'flip_translate'}: logits under each test-time augmentation."""
    def run(batch):
        return model.predict(batch.astype("float32"), batch_size=500, verbose=0)

    def flip(batch):
        return 0.5 * (run(batch) + run(batch[:, :, ::-1]))

    plain = run(images)
    flipped = 0.5 * (plain + run(images[:, :, ::-1]))
    translated = 0.5 * (flip(shifted(images, -1, -1)) + flip(shifted(images, 1, 1)))
    return {"plain": plain, "flip": flipped, "flip_translate": 0.5 * flipped + 0.5 * translated}


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python benchmarks/teacher_tta.py RUN_DIR [flags]")
    sys.path.insert(0, REPO)
    from fnet_tf.run import artifacts
    from fnet_tf.data import datasets as data_lib
    from fnet_tf.core import fileio
    from fnet_tf.core.backend import configure_threads
    from fnet_tf.run.rundir import RunDir

    configure_threads(FLAGS.threads)
    run = RunDir(argv[1])
    model = artifacts.float_model(run)
    dataset = data_lib.load(FLAGS.data, image_size=tuple(model.input_shape[1:3]))
    logits = tta_logits(model, dataset.test.images)
    result = {name: float((value.argmax(-1) == dataset.test.labels).mean())
              for name, value in logits.items()}
    result.update(run=os.path.basename(run.path), test_images=len(dataset.test),
                  data=dataset.source)
    print(json.dumps(result, indent=1))
    if FLAGS.out:
        fileio.write_json(FLAGS.out, result)


if __name__ == "__main__":
    app.run(main)
