"""airbench's initialisation and lookahead for the teacher (``airbench_whitened``)."""
import numpy as np

from fnet_tf.arch import whitening as teacher_init


def test_whitening_stem_whitens_the_training_patches():
    from fnet_tf.arch import architectures
    from fnet_tf.core.backend import keras
    from fnet_tf.arch.spec import build_model, summarize

    spec = architectures.model_spec("airbench_whitened")
    model = build_model(spec)
    assert summarize(spec)["params"] == model.count_params()
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (200, 1, 1, 3))  # correlated channels, as in photos
    images = np.clip(colour + rng.normal(0, 30, (200, 32, 32, 3)), 0, 255).astype(np.uint8)
    assert teacher_init.prepare(model, images) == 7  # 1 stem + 3 groups x 2 convs
    stem = model.get_layer("b0" + teacher_init.WHITENING_SUFFIX)
    out = keras.Model(model.input, stem.output).predict(images.astype(np.float32), verbose=0)
    half = out.reshape(-1, out.shape[-1])[:, :12]  # the basis; the rest is its negation
    covariance = np.cov(half.T)
    np.testing.assert_allclose(np.diag(covariance), 1.0, atol=0.02)
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 0.02
    np.testing.assert_allclose(half.mean(0), 0.0, atol=0.02)
    assert not stem.trainable


def test_dirac_makes_the_first_filters_the_identity():
    kernel = np.random.default_rng(1).normal(size=(3, 3, 4, 6)).astype(np.float32)
    out = teacher_init.dirac(kernel)
    x = np.random.default_rng(2).normal(size=(4,))
    patch = np.zeros((3, 3, 4))
    patch[1, 1] = x
    np.testing.assert_allclose(np.einsum("hwc,hwco->o", patch, out)[:4], x)
    np.testing.assert_array_equal(out[..., 4:], kernel[..., 4:])


def test_lookahead_decay_grows_as_the_cube_of_progress():
    from fnet_tf.training.lookahead import PEAK_DECAY, decay_at

    assert decay_at(0, 100) == 0.0
    assert abs(decay_at(50, 100) - PEAK_DECAY / 8) < 1e-12
    assert decay_at(100, 100) == PEAK_DECAY == decay_at(150, 100)


def _trained(lookahead, epochs=2):
    from fnet_tf.core.backend import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.5), "mse")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(64, 3)).astype(np.float32)
    averages = []
    for epoch in range(epochs):  # one fit per epoch, as fnet_tf.training.loop does
        model.fit(x, y, batch_size=8, epochs=epoch + 1, initial_epoch=epoch, verbose=0,
                  shuffle=False, callbacks=[lookahead] if lookahead else [])
        if lookahead:
            averages.append([a.numpy().copy() for a in lookahead._average])
    return model, averages


def test_lookahead_leaves_the_weights_on_their_average_at_every_epoch_end():
    """An update falls on every epoch's last step (so a checkpoint holds the average), and
    the averaging changes the weights: they are not plain SGD's."""
    from fnet_tf.training.lookahead import Lookahead

    model, averages = _trained(Lookahead(total_steps=16, batch_size=5120))  # every step
    for average, weight in zip(averages[-1], model.weights):
        np.testing.assert_array_equal(average, weight.numpy())
    plain, _ = _trained(None)
    assert not np.allclose(plain.weights[0].numpy(), model.weights[0].numpy())
