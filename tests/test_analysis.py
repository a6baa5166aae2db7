"""Layer-wise analysis and the analyze CLI."""
import json
import os

import numpy as np
import pytest

from conftest import REPO, SHARED_ARCHIVE, last_line, run_module
from fnet_tf.quantization import schemes
from fnet_tf.arch import architectures
from fnet_tf.tflite import convert as export
from fnet_tf.analysis import layerwise

PEER = os.path.join(REPO, "..", "shared", "peers", "mlperf-tiny-ic", "resnet8_int8.tflite")


@pytest.fixture(scope="module")
def float_model_and_images(qat_run, tiny_archive):
    from fnet_tf.run import artifacts
    from fnet_tf.data import datasets as data
    from fnet_tf.run.rundir import RunDir

    return artifacts.float_model(RunDir(qat_run)), data.load(tiny_archive).train.images[:48]


def _convert(model, images, scheme):
    return export.convert_int8(model, lambda: ([images[i:i + 1].astype(np.float32)]
                                               for i in range(len(images))),
                               schemes.get_scheme(scheme))


def test_tensors_match_their_keras_layers(float_model_and_images):
    model, images = float_model_and_images
    rows, per_channel, _, weights = layerwise.analyze_layers(model, _convert(model, images, "ptq"), images)
    convs = [layer.name for layer in model.layers
             if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense")]
    assert [r["weight_layer"] for r in rows if "weight_layer" in r] == convs  # one row each
    first = rows[0]
    assert first["layer"] == "b0_relu" and first["weight_layer"] == "b0_conv"
    assert rows[-1]["layer"] == model.layers[-1].name
    # the first layer's error is output rounding (RMSE 1/sqrt(12) = 0.29 steps) plus its own
    # int8 weights' error, nothing propagated: under one step (0.68 with the seeded weights of
    # the tiny 3-epoch run, whose folded BN scales are large)
    assert 0.15 < first["rmse_lsb"] < 1.0 and np.isfinite(first["sqnr_db"])
    assert set(per_channel) == set(convs) == set(weights)


def _spread_depthwise_channels(model, ratio=20.0):
    """A copy of ``model`` whose depthwise layers' BN gammas span ``ratio`` (log-uniform), as
    in trained networks, where per-channel weight ranges differ by one to two orders of
    magnitude; a barely trained model's channels are all alike, which hides the effect."""
    from fnet_tf.core.backend import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    rng = np.random.default_rng(0)
    for dw in [layer for layer in copy.layers if type(layer).__name__ == "DepthwiseConv2D"]:
        layer = copy.get_layer(dw.name.replace("_dw", "_spatial_bn"))
        gamma, beta, mean, var = layer.get_weights()
        factors = np.exp(rng.uniform(np.log(1 / ratio), 0, gamma.shape))
        layer.set_weights([gamma * factors, beta, mean, var])
    return copy


def test_kernels_before_and_after_bn_folding():
    from fnet_tf.core.backend import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="c")(inputs)
    x = keras.layers.BatchNormalization(name="bn", epsilon=1e-3)(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(keras.layers.Flatten()(x)))
    gamma, beta, mean, var = (np.array([1.0, 2.0, 0.5, 3.0]), np.zeros(4), np.zeros(4),
                              np.array([1.0, 4.0, 0.25, 9.0]))
    model.get_layer("bn").set_weights([gamma, beta, mean, var])
    raw = layerwise.folded_kernels(model, fold_bn=False)["c"][1]
    folded = layerwise.folded_kernels(model)["c"][1]
    np.testing.assert_allclose(raw, model.get_layer("c").get_weights()[0], rtol=1e-6)
    np.testing.assert_allclose(folded, raw * gamma / np.sqrt(var + 1e-3), rtol=1e-5)


def test_per_channel_beats_per_tensor_on_depthwise_layers(tiny_archive):
    """A FactorizeNet with depthwise layers of 16-32 channels whose ranges spread 20:1."""
    from fnet_tf.data import datasets as data
    from fnet_tf.core.backend import keras
    from test_benchmark import _with_random_bn

    keras.utils.set_random_seed(0)
    model = _spread_depthwise_channels(_with_random_bn(
        architectures.create_model("factorizenet", 5, width=0.5)))
    images = data.load(tiny_archive).train.images[:48]
    pc, _, _, _ = layerwise.analyze_layers(model, _convert(model, images, "ptq"), images)
    pt, _, _, _ = layerwise.analyze_layers(model, _convert(model, images, "ptq_per_tensor"), images)
    depthwise = [(a, b) for a, b in zip(pc, pt) if a.get("weight_kind") == "DepthwiseConv2D"]
    assert len(depthwise) >= 3 and all(a["channel_range_ratio"] > 5 for a, _ in depthwise)
    for a, b in depthwise:
        assert np.isfinite(a["sqnr_db"]) and np.isfinite(b["sqnr_db"])
        # the weights themselves: per-channel int8 always keeps more signal
        assert a["weight_sqnr_db_per_channel"] > a["weight_sqnr_db_per_tensor"] + 3
    # the output of the first depthwise layer, where both files see the same input: deeper
    # outputs also carry activation and propagated error, which can outweigh the weights'
    first_pc, first_pt = depthwise[0]
    assert first_pc["sqnr_db"] > first_pt["sqnr_db"]


def test_qat_reference_carries_the_qat_weights(qat_run):
    from fnet_tf.run import artifacts
    from fnet_tf.run.rundir import RunDir

    run = RunDir(qat_run)
    qat, _ = artifacts.qat_model(run)
    float_model = artifacts.float_model(run)
    reference = layerwise.float_reference(qat, float_model)
    qat_kernel = [v for v in qat.weights if v.name == "b0_conv/kernel:0"][0].numpy()
    np.testing.assert_array_equal(reference.get_layer("b0_conv").get_weights()[0], qat_kernel)
    assert not np.array_equal(float_model.get_layer("b0_conv").get_weights()[0], qat_kernel)


def test_analyze_a_run_directory(qat_run, tmp_path):
    export_result = run_module([os.path.join(REPO, "export", "to_tflite.py"), qat_run,
                                "--check_images", "0"])
    assert export_result.returncode == 0, export_result.stderr[-2000:]
    out = tmp_path / "analysis"
    result = run_module(["-m", "fnet_tf.analyze", qat_run, "--out", str(out), "--latency_runs",
                         "50", "--layer_images", "32", "--notool_check"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy_top1", "accuracy_top5", "num_images", "latency_ms", "size_bytes", "params",
                "macs", "peak_activation_bytes", "ops", "input", "data", "machine"):
        assert key in metrics
    assert set(metrics["latency_ms"]) >= {"p50", "p90", "p99", "mean", "threads"}
    import csv

    rows = list(csv.DictReader(open(out / "layers.csv")))
    # factorizenet level 3: the stem, 5 factorized convs (spatial + pointwise each), the dense
    assert len([r for r in rows if r["weight_layer"]]) == 12
    assert all(np.isfinite(float(r["sqnr_db"])) for r in rows)
    # before BN folding too: the stem conv is followed by BN, the classifier is not
    stem, dense = [r for r in rows if r["weight_layer"]][0], [r for r in rows if r["weight_layer"]][-1]
    assert float(stem["raw_channel_range_max"]) != pytest.approx(float(stem["channel_range_max"]))
    assert float(dense["raw_channel_range_max"]) == pytest.approx(float(dense["channel_range_max"]))
    for png in ("weight_ranges.png", "sqnr.png", "activation_histograms.png", "weight_histograms.png",
                "summary.png"):
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    assert "## Layers" in (out / "report.md").read_text()
    # each op timed alone: one row per op of the file, the plot, the report's section
    op_rows = list(csv.DictReader(open(out / "op_latency.csv")))
    assert len(op_rows) == sum(metrics["ops"].values())
    assert [r["kind"] for r in op_rows].count("CONV_2D 3x3 grouped") >= 1
    assert metrics["latency_by_op"]["sum_of_ops_p50_ms"] > 0
    assert (out / "op_latency.png").read_bytes().startswith(b"\x89PNG")
    assert "## Where the time goes" in (out / "report.md").read_text()


@pytest.mark.skipif(not (os.path.exists(PEER) and os.path.exists(SHARED_ARCHIVE)),
                    reason="../shared absent")
def test_analyze_the_mlperf_reference(tmp_path):
    """Its float32 file sits beside the int8 one: the layer-wise analysis pairs the two."""
    out = tmp_path / "mlperf"
    result = run_module(["-m", "fnet_tf.analyze", PEER, "--data", SHARED_ARCHIVE, "--out", str(out),
                         "--latency_runs", "100", "--layer_images", "32"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["macs"] - 12.5e6) / 12.5e6 < 0.05
    assert abs(metrics["params"] - 78e3) / 78e3 < 0.05
    assert metrics["num_images"] == 10000 and 0.5 < metrics["accuracy_top1"] < 1
    assert "against the float file" in result.stdout
    import csv

    rows = list(csv.DictReader(open(out / "layers.csv")))
    assert len([r for r in rows if r["weight_layer"]]) == 10  # 9 convs and the dense layer
    assert all(float(r["weight_sqnr_db_per_channel"]) > float(r["weight_sqnr_db_per_tensor"])
               for r in rows if r["weight_layer"])


@pytest.mark.skipif(not os.path.exists(PEER), reason="../shared absent")
def test_bare_tflite_skips_the_layer_wise_part(tmp_path, tiny_archive):
    lonely = tmp_path / "alone.tflite"
    lonely.write_bytes(open(PEER, "rb").read())
    out = tmp_path / "o"
    result = run_module(["-m", "fnet_tf.analyze", str(lonely), "--data", tiny_archive, "--out",
                         str(out), "--latency_runs", "20", "--notool_check"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layer-wise analysis skipped" in result.stdout and not (out / "layers.csv").exists()
    assert (out / "metrics.json").exists() and (out / "summary.png").exists()


def test_compare_two_models(tmp_path, tiny_archive):
    """Two files of one name (as in models/*/model_int8.tflite) are named by their folders."""
    paths = []
    for level in (3, 5):
        model = architectures.create_model("factorizenet", level, width=0.25)
        images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3))
        path = tmp_path / f"l{level}" / "model_int8.tflite"
        path.parent.mkdir()
        path.write_bytes(_convert(model, images, "ptq"))
        (path.parent / "model_float32.tflite").write_bytes(export.convert_float32(model))
        paths.append(str(path))
    out = tmp_path / "cmp"
    result = run_module(["-m", "fnet_tf.analyze", *paths, "--data", tiny_archive, "--out", str(out),
                         "--latency_runs", "40"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["model"] for r in rows] == ["l3", "l5"] and rows[0]["macs"] > rows[1]["macs"]
    assert (out / "comparison.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "op_latency_by_kind.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "l3" / "op_latency.csv").exists() and (out / "l5" / "op_latency.csv").exists()
    assert "CONV_2D 3x3 grouped" in rows[0]["latency_by_op"]["by_kind_us"]
    assert "CONV_2D 3x3 grouped" not in rows[1]["latency_by_op"]["by_kind_us"]
    assert "Where the time goes" in (out / "comparison.md").read_text()
    # where INT8 error enters: each model's layer-wise analysis (against its float file), compared
    assert (out / "layers_compared.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "l3" / "layers.csv").exists() and (out / "l5" / "layers.csv").exists()
    table = (out / "layers_compared.md").read_text()
    assert "| l3 |" in table and "| l5 |" in table and table in (out / "comparison.md").read_text()


def test_layer_compare_finds_where_error_enters_by_hand():
    from fnet_tf.analysis import layer_compare

    rows = [{"layer": "a", "weight_kind": "Conv2D", "sqnr_db": 40.0},
            {"layer": "b", "weight_kind": "DepthwiseConv2D", "sqnr_db": 30.0},
            {"layer": "c", "weight_kind": "Conv2D", "sqnr_db": 28.0},
            {"layer": "d", "weight_kind": "", "tflite_op": "ADD", "sqnr_db": ""},
            {"layer": "e", "weight_kind": "Dense", "sqnr_db": 29.0}]
    s = layer_compare.summarize(rows)
    assert s["worst_step_layer"] == "b" and s["worst_step_db"] == pytest.approx(10.0)
    assert s["min_sqnr_layer"] == "c" and s["output_sqnr_db"] == 29.0 and s["layers"] == 5
    assert s["median_sqnr_db"] == pytest.approx(29.5)
    assert s["by_kind"]["Conv2D"] == {"ops": 1, "mean_drop_db": pytest.approx(2.0)}
    assert s["by_kind"]["Dense"]["mean_drop_db"] == pytest.approx(-1.0)
    assert "| m | 5 | 29.0 |" in layer_compare.markdown({"m": s})
    with pytest.raises(ValueError, match="no layer has an SQNR"):
        layer_compare.summarize([{"layer": "x", "sqnr_db": ""}])


@pytest.mark.parametrize("make,message", [
    (lambda d: (d / "x.txt").write_text("hello") and str(d / "x.txt"), "not a .tflite file"),
    (lambda d: (d / "c.tflite").write_bytes(b"\x18\x00\x00\x00TFL3" + b"\x01" * 50) and str(d / "c.tflite"),
     "not a valid .tflite model"),
    (lambda d: ((d / "r").mkdir(), (d / "r" / "config.json").write_text("{}")) and str(d / "r"),
     "no INT8 model"),
    (lambda d: str(d / "missing.tflite"), "does not exist"),
])
def test_bad_input_is_one_line(tmp_path, make, message, tiny_archive):
    result = run_module(["-m", "fnet_tf.analyze", make(tmp_path), "--data", tiny_archive,
                         "--out", str(tmp_path / "o")])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert last_line(result.stderr).startswith("error: ") and message in last_line(result.stderr)


def test_missing_data_path_is_one_line(tmp_path):
    result = run_module(["-m", "fnet_tf.analyze", PEER, "--data", str(tmp_path / "none.tar.gz")])
    assert result.returncode == 2 and "does not exist" in last_line(result.stderr)


def test_training_records_layer_stats_per_epoch(qat_run, tmp_path):
    from fnet_tf.analysis.callback import STATS_FILE, read_stats

    entries = read_stats(os.path.join(qat_run, STATS_FILE))
    assert [(e["phase"], e["epoch"]) for e in entries] == [
        ("float", 1), ("float", 2), ("float", 3), ("qat", 1), ("qat", 2)]
    last = entries[-1]
    assert "b0_conv" in last["weights"] and last["weights"]["b0_conv"]["channel_range_ratio"] >= 1
    assert "b0_relu" in last["activations"] and last["activations"]["b0_relu"]["min"] >= 0
    assert os.listdir(os.path.join(qat_run, "tensorboard", "float"))
    out = tmp_path / "evo"
    result = run_module(["-m", "fnet_tf.analyze", qat_run, "--evolution", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "evolution.png").read_bytes().startswith(b"\x89PNG")


def test_stats_resume_drops_later_epochs_and_a_torn_line(tmp_path):
    from fnet_tf.analysis.callback import read_stats, truncate_stats

    path = tmp_path / "layer_stats.jsonl"
    lines = [json.dumps({"phase": "float", "epoch": e, "weights": {}, "activations": {}})
             for e in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"phase": "float", "epo')  # killed mid-write
    truncate_stats(str(path), "float", 2)
    assert [e["epoch"] for e in read_stats(str(path))] == [1, 2]
    assert path.read_text().endswith("}\n")


def test_ptq_run_gets_the_quantization_debugger_dump(tiny_archive, tmp_path):
    run_dir = tmp_path / "float-only"
    trained = run_module(["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "5",
                          "--width", "0.25", "--data", tiny_archive, "--epochs", "1",
                          "--batch_size", "16", "--val_split", "0", "--run_dir", str(run_dir),
                          "--verbose", "0", "--nolayer_stats"])
    assert trained.returncode == 0, trained.stderr[-2000:]
    exported = run_module([os.path.join(REPO, "export", "to_tflite.py"), str(run_dir),
                           "--check_images", "0", "--calibration_samples", "32"])
    assert exported.returncode == 0 and "post-training quantization" in exported.stderr
    out = tmp_path / "a"
    result = run_module(["-m", "fnet_tf.analyze", str(run_dir), "--out", str(out), "--layer_images",
                         "16", "--latency_runs", "20", "--notool_check"])
    assert result.returncode == 0, result.stderr[-3000:]
    import csv

    rows = list(csv.DictReader(open(out / "ptq_debugger.csv")))
    assert {"CONV_2D", "DEPTHWISE_CONV_2D"} <= {r["op_name"] for r in rows}
    assert all(float(r["mean_squared_error"]) >= 0 for r in rows)
    assert "QuantizationDebugger" in (out / "report.md").read_text()


def test_targets_with_one_name_are_told_apart_by_their_folders(tmp_path):
    """Two run directories both called finetune (or two models/*/model_int8.tflite) must not
    write their layer-wise outputs into one OUT/<name>/ folder."""
    from types import SimpleNamespace

    from fnet_tf.analysis.output_names import unique_names

    def run(path):
        return SimpleNamespace(path=str(tmp_path / path), run=object(), name=os.path.basename(path),
                               tflite=str(tmp_path / path / "model_int8.tflite"))

    def file(path):
        return SimpleNamespace(path=str(tmp_path / path), run=None, tflite=str(tmp_path / path),
                               name=os.path.splitext(os.path.basename(path))[0])

    targets = unique_names([run("q/frostnet-l0/finetune"), run("p/factorizenet-l3/finetune"),
                             run("q/frostnet-l0/scratch"), file("models/a/model_int8.tflite"),
                             file("models/b/model_int8.tflite"), file("x.tflite")])
    assert [t.name for t in targets] == ["frostnet-l0-finetune", "factorizenet-l3-finetune",
                                         "scratch", "a", "b", "x"]
