"""Grouped convs trained as block-diagonal standard convs (fnet_tf.arch.grouped)."""
import numpy as np
import pytest

from fnet_tf.arch import architectures
from fnet_tf.arch import grouped
from fnet_tf.core.backend import keras
from fnet_tf.arch.spec import build_model, has_grouped_convs


def test_block_diagonal_round_trip_and_layout():
    kernel = np.random.RandomState(0).randn(3, 3, 4, 12).astype(np.float32)  # 3 groups of 4
    dense = grouped.block_diagonal(kernel, 3)
    assert dense.shape == (3, 3, 12, 12)
    # input channels 4..7 (group 1) feed output channels 4..7 only
    np.testing.assert_array_equal(dense[:, :, 4:8, 4:8], kernel[:, :, :, 4:8])
    assert not dense[:, :, 4:8, :4].any() and not dense[:, :, 4:8, 8:].any()
    np.testing.assert_array_equal(grouped.diagonal_blocks(dense, 3), kernel)
    assert grouped.block_mask((3, 3, 12, 12), 3).sum() == 3 * 3 * 4 * 12


def test_training_form_computes_what_the_grouped_conv_computes():
    spec = architectures.model_spec("factorizenet", 3, width=0.25)
    assert has_grouped_convs(spec)
    assert not has_grouped_convs(architectures.model_spec("factorizenet", 0))
    assert not has_grouped_convs(architectures.model_spec("factorizenet", 7))
    keras.utils.set_random_seed(0)
    fast = build_model(spec, grouped_form="block_diagonal")
    native = grouped.transfer_weights(fast, build_model(spec))
    x = np.random.RandomState(1).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(fast(x).numpy(), native(x).numpy(), rtol=1e-5, atol=1e-4)
    gconv = native.get_layer("b4_gconv")
    assert gconv.groups > 1 and fast.get_layer("b4_gconv").groups == 1
    # the initializer draws the grouped kernel: its fan-in is the group's, not the layer's
    dense_kernel = fast.get_layer("b4_gconv").kernel.numpy()
    blocks = grouped.diagonal_blocks(dense_kernel, gconv.groups)
    fan_in = 9 * blocks.shape[2]
    assert 0.7 < blocks.std() / np.sqrt(2.0 / fan_in) < 1.3


def test_optimizer_keeps_the_kernel_block_diagonal_and_grouped_updates_match():
    """SGD with momentum on the training form moves the diagonal blocks exactly as it moves
    the native grouped kernel, and the off-diagonal blocks stay zero."""
    spec = architectures.model_spec("factorizenet", 3, width=0.25)
    keras.utils.set_random_seed(0)
    fast = build_model(spec, grouped_form="block_diagonal")
    native = grouped.transfer_weights(fast, build_model(spec))
    rng = np.random.RandomState(2)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    y = rng.randint(0, 10, 16)
    for model in (fast, native):
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    layer = fast.get_layer("b4_gconv")
    kernel = layer.kernel.numpy()
    mask = grouped.block_mask(kernel.shape, grouped.training_groups(layer))
    assert not (kernel * (1 - mask)).any()
    np.testing.assert_allclose(grouped.diagonal_blocks(kernel, grouped.training_groups(layer)),
                               native.get_layer("b4_gconv").kernel.numpy(), atol=2e-4)


def test_transfer_weights_refuses_a_different_model():
    a = build_model(architectures.model_spec("factorizenet", 3, width=0.25))
    b = build_model(architectures.model_spec("resnet8", 0))
    with pytest.raises(ValueError, match="not the same model"):
        grouped.transfer_weights(a, b)
