"""QAT's activation ranges set from data before its first step (``range_calibration``)."""
import numpy as np


def _float_model():
    from fnet_tf.core.backend import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def test_ranges_come_from_the_float_models_batches_and_bn_is_left_as_it_was():
    from fnet_tf.quantization.schemes import get_scheme
    from fnet_tf.quantization.range_calibration import batch_ranges, calibrate

    model = _float_model()
    images = np.random.default_rng(0).uniform(0, 255, (64, 8, 8, 3)).astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    qat = get_scheme("int8").quantize(model)
    ranges = {v.name: float(v.numpy()) for v in qat.weights if "output_m" in v.name}
    assert set(ranges.values()) == {-6.0, 6.0}  # TF-MOT's start
    assert calibrate(qat, model, images, batch_size=16) == 3  # relu, pool, and the logits
    expected = batch_ranges(model, ["relu"], images, 16)["relu"]
    got = {v.name.split("/")[-1].split(":")[0]: float(v.numpy()) for v in qat.weights
           if v.name.startswith("quant_relu/output_m")}
    assert got["output_min"] == 0.0 and abs(expected[1] - 6.0) > 0.5
    np.testing.assert_allclose(got["output_max"], expected[1], rtol=1e-6)
    for old, new in zip(before, model.get_weights()):  # BN's statistics included
        np.testing.assert_array_equal(old, new)
