"""Releasing runs into the zoo and loading them back."""
import json
import os

import pytest

from conftest import REPO, last_line, run_module
from fnet_tf.release import zoo
from fnet_tf.core import fileio
from fnet_tf.core.errors import UserError

PEER = os.path.join(REPO, "..", "shared", "peers", "mlperf-tiny-ic", "resnet8_int8.tflite")


def test_release_then_load(qat_run, tiny_archive, tmp_path, monkeypatch):
    if not os.path.isfile(PEER):
        pytest.skip("the MLPerf Tiny peer model is not beside the repo")
    for args in (["export/to_tflite.py", qat_run, "--check_images", "20"],
                 ["-m", "fnet_tf.analyze", qat_run, "--tool_check=false", "--latency_runs", "10"]):
        result = run_module(args)
        assert result.returncode == 0, result.stderr[-2000:]
    models = tmp_path / "models"
    released = run_module(["tools/release.py", "--data", tiny_archive, "--peer", PEER,
                           "--zoo", str(models), "--latency_runs", "10", f"tiny-l3={qat_run}"])
    assert released.returncode == 0, released.stderr[-3000:]
    folder = models / "tiny-l3"
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("float_accuracy", "int8_accuracy", "int8_drop", "keras_agreement", "macs",
                "params", "size_bytes", "latency_p50_ms", "peer_latency_p50_ms"):
        assert metrics[key] == metrics[key], key  # present and not NaN
    assert 0 <= metrics["keras_agreement"] <= 1 and metrics["level"] == 3
    card = (folder / "card.md").read_text()
    assert "QAT INT8 top-1" in card and "run_tflite.py" in card and "ratio" in card
    # where the time goes: the analysis's per-op timing travels with the release
    assert "| where the time goes | " in card and "op_latency.png" in card
    assert (folder / "op_latency.png").exists() and (folder / "op_latency.csv").exists()
    assert "lr " in zoo.table_markdown([metrics])
    # the whole zoo on one Pareto plot with the peer, beside the zoo folder
    assert metrics["peer_macs"] > 12e6 and metrics["peer_size_bytes"] == os.path.getsize(PEER)
    assert (tmp_path / "zoo-front" / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert "| tiny-l3 |" in (tmp_path / "zoo-front" / "front.md").read_text()

    # --retime: all released files timed again (3 interleaved passes, medians), cards rendered again
    before = metrics["latency_p50_ms"]
    retimed = run_module(["tools/release.py", "--retime", "--peer", PEER, "--zoo", str(models),
                          "--latency_runs", "10", "--passes", "3"])
    assert retimed.returncode == 0, retimed.stderr[-2000:]
    after = json.loads((folder / "metrics.json").read_text())
    ratios = [p["ratio_to_peer"] for p in after["latency_ms"]["passes"]]
    assert len(ratios) == 3 and after["latency_ratio_to_peer"] == sorted(ratios)[1]
    assert "medians of 3 passes" in (folder / "card.md").read_text()
    assert after["latency_p50_ms"] != before and after["int8_accuracy"] == metrics["int8_accuracy"]
    assert f"{after['latency_p50_ms']:.3f} ms" in (folder / "card.md").read_text()
    same_seed = run_module(["tools/release.py", "--data", tiny_archive, "--peer", PEER, "--zoo",
                            str(models), f"tiny-l3={qat_run},{qat_run}"])
    assert same_seed.returncode == 2 and "share a seed" in last_line(same_seed.stderr)
    for args, needle in ((["--retime", "--zoo", str(models)], "--retime needs --peer"),
                         (["--retime", "--peer", PEER, "--zoo", str(tmp_path / "none")],
                          "no released models")):
        bad = run_module(["tools/release.py", *args])
        assert bad.returncode == 2 and needle in last_line(bad.stderr), bad.stderr[-1000:]

    # --add_seeds: another seed's run joins the released card (its own run need not exist)
    seed1 = str(tmp_path / "seed1")
    trained = run_module(["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "3",
                          "--width", "0.25", "--data", tiny_archive, "--epochs", "3",
                          "--qat_epochs", "2", "--batch_size", "8", "--val_split", "0",
                          "--seed", "1", "--run_dir", seed1, "--verbose", "0"])
    assert trained.returncode == 0, trained.stderr[-2000:]
    exported = run_module(["export/to_tflite.py", seed1, "--check_images", "20"])
    assert exported.returncode == 0, exported.stderr[-2000:]
    add = ["tools/release.py", "--add_seeds", "--data", tiny_archive, "--zoo", str(models)]
    added = run_module(add + [f"tiny-l3={seed1}"])
    assert added.returncode == 0, added.stderr[-2000:]
    seeded = json.loads((folder / "metrics.json").read_text())
    assert seeded["seed_list"] == [0, 1] and seeded["seeds"] == 2
    assert seeded["int8_accuracy_seeds"][0] == metrics["int8_accuracy"]
    assert seeded["sha256"] == metrics["sha256"]  # the released file is unchanged
    assert "this file is seed 0" in (folder / "card.md").read_text()
    again = run_module(add + [f"tiny-l3={seed1}"])
    assert again.returncode == 2 and "seed 1 is already on the card" in last_line(again.stderr)

    # float weights derived from the released file; a re-release of the same file keeps them
    derived = run_module(["tools/derive_float_weights.py", "--data", tiny_archive, "--zoo",
                          str(models), "--calibration_images", "40"])
    assert derived.returncode == 0, derived.stderr[-2000:]
    weights = json.loads((folder / "metrics.json").read_text())["float_weights"]
    assert weights["test_images"] == 80 and 0 <= weights["int8_agreement"] <= 1
    assert weights["sha256"] == fileio.sha256_file(str(folder / "float_weights.npz"))
    assert 'fnet_tf.zoo.keras_model("tiny-l3")' in (folder / "card.md").read_text()
    rereleased = run_module(["tools/release.py", "--data", tiny_archive, "--peer", PEER, "--zoo",
                             str(models), "--latency_runs", "10", "--passes", "1",
                             f"tiny-l3={qat_run}"])
    assert rereleased.returncode == 0, rereleased.stderr[-2000:]
    assert json.loads((folder / "metrics.json").read_text())["float_weights"] == weights
    assert fileio.sha256_file(str(folder / "float_weights.npz")) == weights["sha256"]

    monkeypatch.setenv("FNET_TF_ZOO", str(models))
    assert zoo.load("tiny-l3") == str(folder / "model_int8.tflite")
    assert zoo.keras_model("tiny-l3", num_classes=3).output_shape == (None, 3)
    assert zoo.names() == ["tiny-l3"] and "tiny-l3" in zoo.table_markdown()
    with pytest.raises(UserError, match="tiny-l3"):
        zoo.load("nope")
    listing = run_module(["-m", "fnet_tf.zoo", "list"], env={"FNET_TF_ZOO": str(models)})
    assert listing.returncode == 0 and "tiny-l3" in listing.stdout


def test_other_seeds_must_match_the_cards_recipe_but_for_the_seed():
    card = {"lr": 0.2, "qat_scheme": "int8", "seed": 0}  # released before qat_options existed
    assert zoo.recipe_differences(card, {"lr": 0.2, "qat_scheme": "int8", "seed": 1,
                                         "qat_options": {}}) == []
    assert zoo.recipe_differences(card, {"lr": 0.1, "qat_scheme": "int8", "seed": 1,
                                         "qat_options": {"fraction": 0.6}}) == ["lr", "qat_options"]
    assert zoo.recipe_differences(card, {"lr": 0.2, "cutout": 8}) == ["cutout"]
    # cards from before the optimizer and the QAT recipe were recorded: SGD, finetune
    assert zoo.recipe_differences(card, {"optimizer": "sgd", "qat_recipe": "finetune"}) == []
    assert zoo.recipe_differences(card, {"optimizer": "adamw", "qat_recipe": "statassist"}) == [
        "optimizer", "qat_recipe"]


def test_release_refuses_an_unfinished_run(tmp_path):
    result = run_module(["tools/release.py", "--data", "d", "--peer", PEER, f"x={tmp_path}"])
    assert result.returncode == 2 and "no complete float step" in last_line(result.stderr)


def test_released_models_load_and_the_readme_table_is_current():
    names = zoo.names()
    if not names:
        pytest.skip("no released models")
    for name in names:
        m = zoo.metrics(name)
        assert open(zoo.load(name), "rb").read(8)[4:8] == b"TFL3"
        assert m["int8_accuracy"] == pytest.approx(m["float_accuracy"] - m["int8_drop"])
    result = run_module(["tools/readme_table.py", "--check"])
    assert result.returncode == 0, result.stderr


def test_a_card_with_other_seeds_shows_their_mean_and_sample_std():
    from fnet_tf.release import card as model_card
    from fnet_tf.search.sweep_report import seed_spread

    fields = seed_spread({"int8_accuracy": [0.80, 0.82], "float_accuracy": [0.81, 0.85]})
    assert fields["seeds"] == 2 and fields["int8_accuracy_seeds"] == [0.80, 0.82]
    assert fields["int8_accuracy_mean"] == pytest.approx(0.81)
    # two seeds: the sample std is the gap / sqrt 2
    assert fields["int8_accuracy_seed_std"] == pytest.approx(0.02 / 2 ** 0.5)
    assert fields["float_accuracy_seed_std"] == pytest.approx(0.04 / 2 ** 0.5)
    note = model_card.seed_note(dict(fields, seed_list=[0, 1]))
    assert "this file is seed 0" in note and "INT8 81.00% ± 1.41" in note
    assert "float 83.00% ± 2.83" in note
    assert zoo.seed_suffix(fields) == " (mean 81.00 ± 1.41, 2 seeds)"
    assert model_card.seed_note({}).startswith("one training seed") and zoo.seed_suffix({}) == ""


def test_every_registered_model_is_named_for_what_it_is_in_its_card():
    from fnet_tf.release import card as model_card
    from fnet_tf.arch.architectures import list_models

    for name in list_models():
        line = model_card.description({"model": name, "level": 0})
        assert line.startswith(f"{name} level 0: ")
        assert ("FactorizeNet" in line) == (name == "factorizenet"), line


def _card(name, model, accuracy, macs, ratio, size, **extra):
    return {"name": name, "model": model, "level": 0, "width": 1.0, "int8_accuracy": accuracy,
            "macs": macs, "latency_ratio_to_peer": ratio, "latency_p50_ms": 0.1 * ratio,
            "size_bytes": size, "peer": "peer.tflite", "peer_accuracy": 0.75,
            "recipe": {"qat_scheme": "int8"}, "data": "tiny", **extra}


def test_zoo_front_names_who_beats_resnet8_on_every_axis(tmp_path):
    from fnet_tf.release import front as zoo_front

    rows = [_card("resnet8", "resnet8", 0.8369, 12_500_000, 1.02, 95_571,
                  peer_macs=12_501_632, peer_size_bytes=96_000),
            _card("better", "factorizenet", 0.85, 10_000_000, 0.95, 90_000,
                  seeds=2, int8_accuracy_mean=0.848, int8_accuracy_seed_std=0.004),
            _card("slower", "frostnet_cifar", 0.86, 11_000_000, 1.30, 80_000),
            _card("tie", "factorizenet", 0.8369, 5_000_000, 0.50, 50_000, level="0_3_7")]
    points = zoo_front.entries(rows)
    assert [p["family"] for p in points] == ["ResNet-8 (ours)", "FactorizeNet, one level",
                                             "FrostNet-Small, 32x32 (ours)",
                                             "FactorizeNet, per-stage design"]
    assert zoo_front.family(dict(rows[1], width=0.5)) == "FactorizeNet, one level, other width"
    assert zoo_front.family(dict(rows[1], width="0.5,1,1")) == "FactorizeNet, per-stage design"
    base = points[0]
    assert zoo_front.beats(points[1], base) == []
    assert zoo_front.beats(points[2], base) == ["latency"]
    assert zoo_front.beats(points[3], base) == ["accuracy"]  # equal is not better
    # where both have several seeds, the file's win must hold for the seeds' means too
    seeded_base = dict(base, seeds=2, accuracy_mean=0.845)
    assert zoo_front.beats(points[1], seeded_base) == []
    assert zoo_front.beats(points[1], dict(seeded_base, accuracy_mean=0.848)) == [
        "accuracy (seed means)"]
    assert zoo_front.beats(dict(points[1], seeds=1), dict(seeded_base, accuracy_mean=0.9)) == []
    # the means set against twice the standard error of their difference
    three = dict(seeded_base, seeds=3, accuracy_mean=0.8482, accuracy_std=0.0045)
    ahead = dict(points[1], seeds=3, accuracy_mean=0.8502, accuracy_std=0.0021)
    assert zoo_front.seed_comparison(ahead, three) == (  # 2 sqrt(.21^2/3 + .45^2/3) = 0.57
        "seed means +0.20 pts (3 vs 3 seeds), 2 SE 0.57: a tie within 2 SE")
    assert zoo_front.seed_comparison(dict(ahead, accuracy_mean=0.8562), three).endswith(
        "+0.80 pts (3 vs 3 seeds), 2 SE 0.57: ahead by more than 2 SE")
    assert zoo_front.seed_comparison(dict(ahead, accuracy_mean=0.8402), three).endswith(
        "behind by more than 2 SE")
    assert zoo_front.seed_comparison(dict(ahead, seeds=1), three) is None
    assert zoo_front.peer_entry(rows) == {"name": "peer.tflite", "accuracy": 0.75,
                                          "latency_ratio": 1.0, "macs": 12_501_632,
                                          "size_bytes": 96_000}
    assert zoo_front.write(str(tmp_path), rows) == ["pareto.png", "front.md"]
    assert (tmp_path / "pareto.png").read_bytes().startswith(b"\x89PNG")
    table = (tmp_path / "front.md").read_text()
    assert ("| better | FactorizeNet, one level | 85.00% (mean 84.80 ± 0.40, 2 seeds) | 10.00 "
            "| 0.95x |") in table
    assert "**nothing: better on every axis**" in table.split("| better |")[1].splitlines()[0]
    assert "| peer: peer.tflite | MLPerf Tiny | 75.00% | 12.50 | 1.00x | 93.8 |" in table


def test_a_distilled_model_is_judged_against_the_resnet8_distilled_from_the_same_teacher():
    from fnet_tf.release import front as zoo_front

    plain = {"qat_scheme": "int8", "float_epochs": 80}
    taught = dict(plain, teacher="big", kd_alpha=0.5)
    rows = [_card("resnet8", "resnet8", 0.84, 12_500_000, 1.0, 95_000, recipe=plain),
            _card("student", "factorizenet", 0.85, 10_000_000, 0.7, 85_000, recipe=taught),
            _card("resnet8-kd", "resnet8", 0.86, 12_500_000, 1.0, 95_000, recipe=taught),
            _card("other-teacher", "factorizenet", 0.87, 10_000_000, 0.7, 85_000,
                  recipe=dict(taught, teacher="other"))]
    points = zoo_front.entries(rows)
    # better than the plain resnet8, but not than the one that had the same teacher
    assert zoo_front.beats(points[1], points[0]) == []
    assert zoo_front.baseline_for(points[1], points) is points[2]
    assert zoo_front.verdict(points[1], points) == "accuracy (vs resnet8-kd)"
    assert zoo_front.verdict(points[2], points) == "-"
    assert zoo_front.verdict(points[3], points) == (
        "not compared: no ResNet-8 released with its training (80 epochs, distilled from other)")
    # a teacher at alpha 0 taught nothing: judged against the plain resnet8
    untaught = zoo_front.entries([dict(rows[1], recipe=dict(taught, kd_alpha=0.0))])[0]
    assert zoo_front.baseline_for(untaught, points) is points[0]
    assert zoo_front.verdict(untaught, points) == "**nothing: better on every axis**"
    # one trained longer has no ResNet-8 trained as long to meet
    longer = zoo_front.entries([dict(rows[1], recipe=dict(plain, float_epochs=200))])[0]
    assert zoo_front.verdict(longer, points).startswith("not compared: no ResNet-8 released "
                                                        "with its training (200 epochs)")


def test_the_cards_recipe_sentence_says_what_the_recorded_recipe_did():
    from fnet_tf.release import card as model_card

    old = {"lr": 0.2, "warmup_epochs": 2.0, "weight_decay": 0.005, "batch_size": 128,
           "label_smoothing": 0.0, "val_split": 5000}  # a card from before these were recorded
    text = model_card.recipe_text(old)
    assert text.startswith("SGD Nesterov (momentum 0.9), lr 0.2, linear warm-up 2.0 epochs "
                           "(capped at 20% of the phase) then cosine to 0, ")
    assert "pad-4 crop + flip, label smoothing 0.0" in text and "cutout" not in text
    assert "distilled" not in text
    new = dict(old, optimizer="adamw_gradboost", schedule="constant", cutout=8,
               teacher="frostnet_cifar-e80", kd_alpha=0.5, kd_temperature=4.0)
    text = model_card.recipe_text(new)
    assert text.startswith("AdamW + GradBoost, lr 0.2, linear warm-up 2.0 epochs (capped at "
                           "20% of the phase) then constant, ")
    assert "pad-4 crop + flip + cutout 8 px" in text
    assert text.endswith(", distilled from `frostnet_cifar-e80` (alpha 0.5, temperature 4)")
    ramp = model_card.recipe_text(dict(old, warmup="ramp", warmup_epochs=5.0))
    assert "the first part of a 5.0-epoch linear ramp (no decay)" in ramp
    # the card's recipe names the teacher, not the releasing machine's path
    recipe = zoo.card_recipe({"lr": 0.1, "teacher": "/home/x/sweeps/teachers/runs/t-e80/",
                              "kd_alpha": 0.5}, {"epochs": 5})
    assert recipe["teacher"] == "t-e80" and recipe["float_epochs"] == 5
    assert zoo.recipe_summary(dict(recipe, float_epochs=200, cutout=8)) == (
        "lr 0.1, 200 epochs, cutout 8, distilled from t-e80")
    assert zoo.recipe_summary({"lr": 0.2, "float_epochs": 80}) == "lr 0.2, 80 epochs"
    assert model_card.qat_recipe_note({}) == ""
    assert "`statassist`" in model_card.qat_recipe_note({"qat_recipe": "statassist"})
