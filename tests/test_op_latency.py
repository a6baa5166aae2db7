"""Each operator of a .tflite cut out and timed on its own."""
import numpy as np
import pytest

from fnet_tf.quantization import schemes
from fnet_tf.arch import architectures
from fnet_tf.tflite import measure as benchmark
from fnet_tf.tflite import convert as export
from fnet_tf.analysis import op_latency
from fnet_tf.core.errors import UserError


def _int8(name, level, width=0.25):
    model = architectures.create_model(name, level, width)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    return export.convert_int8(model, lambda: ([images[i:i + 1]] for i in range(4)),
                               schemes.get_scheme("ptq"))


@pytest.fixture(scope="module")
def models():
    # grouped convs (level 3), depthwise convs (level 5, the last at width 0.25), a two-input ADD (ResNet-8)
    return {"l3": _int8("factorizenet", 3), "l5": _int8("factorizenet", 5),
            "resnet8": _int8("resnet8", 0)}


@pytest.mark.parametrize("name", ["l3", "l5", "resnet8"])
def test_each_slice_reproduces_its_op_bit_exactly(models, name):
    """Fed the tensors the whole model computed, every one-op model gives that op's output."""
    content = models[name]
    whole = export.interpreter(content, preserve_all_tensors=True)
    image = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3))
    whole.set_tensor(whole.get_input_details()[0]["index"],
                     export.quantize_input(image, whole.get_input_details()[0]))
    whole.invoke()
    slices = op_latency.op_slices(content)
    assert [s.op for s in slices] == [op["op_name"] for op in whole._get_ops_details()]
    for s in slices:
        it = export.interpreter(s.content)
        for detail in it.get_input_details():  # the slice keeps the tensor indices
            it.set_tensor(detail["index"], whole.get_tensor(detail["index"]))
        it.invoke()
        out = it.get_output_details()[0]
        np.testing.assert_array_equal(it.get_tensor(out["index"]), whole.get_tensor(out["index"]),
                                      err_msg=f"op {s.index} {s.kind}")
    if name == "resnet8":
        adds = [s for s in slices if s.op == "ADD"]
        assert adds and all(len(export.interpreter(s.content).get_input_details()) == 2
                            for s in adds)


def test_rows_name_kinds_macs_and_shares(models):
    kinds = {name: [r["kind"] for r in op_latency.op_latency(c, runs=20)["ops"]]
             for name, c in models.items()}
    # five factorized convs: grouped, or depthwise where the groups reach the channels (width 0.25)
    grouped = kinds["l3"].count("CONV_2D 3x3 grouped")
    assert grouped >= 1 and grouped + kinds["l3"].count("DEPTHWISE_CONV_2D 3x3") == 5
    assert kinds["l3"][0] == "CONV_2D 3x3"
    assert kinds["l5"].count("DEPTHWISE_CONV_2D 3x3") == 5 and "CONV_2D 3x3 grouped" not in kinds["l5"]
    assert kinds["resnet8"].count("ADD") == 3
    timed = op_latency.op_latency(models["l3"], runs=20)
    rows = timed["ops"]
    assert sum(r["macs"] for r in rows) == benchmark.graph_stats(models["l3"])["macs"]
    assert all(r["p50_us"] > 0 and r["kernel"] in ("XNNPACK", "builtin") for r in rows)
    assert abs(sum(r["share"] for r in rows) - 1) < 0.01
    assert timed["whole_p50_ms"] > 0 and timed["sum_of_ops_p50_ms"] > 0
    by_kind = op_latency.by_kind(rows)
    assert abs(sum(by_kind.values()) - sum(r["p50_us"] for r in rows)) < 1e-6
    assert list(by_kind.values()) == sorted(by_kind.values(), reverse=True)
    header = op_latency.csv_text(rows).splitlines()[0]
    assert header.split(",") == op_latency.FIELDS


def test_a_damaged_file_is_a_user_error(models):
    damaged = bytearray(models["l5"][:len(models["l5"]) // 2])
    with pytest.raises(UserError):
        op_latency.op_slices(bytes(damaged))
