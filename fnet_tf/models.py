"""``python -m fnet_tf.models``: every registered model and level with params, MACs and size.

Counted analytically from the specs (no TensorFlow needed): params as Keras counts them (BN
statistics included), MACs of convs and dense layers, and the size of the weights once BN is
folded, at 8 bits (int8 kernels, int32 biases) and at 32 bits.
"""
from absl import flags

from fnet_tf.arch import flags as arch_flags
from fnet_tf.core import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Only this registered model (default: all).")
arch_flags.define_width()


def table(models, width=1.0):
    from fnet_tf.arch import architectures

    rows = []
    for name in models:
        top = architectures.model_spec(name, 0, width).meta["max_level"]
        rows += [architectures.describe(name, level, width) for level in range(top + 1)]
    return rows


def format_table(rows):
    lines = [f"{'model':<14}{'level':>6}{'params':>10}{'MACs (M)':>11}{'int8 KB':>10}{'fp32 KB':>10}"]
    for r in rows:
        lines.append(f"{r['model']:<14}{r['level']:>6}{r['params']:>10,}{r['macs'] / 1e6:>11.2f}"
                     f"{r['size_int8_bytes'] / 1024:>10.1f}{r['size_fp32_bytes'] / 1024:>10.1f}")
    return "\n".join(lines)


def main(argv):
    from fnet_tf.arch import architectures

    models = [FLAGS.model] if FLAGS.model else architectures.list_models()
    print(format_table(table(models, FLAGS.width)))


if __name__ == "__main__":
    cli.run(main)
