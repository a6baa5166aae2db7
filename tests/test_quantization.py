"""The scheme registry and what each scheme does to a model and to its converted file."""
import numpy as np
import pytest

from fnet_tf.quantization import schemes
from fnet_tf.arch import architectures
from fnet_tf.tflite import convert as export
from fnet_tf.core.errors import UserError


def test_registry():
    assert {"int8", "int8_per_tensor", "ptq"} <= set(schemes.list_schemes())
    with pytest.raises(UserError, match="unknown quantization scheme 'int4'"):
        schemes.get_scheme("int4")


def _weight_scale_counts(content):
    it = export.interpreter(content)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    return {op["op_name"]: len(tensors[op["inputs"][1]]["quantization_parameters"]["scales"])
            for op in it._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")}


@pytest.mark.parametrize("name,per_channel", [("int8", True), ("int8_per_tensor", False),
                                              ("ptq", True)])
def test_schemes_convert_fully_int8_with_their_weight_granularity(name, per_channel):
    from fnet_tf.core.backend import keras

    keras.utils.set_random_seed(0)  # independent of the tests that ran before
    scheme = schemes.get_scheme(name)
    model = architectures.create_model("factorizenet", 5, width=0.25)
    qmodel = scheme.quantize(model)
    assert (qmodel is model) == (not scheme.qat)
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    images[0, 0, 0] = (0, 255, 0)  # the full pixel range
    if scheme.qat:
        # A QAT model's input range is what its input quantizer has seen in training.
        from fnet_tf.core.backend import keras

        qmodel.compile(keras.optimizers.SGD(1e-5), "categorical_crossentropy")
        qmodel.fit(images, np.eye(10)[np.arange(8) % 10], epochs=1, verbose=0)
    content = export.convert_int8(qmodel, lambda: ([images[i:i + 1]] for i in range(8)), scheme)
    report = export.inspect(content)
    assert report["problems"] == []
    assert report["input"]["scale"] == pytest.approx(1.0, rel=0.02), report["input"]
    assert report["input"]["zero_point"] == -128, report["input"]
    counts = _weight_scale_counts(content)
    assert set(counts) == {"CONV_2D", "DEPTHWISE_CONV_2D"}, counts
    if per_channel:
        assert all(c > 1 for c in counts.values()), counts
    else:
        assert all(c == 1 for c in counts.values()), counts
