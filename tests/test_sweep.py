"""The factorization sweep: resume after a kill, the report's fields, design selection."""
import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, last_line, run_module
from fnet_tf.search import sweep_report
from fnet_tf.core.errors import UserError

FIELDS = ("level", "params", "macs", "size_bytes", "float_accuracy", "ptq_int8_accuracy",
          "ptq_per_tensor_int8_accuracy", "qat_int8_accuracy", "int8_drop", "w4_val_accuracy",
          "w4_worst_drop", "w4_worst_layer", "latency_p50_ms", "min_sqnr_layer")


def _sweep_args(archive, out):
    return ["-m", "fnet_tf.sweep", "--levels", "0-1", "--width", "0.25", "--data", archive,
            "--out", str(out), "--epochs", "1", "--qat_epochs", "1", "--batch_size", "8",
            "--val_split", "20", "--check_images", "20", "--latency_runs", "10",
            "--sensitivity_images", "10"]


def test_sweep_resumes_after_kill_without_retraining(tiny_archive, tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, *_sweep_args(tiny_archive, out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("level 1 (2/2)") and "train" in line:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its training child, mid-level
            break
    proc.wait()
    assert any("level 0 (1/2)" in s and "analyze done" in s for s in seen), "".join(seen)[-3000:]
    level0 = out / "runs" / "factorizenet-l0-s0-he_normal"
    before = {name: (level0 / name).stat().st_mtime_ns
              for name in ("history.csv", "run.json", "model_int8.tflite")}

    result = run_module(_sweep_args(tiny_archive, out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("train", "export QAT int8", "export PTQ int8", "export PTQ per-tensor int8",
                 "sensitivity", "analyze"):
        assert f"level 0 (1/2) seed 0 he_normal: {step} complete, reusing" in result.stdout
    assert "level 1 (2/2) seed 0 he_normal: analyze done" in result.stdout
    after = {name: (level0 / name).stat().st_mtime_ns for name in before}
    assert after == before, "level 0 was redone"

    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["level"]) for r in rows] == [0, 1]
    for row in rows:
        assert all(row[k] not in ("", "nan") for k in FIELDS), row
    assert int(rows[1]["macs"]) < int(rows[0]["macs"])  # factorizing cuts MACs
    for png in ("pareto.png", "layers_across_levels.png"):
        assert (out / png).stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "QAT INT8" in summary and "PTQ INT8 per-tensor" in summary and "4-bit weights" in summary

    # a finished sweep re-reports without training; --select reads its CSV
    again = run_module(["-m", "fnet_tf.sweep", "--out", str(out), "--report", "--latency_runs", "5"])
    assert again.returncode == 0 and "from 2 runs" in again.stdout, again.stderr[-2000:]
    chosen = run_module(["-m", "fnet_tf.sweep", "--out", str(out), "--select",
                         f"macs<={rows[1]['macs']}"])
    assert chosen.returncode == 0 and "level 1" in chosen.stdout


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sweep_report.COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in sweep_report.COLUMNS})


def test_select_picks_the_most_accurate_level_under_the_budget(tmp_path):
    table = [  # level, macs, latency, size, accuracy
        (0, 38e6, 0.90, 300e3, 0.86), (3, 9e6, 0.40, 70e3, 0.85), (5, 6e6, 0.35, 60e3, 0.83),
        (6, 5.8e6, 0.30, 58e3, 0.84), (7, 5.7e6, 0.28, 57e3, 0.82)]
    rows = []
    for level, macs, lat, size, acc in table:
        for seed, jitter in ((0, -0.005), (1, 0.005)):  # two seeds: the mean decides
            rows.append({"model": "m", "level": level, "seed": seed, "init": "he_normal",
                         "params": macs / 100, "macs": macs, "size_bytes": size,
                         "float_accuracy": acc + 0.01, "ptq_int8_accuracy": acc - 0.01,
                         "qat_int8_accuracy": acc + jitter, "qat_keras_accuracy": acc,
                         "int8_drop": 0.01, "latency_p50_ms": lat, "min_sqnr_layer": "b1",
                         "min_sqnr_db": 20.0, "run": f"runs/{level}-{seed}"})
    _write_csv(tmp_path / "sweep.csv", rows)
    assert "level 0 " in sweep_report.select_text(tmp_path, "macs<=4e7")
    assert "level 3 " in sweep_report.select_text(tmp_path, "macs<=1e7")
    assert "level 6 " in sweep_report.select_text(tmp_path, "macs<=6e6")
    assert "level 6 " in sweep_report.select_text(tmp_path, "latency_ms<=0.3")
    assert "level 7 " in sweep_report.select_text(tmp_path, "size_bytes<=57e3")
    assert "level 3 " in sweep_report.select_text(tmp_path, "accuracy>=0.845,macs<=2e7")
    assert "no level" in sweep_report.select_text(tmp_path, "macs<=1e6")
    with pytest.raises(UserError, match="bad --select"):
        sweep_report.select_text(tmp_path, "flops<=3")


def test_pareto_front():
    points = [(38, 86), (9, 85), (6, 83), (5.8, 84), (5.7, 82), (20, 84)]
    from fnet_tf.analysis.pareto import pareto_front

    assert sorted(pareto_front(points)) == [0, 1, 3, 4]


@pytest.mark.parametrize("args,message", [
    (["--levels", "0-1"], "--out is required"),
    (["--levels", "0-12", "--out", "x", "--data", "d"], "outside 0..7"),
    (["--levels", "0-1", "--out", "x", "--data", "nowhere.tar.gz"], "nowhere.tar.gz"),
    (["--levels", "0-1", "--out", "x", "--data", "d", "--seeds", "0"], "--seeds"),
    (["--levels", "0.7", "--out", "x", "--data", "d"], "gives 2 levels but factorizenet has 3"),
    (["--levels", "0-1", "--out", "x", "--data", "d", "--first_seed", "-1"], "--first_seed"),
    (["--out", "nowhere", "--select", "macs<=1"], "no nowhere/sweep.csv"),
])
def test_bad_sweep_input_is_one_line(args, message):
    result = run_module(["-m", "fnet_tf.sweep", *args])
    assert result.returncode == 2 and message in last_line(result.stderr), result.stderr[-500:]


def test_first_seed_adds_seeds_after_the_ones_a_sweep_already_has():
    from fnet_tf.search import sweep_points

    settings = sweep_points.SweepSettings(model="factorizenet", width=1.0, data="d", out="out",
                                          epochs=1, qat_epochs=1)
    points = sweep_points.plan_points(settings, [(0, 1.0), (7, 1.0)], ["he_normal"], range(2, 4))
    assert [(p.level, p.seed) for p in points] == [(0, 2), (0, 3), (7, 2), (7, 3)]
    assert len({p.run_dir for p in points}) == 4
    # a design's own width is named; the sweep-wide one is not
    named = sweep_points.plan_points(settings, [(3, 0.5)], ["he_normal"], [0])[0]
    assert named.name == "factorizenet-l3-w0_5-s0-he_normal", named.name


def test_init_ablation_plot(tmp_path):
    from fnet_tf.analysis import plots

    entries = [{"level": lvl, "init": init, "qat_int8_accuracy": 0.8 + 0.01 * lvl,
                "qat_int8_accuracy_std": 0.002, "int8_drop": 0.002 * lvl, "int8_drop_std": 0.0,
                "ptq_per_tensor_int8_accuracy": 0.7, "w4_val_accuracy": float("nan")}
               for lvl in (0, 3, 7) for init in ("he_normal", "glorot_uniform")]
    drawn = plots.init_ablation(entries, str(tmp_path / "a.png"), "t")
    assert drawn == ["ptq_per_tensor_int8_accuracy", "qat_int8_accuracy", "int8_drop"]
    assert (tmp_path / "a.png").stat().st_size > 10_000


def test_the_table_reads_each_runs_4_bit_sensitivity_and_old_csvs_without_it(tmp_path):
    run = tmp_path / "run"
    (run / "analysis").mkdir(parents=True)
    assert np.isnan(sweep_report.weight_sensitivity(str(run))["w4_val_accuracy"])
    rows = "layer,bits,accuracy_all_quantized,drop_only_this\n"
    for bits, all_q, drops in (("8", 0.80, (0.001, 0.0)), ("4", 0.62, (0.05, 0.21)),
                               ("ternary", 0.2, (0.4, 0.5))):
        rows += "".join(f"b{i}_conv,{bits},{all_q},{d}\n" for i, d in enumerate(drops))
    (run / "analysis" / "sensitivity.csv").write_text(rows)
    assert sweep_report.weight_sensitivity(str(run)) == {
        "w4_val_accuracy": 0.62, "w4_worst_drop": 0.21, "w4_worst_layer": "b1_conv"}

    old = tmp_path / "sweep.csv"  # a sweep.csv written before the per-tensor and 4-bit columns
    old.write_text("model,level,seed,init,params,macs,size_bytes,float_accuracy,"
                   "ptq_int8_accuracy,qat_int8_accuracy,qat_keras_accuracy,int8_drop,"
                   "latency_p50_ms,min_sqnr_layer,min_sqnr_db,run\n"
                   "factorizenet,7,0,he_normal,1,2,3,0.8,0.79,0.8,0.8,0,0.1,b1,20,r\n")
    entries = sweep_report.aggregate(sweep_report.read_csv(str(old)))
    assert np.isnan(entries[0]["ptq_per_tensor_int8_accuracy"])
    text = sweep_report.summary_markdown(entries, None, "t")
    assert "4-bit" not in text and "| 79.00 | - | 80.00 |" in text
    seeds = [dict(entries[0], seed=seed, w4_val_accuracy=0.62, w4_worst_drop=drop,
                  w4_worst_layer=layer) for seed, drop, layer in ((0, 0.21, "b1_conv"), (1, 0.19, "b0_conv"))]
    (with_w4,) = sweep_report.aggregate(seeds)
    assert with_w4["w4_worst_drop"] == pytest.approx(0.20) and with_w4["w4_worst_layer"] == "b1_conv"
    text = sweep_report.summary_markdown([with_w4], None, "t")
    assert "| 62.00 ± 0.00 | b1_conv (+20.00) |" in text
    assert all(line.count("|") == 16 for line in text.splitlines() if line.startswith("|"))


def test_sweep_refuses_a_missing_recipe_flagfile(tmp_path, tiny_archive):
    result = run_module(["-m", "fnet_tf.sweep", "--levels", "7", "--data", tiny_archive,
                         "--out", str(tmp_path / "s"), "--recipe_flags", str(tmp_path / "no.flags")])
    assert result.returncode == 2 and "--recipe_flags" in last_line(result.stderr)
    assert "Traceback" not in result.stderr


def test_a_sweep_folder_of_two_models_names_each_row():
    row = {"init": "he_normal", "params": 1, "macs": 1e6, "size_bytes": 1024, "float_accuracy": 0.8,
           "ptq_int8_accuracy": 0.8, "qat_int8_accuracy": 0.79, "qat_keras_accuracy": 0.79,
           "int8_drop": 0.01,
           "latency_p50_ms": 0.05, "min_sqnr_layer": "x", "min_sqnr_db": 20.0}
    rows = [dict(row, model="resnet8", level=0), dict(row, model="factorizenet", level=0)]
    entries = sweep_report.aggregate(rows)
    assert len(entries) == 2  # one level, two models: never merged
    text = sweep_report.summary_markdown(entries, None, "t")
    assert "| resnet8 l0 |" in text and "| factorizenet l0 |" in text
    single = sweep_report.summary_markdown(entries[:1], None, "t")
    assert "| 0 | he_normal |" in single


def test_the_summary_gives_mean_and_sample_std_over_seeds_on_a_hand_made_csv(tmp_path):
    import csv

    from fnet_tf.search import sweep_report as report

    rows = []
    for level, init, seed, acc, lat in [(7, "he_normal", 0, 0.80, 0.05), (7, "he_normal", 1, 0.84, 0.07),
                                       (7, "glorot_uniform", 0, 0.78, 0.06), (0, "he_normal", 0, 0.86, 0.1)]:
        rows.append({"model": "factorizenet", "level": level, "seed": seed, "init": init,
                     "params": 1000, "macs": 2000, "size_bytes": 3000, "float_accuracy": acc + 0.01,
                     "ptq_int8_accuracy": acc - 0.01, "qat_int8_accuracy": acc,
                     "qat_keras_accuracy": acc, "int8_drop": 0.01, "latency_p50_ms": lat,
                     "min_sqnr_layer": f"b{seed}", "min_sqnr_db": 20.0 + seed, "run": "r"})
    path = tmp_path / "sweep.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(report.COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    entries = {(e["level"], e["init"]): e for e in report.aggregate(report.read_csv(str(path)))}
    he7 = entries[(7, "he_normal")]
    assert he7["seeds"] == 2
    assert he7["qat_int8_accuracy"] == pytest.approx(0.82)
    assert he7["qat_int8_accuracy_std"] == pytest.approx(0.04 / np.sqrt(2))  # sample std
    assert he7["latency_p50_ms_std"] == pytest.approx(0.02 / np.sqrt(2))
    assert he7["min_sqnr_layer"] == "b0" and he7["min_sqnr_db"] == 20.0  # the worst seed's
    assert entries[(7, "glorot_uniform")]["qat_int8_accuracy_std"] == 0.0  # one seed
    assert "±" in report.summary_markdown(list(entries.values()), None, "t")


def test_designs_that_differ_only_in_width_are_separate_rows_of_the_summary(tmp_path):
    """A capacity-front sweep trains one level at several widths: never averaged together."""
    import csv

    from fnet_tf.search import sweep_report as report

    rows = [{"model": "factorizenet", "level": "0.0.7", "width": width, "seed": seed,
             "init": "he_normal", "params": 1, "macs": 2, "size_bytes": 3,
             "qat_int8_accuracy": acc, "float_accuracy": acc, "int8_drop": 0.0,
             "latency_p50_ms": 0.1, "min_sqnr_layer": "b1", "min_sqnr_db": 20.0, "run": "r"}
            for width, seed, acc in [("0.5,0.5,1", 0, 0.80), ("0.5,0.5,1", 1, 0.82),
                                     ("0.5,0.75,0.75", 0, 0.90)]]
    path = tmp_path / "sweep.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(report.COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    entries = {e["width"]: e for e in report.aggregate(report.read_csv(str(path)))}
    assert entries["0.5,0.5,1"]["seeds"] == 2
    assert entries["0.5,0.5,1"]["qat_int8_accuracy"] == pytest.approx(0.81)
    assert entries["0.5,0.75,0.75"]["qat_int8_accuracy"] == pytest.approx(0.90)
    text = report.summary_markdown(list(entries.values()), None, "t")
    assert "| 0.0.7 w0.5,0.5,1 | he_normal | 2 |" in text
    assert "| 0.0.7 w0.5,0.75,0.75 | he_normal | 1 |" in text
    assert "level 0.0.7 w0.5,0.75,0.75 " in report.select_text(tmp_path, "macs<=3")


def test_the_design_space_step_times_untrained_designs_and_trains_nothing(tiny_archive, tmp_path):
    from fnet_tf.search import design_space

    per_stage, widths = design_space.parse_space("levels=5-7 per stage; width=0.25,0.5")
    every = design_space.candidates("factorizenet", per_stage, widths)
    # stages 0-2 hold 32, 32/64 and 64/128 input channels: levels >= 5, 6, 7 are depthwise
    # there, so of 3^3 level combinations per width few build distinct networks
    assert len({(r["spec"]) for r in every}) == len(every) < 2 * 27
    # widths per stage: each stage takes any of them (2^3 combinations, uniform ones a number)
    _, widths = design_space.parse_space("levels=7; width=0.25,0.5 per stage")
    assert len(widths) == 8 and widths[0] == 0.25 and "0.25,0.5,0.25" in widths
    out = tmp_path / "ds"
    peer = os.path.join(REPO, "models", "factorizenet-l7", "model_int8.tflite")
    result = run_module(["-m", "fnet_tf.sweep", "--design_space", "levels=3-5 per stage; "
                         "width=0.25,0.5 per stage", "--out", str(out), "--data", tiny_archive,
                         "--peer", peer, "--max_candidates", "3", "--latency_runs", "20",
                         "--calibration_images", "8", "--latency_passes", "2",
                         "--latency_probes", "4"])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "design_space.csv")))
    assert len(rows) == 4 + 3 and all(float(r["latency_p50_ms"]) > 0 for r in rows)
    assert sum(bool(r["predicted_ratio_to_peer"]) for r in rows) == 3  # the chosen, not probes
    assert "names" in json.loads((out / "latency_model.json").read_text())
    assert any(r["on_front"] == "True" for r in rows)
    assert "2 interleaved passes" in (out / "design_space.md").read_text()
    assert (out / "design_space.png").stat().st_size > 10_000
    assert not (out / "runs").exists()  # nothing trained
    front = design_space.read_front(str(out))
    assert front and all(isinstance(w, (float, str)) for _, w in front)
    state = json.loads((out / "design_space.json").read_text())  # the report renders again
    assert design_space.write_report(str(out), state) == (out / "design_space.md").read_text()
    assert "Capacity front" in (out / "design_space.md").read_text()


def test_a_bad_design_space_is_one_line(tmp_path, tiny_archive):
    result = run_module(["-m", "fnet_tf.sweep", "--design_space", "levels=0-99", "--out",
                         str(tmp_path / "ds"), "--data", tiny_archive, "--peer", __file__])
    assert result.returncode == 2 and "within 0-7" in last_line(result.stderr)


def test_the_latency_model_recovers_known_costs_and_chooses_by_prediction():
    from fnet_tf.arch import architectures
    from fnet_tf.search import design_space
    from fnet_tf.search import latency_model

    specs = [architectures.model_spec("factorizenet", lvl, w)
             for lvl in (0, 3, 5, 7, "0,5,7", "0,7,7", "3,5,7") for w in (0.75, 1.0, "0.75,1,1.25")]
    names = latency_model.feature_names(specs)
    truth = np.random.default_rng(0).uniform(0.0, 0.01, len(names))
    measured = [float(latency_model.features(s, names) @ truth) for s in specs]
    fitted = latency_model.fit(specs, measured)
    predicted = [latency_model.predict(fitted, s) for s in specs]
    assert predicted == pytest.approx(measured, rel=1e-6)
    check = latency_model.agreement(predicted, measured)
    assert check["spearman"] == pytest.approx(1.0) and check["median_relative_error"] < 1e-6
    # grouped convs are costed by groups x pixels too: level 3 has them, level 7 none
    terms3 = {t[0] for t in latency_model.terms(specs[3])[0]}  # level 3, width 0.75
    assert "grouped pixel-groups" in terms3 and "grouped" in terms3
    assert not {"grouped", "grouped pixel-groups"} & {t[0] for t in latency_model.terms(specs[10])[0]}
    timed = [{"macs": m, "latency_ratio_to_peer": r}
             for m, r in ((5, 0.6), (4, 0.7), (9, 0.8), (7, 0.9), (12, 1.1))]
    assert design_space.capacity_front(timed) == [0, 2]  # 1.1x is slower than the peer
    rows = [{"spec": str(i), "macs": m} for i, m in enumerate((1, 2, 3, 4))]
    # predicted fast enough (<= 1.1 x 1.0): specs 1 and 2, most MACs first; then the front
    chosen = design_space.choose_by_prediction(rows, [0.5, 1.05, 1.0, 2.0], 1.0, 3)
    assert [r["spec"] for r in chosen] == ["2", "1", "0"]


def test_layers_by_init_takes_each_initializers_first_seed(tmp_path):
    from fnet_tf.analysis import plots
    from fnet_tf.search import sweep_report

    runs = []
    for level in (0, 7):
        for init in ("he_normal", "normal_std0.01"):
            for seed in (0, 1):
                path = tmp_path / f"l{level}-{init}-s{seed}"
                (path / "analysis").mkdir(parents=True)
                scale = (1 + seed) * (10 if init == "normal_std0.01" else 1)
                (path / "analysis" / "layers.csv").write_text(
                    "weight_layer,channel_range_max,channel_range_ratio,raw_channel_range_ratio,"
                    f"sqnr_db\nb0_conv,{0.1 * scale},{2 * scale},{scale},30\n"
                    f"b1_dw,{0.2 * scale},{3 * scale},{scale},25\n"
                    f"b1_pw,{0.3 * scale},{4 * scale},,20\n")
                runs.append(({"level": level, "init": init, "seed": seed}, str(path)))
    by_init = sweep_report.layers_by_init(runs)
    assert sorted(by_init) == [0, 7] and sorted(by_init[7]) == ["he_normal", "normal_std0.01"]
    assert list(by_init[7]["normal_std0.01"]) == ["b0 kxk", "b1 kxk", "b1 1x1"]
    assert by_init[7]["normal_std0.01"]["b1 1x1"]["channel_range_ratio"] == "40"  # seed 0's
    plots.layers_across_levels(by_init[7], str(tmp_path / "l7.png"), "t", legend="{}")
    assert (tmp_path / "l7.png").stat().st_size > 10_000


def test_layers_across_levels_takes_per_stage_designs_and_widths_apart(tmp_path):
    """A capacity-front sweep mixes uniform levels and per-stage designs at several widths."""
    from fnet_tf.analysis import plots
    from fnet_tf.search import sweep_report

    runs = []
    for level, width in ((0, 0.5), ("0.0.7", "0.5,0.75,0.75"), ("0.0.7", "0.5,0.5,1"), (7, 1.0)):
        path = tmp_path / f"l{level}-w{width}"
        (path / "analysis").mkdir(parents=True)
        (path / "analysis" / "layers.csv").write_text(
            "weight_layer,channel_range_max,channel_range_ratio,sqnr_db\n"
            "b0_conv,0.1,2,30\nb1_dw,0.2,3,25\n")
        runs.append(({"level": level, "width": width, "init": "he_normal", "seed": 0}, str(path)))
    by_level = sweep_report.layers_by_level(runs)
    assert list(by_level) == ["0 w0.5", "0.0.7 w0.5,0.75,0.75", "0.0.7 w0.5,0.5,1", "7"]
    plots.layers_across_levels(by_level, str(tmp_path / "levels.png"), "t")
    assert (tmp_path / "levels.png").stat().st_size > 10_000


def test_layer_table_by_init_gives_each_layers_mean_and_std_over_seeds(tmp_path):
    from fnet_tf.search import sweep_report

    runs = []
    for init, raw in (("he_normal", 0.2), ("normal_std1.0", 1.0)):
        for seed, folded_ratio in ((0, 4.0), (1, 8.0)):
            path = tmp_path / f"{init}-s{seed}"
            (path / "analysis").mkdir(parents=True)
            (path / "analysis" / "layers.csv").write_text(
                "weight_layer,raw_weight_std,weight_std,raw_channel_range_ratio,"
                "channel_range_ratio,weight_sqnr_db_per_tensor,sqnr_db\n"
                f"b1_dw,{raw + seed},0.5,3,{folded_ratio},40,30\n"
                ",,,,,,31\n")  # an activation-only row: not a weight layer
            runs.append(({"level": 7, "init": init, "seed": seed}, str(path)))
    table = {(r["layer"], r["init"]): r for r in sweep_report.layer_table_by_init(runs)}
    assert sorted(table) == [("b1_dw", "he_normal"), ("b1_dw", "normal_std1.0")]
    wide = table[("b1_dw", "normal_std1.0")]
    assert wide["seeds"] == 2 and wide["raw_weight_std"] == pytest.approx(1.5)
    assert wide["raw_weight_std_std"] == pytest.approx(0.5 ** 0.5)  # sample std of 1.0, 2.0
    assert wide["channel_range_ratio"] == pytest.approx(6.0)
    text = sweep_report.layer_table_csv(list(table.values()))
    assert text.splitlines()[0].startswith("level,layer,init,seeds,raw_weight_std,raw_weight_std_std")


def test_rank_correlation_is_spearmans_rho_with_tied_ranks():
    from fnet_tf.analysis.plots import rank_correlation

    assert rank_correlation([1, 10, 100, 1000], [0.9, 0.8, 0.5, 0.2]) == pytest.approx(-1.0)
    # ranks x: 1, 2.5, 2.5, 4 against y: 1, 2, 3, 4 -> rho = 4.5 / sqrt(4.5 * 5)
    assert rank_correlation([1, 5, 5, 9], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)


def test_per_tensor_plot_and_widest_channel_ratio_from_layers_csv(tmp_path):
    from fnet_tf.analysis import plots

    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "layers.csv").write_text(
        "weight_layer,channel_range_ratio\nb0_conv,7\nb1_dw,212\nb1_pw,3\n,\n")
    assert sweep_report.widest_channel_ratio(str(tmp_path)) == ("b1_dw", 212.0)
    assert sweep_report.widest_channel_ratio(str(tmp_path / "nowhere"))[0] == ""
    rows = [{"init": init, "level": 7, "max_channel_ratio": ratio,
             "ptq_per_tensor_int8_accuracy": acc}
            for init, ratio, acc in (("he_normal", 12, 0.81), ("he_normal", 55, 0.79),
                                     ("normal_std1.0", 212, 0.73), ("normal_std1.0", 1605, 0.26))]
    rho = plots.per_tensor_vs_channel_ratio(rows, str(tmp_path / "p.png"), "t")
    assert rho == pytest.approx(-1.0) and (tmp_path / "p.png").stat().st_size > 10_000
    assert plots.per_tensor_vs_channel_ratio(rows[:2], str(tmp_path / "q.png"), "t") is None
    assert not (tmp_path / "q.png").exists()
