"""The registry, the factorization schedule and the analytic counts."""
import pytest

from fnet_tf.arch import architectures
from fnet_tf.core.errors import UserError
from fnet_tf.arch.spec import Conv, summarize

ALL = [(name, level) for name in architectures.list_models()
       for level in range(architectures.model_spec(name).meta["max_level"] + 1)]


def test_registry_lists_models():
    assert {"factorizenet", "resnet8"} <= set(architectures.list_models())


@pytest.mark.parametrize("name,level", ALL)
def test_every_model_and_level_builds_with_the_counted_params(name, level):
    import numpy as np

    model = architectures.create_model(name, level)
    out = model(np.zeros((2, 32, 32, 3), np.float32))
    assert out.shape == (2, 10)
    assert model.count_params() == architectures.model_spec(name, level).cost().params
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "SeparableConv2D" not in kinds and "Rescaling" not in kinds


@pytest.mark.parametrize("name", architectures.list_models())
def test_macs_fall_strictly_with_level(name):
    top = architectures.model_spec(name).meta["max_level"]
    macs = [architectures.model_spec(name, level).cost().macs for level in range(top + 1)]
    assert all(a > b for a, b in zip(macs, macs[1:])), macs


def test_factorizenet_level0_hand_count():
    # stem 3->32 at 32x32, 32->32 at 32x32, 32->64 and 64->64 at 16x16, 64->128 and 128->128
    # at 8x8 (all 3x3), dense 128->10.
    convs = [(32 * 32, 3, 32), (32 * 32, 32, 32), (16 * 16, 32, 64), (16 * 16, 64, 64),
             (8 * 8, 64, 128), (8 * 8, 128, 128)]
    macs = sum(hw * 9 * cin * cout for hw, cin, cout in convs) + 128 * 10
    params = sum(9 * cin * cout + 4 * cout for _, cin, cout in convs) + 128 * 10 + 10
    spec = architectures.model_spec("factorizenet", 0)
    assert spec.cost().macs == macs == 38_634_752
    assert spec.cost().params == params


def test_factorizenet_last_level_is_depthwise_separable_hand_count():
    spec = architectures.model_spec("factorizenet", 7)
    # stem stays standard; each other conv: depthwise 3x3 (cin) + BN + pointwise cin->cout + BN
    macs = 32 * 32 * 27 * 32
    params = 27 * 32 + 4 * 32
    for hw, cin, cout in [(32 * 32, 32, 32), (16 * 16, 32, 64), (16 * 16, 64, 64),
                          (8 * 8, 64, 128), (8 * 8, 128, 128)]:
        macs += hw * (9 * cin + cin * cout)
        params += 9 * cin + 4 * cin + cin * cout + 4 * cout
    macs += 1280
    params += 1290
    assert spec.cost().macs == macs
    assert spec.cost().params == params
    model = architectures.create_model("factorizenet", 7)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("DepthwiseConv2D") == 5


def test_resnet8_matches_mlperf_tiny():
    s = summarize(architectures.model_spec("resnet8"))
    assert s["macs"] == 12_501_632  # MLPerf Tiny: ~12.5 M
    assert abs(s["params"] - 78_000) / 78_000 < 0.02  # ~78 K


@pytest.mark.parametrize("level", range(8))
def test_schedule_doubles_groups_per_level(level):
    spec = architectures.model_spec("factorizenet", level)
    for conv, cin in spec.convs_with_inputs():
        if not conv.factorizable:
            assert conv.spatial_groups is None
        elif level == 0:
            assert conv.spatial_groups is None
        else:
            assert conv.spatial_groups == min(2 ** level, cin)


def test_spatial_groups_uses_divisors_for_odd_widths():
    assert architectures.spatial_groups(4, 24) == 12  # 16 does not divide 24
    assert architectures.spatial_groups(5, 24) == 24  # depthwise
    assert architectures.spatial_groups(0, 24) is None


def test_width_scales_channels_and_keeps_divisibility():
    spec = architectures.model_spec("factorizenet", 3, width=0.5)
    assert [c.filters for c, _ in spec.convs_with_inputs()] == [16, 16, 32, 32, 64, 64]
    model = architectures.create_model("factorizenet", 3, width=0.75)
    assert model.count_params() == architectures.model_spec("factorizenet", 3, 0.75).cost().params


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "nope"}, "unknown model 'nope'"),
    ({"name": "factorizenet", "level": 8}, "choose a level from 0 to 7"),
    ({"name": "factorizenet", "level": -1}, "unknown level"),
    ({"name": "factorizenet", "width": 0}, "--width must be positive"),
])
def test_bad_lookups_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        architectures.model_spec(**kwargs)


def test_factorized_conv_requires_bn():
    with pytest.raises(ValueError):
        Conv(16, spatial_groups=4, bn=False)


def test_per_stage_levels_match_a_hand_count():
    from fnet_tf.arch import architectures
    from fnet_tf.arch.spec import summarize

    spec = architectures.model_spec("factorizenet", "0,3,7")
    assert spec.name == "factorizenet-l0_3_7" and spec.meta["level"] == "0.3.7"
    # stage 0 dense: stem 3x3x3x32, 3x3x32x32; stage 1 (8 groups): 9*4*32 + 32*64, 9*8*64 +
    # 64*64; stage 2 depthwise: 9*64 + 64*128, 9*128 + 128*128; dense 128x10
    weights = [864, 9216, 1152 + 2048, 4608 + 4096, 576 + 8192, 1152 + 16384, 1280]
    pixels = [1024, 1024, 256, 256, 64, 64, 1]
    assert summarize(spec)["macs"] == sum(w * p for w, p in zip(weights, pixels)) == 15_054_080
    bn_channels = 32 + 32 + (32 + 64) + (64 + 64) + (64 + 128) + (128 + 128)
    params = sum(weights) + 4 * bn_channels + 10
    model = architectures.create_model("factorizenet", level="0,3,7")
    assert model.count_params() == summarize(spec)["params"] == params == 52_522
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("DepthwiseConv2D") == 2  # only stage 2 is depthwise
    assert architectures.model_spec("factorizenet", "3,3,3").blocks == \
        architectures.model_spec("factorizenet", 3).blocks  # one level = every stage
    assert architectures.stage_indices(architectures.model_spec("resnet8")) == [0, 0, 1, 2]


def test_per_stage_widths_match_a_hand_count():
    from fnet_tf.arch import architectures
    from fnet_tf.arch.spec import summarize

    spec = architectures.model_spec("factorizenet", "0,7,7", "0.5,1,1.25")
    assert spec.name == "factorizenet-l0_7_7-w0_5-1-1_25" and spec.meta["width"] == "0.5,1,1.25"
    # stage 0 dense at 16: 3x3x3x16, 3x3x16x16; stage 1 depthwise at 64: 9*16 + 16*64,
    # 9*64 + 64*64; stage 2 at 160: 9*64 + 64*160 (depthwise), then 2**7 = 128 groups do not
    # divide 160 channels, so 80 groups of 2: 9*2*160 + 160*160; dense 160x10
    weights = [432, 2304, 144 + 1024, 576 + 4096, 576 + 10240, 2880 + 25600, 1600]
    pixels = [1024, 1024, 256, 256, 64, 64, 1]
    assert summarize(spec)["macs"] == sum(w * p for w, p in zip(weights, pixels)) == 6_813_248
    bn_channels = 16 + 16 + (16 + 64) + (64 + 64) + (64 + 160) + (160 + 160)
    params = sum(weights) + 4 * bn_channels + 10
    model = architectures.create_model("factorizenet", level="0,7,7", width="0.5,1,1.25")
    assert model.count_params() == summarize(spec)["params"] == params
    assert architectures.model_spec("factorizenet", 3, "0.75,0.75,0.75").blocks == \
        architectures.model_spec("factorizenet", 3, 0.75).blocks  # one width = every stage
    assert architectures.parse_width("0.50, 1,1.250") == "0.5,1,1.25"
    assert architectures.width_tuple(0.75, 3) == (0.75, 0.75, 0.75)


@pytest.mark.parametrize("width,message", [("1,2", "3 stages"), ("0,1,1", "positive"),
                                           ("a,b,c", "not a width")])
def test_bad_per_stage_widths_are_user_errors(width, message):
    from fnet_tf.arch import architectures
    from fnet_tf.core.errors import UserError

    with pytest.raises(UserError, match=message):
        architectures.model_spec("factorizenet", 3, width)


@pytest.mark.parametrize("level,message", [("1,2", "3 stages"), ("0,9,1", "from 0 to 7"),
                                           ("a", "not a level")])
def test_bad_per_stage_levels_are_user_errors(level, message):
    from fnet_tf.arch import architectures
    from fnet_tf.core.errors import UserError

    with pytest.raises(UserError, match=message):
        architectures.model_spec("factorizenet", level)
