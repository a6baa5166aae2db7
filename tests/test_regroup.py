"""export/regroup.py: grouped convs stored with fewer, wider groups give identical outputs."""
import importlib.util
import os

import numpy as np
import pytest

from conftest import REPO, last_line, run_module
from fnet_tf.quantization import schemes
from fnet_tf.arch import architectures
from fnet_tf.tflite import convert as export

SCRIPT = os.path.join(REPO, "export", "regroup.py")
_spec = importlib.util.spec_from_file_location("regroup", SCRIPT)
regroup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regroup)


def _int8(model, n=4):
    shape = model.input_shape[1:]
    images = np.random.default_rng(0).integers(0, 256, (n, *shape)).astype(np.float32)
    return export.convert_int8(model, lambda: ([images[i:i + 1]] for i in range(n)),
                               schemes.get_scheme("ptq"))


@pytest.fixture(scope="module")
def grouped_net():
    """A conv over 8 groups of 2 input channels and one over 4 groups of 8, with a channel
    multiplier (each group has more outputs than inputs)."""
    from fnet_tf.core.backend import keras

    inputs = keras.Input((12, 12, 16))
    x = keras.layers.Conv2D(16, 3, padding="same", groups=8, activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", groups=4)(x)
    return _int8(keras.Model(inputs, x))


def test_every_divisor_layout_gives_bit_identical_outputs(grouped_net):
    model = regroup.read_model(grouped_net)
    convs = regroup.grouped_convs(model)
    assert [(groups, shape) for _, groups, shape in convs] == [(8, [16, 3, 3, 2]), (4, [32, 3, 3, 4])]
    for op_index, groups, shape in convs:
        for g in (d for d in range(1, groups) if groups % d == 0):
            variant = regroup.regrouped(model, op_index, g)
            filt = variant.subgraphs[0].tensors[variant.subgraphs[0].operators[op_index].inputs[1]]
            assert list(filt.shape) == [shape[0], 3, 3, shape[3] * groups // g]
            assert regroup.outputs_equal(grouped_net, regroup.write_model(variant), 5, 1), (op_index, g)


def test_expand_filter_places_each_channel_at_its_inputs():
    weights = np.arange(1, 4 * 1 * 1 * 2 + 1, dtype=np.int8).reshape(4, 1, 1, 2)  # 2 groups
    dense = regroup.expand_filter(weights, groups=2, new_groups=1)[:, 0, 0, :]
    np.testing.assert_array_equal(dense, [[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 5, 6], [0, 0, 7, 8]])


def test_a_factorizenet_level_keeps_its_accuracy_exactly(tiny_archive, tmp_path):
    from fnet_tf.data import datasets as data

    labels = [f"class{i}" for i in range(10)]
    content = export.attach_labels(_int8(architectures.create_model("factorizenet", 4, width=0.5)),
                                   labels)
    src, out = tmp_path / "l4.tflite", tmp_path / "l4_regrouped.tflite"
    src.write_bytes(content)
    result = run_module([SCRIPT, str(src), "--out", str(out), "--runs", "20", "--min_gain", "-10"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bit-identical" in result.stdout
    tuned = out.read_bytes()
    old_filters = sum(np.prod(s) for _, _, s in regroup.grouped_convs(regroup.read_model(content)))
    growth = len(tuned) - len(content)  # only the wider filters' zeros, no orphaned copies
    assert 0 < growth <= 16 * old_filters, (growth, old_filters)
    assert regroup.grouped_convs(regroup.read_model(tuned)) != regroup.grouped_convs(
        regroup.read_model(content))  # --min_gain -10 takes the fastest even if slower
    images = data.load(tiny_archive).test.images
    np.testing.assert_array_equal(export.predict(content, images), export.predict(tuned, images))
    run_tflite = os.path.join(REPO, "export", "run_tflite.py")
    spec = importlib.util.spec_from_file_location("run_tflite", run_tflite)
    device = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(device)
    assert device.read_labels(str(out)) == labels  # the appended labels.txt travels along


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    from fnet_tf.core.backend import keras

    inputs = keras.Input((8, 8, 3))
    plain = _int8(keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs)))
    (tmp_path / "plain.tflite").write_bytes(plain)
    (tmp_path / "junk.tflite").write_bytes(b"\x18\x00\x00\x00TFL3" + b"\x07" * 40)
    grouped_float = keras.Model(inputs, keras.layers.Conv2D(6, 3, groups=3)(inputs))
    (tmp_path / "float.tflite").write_bytes(export.convert_float32(grouped_float))
    for name, needle in (("plain.tflite", "nothing to regroup"), ("junk.tflite", "not a valid"),
                         ("float.tflite", "nothing to regroup"),
                         ("missing.tflite", "cannot read")):
        result = run_module([SCRIPT, str(tmp_path / name), "--out", str(tmp_path / "o.tflite")])
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-1500:]
        assert last_line(result.stderr).startswith("error: ") and needle in last_line(result.stderr)
        assert not (tmp_path / "o.tflite").exists()
