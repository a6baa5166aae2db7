"""Grouped convolutions trained as block-diagonal standard convolutions.

TensorFlow's CPU kernels for grouped ``Conv2D`` (``groups`` between 1 and the channel count)
train 50-200x slower than a standard ``Conv2D`` of the same shape (measured on TF 2.21: a
batch of 128 through FactorizeNet level 3 takes 13.7 s against 0.12 s at level 7), which
made levels 1-6 untrainable on a CPU. A grouped conv is exactly a standard conv whose kernel
is block-diagonal: input-channel group ``a`` feeds only output-channel group ``a``. So the
trainer builds each grouped conv as a standard ``Conv2D`` holding the full kernel, with

- ``BlockDiagonalInit``: the grouped kernel drawn by the requested initializer (so its fan-in
  is the group's, as for the real grouped conv) and placed on the diagonal blocks;
- ``BlockDiagonal``: a constraint the optimizer applies after every step, zeroing the
  off-diagonal blocks. The diagonal blocks get exactly the updates the grouped conv's
  kernel would get (their gradients do not depend on the zeroed weights), momentum and
  decoupled weight decay included.

Such a "training form" trains at oneDNN speed (never costlier than level 0) and quantizes the
same under TF-MOT (symmetric per-channel scales of a channel whose extra weights are zero are
unchanged). Models that leave training (saved ``.keras`` files, QAT weights, exports) are the
native grouped form: ``transfer_weights`` moves weights between the two by layer name.

Layout (TensorFlow's): a grouped kernel is ``(kh, kw, cin / g, cout)``; input channel ``c``
belongs to group ``c // (cin / g)``, output channel ``o`` to group ``o // (cout / g)``.
"""
import re

import numpy as np

from fnet_tf.arch import initializers
from fnet_tf.core import backend


def block_diagonal(kernel, groups):
    """Grouped kernel ``(kh, kw, cin/g, cout)`` -> the standard kernel ``(kh, kw, cin, cout)``
    with the groups on its diagonal blocks and zeros elsewhere."""
    kh, kw, cin_g, cout = kernel.shape
    blocks = np.asarray(kernel).reshape(kh, kw, cin_g, groups, cout // groups)
    dense = np.einsum("hwibo,ab->hwaibo", blocks, np.eye(groups, dtype=blocks.dtype))
    return dense.reshape(kh, kw, groups * cin_g, cout)


def diagonal_blocks(kernel, groups):
    """Standard kernel ``(kh, kw, cin, cout)`` -> the grouped kernel ``(kh, kw, cin/g, cout)``
    made of its diagonal blocks (the inverse of ``block_diagonal``)."""
    kh, kw, cin, cout = kernel.shape
    dense = np.asarray(kernel).reshape(kh, kw, groups, cin // groups, groups, cout // groups)
    blocks = np.einsum("hwaiao->hwiao", dense)
    return blocks.reshape(kh, kw, cin // groups, cout)


def block_mask(shape, groups):
    """1 on the diagonal blocks of a ``(kh, kw, cin, cout)`` kernel, 0 elsewhere."""
    kh, kw, cin, cout = shape
    ones = np.ones((kh, kw, cin // groups, cout), dtype=np.float32)
    return block_diagonal(ones, groups)


def _define_keras_classes(keras):
    """The Keras classes of the training form, made on first use (``backend.keras_classes``):
    importing this module does not load TensorFlow."""

    @keras.utils.register_keras_serializable(package="fnet_tf")
    class BlockDiagonal(keras.constraints.Constraint):
        """Keeps a standard conv kernel block-diagonal over ``groups`` groups."""

        def __init__(self, groups):
            self.groups = int(groups)
            self._mask = None

        def __call__(self, w):
            if self._mask is None or tuple(self._mask.shape) != tuple(w.shape):
                self._mask = block_mask(tuple(w.shape), self.groups)
            return w * keras.backend.cast(self._mask, w.dtype)

        def get_config(self):
            return {"groups": self.groups}

    @keras.utils.register_keras_serializable(package="fnet_tf")
    class BlockDiagonalInit(keras.initializers.Initializer):
        """Draws the grouped kernel with ``base`` (a Keras initializer name) and places it on the
        diagonal blocks, so the training form starts as the native grouped conv would."""

        def __init__(self, base, groups):
            self.base = base
            self.groups = int(groups)

        def __call__(self, shape, dtype=None, **kwargs):
            kh, kw, cin, cout = shape
            grouped = keras.initializers.get(initializers.get(self.base, keras))(
                (kh, kw, cin // self.groups, cout), dtype=dtype)
            return keras.backend.constant(block_diagonal(np.asarray(grouped), self.groups),
                                          dtype=dtype)

        def get_config(self):
            return {"base": self.base, "groups": self.groups}

    return {"BlockDiagonal": BlockDiagonal, "BlockDiagonalInit": BlockDiagonalInit}


__getattr__, keras_classes = backend.keras_classes(
    globals(), ("BlockDiagonal", "BlockDiagonalInit"), _define_keras_classes)


def training_groups(layer):
    """The group count of a block-diagonal (training-form) conv layer, or None."""
    constraint = getattr(layer, "kernel_constraint", None)
    block_diagonal_class = keras_classes()["BlockDiagonal"]
    return constraint.groups if isinstance(constraint, block_diagonal_class) else None


def _convert(value, target_shape):
    """``value`` reshaped between the grouped and block-diagonal layouts to ``target_shape``."""
    if tuple(value.shape) == tuple(target_shape):
        return value
    if len(value.shape) == 4 and value.shape[:2] == tuple(target_shape[:2]) and \
            value.shape[3] == target_shape[3]:
        if value.shape[2] < target_shape[2]:
            return block_diagonal(value, target_shape[2] // value.shape[2])
        return diagonal_blocks(value, value.shape[2] // target_shape[2])
    raise ValueError(f"cannot convert a weight of shape {tuple(value.shape)} to "
                     f"{tuple(target_shape)}")


def _base_name(name):
    """A layer name without the ``_N`` Keras appends to auto-named layers built twice in one
    session (TF-MOT's ``quantize_layer``, ``quantize_layer_1``, ...)."""
    return re.sub(r"_\d+$", "", name)


def transfer_weights(source, target):
    """Copy every layer's weights from ``source`` to ``target``, converting grouped kernels
    between the native and training forms. Both models must come from the same spec (QAT
    wrappers included): layers are paired in order and must agree in type and name."""
    if len(source.layers) != len(target.layers):
        raise ValueError(f"{source.name} has {len(source.layers)} layers and {target.name} "
                         f"{len(target.layers)}: not the same model")
    for src, dst in zip(source.layers, target.layers):
        if type(src) is not type(dst) or _base_name(src.name) != _base_name(dst.name):
            raise ValueError(f"layer {src.name} ({type(src).__name__}) faces {dst.name} "
                             f"({type(dst).__name__}): not the same model")
        if not dst.weights:
            continue
        values = src.get_weights()
        shapes = [w.shape for w in dst.weights]
        if len(values) != len(shapes):
            raise ValueError(f"layer {dst.name}: {len(values)} weights in the source, "
                             f"{len(shapes)} in the target")
        dst.set_weights([_convert(v, s) for v, s in zip(values, shapes)])
    return target
