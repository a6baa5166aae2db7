"""Keras layer factories: the building blocks every architecture is made of.

Each factory takes a tensor and returns a tensor, with deterministic layer names (so weights
and per-layer statistics can be matched across builds) and the Keras module as a keyword, so
the same code builds a tf_keras model (QAT, export) or, where TensorFlow is absent, a Keras 3
model for float training on an accelerator.

Quantization rules these factories follow (TF-MOT folds BN into the conv before it, and the
TFLite int8 kernels fuse ReLU):
- a conv followed by BN has no bias and no activation of its own;
- ReLU is a separate ``ReLU`` layer, never an ``activation=`` argument;
- BN uses momentum 0.9 (PyTorch's default; Keras's 0.99 leaves the moving statistics near
  their initial values for hundreds of steps, which with raw-pixel inputs wrecks eval-mode
  accuracy of short runs and of QAT fine-tunes);
- a factorized conv is ``DepthwiseConv2D`` (or a grouped ``Conv2D``) -> BN -> ReLU ->
  ``Conv2D 1x1`` -> BN -> ReLU, never ``SeparableConv2D`` (which TF-MOT does not quantize as
  two convs and TFLite cannot fold BN into).
"""

from fnet_tf.arch import grouped, initializers
from fnet_tf.core import backend

BN_MOMENTUM = 0.9


def batch_norm(name, keras=None):
    return _keras(keras).layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)


def _keras(keras):
    if keras is None:
        keras = backend.keras
    return keras


def _init(init, keras):
    """A layer's own initializer for ``init`` (a Keras name or a naive ``normal_std0.01``)."""

    return initializers.get(init, keras)


def conv_bn(x, filters, kernel=3, stride=1, *, name, keras=None, init="he_normal",
            groups=1, relu=True, bn=True):
    """Conv2D -> BatchNorm -> ReLU. With ``bn=False`` the conv keeps its bias and BN is left out."""
    k = _keras(keras)
    x = k.layers.Conv2D(filters, kernel, strides=stride, padding="same", groups=groups,
                        use_bias=not bn, kernel_initializer=_init(init, k), name=f"{name}_conv")(x)
    if bn:
        x = batch_norm(f"{name}_bn", k)(x)
    if relu:
        x = k.layers.ReLU(name=f"{name}_relu")(x)
    return x


def spatial_conv_bn_relu(x, kernel=3, stride=1, groups=None, *, name, keras=None,
                         init="he_normal", grouped_form="native"):
    """The spatial half of a factorized conv: a kxk conv that keeps the channel count.

    ``groups`` equal to the input channels gives a ``DepthwiseConv2D``; fewer gives a grouped
    ``Conv2D`` (each group of ``channels/groups`` channels mixed spatially on its own).
    ``grouped_form="block_diagonal"`` builds that grouped conv in its fast-training form, a
    standard ``Conv2D`` with a block-diagonal kernel (``fnet_tf.arch.grouped``; tf_keras only).
    """
    k = _keras(keras)
    channels = x.shape[-1]
    groups = channels if groups is None else groups
    if channels % groups:
        raise ValueError(f"{name}: {channels} channels cannot be split into {groups} groups")
    if groups == channels:
        x = k.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                     depthwise_initializer=_init(init, k), name=f"{name}_dw")(x)
    elif grouped_form == "block_diagonal":

        x = k.layers.Conv2D(channels, kernel, strides=stride, padding="same", use_bias=False,
                            kernel_initializer=grouped.BlockDiagonalInit(init, groups),
                            kernel_constraint=grouped.BlockDiagonal(groups),
                            name=f"{name}_gconv")(x)
    elif grouped_form == "native":
        x = k.layers.Conv2D(channels, kernel, strides=stride, padding="same", groups=groups,
                            use_bias=False, kernel_initializer=_init(init, k), name=f"{name}_gconv")(x)
    else:
        raise ValueError(f"grouped_form must be 'native' or 'block_diagonal', got {grouped_form!r}")
    x = batch_norm(f"{name}_spatial_bn", k)(x)
    return k.layers.ReLU(name=f"{name}_spatial_relu")(x)


def factorized_conv(x, filters, kernel=3, stride=1, groups=None, *, name, keras=None,
                    init="he_normal", relu=True, grouped_form="native"):
    """A depth-factorized kxk conv: grouped/depthwise kxk spatial conv + 1x1 pointwise conv.

    ``groups=None`` (or the input channel count) makes it depthwise-separable.
    """
    x = spatial_conv_bn_relu(x, kernel, stride, groups, name=name, keras=keras, init=init,
                             grouped_form=grouped_form)
    k = _keras(keras)
    x = k.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer=_init(init, k),
                        name=f"{name}_pw")(x)
    x = batch_norm(f"{name}_pw_bn", k)(x)
    if relu:
        x = k.layers.ReLU(name=f"{name}_relu")(x)
    return x


def residual(x, body, shortcut=None, *, name, keras=None):
    """``relu(body(x) + shortcut(x))``; identity shortcut when ``shortcut`` is None.

    ``body`` and ``shortcut`` are callables from tensor to tensor, so any conv factory (plain
    or factorized) can form the branches: the ResNet basic block and the bottleneck block are
    this function with two 3x3 convs or a 1x1-3x3-1x1 body (see ``fnet_tf.arch.spec``).
    """
    k = _keras(keras)
    y = body(x)
    s = x if shortcut is None else shortcut(x)
    y = k.layers.Add(name=f"{name}_add")([y, s])
    return k.layers.ReLU(name=f"{name}_relu")(y)


def frost_bottleneck(x, filters, kernel, stride, plan, residual, *, name, keras=None,
                     init="he_normal"):
    """FrostNet's block (``fnet_tf.arch.spec.FrostBottleneck`` says what ``plan`` holds): squeeze
    1x1 -> concat [squeezed, input] -> expand 1x1 -> depthwise kxk -> linear 1x1 projection,
    each with BN (ReLU but on the projection), plus the input when ``residual``."""
    k = _keras(keras)
    squeezed, _, expanded = plan
    y = x
    if squeezed:
        s = conv_bn(x, squeezed, 1, name=f"{name}_sq", keras=k, init=init)
        y = k.layers.Concatenate(name=f"{name}_cat")([s, x])
    if expanded:
        y = conv_bn(y, expanded, 1, name=f"{name}_ex", keras=k, init=init)
    y = k.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                 depthwise_initializer=_init(init, k), name=f"{name}_dw")(y)
    y = batch_norm(f"{name}_dw_bn", k)(y)
    y = k.layers.ReLU(name=f"{name}_dw_relu")(y)
    y = conv_bn(y, filters, 1, name=f"{name}_pj", keras=k, init=init, relu=False)
    if residual:
        y = k.layers.Add(name=f"{name}_add")([y, x])
    return y


def classifier_head(x, num_classes, *, keras=None, init="he_normal"):
    """Global average pooling and one dense layer producing logits (no softmax)."""
    k = _keras(keras)
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    return k.layers.Dense(num_classes, kernel_initializer=_init(init, k), name="logits")(x)


WHITENING_SUFFIX = "_whiten"  # fnet_tf.arch.whitening finds the stems it sets from data,
GROUP_CONV_TAG = "_gc"        # and the group convs it dirac-initialises, by these names


def whitening_stem(x, kernel=2, *, name, keras=None):
    """airbench's stem: a frozen kxk 'valid' conv with 2 * kernel * kernel * channels filters
    (the training patches' whitening basis and its negation, set from data before training by
    ``fnet_tf.arch.whitening``), then GELU. Not trained; a teacher's layer, not an INT8 one."""
    k = _keras(keras)
    filters = 2 * kernel * kernel * x.shape[-1]
    x = k.layers.Conv2D(filters, kernel, padding="valid", use_bias=True, trainable=False,
                        name=f"{name}{WHITENING_SUFFIX}")(x)
    return k.layers.Activation("gelu", name=f"{name}_gelu")(x)


def conv_pool_group(x, filters, *, name, keras=None, init="he_normal"):
    """airbench's block: conv 3x3 -> 2x2 max pool -> BN -> GELU -> conv 3x3 -> BN -> GELU, with
    BN that centres but does not scale (airbench's BN has no trained weight)."""
    k = _keras(keras)
    for j in range(2):
        x = k.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                            kernel_initializer=_init(init, k),
                            name=f"{name}{GROUP_CONV_TAG}{j}")(x)
        if j == 0:
            x = k.layers.MaxPooling2D(2, name=f"{name}_pool")(x)
        x = k.layers.BatchNormalization(momentum=BN_MOMENTUM, scale=False,
                                        name=f"{name}{GROUP_CONV_TAG}{j}_bn")(x)
        x = k.layers.Activation("gelu", name=f"{name}{GROUP_CONV_TAG}{j}_gelu")(x)
    return x
