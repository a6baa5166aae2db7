"""fnet_tf.analysis.bit_budget: distinct levels, ternary filters, packed size and energy of a
.tflite, checked against a hand count on a small model."""
import numpy as np
import pytest

from fnet_tf.analysis import bit_budget


@pytest.fixture(scope="module")
def small_file():
    """Conv 3x3 (3 -> 4 channels, 8x8, 'same'), global pooling, dense 4 -> 10. Filters 0 and 1
    of the conv are ternary ({-a, 0, a}); int8 per-channel quantization keeps them so."""
    from fnet_tf.tflite import convert as export
    from fnet_tf.core.backend import keras
    from fnet_tf.quantization.schemes import get_scheme

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    rng = np.random.default_rng(0)
    kernel, bias = model.get_layer("conv").get_weights()
    kernel[..., 0] = 0.05 * rng.choice([-1, 0, 1], size=kernel.shape[:3])
    kernel[..., 1] = 0.3 * rng.choice([-1, 0, 1], size=kernel.shape[:3], p=[0.2, 0.6, 0.2])
    model.get_layer("conv").set_weights([kernel, bias])

    def representative():
        for _ in range(16):
            yield [rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)]

    return export.convert_int8(model, representative, get_scheme("ptq")), kernel


def test_packed_size_mac_share_and_energy_match_a_hand_count(small_file):
    content, kernel = small_file
    rows, total = bit_budget.bit_budget(content)
    conv, dense = rows
    assert (conv["filters"], conv["weights"], conv["ternary_filters"]) == (4, 108, 2)
    assert conv["distinct_max"] > 3 and dense["ternary_filters"] == 0
    # conv: 2 ternary filters x (27 weights x 2 bits + 8-bit magnitude), 2 filters x 27 x 8
    # bits, 4 x (scale + bias) 64 bits; dense: 10 filters x 4 x 8 bits + 10 x 64 bits
    assert conv["packed_bits"] == 2 * (27 * 2 + 8) + 2 * 27 * 8 + 4 * 64 == 812
    assert dense["packed_bits"] == 10 * 4 * 8 + 10 * 64 == 960
    assert total["packed_bits"] == 1772 and total["int8_bits"] == 4 * 27 * 8 + 256 + 960 == 2080
    assert conv["macs"] == 8 * 8 * 4 * 27 and conv["ternary_macs"] == 8 * 8 * 2 * 27
    assert total["ternary_mac_share"] == pytest.approx(3456 / (6912 + 40))
    nonzero = int(np.count_nonzero(kernel[..., :2]))
    assert conv["ternary_nonzero_macs"] == 8 * 8 * nonzero
    table = bit_budget.energy_table()
    expected = ((6912 + 40 - 3456) * (table["int8_multiply_pj"] + table["int32_add_pj"])
                + 8 * 8 * nonzero * table["int32_add_pj"]
                + 1772 / 8 * table["sram_read_pj_per_byte"])
    assert total["energy_pj"] == pytest.approx(expected)
    assert total["energy_pj_int8"] > total["energy_pj"]
    assert "Horowitz" in total["energy_source"]


def test_a_released_int8_file_has_no_ternary_filters():
    import os

    from conftest import REPO

    from fnet_tf.tflite import convert as export

    with open(os.path.join(REPO, "models", "factorizenet-l7", "model_int8.tflite"), "rb") as f:
        content = f.read()
    rows, total = bit_budget.bit_budget(content)
    assert total["ternary_filters"] == 0 and total["packed_bits"] == total["int8_bits"]
    ops = export.inspect(content)["ops"]
    assert total["ternary_mac_share"] == 0
    assert len(rows) == sum(ops.get(name, 0) for name in bit_budget.WEIGHT_OPS) == 12
