"""Graph statistics and latency of .tflite files."""
import dataclasses
import os

import numpy as np
import pytest

from conftest import REPO
from fnet_tf.quantization import schemes
from fnet_tf.arch import architectures
from fnet_tf.tflite import measure as benchmark
from fnet_tf.tflite import convert as export

PEER = os.path.join(REPO, "..", "shared", "peers", "mlperf-tiny-ic", "resnet8_int8.tflite")


def _ptq(model, n=4):
    images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3)).astype(np.float32)
    return export.convert_int8(model, lambda: ([images[i:i + 1]] for i in range(n)),
                               schemes.get_scheme("ptq"))


def _with_random_bn(model):
    """Distinct BN statistics, so no two folded bias tensors are equal (the converter shares
    identical constant buffers, which would hide params)."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma, rng.normal(size=beta.shape), rng.normal(size=mean.shape), var])
        if type(layer).__name__ == "Dense":
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(size=bias.shape)])
    return model


def test_graph_macs_and_params_match_the_spec_hand_count():
    for level in (0, 3, 5):  # standard, grouped and depthwise convs
        spec = architectures.model_spec("factorizenet", level, width=0.25)
        model = _with_random_bn(architectures.create_model("factorizenet", level, 0.25))
        stats = benchmark.graph_stats(_ptq(model))
        assert stats["macs"] == spec.cost().macs
        cost = spec.cost()
        assert stats["params"] == cost.weights + cost.biases  # BN folded into int32 biases


def test_peak_activation_of_a_chain_by_hand():
    from fnet_tf.core.backend import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)   # 32x32x8
    x = keras.layers.MaxPooling2D(2)(x)                     # 16x16x8
    x = keras.layers.GlobalAveragePooling2D()(x)
    stats = benchmark.graph_stats(_ptq(keras.Model(inputs, keras.layers.Dense(10)(x))))
    # the conv holds its int8 input (32*32*3) and output (32*32*8) at once
    assert stats["peak_activation_bytes"] == 32 * 32 * 3 + 32 * 32 * 8


@pytest.mark.skipif(not os.path.exists(PEER), reason="../shared/peers absent")
def test_mlperf_resnet8_published_figures():
    stats = benchmark.graph_stats(open(PEER, "rb").read())
    assert abs(stats["macs"] - 12.5e6) / 12.5e6 < 0.05
    assert abs(stats["params"] - 78e3) / 78e3 < 0.05
    assert stats["problems"] == [] and stats["input"]["zero_point"] == -128


def test_latency_is_interleaved_and_positive():
    content = _ptq(architectures.create_model("factorizenet", 5, 0.25))
    a, b = benchmark.latency([content, content], runs=40, warmup=5, rounds=4)
    for r in (a, b):
        assert r["runs"] == 40 and 0 < r["p50"] <= r["p90"] <= r["p99"]


def test_latency_times_exactly_the_runs_asked_for():
    content = _ptq(architectures.create_model("factorizenet", 5, 0.25))
    assert [r["runs"] for r in benchmark.latency([content], runs=5, warmup=1)] == [5]  # not 10
    assert benchmark.latency([content], runs=23, warmup=1, rounds=10)[0]["runs"] == 23


def test_top5_is_left_out_where_it_measures_nothing():
    from fnet_tf.data.datasets import Split

    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(6) % 5
    for classes, measured in ((5, False), (10, True)):
        spec = dataclasses.replace(architectures.model_spec("factorizenet", 5, 0.25),
                                   num_classes=classes)
        content = _ptq(architectures.build_model(spec))
        accuracy = benchmark.evaluate_tflite(content, Split(images, labels), progress=False)
        assert (accuracy["accuracy_top5"] is not None) == measured


def test_the_int8_peak_probes_and_efficiency_arithmetic():
    from fnet_tf.tflite import measure as benchmark
    from fnet_tf.tflite import convert as export

    probes = benchmark.peak_probes()
    assert set(probes) == set(benchmark.PEAK_PROBES)
    for content, macs in probes.values():
        assert export.inspect(content)["problems"] == [] and macs >= 30e6
    peak, by_probe = benchmark.peak_gmacs([{"p50": 0.5}, {"p50": 0.1}])
    macs = [m for _, m in probes.values()]
    assert by_probe[list(probes)[1]] == pytest.approx(macs[1] / 1e-4 / 1e9)
    assert peak == pytest.approx(max(macs[0] / 5e-4, macs[1] / 1e-4) / 1e9)
    e = benchmark.efficiency(12.5e6, {"p50": 0.05}, 500.0)
    assert e["achieved_gmacs"] == pytest.approx(250.0) and e["peak_share"] == pytest.approx(0.5)


def test_median_of_passes_by_hand():
    def timing(p50):
        return {"p50": p50, "p90": 2 * p50, "p99": 3 * p50, "mean": p50, "runs": 10, "threads": 1}

    # model, peer per pass: ratios 1.2, 0.9, 1.0 -> median 1.0; p50s 1.2, 0.9, 1.5 -> 1.2
    passes = [[timing(1.2), timing(1.0)], [timing(0.9), timing(1.0)], [timing(1.5), timing(1.5)]]
    model, peer = benchmark.median_of_passes(passes)
    assert model["ratio_median"] == pytest.approx(1.0) and model["p50"] == pytest.approx(1.2)
    assert model["p90"] == pytest.approx(2.4) and model["runs"] == 30
    assert [p["ratio_to_peer"] for p in model["passes"]] == pytest.approx([1.2, 0.9, 1.0])
    assert peer["ratio_median"] == 1.0 and peer["p50"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same models"):
        benchmark.median_of_passes([[timing(1.0)], [timing(1.0), timing(1.0)]])
