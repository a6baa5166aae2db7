"""Seconds per training epoch, real data pipeline vs a synthetic in-memory batch.

    python benchmarks/epoch_time.py --data ../shared/data/cifar10-jpeg.tar.gz --steps 60

For each model, after a warm-up (tracing), blocks of ``--steps`` training steps alternate
``--rounds`` times between (a) fnet_tf's real pipeline (numpy augmentation in a tf.data
generator) and (b) one batch already in memory, repeated (no input cost at all).
Interleaving matters: this VM's speed drifts by 20-40% over minutes, so back-to-back
measurements are not comparable. Seconds per epoch are the median per-step time times the
steps of a 45,000-image epoch (the default --val_split 5000); the ratio real/synthetic is
what the input pipeline costs.
"""
import math
import statistics
import time

from absl import flags

from fnet_tf.core import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "../shared/data/cifar10-jpeg.tar.gz", "Dataset (see fnet_tf.train).")
flags.DEFINE_list("models", ["factorizenet:0", "factorizenet:7", "resnet8:0"], "model:level list.")
flags.DEFINE_integer("steps", 30, "Timed steps per block.")
flags.DEFINE_integer("rounds", 4, "Alternating real/synthetic blocks per model.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("threads", 0, "TensorFlow CPU threads (0: all).")


def _step_seconds(model, dataset, steps):
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return (time.perf_counter() - start) / steps


def interleaved(model, datasets, steps, rounds):
    """Median seconds per step of each dataset, measured in alternating blocks."""
    for ds in datasets:
        model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0)  # warm-up: tracing
    times = [[] for _ in datasets]
    for _ in range(rounds):
        for i, ds in enumerate(datasets):
            times[i].append(_step_seconds(model, ds, steps))
    return [statistics.median(t) for t in times]


def main(argv):
    from fnet_tf.core.backend import configure_threads

    configure_threads(FLAGS.threads)
    from fnet_tf.arch import architectures
    from fnet_tf.data import datasets as data_lib
    from fnet_tf.training import loop as training
    from fnet_tf.core.backend import tf
    from fnet_tf.training.recipe import Recipe

    dataset = data_lib.load(FLAGS.data, val_split=5000)
    recipe = Recipe(batch_size=FLAGS.batch_size, epochs=100)
    epoch_steps = math.ceil(len(dataset.train) / recipe.batch_size)
    classes = len(dataset.classes)
    print(f"{'model':<20}{'real s/epoch':>14}{'synthetic s/epoch':>19}{'ratio':>8}")
    for item in FLAGS.models:
        name, level = item.split(":")
        model = architectures.create_model(name, int(level))
        training.compile_model(model, training.make_optimizer(recipe, epoch_steps), recipe)
        real = training.EpochStream(dataset.train, recipe, 0, classes).dataset.repeat()
        x, y = next(iter(training.EpochStream(dataset.train, recipe, 0, classes).dataset))
        synthetic = tf.data.Dataset.from_tensors((x, y)).repeat()
        t_real, t_syn = interleaved(model, [real, synthetic], FLAGS.steps, FLAGS.rounds)
        print(f"{name + '-l' + level:<20}{t_real * epoch_steps:>14.1f}{t_syn * epoch_steps:>19.1f}"
              f"{t_real / t_syn:>8.3f}", flush=True)


if __name__ == "__main__":
    cli.run(main)
