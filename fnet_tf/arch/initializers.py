"""Kernel initializers by name: every Keras name, plus the naive fixed-range ones.

The weight-initialization ablation (Yun & Wong, "Where Should We Begin?", arXiv 2011.14578)
compares He and Glorot initializers with naive ones whose spread does not depend on the layer's
fan-in. Keras names them only with its default spread (``random_normal``: stddev 0.05), so the
range is part of the name here, and a sweep point's directory says which it was:

- ``normal_stdS``: ``RandomNormal(mean=0, stddev=S)``, e.g. ``normal_std0.01`` (narrow) or
  ``normal_std1.0`` (wide);
- ``uniform_limL``: ``RandomUniform(-L, L)``, e.g. ``uniform_lim0.05``.

Any other name is passed to Keras unchanged (``he_normal``, ``glorot_uniform``, ...).
A fresh initializer object is made for every layer, so no two layers share a seeded draw.
"""
import re

from fnet_tf.core.errors import UserError

_NAIVE = re.compile(r"^(normal_std|uniform_lim)(\d+(?:\.\d+)?(?:e-?\d+)?)$")


def _naive(name):
    match = _NAIVE.match(name)
    if not match:
        return None
    kind, value = match.group(1), float(match.group(2))
    return kind, value


def get(name, keras):
    """The initializer ``name`` means for ``keras`` (tf_keras or Keras 3): a new object for a
    naive name, the name itself otherwise (Keras resolves it)."""
    naive = _naive(name) if isinstance(name, str) else None
    if naive is None:
        return name
    kind, value = naive
    if kind == "normal_std":
        return keras.initializers.RandomNormal(mean=0.0, stddev=value)
    return keras.initializers.RandomUniform(minval=-value, maxval=value)


def check(name, keras):
    """Raise a one-line UserError unless ``name`` is an initializer fnet_tf can build."""
    naive = _naive(name)
    if naive is not None:
        if naive[1] <= 0:
            raise UserError(f"--init {name}: the spread must be positive")
        return
    try:
        keras.initializers.get(name)
    except (ValueError, TypeError):
        raise UserError(f"unknown --init {name!r}: use a Keras initializer name such as "
                        f"he_normal, glorot_uniform, he_uniform, or a naive fixed-range one: "
                        f"normal_std0.01, uniform_lim0.05") from None


def is_well_formed(name):
    """True if ``name`` could be an initializer name and is safe in a directory name."""
    return bool(_naive(name)) or name.replace("_", "").isalnum()
