#!/usr/bin/env python3
"""Fill a teacher's logit bank ahead of (or beside) the students that read it.

    python tools/teacher_bank.py --teacher results/teachers/airbench_whitened-e24-teacher.keras \
        --teacher_bank 20 --teacher_tta flip --reverse --threads 1

A student trained with ``--teacher_bank N`` computes bank epoch ``e`` when it first needs it
(``fnet_tf/training/logit_bank.py``), so its first N epochs each wait for the teacher. With a
second core free, this command computes the same bank from the other end (``--reverse``), or
any ``--bank_epochs``, into the same cache folder: each epoch's file is written atomically and
the student reads what is there. The augmentation flags must be the student's (they are part of
the bank's key; the folder printed first is the one the student's log names).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from fnet_tf.core import cli  # noqa: E402
from fnet_tf.core.backend import configure_threads  # noqa: E402
from fnet_tf.core.errors import UserError  # noqa: E402
from fnet_tf.data import datasets as data_lib  # noqa: E402
from fnet_tf.training.distill import load_teacher  # noqa: E402
from fnet_tf.training.logit_bank import LogitBank, parse_bank_epochs  # noqa: E402
from fnet_tf.training.recipe import Recipe  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("teacher", None, "The teacher: a run directory, a .keras file or a Keras 3 "
                    "--out directory (as fnet-train --teacher).")
flags.DEFINE_string("data", "../shared/data/cifar10-jpeg.tar.gz", "The students' dataset.")
flags.DEFINE_integer("val_split", 5000, "The students' --val_split.")
flags.DEFINE_integer("batch_size", 128, "The students' --batch_size.")
flags.DEFINE_integer("crop_pad", 4, "The students' --crop_pad.")
flags.DEFINE_enum("crop_mode", "zeros", ["zeros", "reflect"], "The students' --crop_mode.")
flags.DEFINE_integer("cutout", 0, "The students' --cutout.")
flags.DEFINE_enum("teacher_tta", "none", ["none", "flip"], "The students' --teacher_tta.")
flags.DEFINE_integer("teacher_bank", 20, "The students' --teacher_bank (the bank's size).")
flags.DEFINE_string("bank_epochs", None, "Which bank epochs, as 'A-B' or 'A,B,C' (0-based; "
                    "default: all).")
flags.DEFINE_bool("reverse", False, "Fill from the last bank epoch down (a student fills from 0).")
flags.DEFINE_string("cache_dir", None, "The data cache (default: fnet_tf's).")
flags.DEFINE_integer("threads", 1, "CPU threads.")
flags.DEFINE_bool("trust_model_code", False, "As fnet-train --trust_model_code.")


def main(argv):
    if len(argv) != 1:
        raise UserError(f"unexpected arguments {argv[1:]}: everything is a flag")
    if not FLAGS.teacher or not os.path.exists(FLAGS.teacher):
        raise UserError(f"--teacher {FLAGS.teacher!r} does not exist: pass the students' "
                        f"--teacher")
    if FLAGS.teacher_bank < 1:
        raise UserError(f"--teacher_bank must be 1 or more, got {FLAGS.teacher_bank}")
    chosen = parse_bank_epochs(FLAGS.bank_epochs, FLAGS.teacher_bank)
    if FLAGS.reverse:
        chosen = chosen[::-1]
    data_lib.check_source(FLAGS.data)
    configure_threads(FLAGS.threads)
    dataset = data_lib.load(FLAGS.data, cache_dir=FLAGS.cache_dir, val_split=FLAGS.val_split)
    teacher = load_teacher(FLAGS.teacher, len(dataset.classes), FLAGS.trust_model_code)
    recipe = Recipe(batch_size=FLAGS.batch_size, crop_pad=FLAGS.crop_pad,
                    crop_mode=FLAGS.crop_mode, cutout=FLAGS.cutout)
    bank = LogitBank(teacher, FLAGS.teacher, dataset.train, dataset.source, recipe,
                     FLAGS.teacher_bank, FLAGS.teacher_tta, FLAGS.cache_dir)
    print(f"bank folder {bank.folder}", flush=True)
    computed = bank.fill(chosen)
    print(f"computed {cli.count(len(computed), 'bank epoch')}; the other "
          f"{cli.count(len(chosen) - len(computed), 'epoch')} asked for were there already")
    return 0


if __name__ == "__main__":
    cli.run(main)
