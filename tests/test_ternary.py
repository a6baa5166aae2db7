"""--qat_scheme ternary_hybrid: the quantizer, the allocation, and a tiny run end to end."""

import numpy as np
import pytest

from conftest import run_module, train_and_export

TRAIN = ["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "3", "--width", "0.25",
         "--epochs", "1", "--qat_epochs", "1", "--batch_size", "8", "--val_split", "20",
         "--verbose", "0", "--layer_stats=false", "--qat_scheme", "ternary_hybrid"]


def test_chosen_filters_are_ternary_with_the_twn_rule_and_gradients_pass_straight():
    from fnet_tf.core.backend import tf
    from fnet_tf.quantization.ternary_hybrid import hybrid_ternary

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    w[..., 0] = np.sign(w[..., 0]) * (np.abs(w[..., 0]) > 0.5)  # ternarizes with no error
    variable = tf.Variable(w)
    with tf.GradientTape() as tape:
        out = hybrid_ternary(variable, 0.5, tf)
        loss = tf.reduce_sum(out * 3.0)
    q = out.numpy().reshape(-1, 6)
    np.testing.assert_allclose(tape.gradient(loss, variable).numpy(), 3.0)  # straight-through
    flat = w.reshape(-1, 6)
    ternary = [f for f in range(6) if len(np.unique(np.abs(q[:, f]))) <= 2]
    assert len(ternary) == 3 and 0 in ternary  # ceil(0.5 * 6), the error-free filter first
    for f in ternary:
        threshold = 0.7 * np.abs(flat[:, f]).mean()
        kept = np.abs(flat[:, f]) > threshold
        np.testing.assert_allclose(q[:, f], np.sign(flat[:, f]) * kept *
                                   np.abs(flat[kept, f]).mean(), rtol=1e-5)
    for f in set(range(6)) - set(ternary):  # the others sit on their 8-bit grid
        step = np.abs(flat[:, f]).max() / 127
        np.testing.assert_allclose(q[:, f] / step, np.round(q[:, f] / step), atol=1e-3)


def test_sensitivity_allocation_ternarizes_the_least_sensitive_layers_first():
    from fnet_tf.arch import architectures
    from fnet_tf.quantization.ternary_hybrid import sensitivity_fractions, uniform_fractions

    model = architectures.create_model("factorizenet", level=6, width=0.5)
    names = [layer.name for layer in model.layers
             if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense")]
    rows = [{"layer": n, "bits": "ternary", "drop_only_this": str(0.01 * i)}
            for i, n in enumerate(names)]  # later layers more sensitive
    sizes = {n: model.get_layer(n).get_weights()[0].size for n in names}
    fractions = sensitivity_fractions(model, 0.3, rows)
    assert names[0] not in fractions and names[-1] not in fractions  # stay 8-bit
    assert sum(fractions[n] * sizes[n] for n in fractions) == pytest.approx(
        0.3 * sum(sizes.values()))
    full = [n for n in fractions if fractions[n] == 1.0]
    assert full == [n for n in names[1:-1]][:len(full)]  # the least sensitive, in order
    uniform = uniform_fractions(model, 0.3)
    assert len(set(uniform.values())) == 1 and set(uniform) == set(names[1:-1])


def test_a_tiny_ternary_run_exports_a_verified_int8_file_with_the_declared_share(tiny_archive,
                                                                                  tmp_path):
    from fnet_tf.tflite import convert as export
    from fnet_tf.analysis.bit_budget import bit_budget

    content, stdout = train_and_export([*TRAIN, "--data", tiny_archive, "--ternary_fraction", "0.5"],
                                       tmp_path / "run")
    assert export.inspect(content)["problems"] == []  # fully int8
    rows, total = bit_budget(content)
    assert total["ternary_weight_share"] >= 0.5, total
    assert total["packed_bits"] < 0.75 * total["int8_bits"]
    assert rows[0]["ternary_filters"] == 0 and rows[-1]["ternary_filters"] == 0
    assert "filters ternary" in stdout


@pytest.mark.parametrize("extra,needle", [
    (["--ternary_fraction", "1.5"], "--ternary_fraction"),
    (["--ternary_allocation", "sensitivity"], "--sensitivity_csv"),
    (["--ternary_allocation", "sideways"], "--ternary_allocation"),
])
def test_bad_ternary_settings_are_one_line(tiny_archive, tmp_path, extra, needle):
    result = run_module([*TRAIN, "--data", tiny_archive, "--run_dir", str(tmp_path / "r"), *extra])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and needle in errors[0], result.stderr[-1500:]
    assert "Traceback" not in result.stderr


def test_an_unknown_scheme_is_one_line(tiny_archive, tmp_path):
    result = run_module([*TRAIN[:-1], "dbq9", "--data", tiny_archive, "--run_dir",
                         str(tmp_path / "r")])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "ternary_hybrid" in errors[0]
