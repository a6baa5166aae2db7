"""What a teacher's distillation targets carry: how soft they are, and how much they say
about the wrong classes.

    python benchmarks/teacher_targets.py sweeps/teachers/runs/frostnet_cifar-e80 \
        results/teachers/airbench_whitened-e24-teacher.keras \
        --tta flip --temperatures 1,1.25,1.5,2,3,4 --out results/teachers/targets-val-flip.csv

For each teacher (a run directory, a ``.keras`` file or a Keras 3 ``--out`` directory), on the
5,000 validation images held out of its training (``--split val``, so a temperature can be chosen
from them) or every test image, with the flip TTA that ``--teacher_tta`` distils (``--tta none|flip``), and at
each of ``--temperatures`` (the students' T: 4 in the recipes so far):

- ``top1``: the teacher's accuracy;
- ``p_true``: the mean probability the softened target gives the true class;
- ``entropy``: the mean entropy of the softened target, as a share of the uniform one (1 = no
  information at all);
- ``wrong_spread``: how much the logits of the 9 classes other than the top one differ from
  each other, relative to the top one's lead: the mean over images of
  std(other logits) / (top logit - mean of the other logits). This is what a student learns
  about class similarity beyond the label; label smoothing is known to erase it (Mueller,
  Kornblith and Hinton, 2019, "When does label smoothing help?": its teachers distil worse), and
  a teacher trained with it shows a small value here.
"""
import csv
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fnet_tf.core import fileio  # noqa: E402
from fnet_tf.core.backend import configure_threads  # noqa: E402
from fnet_tf.data import datasets as data_lib  # noqa: E402
from fnet_tf.training import distill  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "../shared/data/cifar10-jpeg.tar.gz", "The teachers' dataset.")
flags.DEFINE_list("temperatures", ["1", "2", "4"], "The distillation temperatures to measure.")
flags.DEFINE_enum("tta", "none", ["none", "flip"], "The teacher's logits as they are, or the "
                  "mean over each image and its mirror.")
flags.DEFINE_enum("split", "val", ["val", "test"], "Where to measure: the 5,000 training images "
                  "both teachers held out for validation (fnet-train's default --val_split), or "
                  "the test split.")
flags.DEFINE_string("out", None, "Write the rows to this CSV file too.")
flags.DEFINE_integer("threads", 1, "CPU threads.")

VAL_SPLIT = 5000  # fnet-train's default: the teachers held these out
COLUMNS = ("teacher", "split", "tta", "temperature", "top1", "p_true", "entropy", "wrong_spread")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("usage: python benchmarks/teacher_targets.py TEACHER [TEACHER ...]")
    configure_threads(FLAGS.threads)
    rows = []
    dataset = data_lib.load(FLAGS.data, val_split=VAL_SPLIT)
    for path in argv[1:]:
        teacher = distill.load_teacher(path, len(dataset.classes))
        split = getattr(dataset, FLAGS.split)
        images = split.images.astype("float32")
        logits = teacher.predict(images, batch_size=500, verbose=0)
        if FLAGS.tta == "flip":
            logits = 0.5 * (logits + teacher.predict(images[:, :, ::-1], batch_size=500,
                                                     verbose=0))
        for temperature in map(float, FLAGS.temperatures):
            row = {"teacher": distill.teacher_name(path), "split": FLAGS.split,
                   "tta": FLAGS.tta, "temperature": temperature,
                   **distill.target_figures(logits, split.labels, temperature)}
            print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in row.items()), flush=True)
            rows.append(row)
    if FLAGS.out:
        with fileio.atomic_path(FLAGS.out) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, COLUMNS)
                writer.writeheader()
                writer.writerows(rows)


if __name__ == "__main__":
    app.run(main)
