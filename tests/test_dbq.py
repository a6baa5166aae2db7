"""--qat_scheme dbq: the smooth branches, their annealing, the greedy start, a tiny run end to end,
and the two-branch accounting of fnet_tf.analysis.bit_budget."""

import numpy as np
import pytest

from conftest import run_module, train_and_export

TRAIN = ["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "3", "--width", "0.25",
         "--epochs", "1", "--qat_epochs", "1", "--batch_size", "8", "--val_split", "20",
         "--verbose", "0", "--layer_stats=false", "--qat_scheme", "dbq"]


def _filters(array):
    return array.reshape(-1, array.shape[-1])


def test_high_temperature_is_smooth_in_weights_thresholds_and_scales():
    from fnet_tf.core.backend import tf
    from fnet_tf.quantization.dbq import dbq_weights, greedy_branches

    w = np.random.default_rng(0).normal(size=(3, 3, 4, 6)).astype(np.float32)
    thresholds, scales = greedy_branches(w, 2)
    variables = [tf.Variable(w), tf.Variable(thresholds), tf.Variable(scales)]
    with tf.GradientTape() as tape:
        out = dbq_weights(*variables, 1.0, tf, hard=False)
        loss = tf.reduce_sum(tf.square(out - 0.3))
    for grad in tape.gradient(loss, variables):
        grad = grad.numpy()
        assert np.all(np.isfinite(grad)) and np.count_nonzero(grad) == grad.size
    hard = _filters(dbq_weights(*variables, 1.0, tf, hard=True).numpy())
    smooth = _filters(out.numpy())
    assert len(np.unique(smooth[:, 0])) > 9 >= len(np.unique(hard[:, 0]))  # smooth, not a step


@pytest.mark.parametrize("branches", [1, 2, 3])
def test_annealed_branches_give_at_most_3_to_the_k_levels(branches):
    from fnet_tf.core.backend import tf
    from fnet_tf.quantization.dbq import dbq_weights, greedy_branches

    w = np.random.default_rng(1).normal(size=(5, 5, 8, 4)).astype(np.float32)
    thresholds, scales = greedy_branches(w, branches)
    hard = _filters(dbq_weights(tf.constant(w), thresholds, scales, 1.0, tf, hard=True).numpy())
    cold = _filters(dbq_weights(tf.constant(w), thresholds, scales, 1e-6, tf, hard=False).numpy())
    for f in range(4):
        assert len(np.unique(hard[:, f])) <= 3 ** branches
        assert np.mean(np.isclose(cold[:, f], hard[:, f], atol=1e-4)) > 0.99  # tends to hard
    error = np.mean((hard - _filters(w)) ** 2)
    if branches > 1:  # each residual branch lowers the error of the previous ones
        less = _filters(dbq_weights(tf.constant(w), thresholds[:-1], scales[:-1], 1.0, tf,
                                    hard=True).numpy())
        assert error < np.mean((less - _filters(w)) ** 2)


def test_one_branch_starts_as_twn_and_the_schedule_anneals():
    from fnet_tf.quantization.dbq import greedy_branches, relative_temperature

    w = np.random.default_rng(2).normal(size=(27, 3)).astype(np.float32)
    thresholds, scales = greedy_branches(w, 1)
    mean = np.abs(w).mean(axis=0)
    np.testing.assert_allclose(thresholds[0], 0.7 * mean, rtol=1e-5)
    for f in range(3):
        kept = np.abs(w[:, f]) > 0.7 * mean[f]
        assert scales[0, f] == pytest.approx(np.abs(w[kept, f]).mean(), rel=1e-5)
    taus = [relative_temperature(p, 0.5, 0.01, "exponential") for p in (0, 0.5, 1)]
    assert taus == pytest.approx([0.5, np.sqrt(0.5 * 0.01), 0.01])
    assert relative_temperature(0.5, 0.5, 0.1, "linear") == pytest.approx(0.3)


def test_two_branch_filters_are_counted_with_their_digits():
    from fnet_tf.analysis.bit_budget import two_branch_digits

    rng = np.random.default_rng(0)
    digits = rng.integers(-1, 2, size=(27, 2))
    digits[0] = (1, 1)  # the peak, 127, as the converter's per-channel scale makes it
    column = digits @ np.array([90, 37])
    assert two_branch_digits(column) == np.count_nonzero(digits)
    column[column == 53] = 52  # 90 - 37, rounded by the converter: within 1 LSB
    assert two_branch_digits(column) == np.count_nonzero(digits)
    assert two_branch_digits(rng.integers(-127, 128, 27)) is None  # an int8 filter
    assert two_branch_digits(np.array([-9, -7, -4, -3, -1, 1, 4, 0, 0])) is None  # small


def test_a_tiny_dbq_run_exports_a_verified_int8_file_with_at_most_9_levels(tiny_archive,
                                                                            tmp_path):
    from fnet_tf.tflite import convert as export
    from fnet_tf.analysis.bit_budget import bit_budget

    content, stdout = train_and_export([*TRAIN, "--data", tiny_archive, "--dbq_branches", "2"],
                                       tmp_path / "run")
    assert export.inspect(content)["problems"] == []  # fully int8
    rows, total = bit_budget(content)
    inner = rows[1:-1]  # first conv and classifier stay 8-bit
    assert rows[0]["distinct_max"] > 9 and rows[-1]["distinct_max"] > 9
    assert all(r["distinct_max"] <= 9 for r in inner), [r["distinct_max"] for r in rows]
    assert all(r["ternary_filters"] + r["two_branch_filters"] == r["filters"] for r in inner)
    assert total["packed_bits"] < 0.75 * total["int8_bits"]


@pytest.mark.parametrize("extra,needle", [
    (["--dbq_branches", "0"], "--dbq_branches"),
    (["--dbq_temperature_end", "2"], "--dbq_temperature"),
    (["--dbq_anneal", "sideways"], "--dbq_anneal"),
])
def test_bad_dbq_settings_are_one_line(tiny_archive, tmp_path, extra, needle):
    result = run_module([*TRAIN, "--data", tiny_archive, "--run_dir", str(tmp_path / "r"), *extra])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and needle in errors[0], result.stderr[-1500:]
    assert "Traceback" not in result.stderr
