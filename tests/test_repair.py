"""The repairs before post-training quantization (issue 40): cross-layer equalization keeps the
float function and evens the channel ranges; bias correction removes the mean shift that
rounding the weights causes."""
import numpy as np
import pytest

from fnet_tf.core.backend import keras
from fnet_tf.core.errors import UserError
from fnet_tf.quantization import repair


def _pair_model(first="conv", pool=False):
    """input -> A (conv or depthwise) -> BN -> ReLU [-> max pool] -> B (1x1 conv) -> output."""
    inputs = keras.Input((8, 8, 4))
    if first == "conv":
        x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="a")(inputs)
    else:
        x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="a")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    if pool:
        x = keras.layers.MaxPooling2D()(x)
    outputs = keras.layers.Conv2D(6, 1, name="b")(x)
    return keras.Model(inputs, outputs)


def _uneven(model, spread=100.0, seed=0):
    """Give A's folded output channels ranges ``spread`` apart and BN non-trivial statistics."""
    rng = np.random.default_rng(seed)
    a, bn = model.get_layer("a"), model.get_layer("bn")
    kernel = rng.normal(size=a.get_weights()[0].shape).astype(np.float32)
    per_channel = np.geomspace(1.0, 1.0 / spread, 4).astype(np.float32)
    kernel *= per_channel.reshape((1, 1, 4, 1) if kernel.shape[-1] == 1 else (1, 1, 1, 4))
    a.set_weights([kernel])
    bn.set_weights([rng.uniform(0.5, 1.5, 4).astype(np.float32),   # gamma
                    rng.normal(0, 0.1, 4).astype(np.float32),      # beta
                    rng.normal(0, 0.1, 4).astype(np.float32),      # moving mean
                    rng.uniform(0.5, 2.0, 4).astype(np.float32)])  # moving variance
    return model


@pytest.mark.parametrize("first,pool", [("conv", False), ("depthwise", False), ("conv", True)])
def test_cle_keeps_the_float_outputs_and_evens_a_100x_pair(first, pool):
    model = _uneven(_pair_model(first, pool))
    images = np.random.default_rng(1).normal(size=(16, 8, 8, 4)).astype(np.float32)
    before = model.predict(images, verbose=0)
    ratio_before = repair.channel_ratio(model.get_layer("a"), model.get_layer("bn"))
    assert ratio_before > 50  # the hand-made spread (BN's gamma/sd moves it a little)

    fixed, report = repair.repaired(model, ("cle",))
    after = fixed.predict(images, verbose=0)
    assert np.max(np.abs(after - before)) <= 1e-4 * max(1.0, np.max(np.abs(before)))
    assert report.pairs == [("a", "b")]
    assert report.ratio_before["a"] == pytest.approx(ratio_before)
    assert report.ratio_after["a"] < ratio_before / 5  # sqrt(r_A r_B) in both layers
    a_ranges = repair.output_ranges(fixed.get_layer("a"), fixed.get_layer("bn"))
    kernel_b = fixed.get_layer("b").get_weights()[0]
    b_ranges = np.abs(kernel_b).max(axis=(0, 1, 3))
    np.testing.assert_allclose(a_ranges, b_ranges, rtol=1e-4)  # equal per channel
    # the original model is untouched
    assert repair.channel_ratio(model.get_layer("a"), model.get_layer("bn")) == ratio_before


def test_cle_skips_what_it_cannot_scale_and_says_why():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    y = keras.layers.ReLU()(x)
    branch = keras.layers.Conv2D(4, 1, name="branch")(y)
    added = keras.layers.Add()([branch, x])  # stem's output also feeds the residual add
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(added))
    outputs = keras.layers.Dense(3)(pooled)
    pairs, skipped = repair.find_pairs(keras.Model(inputs, outputs))
    assert pairs == []
    why = dict(skipped)
    assert "several layers" in why["stem"] and "Add" in why["branch"]


def test_bias_correction_removes_the_mean_shift_of_rounded_weights():
    """One conv whose small channel rounds badly with one scale per tensor, on inputs with a
    positive mean: rounding shifts that channel's mean output; the correction takes it back."""
    inputs = keras.Input((8, 8, 4))
    outputs = keras.layers.Conv2D(2, 3, padding="valid", name="a")(inputs)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    kernel = np.empty((3, 3, 4, 2), np.float32)
    kernel[..., 0] = rng.uniform(-1, 1, (3, 3, 4))
    kernel[..., 1] = rng.uniform(0.0005, 0.003, (3, 3, 4))  # below half a per-tensor step
    model.get_layer("a").set_weights([kernel, np.zeros(2, np.float32)])
    images = rng.uniform(0, 2, (64, 8, 8, 4)).astype(np.float32)

    def mean_shift(m):
        """Mean output of ``m`` with its kernel rounded per tensor, minus the float model's."""
        k, b = m.get_layer("a").get_weights()
        view = lambda w: w.reshape(-1, w.shape[-1])  # noqa: E731
        rounded = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="q")(inputs))
        rounded.get_layer("q").set_weights([repair.quantize_symmetric(k, False, view), b])
        return (rounded.predict(images, verbose=0).mean(axis=(0, 1, 2))
                - model.predict(images, verbose=0).mean(axis=(0, 1, 2)))

    shift = mean_shift(model)
    assert abs(shift[1]) > 0.04  # the whole small channel rounds away (to 0)
    fixed, report = repair.repaired(model, ("bias_correction",), images, per_channel=False)
    corrected = mean_shift(fixed)
    assert abs(corrected[1]) < 0.02 * abs(shift[1]), (shift, corrected)
    assert abs(corrected[0]) <= abs(shift[0]) + 1e-4
    assert report.bias_shift["a"] == pytest.approx(abs(shift[1]), rel=0.05)


def test_repairs_are_named_and_bias_correction_needs_images():
    assert repair.parse_repairs("cle, bias_correction") == ("cle", "bias_correction")
    with pytest.raises(UserError, match="'adaround' is not one of"):
        repair.parse_repairs("cle,adaround")
    with pytest.raises(UserError, match="calibration images"):
        repair.repaired(_pair_model(), ("bias_correction",))


def test_the_exporter_repairs_before_post_training_quantization(qat_run, tiny_archive):
    import os

    from conftest import last_line, run_module

    result = run_module(["-m", "fnet_tf.to_tflite", qat_run, "--scheme", "ptq_per_tensor",
                         "--repair", "cle,bias_correction", "--data", tiny_archive,
                         "--check_images", "20", "--calibration_samples", "40"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cross-layer equalization:" in result.stdout and "channel-range ratio" in result.stdout
    out = os.path.join(qat_run, "model_repaired_int8.tflite")  # the run's own file untouched
    assert os.path.isfile(out) and "scheme ptq_per_tensor" in result.stdout
    refused = run_module(["-m", "fnet_tf.to_tflite", qat_run, "--scheme", "int8",
                          "--repair", "cle", "--data", tiny_archive])
    assert refused.returncode == 2 and "--scheme ptq" in last_line(refused.stderr)
    unknown = run_module(["-m", "fnet_tf.to_tflite", qat_run, "--repair", "adaround"])
    assert unknown.returncode == 2 and "'adaround' is not one of" in last_line(unknown.stderr)
