"""Per-layer sensitivity (fnet_tf.analysis.sensitivity) and ``fnet_tf.analyze --sensitivity``."""
import csv
import os

import numpy as np
import pytest

from conftest import run_module
from fnet_tf.analysis import sensitivity


def test_ternary_filters_have_three_levels_with_the_twn_threshold_and_scale():
    w = np.array([[0.9, -0.1], [-1.1, 0.2], [0.05, -0.8], [0.3, 0.1]])  # 2 filters (last axis)
    q = sensitivity.quantize_filters(w, "ternary")
    for f in range(2):
        column = w[:, f]
        threshold = 0.7 * np.abs(column).mean()
        kept = np.abs(column) > threshold
        scale = np.abs(column[kept]).mean()
        np.testing.assert_allclose(q[:, f], np.sign(column) * kept * scale)
        assert len(np.unique(q[:, f])) <= 3
    # filter 0: mean|w| 0.5875, threshold 0.411: 0.9, -1.1 kept, a = 1.0
    np.testing.assert_allclose(q[:, 0], [1.0, -1.0, 0.0, 0.0])


@pytest.mark.parametrize("bits", [4, 8])
def test_b_bit_filters_are_symmetric_per_filter(bits):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 8, 4)) * np.array([1, 10, 0.1, 100])
    q = sensitivity.quantize_filters(w, bits)
    levels = 2 ** (bits - 1) - 1
    for f in range(4):
        step = np.abs(w[..., f]).max() / levels
        codes = q[..., f] / step
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-9)
        codes = np.round(codes)
        assert np.abs(codes).max() <= levels and len(np.unique(codes)) <= 2 * levels + 1
    assert np.abs(q - w).max() <= np.abs(w).max(axis=(0, 1, 2)).max() / levels / 2 + 1e-12


def _trained_tiny_model(tiny_archive):
    from fnet_tf.data import datasets as data
    from fnet_tf.core.backend import keras

    keras.utils.set_random_seed(0)
    split = data.load(tiny_archive).train
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for i, filters in enumerate((8, 8, 16)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"b{i}_conv")(x)
        x = keras.layers.BatchNormalization(momentum=0.5, name=f"b{i}_bn")(x)
        x = keras.layers.ReLU(name=f"b{i}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    model.fit(split.images.astype(np.float32), split.labels, epochs=25, batch_size=30, verbose=0)
    return model, split


def test_a_deliberately_damaged_layer_ranks_first(tiny_archive):
    model, split = _trained_tiny_model(tiny_archive)
    # Damage b1 for quantization only: b0's channel 0 is made dead (its BN shifts it below 0,
    # so the ReLU outputs 0), and b1's weights from that channel become 1000x outliers. In
    # float they multiply zeros; quantized per filter they take the whole range, so every
    # other weight of b1 rounds to 0.
    gamma, beta, mean, var = model.get_layer("b0_bn").get_weights()
    beta[0] = -1e4
    model.get_layer("b0_bn").set_weights([gamma, beta, mean, var])
    (kernel,) = model.get_layer("b1_conv").get_weights()
    kernel[:, :, 0, :] = 1000 * np.abs(kernel).max()
    model.get_layer("b1_conv").set_weights([kernel])
    before = [w.copy() for w in model.get_weights()]
    rows, baselines = sensitivity.layer_sensitivity(model, split.images, split.labels)
    assert baselines["float"] > 0.5, baselines  # the damage leaves the float model working
    for bits in sensitivity.BITS:
        ranked = sensitivity.ranking(rows, bits)
        assert ranked[0]["layer"] == "b1_conv", [(r["layer"], r["drop_only_this"]) for r in ranked]
        assert ranked[0]["drop_only_this"] > 0.3
    assert len(rows) == 4 * len(sensitivity.BITS)
    for a, b in zip(before, model.get_weights()):  # the model is left as it was
        np.testing.assert_array_equal(a, b)


def test_analyze_sensitivity_writes_csv_plot_and_report(tiny_archive, tmp_path):
    run_dir = str(tmp_path / "run")
    trained = run_module(["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "3",
                          "--width", "0.25", "--data", tiny_archive, "--epochs", "2",
                          "--batch_size", "8", "--val_split", "20", "--run_dir", run_dir,
                          "--verbose", "0", "--layer_stats=false"])
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = run_module(["-m", "fnet_tf.analyze", run_dir, "--sensitivity", "--limit", "20"])
    assert result.returncode == 0, result.stderr[-2000:]
    out = os.path.join(run_dir, "analysis")
    with open(os.path.join(out, "sensitivity.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {r["bits"] for r in rows} == {"ternary", "4", "8"}
    assert len({r["layer"] for r in rows}) >= 5  # every conv/dense layer of level 3
    assert os.path.getsize(os.path.join(out, "sensitivity.png")) > 1000
    report = open(os.path.join(out, "sensitivity.md")).read()
    assert "most sensitive" in report and "least sensitive" in report
    assert "most sensitive" in result.stdout
    repaired = run_module(["-m", "fnet_tf.analyze", run_dir, "--sensitivity", "--limit", "20",
                           "--repair", "bias_correction", "--calibration_samples", "20",
                           "--out", os.path.join(run_dir, "repaired")])
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    assert "bias corrected by up to" in repaired.stderr  # the repair ran before the analysis
    assert "after bias_correction" in open(os.path.join(run_dir, "repaired",
                                                        "sensitivity.md")).read()


def test_sensitivity_needs_a_validation_split(qat_run):
    result = run_module(["-m", "fnet_tf.analyze", qat_run, "--sensitivity"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "--val_split" in errors[0]
