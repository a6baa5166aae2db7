"""How well the design space's latency model predicts designs it was not fitted on.

    python benchmarks/latency_model.py results/design-space/design_space.csv --fit 30 --splits 4

Reads a design-space table (designs timed in one pass with the peer), fits
``fnet_tf.search.latency_model`` on ``--fit`` random designs and predicts the others, ``--splits``
times with different random splits (seeds 0, 1, ...), and prints the Spearman rank correlation
and the median relative error of predicted against timed p50 per split, then the fitted
coefficients of the last split. Times nothing: the timings are the table's.
"""
import csv
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fnet_tf.core import cli  # noqa: E402
from fnet_tf.core.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("fit", 30, "Designs the model is fitted on in each split.")
flags.DEFINE_integer("splits", 4, "Random splits (seeds 0 .. splits-1).")


def main(argv):
    import numpy as np

    from fnet_tf.arch import architectures
    from fnet_tf.search import latency_model

    if len(argv) != 2 or not os.path.isfile(argv[1]):
        raise UserError("pass one design_space.csv (python -m fnet_tf.sweep --design_space ...)")
    with open(argv[1], newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < FLAGS.fit + 3:
        raise UserError(f"{argv[1]} has {len(rows)} designs: --fit {FLAGS.fit} leaves fewer "
                        f"than 3 to predict")
    specs = [architectures.model_spec(r["model"], architectures.parse_level(r["level"]),
                                      architectures.parse_width(r["width"])) for r in rows]
    timed = np.array([float(r["latency_p50_ms"]) for r in rows])
    print(f"{argv[1]}: {len(rows)} timed designs; fit on {FLAGS.fit}, predict "
          f"{len(rows) - FLAGS.fit}")
    print("| split | Spearman | median relative error |\n| ---: | ---: | ---: |")
    for seed in range(FLAGS.splits):
        order = np.random.default_rng(seed).permutation(len(rows))
        train, test = order[:FLAGS.fit], order[FLAGS.fit:]
        fitted = latency_model.fit([specs[i] for i in train], timed[train])
        check = latency_model.agreement([latency_model.predict(fitted, specs[i]) for i in test],
                                        timed[test])
        print(f"| {seed} | {check['spearman']:.2f} | {check['median_relative_error']:.1%} |")
    print("\nfitted coefficients (last split; ms per million MACs / outputs / pixel-groups, ms "
          "per op):")
    for name, value in zip(fitted["names"], fitted["coef"]):
        if value:
            print(f"  {name}: {value:.4g}")
    return 0


if __name__ == "__main__":
    cli.entry_point(main)()
