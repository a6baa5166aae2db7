"""Architectures as data: block specs, their analytic cost, and the one builder.

A model is a ``ModelSpec``: an input shape, a tuple of blocks and a classifier. Blocks are
frozen dataclasses, so a variant of a model (a wider one, a factorized one) is a change of
data made by a function such as ``fnet_tf.arch.architectures.factorize``, never a copy of code.

Every block knows three things:
- ``map_convs(fn, cin)``: a copy with each ``Conv`` replaced by ``fn(conv, cin)``;
- ``cost(shape)``: its output shape and analytic params / MACs (counted from the spec, not
  from a built model, so the table of every model and level costs no TensorFlow);
- ``build(x, ctx)``: the Keras layers, through the factories in ``fnet_tf.arch.layers``.

MACs count the multiply-accumulates of convolutions and dense layers (the convention of the
MLPerf Tiny ResNet-8's 12.5 M); pooling, BN, ReLU and adds are not MACs.
"""
import dataclasses
import math
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

from fnet_tf.arch import layers


def make_divisible(value, divisor=8):
    """Round a channel count to the nearest multiple of ``divisor``, never down by over 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class Cost:
    """What a block costs. ``params`` counts every Keras weight (BN statistics included), as
    ``model.count_params()`` does; ``weights`` and ``biases`` are what an INT8 file stores once
    BN is folded (int8 kernels, one int32 bias per output channel)."""

    macs: int = 0
    params: int = 0
    weights: int = 0
    biases: int = 0

    def __add__(self, other):
        return Cost(*(a + b for a, b in zip(dataclasses.astuple(self),
                                             dataclasses.astuple(other))))


@dataclass(frozen=True)
class BuildContext:
    keras: object
    init: str = "he_normal"
    grouped_form: str = "native"  # or "block_diagonal": see fnet_tf.arch.grouped


def out_hw(shape, stride):
    h, w, _ = shape
    return math.ceil(h / stride), math.ceil(w / stride)


@dataclass(frozen=True)
class Conv:
    """A kxk convolution, standard or depth-factorized, followed by BN and (optionally) ReLU.

    ``spatial_groups=None``: one standard ``Conv2D``. ``spatial_groups=g``: factorized into a
    kxk conv over ``g`` groups that keeps the input channels (g = input channels: depthwise)
    and a 1x1 pointwise conv to ``filters``. ``factorizable=False`` keeps a conv standard at
    every level (the stem, whose 3 input channels leave nothing to factorize).
    ``bn=False``: a conv with bias and no BN (as in the MLPerf ResNet-8 shortcut).
    """

    filters: int
    kernel: int = 3
    stride: int = 1
    spatial_groups: Optional[int] = None
    relu: bool = True
    bn: bool = True
    factorizable: bool = True

    def __post_init__(self):
        if self.spatial_groups is not None and not self.bn:
            raise ValueError("a factorized conv always has BN: spatial_groups needs bn=True")

    def map_convs(self, fn, cin):
        return fn(self, cin), self.filters

    def cost(self, shape):
        cin = shape[-1]
        h, w = out_hw(shape, self.stride)
        k2 = self.kernel * self.kernel
        if self.spatial_groups is None:
            weights = k2 * cin * self.filters
            cost = Cost(macs=h * w * weights, params=weights, weights=weights,
                        biases=self.filters)
        else:
            spatial = k2 * (cin // self.spatial_groups) * cin
            pointwise = cin * self.filters
            cost = Cost(macs=h * w * (spatial + pointwise), params=spatial + pointwise + 4 * cin,
                        weights=spatial + pointwise, biases=cin + self.filters)
        extra = 4 * self.filters if self.bn else self.filters  # BN (gamma, beta, mean, var) or bias
        return (h, w, self.filters), cost + Cost(params=extra)

    def build(self, x, ctx, name):
        if self.spatial_groups is None:
            return layers.conv_bn(x, self.filters, self.kernel, self.stride, name=name,
                                  keras=ctx.keras, init=ctx.init, relu=self.relu, bn=self.bn)
        return layers.factorized_conv(x, self.filters, self.kernel, self.stride,
                                      self.spatial_groups, name=name, keras=ctx.keras,
                                      init=ctx.init, relu=self.relu,
                                      grouped_form=ctx.grouped_form)


@dataclass(frozen=True)
class MaxPool:
    size: int = 2

    def map_convs(self, fn, cin):
        return self, cin

    def cost(self, shape):  # Keras' 'valid' pooling floors: 25x25 -> 12x12
        return (shape[0] // self.size, shape[1] // self.size, shape[-1]), Cost()

    def build(self, x, ctx, name):
        return ctx.keras.layers.MaxPooling2D(self.size, name=f"{name}_pool")(x)


@dataclass(frozen=True)
class Residual:
    """``relu(body(x) + shortcut(x))``: the body is a chain of convs (the last without ReLU),
    the shortcut a conv or, when None, the identity."""

    body: Tuple[Conv, ...]
    shortcut: Optional[Conv] = None

    def map_convs(self, fn, cin):
        body, c = [], cin
        for conv in self.body:
            conv, c = conv.map_convs(fn, c)
            body.append(conv)
        shortcut = self.shortcut.map_convs(fn, cin)[0] if self.shortcut else None
        return replace(self, body=tuple(body), shortcut=shortcut), c

    def cost(self, shape):
        total, out = Cost(), shape
        for conv in self.body:
            out, c = conv.cost(out)
            total += c
        if self.shortcut is not None:
            total += self.shortcut.cost(shape)[1]
        return out, total

    def build(self, x, ctx, name):
        def body(t):
            for j, conv in enumerate(self.body):
                t = conv.build(t, ctx, f"{name}_c{j}")
            return t

        def projection(t):
            return self.shortcut.build(t, ctx, f"{name}_sc")

        shortcut = projection if self.shortcut is not None else None
        return layers.residual(x, body, shortcut, name=name, keras=ctx.keras)


@dataclass(frozen=True)
class FrostBottleneck:
    """FrostNet's block (Kim et al., arXiv 2006.09679; its public code's
    ``CascadePreExBottleneck``): squeeze the input with a 1x1 conv-BN-ReLU to ``C_in / r``
    channels (rounded to a multiple of 8), concatenate [squeezed, input], expand by ``e`` with a
    1x1 conv-BN-ReLU, kxk depthwise conv-BN-ReLU with stride ``s``, linear 1x1 conv-BN to
    ``filters``; add the input when ``s == 1`` and ``C_in == filters``. With ``C_in // r < 8`` no
    squeeze (a MobileNetV2 inverted residual); with ``e == 1`` only depthwise + projection."""

    filters: int
    kernel: int = 3
    expansion: int = 3
    squeeze_ratio: int = 4
    stride: int = 1

    def plan(self, cin):
        """(squeezed channels or 0, channels after the concat, expanded channels or 0)."""
        if self.expansion == 1:
            return 0, cin, 0
        squeezed = 0 if cin // self.squeeze_ratio < 8 else make_divisible(cin // self.squeeze_ratio)
        joined = cin + squeezed
        return squeezed, joined, joined * self.expansion

    def residual(self, cin):
        return self.stride == 1 and cin == self.filters

    def map_convs(self, fn, cin):
        # Width scaling reaches the output channels through a stand-in 1x1 conv; the block has
        # no factorizable conv (its spatial conv is depthwise already).
        conv = fn(Conv(self.filters, 1, factorizable=False), cin)
        return replace(self, filters=conv.filters), conv.filters

    def cost(self, shape):
        h_in, w_in, cin = shape
        h, w = out_hw(shape, self.stride)
        squeezed, joined, expanded = self.plan(cin)
        spatial = expanded or joined
        weights = {"squeeze": cin * squeezed, "expand": joined * expanded,
                   "depthwise": self.kernel ** 2 * spatial, "project": spatial * self.filters}
        macs = (h_in * w_in * (weights["squeeze"] + weights["expand"])
                + h * w * (weights["depthwise"] + weights["project"]))
        channels = squeezed + expanded + spatial + self.filters  # one BN / bias each
        total = sum(weights.values())
        return (h, w, self.filters), Cost(macs=macs, params=total + 4 * channels,
                                          weights=total, biases=channels)

    def build(self, x, ctx, name):
        return layers.frost_bottleneck(x, self.filters, self.kernel, self.stride,
                                       self.plan(x.shape[-1]), self.residual(x.shape[-1]),
                                       name=name, keras=ctx.keras, init=ctx.init)


@dataclass(frozen=True)
class ConvHead:
    """A 1x1 conv-BN-ReLU before the classifier (FrostNet's last layer), never factorized."""

    filters: int

    def map_convs(self, fn, cin):
        conv = fn(Conv(self.filters, 1, factorizable=False), cin)
        return replace(self, filters=conv.filters), conv.filters

    def cost(self, shape):
        return Conv(self.filters, 1, factorizable=False).cost(shape)

    def build(self, x, ctx, name):
        return layers.conv_bn(x, self.filters, 1, name=name, keras=ctx.keras, init=ctx.init)


@dataclass(frozen=True)
class WhiteningStem:
    """airbench's frozen whitening stem (``layers.whitening_stem``): a kxk 'valid' conv to
    ``2 * k * k * C_in`` channels, then GELU. A teacher's block: never factorized or scaled."""

    kernel: int = 2

    def map_convs(self, fn, cin):
        return self, 2 * self.kernel * self.kernel * cin

    def cost(self, shape):
        h, w, cin = shape
        filters = 2 * self.kernel * self.kernel * cin
        oh, ow = h - self.kernel + 1, w - self.kernel + 1
        weights = self.kernel * self.kernel * cin * filters
        return (oh, ow, filters), Cost(macs=oh * ow * weights, params=weights + filters,
                                       weights=weights, biases=filters)

    def build(self, x, ctx, name):
        return layers.whitening_stem(x, self.kernel, name=name, keras=ctx.keras)


@dataclass(frozen=True)
class ConvPoolGroup:
    """airbench's block (``layers.conv_pool_group``): conv 3x3 -> 2x2 max pool -> BN -> GELU ->
    conv 3x3 -> BN -> GELU, BN without a scale. Width scaling reaches ``filters``."""

    filters: int

    def map_convs(self, fn, cin):
        conv = fn(Conv(self.filters, 3, factorizable=False), cin)
        return replace(self, filters=conv.filters), conv.filters

    def cost(self, shape):
        h, w, cin = shape
        ph, pw = h // 2, w // 2  # MaxPooling2D 'valid' floors
        first, second = 9 * cin * self.filters, 9 * self.filters * self.filters
        macs = h * w * first + ph * pw * second
        bn = 2 * 3 * self.filters  # beta, moving mean and variance; no gamma
        return (ph, pw, self.filters), Cost(macs=macs, params=first + second + bn,
                                            weights=first + second, biases=2 * self.filters)

    def build(self, x, ctx, name):
        return layers.conv_pool_group(x, self.filters, name=name, keras=ctx.keras,
                                      init=ctx.init)


def basic_block(filters, stride=1, in_channels=None):
    """The ResNet basic block as data; a 1x1 shortcut where the stride or width changes."""
    shortcut = None
    if stride != 1 or (in_channels is not None and in_channels != filters):
        shortcut = Conv(filters, 1, stride, relu=False, factorizable=False)
    return Residual((Conv(filters, 3, stride), Conv(filters, 3, 1, relu=False)), shortcut)


def bottleneck_block(filters, stride=1, expansion=4, in_channels=None):
    """The ResNet bottleneck as data: 1x1 reduce, 3x3 (factorizable), 1x1 expand."""
    out = filters * expansion
    shortcut = None
    if stride != 1 or in_channels != out:
        shortcut = Conv(out, 1, stride, relu=False, factorizable=False)
    return Residual((Conv(filters, 1), Conv(filters, 3, stride), Conv(out, 1, relu=False)),
                    shortcut)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    blocks: tuple
    num_classes: int = 10
    input_shape: Tuple[int, int, int] = (32, 32, 3)
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def map_convs(self, fn):
        blocks, c = [], self.input_shape[-1]
        for block in self.blocks:
            block, c = block.map_convs(fn, c)
            blocks.append(block)
        return replace(self, blocks=tuple(blocks))

    def convs_with_inputs(self):
        """Every Conv with its input channel count, in build order."""
        found = []
        self.map_convs(lambda conv, cin: found.append((conv, cin)) or conv)
        return found

    def cost(self):
        total, shape = Cost(), self.input_shape
        for block in self.blocks:
            shape, c = block.cost(shape)
            total += c
        dense = shape[-1] * self.num_classes
        return total + Cost(macs=dense, params=dense + self.num_classes, weights=dense,
                            biases=self.num_classes)


def summarize(spec):
    """Params, MACs and model size at 8 and 32 bits, from the spec alone."""
    c = spec.cost()
    return {
        "params": c.params,
        "macs": c.macs,
        "size_int8_bytes": c.weights + 4 * c.biases,  # int8 kernels, int32 biases
        "size_fp32_bytes": 4 * (c.weights + c.biases),
    }


def has_grouped_convs(spec):
    """True if ``spec`` holds a grouped (not depthwise, not standard) spatial conv."""
    return any(conv.spatial_groups is not None and 1 < conv.spatial_groups < cin
               for conv, cin in spec.convs_with_inputs())


def build_model(spec, keras=None, kernel_initializer="he_normal", grouped_form="native"):
    """The Keras model of ``spec``: raw pixels (0..255) in, logits out.

    No rescaling layer: the first conv + BN normalise, so an INT8 model's input is the raw
    pixel minus 128 and preprocessing stays out of the quantized graph.
    ``grouped_form="block_diagonal"``: grouped convs in their fast-training form
    (``fnet_tf.arch.grouped``); the layer names and every other weight are the same.
    """
    keras = layers._keras(keras)
    ctx = BuildContext(keras, kernel_initializer, grouped_form)
    inputs = keras.Input(shape=spec.input_shape, name="image")
    x = inputs
    for i, block in enumerate(spec.blocks):
        x = block.build(x, ctx, f"b{i}")
    outputs = layers.classifier_head(x, spec.num_classes, keras=keras, init=kernel_initializer)
    return keras.Model(inputs, outputs, name=spec.name)
