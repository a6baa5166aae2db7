"""fnet_tf.tune: recipe tuning on the validation split, never the test split."""
import csv
import json
import os

import pytest

from conftest import last_line, run_module


def test_plan_is_the_base_then_one_change_at_a_time():
    from fnet_tf.search.recipe_grid import plan_trials

    trials = plan_trials(["weight_decay=5e-3"], ["label_smoothing=0.1",
                                                 "weight_decay=2.5e-3,5e-3,1e-2", "cutout=8"])
    assert [t[0] for t in trials] == ["base", "label_smoothing=0.1", "weight_decay=0.0025",
                                      "weight_decay=0.01", "cutout=8"]
    assert trials[0][3] == {"weight_decay": 5e-3}
    assert trials[1][3] == {"weight_decay": 5e-3, "label_smoothing": 0.1}
    assert trials[4][3] == {"weight_decay": 5e-3, "cutout": 8} and isinstance(trials[4][2], int)


def test_a_distilled_base_recipe_is_tuned_like_any_other():
    from fnet_tf.search.recipe_grid import plan_trials

    trials = plan_trials(["teacher=runs/big", "kd_alpha=0.5", "kd_temperature=4"],
                         ["cutout=8", "kd_alpha=0", "teacher=runs/other/"])
    assert trials[0][3] == {"teacher": "runs/big", "kd_alpha": 0.5, "kd_temperature": 4.0}
    assert trials[1][3]["cutout"] == 8 and trials[1][3]["teacher"] == "runs/big"
    assert trials[2][3]["kd_alpha"] == 0.0  # the same recipe, taught nothing
    assert trials[3][0] == "teacher=other"  # a trial's folder name, not a path
    assert trials[3][3]["teacher"] == "runs/other/"


@pytest.mark.parametrize("vary, message", [
    ("momentum=0.8", "not a tunable setting"),
    ("lr", "use SETTING=VALUE"),
    ("cutout=big", "cutout takes int values"),
])
def test_bad_settings_are_named(vary, message):
    from fnet_tf.core.errors import UserError
    from fnet_tf.search.recipe_grid import plan_trials

    with pytest.raises(UserError, match=message):
        plan_trials([], [vary])


def test_tuning_scores_validation_only_and_resumes(tmp_path, tiny_archive):
    out = str(tmp_path / "tune")
    args = ["-m", "fnet_tf.tune", "--level", "7", "--data", tiny_archive, "--epochs", "2",
            "--val_split", "20", "--out", out, "--vary", "label_smoothing=0.1"]
    first = run_module(args)
    assert first.returncode == 0, first.stderr[-2000:]
    for trial in ("base", "label_smoothing=0.1"):
        with open(os.path.join(out, "trials", trial, "metrics.json")) as f:
            metrics = json.load(f)["float"]
        assert "val_accuracy" in metrics and metrics["num_val_images"] == 20
        assert not any(k.startswith("test") for k in metrics)  # the test split is never scored
        with open(os.path.join(out, "trials", trial, "config.json")) as f:
            config = json.load(f)
        assert config["label_smoothing"] == (0.1 if trial != "base" else 0.0)
    with open(os.path.join(out, "tune.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {r["trial"] for r in rows} == {"base", "label_smoothing=0.1"}
    assert all(r["epochs"] == "2" for r in rows)
    assert float(rows[0]["val_accuracy"]) >= float(rows[1]["val_accuracy"])  # ranked
    with open(os.path.join(out, "chosen.json")) as f:
        chosen = json.load(f)
    assert chosen["trial"] == rows[0]["trial"] and chosen["finished_trials"] == 2
    assert os.path.getsize(os.path.join(out, "val_curves.png")) > 1000
    with open(os.path.join(out, "chosen.flags")) as f:
        assert f.read() == "".join(f"{flag}\n" for flag in chosen["train_flags"])
    again = run_module(args)
    assert again.returncode == 0
    assert again.stdout.count("complete, reusing") == 2 and "training 2 epochs" not in again.stdout


def test_tune_errors_are_one_line(tmp_path, tiny_archive):
    for args, message in [
        (["--out", str(tmp_path / "t"), "--val_split", "0", "--data", tiny_archive],
         "--val_split must be positive"),
        (["--out", str(tmp_path / "t"), "--report"], "no finished trial"),
        (["--data", tiny_archive], "--out is required"),
        (["--out", str(tmp_path / "t"), "--data", tiny_archive, "--vary", "lr=fast"],
         "lr takes float values"),
    ]:
        result = run_module(["-m", "fnet_tf.tune", *args])
        assert result.returncode == 2 and message in last_line(result.stderr), result.stderr
        assert "Traceback" not in result.stderr


def test_train_refuses_to_skip_the_test_split_without_a_validation_split(tmp_path, tiny_archive):
    result = run_module(["-m", "fnet_tf.train", "--data", tiny_archive, "--epochs", "1",
                         "--val_split", "0", "--evaluate_test=false",
                         "--run_dir", str(tmp_path / "r")])
    assert result.returncode == 2 and "pass --val_split N" in last_line(result.stderr)


def test_the_search_space_is_parsed_and_its_mistakes_named():
    from fnet_tf.core.errors import UserError
    from fnet_tf.search.recipe_grid import parse_space

    space = parse_space(["lr=0.02:0.5:log", "batch_size=64:256", "optimizer=sgd,adamw"])
    assert (space["lr"].low, space["lr"].high, space["lr"].log) == (0.02, 0.5, True)
    assert isinstance(space["batch_size"].low, int) and not space["batch_size"].log
    assert space["optimizer"].choices == ("sgd", "adamw")
    for item, message in [("lr=0.5:0.02", "LOW < HIGH"), ("lr=0:1:log", "LOW > 0"),
                          ("momentum=0:1", "not a tunable"), ("optimizer=a:b", "number setting"),
                          ("lr=0.1", "one choice"), ("lr=0.1:0.2:ln", "LOW:HIGH:log")]:
        with pytest.raises(UserError, match=message):
            parse_space([item])


def test_a_tpe_search_samples_inside_its_space_scores_validation_and_resumes(tmp_path,
                                                                              tiny_archive):
    pytest.importorskip("optuna")
    out = tmp_path / "search"
    args = ["-m", "fnet_tf.tune", "--level", "3", "--width", "0.25", "--data", tiny_archive,
            "--epochs", "1", "--val_split", "20", "--base", "batch_size=8", "--out", str(out),
            "--search", "tpe", "--space", "lr=0.01:0.3:log", "--space", "label_smoothing=0:0.2",
            "--trials", "3", "--trials_at_once", "2"]
    first = run_module(args)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    record = json.loads((out / "search_trials.json").read_text())
    assert sorted(record) == ["search-000", "search-001", "search-002"]
    for params in record.values():
        assert 0.01 <= params["lr"] <= 0.3 and 0 <= params["label_smoothing"] <= 0.2
    assert len({round(p["lr"], 6) for p in record.values()}) == 3  # sampled, not repeated
    for name, params in record.items():
        config = json.loads((out / "trials" / name / "config.json").read_text())
        assert config["lr"] == pytest.approx(params["lr"]) and config["batch_size"] == 8
        metrics = json.loads((out / "trials" / name / "metrics.json").read_text())["float"]
        assert not any(k.startswith("test") for k in metrics)  # validation only
    with open(out / "tune.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert "Optuna's TPE sampler" in (out / "tune.md").read_text()

    more = run_module(args[:-3] + ["4", "--trials_at_once", "2"])  # one trial more
    assert more.returncode == 0, more.stderr[-2000:]
    assert more.stdout.count(": training 1 epoch") == 1, more.stdout[-2000:]
    assert len(json.loads((out / "search_trials.json").read_text())) == 4
    other = run_module(args[:-10] + ["--search", "tpe", "--space", "lr=0.5:0.9", "--trials", "5"])
    assert other.returncode == 2 and "another --space" in last_line(other.stderr)
