"""FrostNet (issue 17): GradBoost's noise and state, the Frost bottleneck, frostnet_cifar, and
StatAssist end to end on tiny data."""
import os

import numpy as np
import pytest

from conftest import REPO, run_module


def _noise(gradient, low, high, step, uniform, coin, clip=1e-3, decay=1e-2):
    from fnet_tf.core.backend import tf
    from fnet_tf.training.gradboost import boost_noise

    return boost_noise(tf.constant(gradient), tf.constant(low), tf.constant(high), step, clip,
                       decay, tf.constant(uniform), tf.constant(coin), tf).numpy()


def test_the_noise_has_the_gradients_sign_is_clipped_masked_and_decays():
    rng = np.random.default_rng(0)
    g = rng.normal(size=1000).astype(np.float32)
    g[:10] = 0.0
    low = np.zeros(1000, np.float32)
    high = np.full(1000, 5e-4, np.float32)
    uniform = rng.uniform(1e-6, 1, 1000).astype(np.float32)
    coin = (rng.uniform(size=1000) < 0.5).astype(np.float32)
    noise = _noise(g, low, high, 1, uniform, coin)
    assert np.abs(noise).max() <= 1e-3 + 1e-9 and np.isclose(np.abs(noise).max(), 1e-3)
    applied = noise != 0
    assert np.all(np.sign(noise[applied]) == np.sign(g[applied]))
    assert np.all(noise[coin == 0] == 0) and np.all(noise[:10] == 0)
    expected = -np.log(uniform) * 5e-4 * 0.99 * coin * np.sign(g)
    np.testing.assert_allclose(noise, np.clip(expected, -1e-3, 1e-3), rtol=1e-5)
    later = _noise(g, low, high, 300, uniform, coin)
    assert np.abs(later).sum() < 0.1 * np.abs(noise).sum()  # (1 - 0.01)^300 = 0.05


def _optimizer(boost, lr=0.1):
    from fnet_tf.core.backend import keras
    from fnet_tf.training.gradboost import with_gradboost

    return with_gradboost(keras.optimizers.SGD)(lr, momentum=0.9, nesterov=True, boost=boost,
                                                gradboost_seed=3)


def _steps(optimizer, variable, grads):
    from fnet_tf.core.backend import tf

    for g in grads:
        optimizer.apply_gradients([(tf.constant(g), variable)])


def test_warm_up_only_gathers_statistics_and_boosting_changes_the_update():
    from fnet_tf.core.backend import keras, tf

    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(20,)).astype(np.float32) * 1e-2 for _ in range(5)]
    start = rng.normal(size=(20,)).astype(np.float32)
    plain = tf.Variable(start)
    _steps(keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), plain, grads)
    warm_var = tf.Variable(start)
    warm = _optimizer(boost=False)
    _steps(warm, warm_var, grads)
    np.testing.assert_array_equal(warm_var.numpy(), plain.numpy())  # no noise while warming up
    magnitudes = np.abs(np.stack(grads))
    assert np.all(warm.gradboost_max[0].numpy() > 0)
    corrected_max = warm.gradboost_max[0].numpy() / (1 - 0.9 ** 5)
    assert np.all(corrected_max <= magnitudes.max(0) + 1e-7)
    assert np.all(corrected_max >= magnitudes.min(0) - 1e-7)
    boosted_var = tf.Variable(start)
    _steps(_optimizer(boost=True), boosted_var, grads)
    difference = np.abs(boosted_var.numpy() - plain.numpy())
    assert 0 < difference.max() < 5 * 0.1 * 1e-3 * 3  # lr x clip x a few momentum steps


def test_gradboost_state_survives_a_checkpoint_round_trip(tmp_path):
    from fnet_tf.core.backend import tf

    rng = np.random.default_rng(2)
    grads = [rng.normal(size=(4, 3)).astype(np.float32) * 1e-2 for _ in range(8)]
    start = rng.normal(size=(4, 3)).astype(np.float32)
    straight = tf.Variable(start)
    _steps(_optimizer(True), straight, grads)

    first_var, first = tf.Variable(start), _optimizer(True)
    _steps(first, first_var, grads[:4])
    path = tf.train.Checkpoint(v=first_var, optimizer=first).write(str(tmp_path / "ckpt"))
    second_var, second = tf.Variable(np.zeros_like(start)), _optimizer(True)
    second.build([second_var])
    tf.train.Checkpoint(v=second_var, optimizer=second).read(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(second.gradboost_max[0].numpy(), first.gradboost_max[0].numpy())
    _steps(second, second_var, grads[4:])
    np.testing.assert_allclose(second_var.numpy(), straight.numpy(), atol=1e-7)


def test_state_carries_by_variable_name_into_another_optimizer():
    from fnet_tf.core.backend import tf
    from fnet_tf.training.gradboost import load_state, state_arrays

    source_var = tf.Variable(np.ones((3,), np.float32), name="layer/kernel")
    source = _optimizer(False)
    _steps(source, source_var, [np.full(3, 0.5, np.float32)] * 3)
    arrays = state_arrays(source, [source_var])
    target_var = tf.Variable(np.ones((3,), np.float32), name="layer/kernel")
    other = tf.Variable(np.ones((2,), np.float32), name="new/kernel")
    target = _optimizer(True)
    assert load_state(target, [target_var, other], arrays) == 3  # momentum, min, max
    np.testing.assert_array_equal(target.momentums[0].numpy(), source.momentums[0].numpy())
    assert int(target.carried_steps.numpy()) == 3 and np.all(target.momentums[1].numpy() == 0)


def test_the_frost_block_matches_a_hand_count_and_falls_back():
    from fnet_tf.core.backend import keras
    from fnet_tf.arch.spec import BuildContext, FrostBottleneck

    block = FrostBottleneck(40, kernel=5, expansion=3, squeeze_ratio=4, stride=1)
    # C_in 40: squeeze 40 -> 10 -> make_divisible 16; concat 56; expand 168; dw 5x5; project 40
    assert block.plan(40) == (16, 56, 168)
    weights = 40 * 16 + 56 * 168 + 25 * 168 + 168 * 40
    bn = 4 * (16 + 168 + 168 + 40)
    inputs = keras.Input((8, 8, 40))
    model = keras.Model(inputs, block.build(inputs, BuildContext(keras), "f"))
    assert model.output_shape == (None, 8, 8, 40)
    assert model.count_params() == weights + bn
    shape, cost = block.cost((8, 8, 40))
    assert shape == (8, 8, 40) and cost.params == weights + bn
    assert cost.macs == 64 * weights
    kinds = [type(layer).__name__ for layer in model.layers]
    assert "Concatenate" in kinds and "Add" in kinds
    assert FrostBottleneck(24, 5, 3, 4, 2).plan(16) == (0, 16, 48)  # 16 // 4 < 8: MobileNetV2
    assert FrostBottleneck(16, 3, 1, 1, 1).plan(16) == (0, 16, 0)   # e = 1: dw + projection
    strided = keras.Input((8, 8, 16))
    out = FrostBottleneck(24, 5, 3, 4, 2).build(strided, BuildContext(keras), "g")
    assert tuple(out.shape) == (None, 4, 4, 24)


def test_frostnet_cifar_costs_like_level_3_and_resnet8_and_has_no_levels():
    from fnet_tf.arch import architectures
    from fnet_tf.core.errors import UserError
    from fnet_tf.arch.spec import summarize

    macs = summarize(architectures.model_spec("frostnet_cifar"))["macs"]
    assert 9.2e6 <= macs <= 12.5e6
    model = architectures.create_model("frostnet_cifar")
    assert model.count_params() == summarize(architectures.model_spec("frostnet_cifar"))["params"]
    with pytest.raises(UserError, match="no factorization levels"):
        architectures.model_spec("frostnet_cifar", 1)


def test_statassist_with_gradboost_trains_qats_and_exports_a_fully_int8_file(tiny_archive,
                                                                             tmp_path):
    from fnet_tf.tflite import convert as export

    run_dir = str(tmp_path / "run")
    trained = run_module(["-m", "fnet_tf.train", "--model", "frostnet_cifar", "--width", "0.5",
                          "--qat_recipe", "statassist", "--optimizer", "sgd_gradboost",
                          "--epochs", "1", "--qat_epochs", "1", "--batch_size", "8",
                          "--val_split", "20", "--verbose", "2", "--layer_stats=false",
                          "--data", tiny_archive, "--run_dir", run_dir])
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "optimizer slots carried from the float warm-up" in trained.stdout
    exported = run_module([os.path.join(REPO, "export", "to_tflite.py"), run_dir,
                           "--check_images", "40"])
    assert exported.returncode == 0, exported.stderr[-2000:]
    with open(os.path.join(run_dir, "model_int8.tflite"), "rb") as f:
        report = export.inspect(f.read())
    assert report["problems"] == [] and report["ops"].get("CONCATENATION", 0) >= 1


@pytest.mark.parametrize("extra,needle", [
    (["--qat_recipe", "scratch", "--epochs", "3", "--qat_epochs", "1"], "--epochs 0"),
    (["--qat_recipe", "statassist", "--qat_epochs", "0"], "--qat_epochs"),
    (["--statassist_epochs", "2", "--qat_epochs", "1"], "--qat_recipe statassist"),
    (["--statassist_warmup", "ramp", "--qat_epochs", "1"], "--qat_recipe statassist"),
    (["--optimizer", "sgd_gradboost", "--gradboost_decay", "1.5"], "--gradboost_decay"),
    (["--level", "2"], "no factorization levels"),
])
def test_bad_frostnet_settings_are_one_line(tiny_archive, tmp_path, extra, needle):
    args = ["-m", "fnet_tf.train", "--model", "frostnet_cifar", "--data", tiny_archive,
            "--run_dir", str(tmp_path / "r"), "--epochs", "1", *extra]
    result = run_module(args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and needle in errors[0], result.stderr[-1500:]
    assert "Traceback" not in result.stderr


def test_keras3_gradboost_draws_and_bounded_updates():
    keras3 = pytest.importorskip("keras")
    if not keras3.__version__.startswith("3."):
        pytest.skip("Keras 3 is not installed")
    from fnet_tf.training.gradboost import _hash_draws, with_gradboost_keras3

    uniform, coin = (np.asarray(a) for a in _hash_draws((4000,), 7, 2, keras3.ops))
    assert 0 < uniform.min() and uniform.max() <= 1 and abs(uniform.mean() - 0.5) < 0.03
    assert abs(coin.mean() - 0.5) < 0.05
    again, _ = _hash_draws((4000,), 8, 2, keras3.ops)
    assert not np.allclose(np.asarray(again), uniform)  # a new step draws anew
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(50,)).astype(np.float32) * 1e-2 for _ in range(4)]
    results = []
    for optimizer in (keras3.optimizers.SGD(0.1, momentum=0.9),
                      with_gradboost_keras3(keras3.optimizers.SGD, keras3)(0.1, momentum=0.9)):
        variable = keras3.Variable(np.ones(50, np.float32))
        for g in grads:
            optimizer.apply_gradients([(keras3.ops.convert_to_tensor(g), variable)])
        results.append(np.asarray(variable))
    difference = np.abs(results[1] - results[0])
    assert 0 < difference.max() <= 0.1 * 1e-3 * (1 + 1.9 + 2.71 + 3.44) + 1e-7


@pytest.mark.slow
def test_statassist_resumed_mid_qat_equals_uninterrupted(tiny_archive, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import h5py

    def args(run_dir):
        return ["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "5", "--width",
                "0.25", "--qat_recipe", "statassist", "--optimizer", "sgd_gradboost",
                "--statassist_epochs", "1", "--qat_epochs", "3", "--batch_size", "8",
                "--val_split", "20", "--verbose", "0", "--threads", "1", "--layer_stats=false",
                "--data", tiny_archive, "--run_dir", str(run_dir)]

    straight = tmp_path / "straight"
    assert run_module(args(straight)).returncode == 0
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, *args(cut)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = cut / "checkpoints" / "qat" / "epoch-0001" / "meta.json"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "QAT ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_module(args(cut))
    assert resumed.returncode == 0 and "resuming after epoch" in resumed.stdout

    def arrays(run_dir):
        found = {}
        with h5py.File(run_dir / "model_qat.weights.h5", "r") as f:
            f.visititems(lambda name, item: found.__setitem__(name, item[()])
                         if isinstance(item, h5py.Dataset) else None)
        return found

    a, b = arrays(straight), arrays(cut)
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-4, err_msg=name)


def test_the_recipes_report_compares_every_recipe_with_finetune(tmp_path):
    """benchmarks/low_bit.py --study qat_recipes --plots_only: summary.md and the bar plot from
    hand-made tables (one model's table in the older column set, one missing a recipe)."""
    (tmp_path / "factorizenet-l3.csv").write_text(
        "variant,scheme,litert_top1\nfinetune,int8,0.8247\nscratch,int8,0.8301\n"
        "statassist,int8,0.8311\nstatassist-gradboost,int8,0.8319\n")
    (tmp_path / "frostnet_cifar-l0.csv").write_text(
        "variant,scheme,float_epochs,litert_top1\nfinetune,int8,17,0.80\nscratch,int8,0,0.7850\n"
        "statassist,int8,1,0.8125\n")
    result = run_module(["benchmarks/low_bit.py", "--study", "qat_recipes", "--plots_only",
                         "--budget_epochs", "20", "--results", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "at 20 float-equivalent epochs" in summary
    assert "| finetune | 82.47% | - | 80.00% | - |" in summary
    assert "| scratch | 83.01% | +0.54 pts | 78.50% | -1.50 pts |" in summary
    assert "| statassist-gradboost | 83.19% | +0.72 pts | - | - |" in summary
    assert (tmp_path / "qat_recipes.png").read_bytes().startswith(b"\x89PNG")


def test_the_ramp_warm_up_is_a_slice_of_the_longer_linear_warm_up():
    """--statassist_warmup ramp: the float epochs run the first part of a --warmup_epochs linear
    warm-up (not capped at 20% of the phase, never annealed), as the reference code does."""
    from fnet_tf.training.recipe import Recipe
    from fnet_tf.training.loop import lr_schedule

    def lrs(warmup, epochs, steps=10):
        lr = lr_schedule(Recipe(epochs=epochs, lr=0.2, warmup_epochs=2.0, warmup=warmup), steps)
        return np.array([float(lr(step)) for step in range(epochs * steps)])

    ramp = lrs("ramp", 1)
    np.testing.assert_allclose(ramp, 0.2 * np.arange(1, 11) / 20, rtol=1e-6)  # up to half the peak
    anneal = lrs("capped", 1)
    assert anneal[1] == pytest.approx(0.2) and anneal[-1] < 0.01  # 2 warm-up steps, then cosine
    longer = lrs("ramp", 3)
    assert longer[19] == pytest.approx(0.2) and np.all(longer[20:] == pytest.approx(0.2))
