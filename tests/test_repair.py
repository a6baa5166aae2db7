"""The repairs before post-training quantization (issue 40): cross-layer equalization keeps the
float function and evens the channel ranges; bias correction removes the mean shift that
rounding the weights causes."""
import numpy as np
import pytest

from fnet_tf.core.backend import keras
from fnet_tf.core.errors import UserError
from fnet_tf.quantization import adaround, bias_correction, equalization, repair


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
    ratio_before = equalization.channel_ratio(model.get_layer("a"), model.get_layer("bn"))
    assert ratio_before > 50  # the hand-made spread (BN's gamma/sd moves it a little)

    fixed, report = repair.repaired(model, ("cle",))
    after = fixed.predict(images, verbose=0)
    assert np.max(np.abs(after - before)) <= 1e-4 * max(1.0, np.max(np.abs(before)))
    assert report.pairs == [("a", "b")]
    assert report.ratio_before["a"] == pytest.approx(ratio_before)
    assert report.ratio_after["a"] < ratio_before / 5  # sqrt(r_A r_B) in both layers
    a_ranges = equalization.output_ranges(fixed.get_layer("a"), fixed.get_layer("bn"))
    kernel_b = fixed.get_layer("b").get_weights()[0]
    b_ranges = np.abs(kernel_b).max(axis=(0, 1, 3))
    np.testing.assert_allclose(a_ranges, b_ranges, rtol=1e-4)  # equal per channel
    # the original model is untouched
    assert equalization.channel_ratio(model.get_layer("a"), model.get_layer("bn")) == ratio_before


def test_cle_skips_what_it_cannot_scale_and_says_why():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    y = keras.layers.ReLU()(x)
    branch = keras.layers.Conv2D(4, 1, name="branch")(y)
    added = keras.layers.Add()([branch, x])  # stem's output also feeds the residual add
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(added))
    outputs = keras.layers.Dense(3)(pooled)
    pairs, skipped = equalization.find_pairs(keras.Model(inputs, outputs))
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
        rounded.get_layer("q").set_weights([bias_correction.quantize_symmetric(k, False, view), b])
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
    assert repair.parse_repairs("bias_correction,adaround,cle") == (
        "cle", "adaround", "bias_correction")  # the order they run in
    with pytest.raises(UserError, match="'gptq' is not one of"):
        repair.parse_repairs("cle,gptq")
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
    unknown = run_module(["-m", "fnet_tf.to_tflite", qat_run, "--repair", "gptq"])
    assert unknown.returncode == 2 and "'gptq' is not one of" in last_line(unknown.stderr)


def test_bias_absorption_keeps_the_float_outputs_and_moves_the_floor():
    """A depthwise -> BN -> ReLU -> 1x1 conv pair whose BN output never falls below a positive
    floor in two channels: the floor leaves BN's beta, the outputs stay within 1e-4."""
    model = _uneven(_pair_model("depthwise"))
    bn = model.get_layer("bn")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma * 0.1, np.array([3.0, 2.0, 0.0, -1.0], np.float32), mean, var])
    images = np.random.default_rng(2).normal(size=(32, 8, 8, 4)).astype(np.float32)
    before = model.predict(images, verbose=0)
    fixed, report = repair.repaired(model, ("bias_absorption",), images)
    after = fixed.predict(images, verbose=0)
    assert np.max(np.abs(after - before)) <= 1e-4 * max(1.0, np.max(np.abs(before)))
    assert set(report.absorbed) == {"a"}
    moved = np.array([3.0, 2.0, 0.0, -1.0]) - fixed.get_layer("bn").get_weights()[1]
    assert moved[0] > 0.5 and moved[1] > 0.5 and moved[3] == 0.0
    probe = keras.Model(fixed.inputs, fixed.get_layer("bn").output)
    floors = probe.predict(images, verbose=0)[..., :2].min(axis=(0, 1, 2))
    np.testing.assert_allclose(floors, 0.0, atol=1e-5)  # each floor moved whole, not beyond


def test_bias_absorption_skips_a_next_layer_that_reads_zero_padding():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 1, name="a")(inputs)
    x = keras.layers.ReLU()(x)
    outputs = keras.layers.Conv2D(4, 3, padding="same", name="b")(x)
    model = keras.Model(inputs, outputs)
    images = np.ones((4, 8, 8, 4), np.float32)
    _, report = repair.repaired(model, ("bias_absorption",), images)
    assert report.absorbed == {}
    assert "reads zero padding" in dict(report.skipped)["a"]


def test_adaround_reconstructs_a_layer_better_than_nearest_rounding():
    """4-bit weights of one conv, fixed seed: AdaRound's codes stay on the grid (each weight
    rounded down or up) and its output error is below nearest rounding's (by 11% here)."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((8, 8, 8))
    model = keras.Model(inputs, keras.layers.Conv2D(8, 3, padding="same", name="a")(inputs))
    model.get_layer("a").set_weights([rng.normal(size=(3, 3, 8, 8)).astype(np.float32),
                                      np.zeros(8, np.float32)])
    images = np.maximum(rng.normal(size=(128, 8, 8, 8)), 0).astype(np.float32)
    op, = adaround.weight_layers(model)
    targets = model.predict(images, verbose=0)
    step = adaround.step_sizes(op.folded(), op.reduce_axes(), 4)
    nearest = adaround.round_nearest(op.folded(), step, 4)
    learned = adaround.adaround_kernel(op, images, targets, step, 4,
                                       adaround.AdaRoundSettings(iterations=300, seed=0))
    codes = learned / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-6)
    assert np.abs(codes).max() <= 7
    assert np.all(np.abs(codes - op.folded() / step) < 1 + 1e-6)  # floor or ceil
    assert np.any(np.round(codes) != np.round(nearest / step))  # it chose differently
    error_nearest = adaround.reconstruction_error(op, images, targets, nearest)
    error_learned = adaround.reconstruction_error(op, images, targets, learned)
    assert error_learned < 0.95 * error_nearest, (error_nearest, error_learned)  # 3.07 vs 3.44


def test_adaround_in_the_repairs_puts_the_weights_on_the_8_bit_grid():
    """After ``--repair adaround`` each folded kernel is (step x integer codes) with the
    channel's largest weight at +-127, so the converter's max|w|/127 finds the same step."""
    model = _uneven(_pair_model("conv"))
    images = np.maximum(np.random.default_rng(3).normal(size=(64, 8, 8, 4)), 0).astype(np.float32)
    context = repair.Context(images=images, rounding=adaround.AdaRoundSettings(iterations=50))
    fixed, report = repair.repaired(model, ("adaround",), context=context)
    assert set(report.rounding) == {"a", "b"}
    for op in adaround.weight_layers(fixed):
        folded = op.folded()
        step = np.abs(folded).max(axis=op.reduce_axes(), keepdims=True) / 127
        np.testing.assert_allclose(folded / step, np.round(folded / step), atol=1e-3)


def test_analyze_reports_the_repairs_layer_by_layer(qat_run, tiny_archive, tmp_path):
    import csv
    import os

    from conftest import last_line, run_module

    if not os.path.isfile(os.path.join(qat_run, "model_int8.tflite")):
        exported = run_module(["-m", "fnet_tf.to_tflite", qat_run, "--data", tiny_archive,
                               "--check_images", "10"])
        assert exported.returncode == 0, exported.stderr[-2000:]
    out = str(tmp_path / "analysis")
    result = run_module(["-m", "fnet_tf.analyze", qat_run, "--data", tiny_archive, "--out", out,
                         "--repair", "cle,bias_absorption,adaround,bias_correction",
                         "--limit", "20", "--latency_runs", "5", "--tool_check=false",
                         "--op_latency=false", "--layer_images", "16",
                         "--calibration_samples", "24", "--adaround_iterations", "10"])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(out, "repair.csv")) as f:
        accuracy = list(csv.DictReader(f))
    kinds = {(r["weights"], r["when"]) for r in accuracy}
    assert kinds == {("float", "before")} | {
        (w, when) for w in ("int8 per-channel", "int8 per-tensor", "4-bit per-channel")
        for when in ("before", "after")}
    assert all(0 <= float(r["accuracy"]) <= 1 and r["num_images"] == "20" for r in accuracy)
    with open(os.path.join(out, "layers.csv")) as f:
        layers = list(csv.DictReader(f))
    with_weights = [r for r in layers if r["weight_layer"]]
    assert with_weights and all(r["repair_w4_sqnr_db_before"] and r["repair_w4_sqnr_db_after"]
                                for r in with_weights)
    assert any(r["repair_int8_per_tensor_sqnr_db_after"] for r in with_weights)
    report = open(os.path.join(out, "report.md")).read()
    assert "## Repairs: cle, bias_absorption, adaround, bias_correction" in report
    assert "| 4-bit per-channel | float |" in report
    assert os.path.getsize(os.path.join(out, "repair.png")) > 1000
    bare = run_module(["-m", "fnet_tf.analyze", os.path.join(qat_run, "model_int8.tflite"),
                       "--data", tiny_archive, "--repair", "cle"])
    assert bare.returncode == 2 and "bare .tflite" in last_line(bare.stderr)


def test_the_int8_file_stores_adarounds_codes():
    """Exported per tensor after ``adaround``, each conv's int8 weights are the codes AdaRound
    chose (the converter's max|w|/127 step finds AdaRound's grid)."""
    from fnet_tf.quantization.schemes import get_scheme
    from fnet_tf.tflite import convert

    scheme = get_scheme("ptq_per_tensor")
    images = np.maximum(np.random.default_rng(3).normal(size=(64, 8, 8, 4)), 0).astype(np.float32)
    context = repair.Context(images=images, per_channel=False,
                             rounding=adaround.AdaRoundSettings(iterations=50))
    fixed, report = repair.repaired(_uneven(_pair_model("conv")), ("adaround",), context=context)
    assert any(row["kept"] == "adaround" for row in report.rounding.values())

    def representative():
        for i in range(8):
            yield [images[i:i + 1]]

    it = convert.interpreter(convert.convert_int8(fixed, representative, scheme))
    stored = [it.get_tensor(op["inputs"][1]).astype(int) for op in it._get_ops_details()
              if op["op_name"] == "CONV_2D"]
    for op, weights in zip(adaround.weight_layers(fixed), stored):
        folded = op.folded()
        on_grid = folded / (np.abs(folded).max() / 127)  # AdaRound's codes, exactly
        codes = np.round(on_grid).astype(int)
        np.testing.assert_allclose(on_grid, codes, atol=1e-3)
        np.testing.assert_array_equal(weights, np.transpose(codes, (3, 0, 1, 2)))


def test_four_bit_layers_are_compared_with_the_float_model_they_were_rounded_from():
    """After CLE the layers inside a pair hold rescaled channels: their 4-bit SQNR is taken
    against the equalized float model (against the original it would be meaningless)."""
    from fnet_tf.analysis import repair_effect

    model = _uneven(_pair_model("conv"))
    images = np.random.default_rng(4).normal(size=(32, 8, 8, 4)).astype(np.float32)
    quantized, reference, _ = repair_effect.four_bit_model(model, ("cle",), images)
    np.testing.assert_allclose(reference.predict(images, verbose=0),
                               model.predict(images, verbose=0), atol=1e-4)
    sqnr = repair_effect.weight_layer_sqnr(reference, quantized, images)
    assert set(sqnr) == {"a", "b"} and min(sqnr.values()) > 10, sqnr
    against_original = repair_effect.weight_layer_sqnr(model, quantized, images)
    assert against_original["a"] < sqnr["a"] - 10  # why the reference matters
