"""fnet_tf.training.distill: the KD loss by hand, and a tiny distilled run."""
import os

import numpy as np
import pytest

from conftest import run_module


def _loss(targets, logits, alpha, temperature, num_classes=3, smoothing=0.0):
    from fnet_tf.core.backend import tf
    from fnet_tf.training.distill import kd_loss, tf_ops

    return kd_loss(tf.constant(targets, tf.float32), tf.constant(logits, tf.float32), alpha,
                   temperature, num_classes, tf_ops, smoothing).numpy()


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_alpha_0_is_cross_entropy_and_the_kd_term_matches_a_hand_count():
    from fnet_tf.core.backend import keras

    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    onehot = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    teacher = np.array([[1.5, 0.0, 0.0], [0.0, 2.0, 2.5]])
    targets = np.concatenate([onehot, teacher], axis=1)
    ce = keras.losses.categorical_crossentropy(onehot, logits, from_logits=True).numpy()
    np.testing.assert_allclose(_loss(targets, logits, 0.0, 4.0), ce, rtol=1e-6)
    np.testing.assert_allclose(_loss(onehot, logits, 0.7, 4.0), ce, rtol=1e-6)  # validation
    t, alpha = 2.0, 0.3
    p = np.exp(_log_softmax(teacher / t))
    kl = (p * (_log_softmax(teacher / t) - _log_softmax(logits / t))).sum(axis=1)
    hard = -(onehot * _log_softmax(logits)).sum(axis=1)
    np.testing.assert_allclose(_loss(targets, logits, alpha, t),
                               (1 - alpha) * hard + alpha * t * t * kl, rtol=1e-5)
    smoothed = onehot * 0.9 + 0.1 / 3
    np.testing.assert_allclose(_loss(onehot, logits, 0.0, 1.0, smoothing=0.1),
                               -(smoothed * _log_softmax(logits)).sum(axis=1), rtol=1e-5)


def test_a_tiny_run_distills_from_a_teacher_run(tiny_archive, qat_run, tmp_path):
    run_dir = str(tmp_path / "student")
    result = run_module(["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "5",
                         "--width", "0.25", "--data", tiny_archive, "--epochs", "2",
                         "--batch_size", "8", "--val_split", "0", "--run_dir", run_dir,
                         "--verbose", "2", "--layer_stats=false", "--teacher", qat_run,
                         "--kd_alpha", "0.5"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "distilling from" in result.stdout
    import json

    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["kd_alpha"] == 0.5 and config["teacher"] == os.path.abspath(qat_run)
    history = open(os.path.join(run_dir, "history.csv")).read()
    assert "accuracy" in history.splitlines()[0]


@pytest.mark.parametrize("extra,needle", [(["--kd_alpha", "2"], "--kd_alpha"),
                                          (["--teacher", "/no/such"], "--teacher"),
                                          (["--bank_mirror"], "--bank_mirror")])
def test_bad_distillation_flags_are_one_line(tiny_archive, tmp_path, extra, needle):
    result = run_module(["-m", "fnet_tf.train", "--data", tiny_archive, "--run_dir",
                         str(tmp_path / "r"), "--epochs", "1", *extra])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and needle in errors[0]


def test_teacher_target_figures_see_softness_and_erased_class_similarity():
    """distill.target_figures (benchmarks/teacher_targets.py): uniform logits carry no information (entropy 1), and
    logits whose wrong classes are all alike (what label smoothing drives toward) have no
    spread, while a temperature softens the target without changing the spread."""
    from fnet_tf.training.distill import target_figures

    labels = np.array([0, 1])
    flat = target_figures(np.zeros((2, 10)), labels, 1.0)
    assert abs(flat["entropy"] - 1) < 1e-9 and abs(flat["p_true"] - 0.1) < 1e-9
    alike = np.full((2, 10), 1.0)
    alike[0, 0] = alike[1, 1] = 5.0
    assert target_figures(alike, labels, 1.0)["wrong_spread"] < 1e-9
    varied = alike + np.linspace(0, 1, 10) * (np.arange(10) > 1)
    cold, hot = (target_figures(varied, labels, t) for t in (1.0, 4.0))
    assert cold["top1"] == hot["top1"] == 1.0 and cold["wrong_spread"] > 0.05
    assert hot["wrong_spread"] == cold["wrong_spread"] and hot["entropy"] > cold["entropy"]
    assert hot["p_true"] < cold["p_true"]
