"""The registered models and the progressive depth-factorization schedule.

A registered model is a function returning its baseline ``ModelSpec`` (level 0, width 1.0).
``model_spec(name, level, width)`` derives every variant from it with two functions of data:
``scale_width`` and ``factorize`` (the schedule); both take one value for every stage or one
per stage (``--level 0,3,7``, ``--width 0.5,1,1.25``; a stage starts where the resolution drops). ``create_model`` builds the Keras model.

FactorizeNet (our definition; the seed paper's exact baseline is not public):
    a VGG-style CNN for 32x32 inputs, 3 stages of two 3x3 conv-BN-ReLU (32, 64, 128 filters)
    with 2x2 max pooling between stages, global average pooling, one dense layer.
    Level 0 is this baseline (38.6 M MACs). At level l >= 1 every 3x3 conv but the stem is
    depth-factorized: its spatial part becomes a 3x3 conv over ``2**l`` groups (capped at the
    input channels, where it becomes depthwise) followed by a 1x1 pointwise conv. Each level
    doubles the groups, so the last level (7, where 2**7 >= 128 channels) is fully
    depthwise-separable.
"""
import math
from dataclasses import replace

from fnet_tf.arch.registry import MODELS, list_models, register_model
from fnet_tf.arch.spec import (Conv, ConvHead, ConvPoolGroup, FrostBottleneck, MaxPool, ModelSpec,
                               Residual, WhiteningStem, basic_block, build_model, make_divisible,
                               summarize)
from fnet_tf.core.errors import UserError

# --- the schedule --------------------------------------------------------------------------

def spatial_groups(level, in_channels):
    """Groups of a factorized conv's spatial part at ``level`` (None at level 0: no factorizing).

    ``2**level`` groups, capped at the input channels (depthwise). Where ``2**level`` does not
    divide the channels (widths other than 1.0), the largest divisor below it.
    """
    if level == 0:
        return None
    target = 2 ** level
    if target >= in_channels:
        return in_channels
    return max(d for d in range(1, target + 1) if in_channels % d == 0)


def _factorizable(conv):
    return conv.factorizable and conv.kernel > 1 and conv.bn


def max_level(spec):
    """The level at which every factorizable conv is depthwise-separable."""
    widest = max((cin for conv, cin in spec.convs_with_inputs() if _factorizable(conv)),
                 default=1)
    return math.ceil(math.log2(widest))


def parse_level(text):
    """A ``--level`` value: ``3`` (every stage at level 3) -> 3; ``0,3,7`` or ``0.3.7`` (one
    level per stage, in order) -> the canonical string ``'0.3.7'``. ValueError if malformed."""
    if isinstance(text, int):
        return text
    if isinstance(text, (tuple, list)):
        text = ".".join(str(int(v)) for v in text)
    parts = str(text).strip().replace(",", ".").split(".")
    if not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a level: an integer (3) or one per stage (0,3,7)")
    values = [int(p) for p in parts]
    return values[0] if len(values) == 1 else ".".join(map(str, values))


def level_tuple(level, stages):
    """Per-stage levels of a ``parse_level`` value for a model of ``stages`` stages."""
    if isinstance(level, int):
        return (level,) * stages
    return tuple(int(v) for v in str(level).split("."))


def _downsamples(block):

    if isinstance(block, MaxPool):
        return True
    if isinstance(block, Residual):
        return block.body[0].stride > 1
    return getattr(block, "stride", 1) > 1


def stage_indices(spec):
    """The stage of each block: a new stage starts at each block that lowers the resolution
    (a pooling, a strided conv or block); the stem is in stage 0."""
    indices, stage = [], 0
    for i, block in enumerate(spec.blocks):
        if i and _downsamples(block):
            stage += 1
        indices.append(stage)
    return indices


def factorize(spec, level):
    """The schedule: ``spec`` with every factorizable conv factorized as ``level`` says (one
    level for every stage, or one per stage: ``level_tuple``)."""
    stages = stage_indices(spec)
    levels = level_tuple(level, stages[-1] + 1)

    def at_level(lvl):
        def convert(conv, cin):
            if not _factorizable(conv):
                return conv
            return replace(conv, spatial_groups=spatial_groups(lvl, cin))
        return convert

    blocks, channels = [], spec.input_shape[-1]
    for block, stage in zip(spec.blocks, stages):
        block, channels = block.map_convs(at_level(levels[stage]), channels)
        blocks.append(block)
    return replace(spec, blocks=tuple(blocks))


def parse_width(text):
    """A ``--width`` value: ``0.75`` (every stage) -> 0.75; ``0.5,1,1.25`` (one multiplier per
    stage, in order) -> the canonical string ``'0.5,1,1.25'``. ValueError if malformed."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        values = [float(text)]
    else:
        parts = [text] if isinstance(text, (int, float)) else (
            list(text) if isinstance(text, (tuple, list)) else str(text).split(","))
        try:
            values = [float(p) for p in parts]
        except (TypeError, ValueError):
            raise ValueError(f"{text!r} is not a width: a multiplier (0.75) or one per stage "
                             f"(0.5,1,1.25)") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"must be positive, got {text!r}")
    return values[0] if len(values) == 1 else ",".join(f"{v:g}" for v in values)


def width_tuple(width, stages):
    """Per-stage multipliers of a ``parse_width`` value for a model of ``stages`` stages."""
    if isinstance(width, (int, float)):
        return (float(width),) * stages
    return tuple(float(v) for v in str(width).split(","))


def width_text(width):
    """How names, tables and cards write a width: ``0.75`` or ``0.5,1,1.25``."""
    return f"{width:g}" if isinstance(width, (int, float)) else str(width)


def scale_width(spec, width):
    """``spec`` with each stage's channels times its multiplier (``width_tuple``), rounded by
    ``make_divisible``; the input channels of each block follow the block before it."""
    stages = stage_indices(spec)
    widths = width_tuple(width, stages[-1] + 1)
    if all(w == 1.0 for w in widths):
        return spec

    def times(w):
        return lambda conv, cin: replace(conv, filters=make_divisible(conv.filters * w))

    blocks, channels = [], spec.input_shape[-1]
    for block, stage in zip(spec.blocks, stages):
        block, channels = block.map_convs(times(widths[stage]), channels)
        blocks.append(block)
    return replace(spec, blocks=tuple(blocks))


# --- lookup --------------------------------------------------------------------------------

def model_spec(name, level=0, width=1.0, image_size=None):
    """The spec of registered model ``name`` at ``level`` and ``width``, for ``image_size``
    (height, width) inputs (default 32x32; every architecture is fully convolutional, so the
    same weights serve any size); UserError if unknown."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    try:
        width = parse_width(width)
    except ValueError as e:
        raise UserError(f"--width {e}") from None
    baseline = MODELS[name]()
    stages = stage_indices(baseline)[-1] + 1
    if len(width_tuple(width, stages)) != stages:
        raise UserError(f"--width {width} gives {len(width_tuple(width, stages))} multipliers but "
                        f"{name} has {stages} stages: pass one, or {stages} separated by commas")
    base = scale_width(baseline, width)
    top = max_level(base)
    try:
        level = parse_level(level)
    except ValueError as e:
        raise UserError(f"unknown level for {name}: {e}") from None
    stages = stage_indices(base)[-1] + 1
    per_stage = level_tuple(level, stages)
    if top == 0 and any(per_stage):
        raise UserError(f"{name} has no factorization levels (its spatial convs are depthwise "
                        f"already): pass --level 0")
    if len(per_stage) != stages:
        raise UserError(f"--level {level} gives {len(per_stage)} levels but {name} has {stages} "
                        f"stages: pass one level, or {stages} separated by commas (by dots in a "
                        f"sweep's --levels, e.g. 0.0.7)")
    if not all(0 <= lvl <= top for lvl in per_stage):
        raise UserError(f"unknown level {level!r} for {name}: choose a level from 0 to {top}"
                        + ("" if isinstance(level, int) else " for every stage"))
    spec = factorize(base, level)
    tag = f"{name}-l{level}" + ("" if width == 1.0 else f"-w{width_text(width)}")
    if image_size is not None:
        spec = replace(spec, input_shape=(int(image_size[0]), int(image_size[1]), 3))
    return replace(spec, name=tag.replace(",", "-").replace(".", "_"),
                   meta={"model": name, "level": level, "width": width, "max_level": top,
                         "qat": base.meta.get("qat", True)})


def create_model(name, level=0, width=1.0, *, keras=None, kernel_initializer="he_normal"):
    """Build registered model ``name`` as a Keras model (tf_keras unless ``keras`` is given)."""
    return build_model(model_spec(name, level, width), keras=keras,
                       kernel_initializer=kernel_initializer)


def describe(name, level=0, width=1.0):
    """One row of the model table: name, level, params, MACs, size at 8 and 32 bits."""
    spec = model_spec(name, level, width)
    return {"model": name, "level": level, "width": width, **summarize(spec)}


# --- the registered models -------------------------------------------------------------------

@register_model
def factorizenet():
    """FactorizeNet baseline: VGG-style 32-64-128, two 3x3 convs a stage (level 0: 38.6 M MACs)."""
    stem = Conv(32, 3, factorizable=False)
    return ModelSpec("factorizenet", (
        stem, Conv(32),
        MaxPool(2), Conv(64), Conv(64),
        MaxPool(2), Conv(128), Conv(128),
    ))


@register_model
def resnet8():
    """The MLPerf Tiny image-classification reference: ResNet-8, 16/32/64 filters (12.5 M MACs).

    As in MLPerf Tiny's keras_model.py, the 1x1 shortcut convs have a bias and no BN; the
    other convs are conv-BN (without a conv bias, which BN makes redundant).
    """
    return ModelSpec("resnet8", (
        Conv(16, 3, factorizable=False),
        basic_block(16, 1, in_channels=16),
        replace(basic_block(32, 2), shortcut=Conv(32, 1, 2, relu=False, bn=False,
                                                  factorizable=False)),
        replace(basic_block(64, 2), shortcut=Conv(64, 1, 2, relu=False, bn=False,
                                                  factorizable=False)),
    ))


# FrostNet-Small's ImageNet rows (kernel, C_out, expansion, squeeze ratio, stride), from the
# paper's public code (clovaai/frostnet, frostnet.py, mode 'small').
FROSTNET_SMALL = (
    (3, 16, 1, 1, 1), (5, 24, 3, 4, 2), (3, 24, 3, 4, 1), (5, 40, 3, 4, 2), (5, 80, 3, 4, 2),
    (5, 80, 3, 4, 1), (3, 80, 3, 4, 1), (5, 96, 3, 2, 1), (5, 96, 3, 4, 1), (5, 96, 3, 4, 1),
    (5, 192, 6, 4, 2), (5, 192, 6, 4, 1), (5, 192, 6, 4, 1), (5, 320, 6, 2, 1))
FROSTNET_CIFAR_WIDTH = 0.3
FROSTNET_CIFAR_HEAD = 256


@register_model
def frostnet_cifar():
    """FrostNet-Small adapted to 32x32 inputs (our adaptation; see the README): a 3x3 stem
    without stride, the blocks of FROSTNET_SMALL at width FROSTNET_CIFAR_WIDTH with the last
    stride-2 step (the 192 stage's) removed, so the stages run at 32, 16, 8 and 4 pixels and the
    last is 4x4; a 1x1 conv head of FROSTNET_CIFAR_HEAD channels. No level: every spatial conv
    is depthwise already (``--level`` above 0 is refused)."""
    first_stride2 = min(i for i, row in enumerate(FROSTNET_SMALL) if row[4] == 2)
    blocks = [Conv(make_divisible(32 * FROSTNET_CIFAR_WIDTH), 3, factorizable=False)]
    for i, (kernel, out, expansion, ratio, stride) in enumerate(FROSTNET_SMALL):
        blocks.append(FrostBottleneck(make_divisible(out * FROSTNET_CIFAR_WIDTH), kernel,
                                      expansion, ratio, 1 if i == first_stride2 else stride))
    blocks.append(ConvHead(FROSTNET_CIFAR_HEAD))
    return ModelSpec("frostnet_cifar", tuple(blocks))


AIRBENCH_WIDTHS = (64, 256, 256)
AIRBENCH_STEM = 24


@register_model
def airbench_cifar():
    """A teacher, not a zoo model: our adaptation of the airbench94 CIFAR-10 speed-run network's
    layout (Keller Jordan's ``airbench``, after hlb-cifar10): a 3x3 stem of AIRBENCH_STEM
    filters, then three stages of conv -> 2x2 max pooling -> conv at AIRBENCH_WIDTHS (64, 256,
    256), global average pooling, one dense layer (148 M MACs, 12x ResNet-8). Unlike airbench:
    conv-BN-ReLU before the pooling (airbench pools, then BN-GELU), a plain 3x3 stem (no frozen
    whitening 2x2 conv), average (not max) pooling at the end, no output scaling. It trains with
    fnet_tf's ordinary loop (``--label_smoothing``, cosine SGD); see BUILD_NOTES for its recipe."""
    first, second, third = AIRBENCH_WIDTHS
    return ModelSpec("airbench_cifar", (
        Conv(AIRBENCH_STEM, 3, factorizable=False),
        Conv(first), MaxPool(2), Conv(first),
        Conv(second), MaxPool(2), Conv(second),
        Conv(third), MaxPool(2), Conv(third),
    ))


@register_model
def airbench_whitened():
    """A teacher, not a zoo model: airbench94's network as its code builds it (Keller Jordan's
    ``airbench``, legacy/airbench94.py): a frozen 2x2 whitening stem set from the training
    patches (``fnet_tf.arch.whitening``), GELU, then three groups of conv -> 2x2 max pool ->
    BN -> GELU -> conv -> BN -> GELU at AIRBENCH_WIDTHS, BN without scale, dirac-initialised
    convs. Unlike airbench: global average pooling and a dense layer with bias (airbench: max
    pooling, no bias, logits scaled by 1/9). Trained with ``--lookahead`` and
    ``--crop_pad 2 --crop_mode reflect`` (BUILD_NOTES)."""
    return ModelSpec("airbench_whitened", (
        WhiteningStem(2), *(ConvPoolGroup(width) for width in AIRBENCH_WIDTHS)),
        meta={"qat": False})  # BN after pooling folds into no conv: TF-MOT cannot QAT it
