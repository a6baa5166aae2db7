"""Layer factories: the layer sequences TF-MOT and the int8 converter expect."""
import numpy as np

from fnet_tf.arch import layers
from fnet_tf.core.backend import keras
from fnet_tf.arch.spec import BuildContext, ModelSpec, basic_block, bottleneck_block, build_model


def _model(fn):
    inputs = keras.Input((8, 8, 16))
    return keras.Model(inputs, fn(inputs))


def test_conv_bn_has_no_bias_and_a_separate_relu():
    model = _model(lambda x: layers.conv_bn(x, 8, name="c"))
    conv = model.get_layer("c_conv")
    assert not conv.use_bias and conv.activation is keras.activations.linear
    assert [type(layer).__name__ for layer in model.layers[1:]] == [
        "Conv2D", "BatchNormalization", "ReLU"]


def test_factorized_conv_grouped_and_depthwise():
    grouped = _model(lambda x: layers.factorized_conv(x, 32, groups=4, name="f"))
    assert grouped.get_layer("f_gconv").groups == 4
    assert [type(layer).__name__ for layer in grouped.layers[1:]] == [
        "Conv2D", "BatchNormalization", "ReLU", "Conv2D", "BatchNormalization", "ReLU"]
    assert grouped.output_shape == (None, 8, 8, 32)
    depthwise = _model(lambda x: layers.factorized_conv(x, 32, stride=2, name="f"))
    assert type(depthwise.get_layer("f_dw")).__name__ == "DepthwiseConv2D"
    assert depthwise.output_shape == (None, 4, 4, 32)


def test_residual_identity_and_projection():
    model = _model(lambda x: layers.residual(
        x, lambda t: layers.conv_bn(t, 16, name="b", relu=False), name="r"))
    assert model.output_shape == (None, 8, 8, 16)
    assert type(model.get_layer("r_add")).__name__ == "Add"


def test_basic_and_bottleneck_blocks_build_and_count():
    spec = ModelSpec("t", (basic_block(16, 2, in_channels=3), bottleneck_block(8, 1, in_channels=16)),
                     input_shape=(16, 16, 3))
    model = build_model(spec)
    assert model.count_params() == spec.cost().params
    assert model(np.zeros((1, 16, 16, 3), np.float32)).shape == (1, 10)
    assert BuildContext(keras).init == "he_normal"
