#!/usr/bin/env python3
"""Release trained runs into the zoo: ``models/<name>/`` with the INT8 file, card and numbers.

    python tools/release.py --data ../shared/data/cifar10-jpeg.tar.gz \\
        --peer ../shared/peers/mlperf-tiny-ic/resnet8_int8.tflite \\
        factorizenet-l3=sweeps/fnet/runs/factorizenet-l3-s0-he_normal resnet8=runs/resnet8

``NAME=RUN_DIR,RUN_DIR_SEED1,...`` releases the first run's file and measures the others (the
same recipe, other seeds: float and INT8 top-1 on the whole test split), so the card gives the
mean and the sample std over seeds beside the released file's own figures. Where the released
run's directory is gone, ``--add_seeds --data D NAME=RUN_DIR_SEED1[,...]`` measures other seeds'
runs (the card's recipe but for the seed) and adds them to the released card.
    python tools/release.py --retime --peer ../shared/peers/mlperf-tiny-ic/resnet8_int8.tflite

A re-release of the very same INT8 file keeps its float weights (``float_weights.npz``, from
``tools/derive_float_weights.py``); a new file drops them until they are derived again.

Every run must be complete (float, QAT, export, analysis). For each model this measures, once
more and on the whole test split: the INT8 file's top-1 (LiteRT) and its top-1 agreement with
the QAT Keras model; then all released models and the peer are timed interleaved (1 thread),
``--passes`` times (default 3), so each card's latency ratio to the peer is fair: the card shows
the median over passes and each pass's ratio. Cards are generated, never typed.

``--retime`` measures no accuracy and needs no run directory: it times every released file and
the peer interleaved (``--passes`` passes, medians) and each file's ops alone (where the time goes), and renders
every card again, so the zoo's latencies all come from one pass on one machine.

Both end by drawing the whole zoo on one Pareto plot with the peer (``results/zoo/pareto.png``
and ``front.md``: who beats our ResNet-8 on every axis; ``fnet-zoo pareto`` draws it again).
"""
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import flags  # noqa: E402

from fnet_tf.release import front, zoo
from fnet_tf.core import cli
from fnet_tf.core import fileio
from fnet_tf.release import float_weights as zoo_float  # noqa: E402
from fnet_tf.core.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "The dataset the runs were trained on (test split used).")
flags.DEFINE_string("peer", None, "The reference INT8 .tflite timed beside every model.")
flags.DEFINE_string("zoo", None, "Models folder (default: the repo's models/).")
flags.DEFINE_integer("latency_runs", 300, "Timed invokes per model.")
flags.DEFINE_string("cache_dir", None, "Dataset cache directory.")
flags.DEFINE_integer("passes", 3, "Interleaved timing passes: each card's latency and ratio "
                     "to the peer are medians over them (ratios move ~5% between passes).",
                     lower_bound=1)
flags.DEFINE_string("front_out", None, "Where the zoo's Pareto plot and front table go "
                    "(default: results/zoo for the repo's models/, else zoo-front beside --zoo).")
flags.DEFINE_bool("add_seeds", False, "NAME=RUN_DIR[,...] adds other seeds to an already "
                  "released model whose own run directory is gone: the runs must match its "
                  "card's recipe but for the seed; their float and INT8 top-1 are measured and "
                  "the card gives the mean and sample std (the released file is unchanged).")
flags.DEFINE_bool("render_cards", False, "Only render every released card again from its "
                  "metrics.json (after the card's template changed; nothing is measured).")
flags.DEFINE_bool("retime", False, "Only time all released models and the peer again, in one "
                  "pass (and each op alone), and render every card again.")

PLOTS = ("summary.png", "weight_ranges.png", "sqnr.png", "weight_histograms.png",
         "activation_histograms.png", "op_latency.png")


def _parse(argv):
    """[(name, [run_dir, ...])]: the first run is released, the others are its other seeds."""
    pairs = []
    for item in argv[1:]:
        name, sep, run_dirs = item.partition("=")
        run_dirs = run_dirs.split(",")
        if not sep or not name or not all(run_dirs):
            raise UserError(f"bad argument {item!r}: use NAME=RUN_DIR[,OTHER_SEED_RUN_DIR...]")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise UserError(f"bad model name {name!r}: letters, digits, '-' and '_' only")
        pairs.append((name, run_dirs))
    if not pairs:
        raise UserError("nothing to release: pass NAME=RUN_DIR ...")
    return pairs


SPEC_FIELDS = ("model", "level", "width")  # with the recipe: what other seeds must share


def _spec_differences(config, recipe, reference, reference_recipe):
    """What a run (its config and card recipe) does not share with a reference run or card:
    the architecture and the recipe but for the seed."""
    return ([k for k in SPEC_FIELDS if config.get(k) != reference.get(k)]
            + zoo.recipe_differences(reference_recipe, recipe))


def _run_recipe(run):
    return zoo.card_recipe(run.config(), fileio.read_json(run.file("metrics.json"))["float"])


def _check_seeds(name, runs):
    """The runs of one release differ in their seed only (what the card's spread is over)."""
    configs = [run.config() for run in runs]
    first_recipe = _run_recipe(runs[0])
    for run, config in zip(runs[1:], configs[1:]):
        differing = _spec_differences(config, _run_recipe(run), configs[0], first_recipe)
        if differing:
            raise UserError(f"{name}: {run.path} differs from {runs[0].path} in "
                            f"{', '.join(differing)}: other seeds must be the same recipe")
    seeds = [c.get("seed", 0) for c in configs]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{name}: the runs share a seed ({seeds}): pass one run per seed")
    return seeds


def add_seeds(argv):
    """``--add_seeds``: other seeds' figures merged into released cards (no re-release)."""
    from fnet_tf.data import datasets as data_lib

    pairs = _parse(argv)
    if not FLAGS.data:
        raise UserError("--add_seeds needs --data: the test split the other seeds are measured on")
    data_lib.check_source(FLAGS.data)
    checked = []
    for name, run_dirs in pairs:
        card = zoo.metrics(name)  # a UserError naming the zoo when it is not released
        runs = [_check_run(d, analysis=False) for d in run_dirs]
        known = card.get("seed_list") or [card["recipe"].get("seed", 0)]
        for run in runs:
            config = run.config()
            differing = _spec_differences(config, _run_recipe(run), card, card["recipe"])
            if differing:
                raise UserError(f"{name}: {run.path} differs from the released card's recipe in "
                                f"{', '.join(differing)}: other seeds must be the same recipe")
            if config.get("seed", 0) in known:
                raise UserError(f"{name}: seed {config.get('seed', 0)} is already on the card "
                                f"(seeds {known}): pass runs of other seeds")
            known = known + [config.get("seed", 0)]
        checked.append((name, card, runs, known))
    dataset = data_lib.load(FLAGS.data, cache_dir=FLAGS.cache_dir)
    for name, card, runs, seeds in checked:
        if card.get("data") != dataset.source:
            raise UserError(f"{name}: released on {card.get('data')}, not {dataset.source}: "
                            f"pass the --data it was measured on")
        entry = dict(card, **_other_seeds(card, runs, dataset), seed_list=seeds)
        _write_card(os.path.join(zoo.zoo_dir(), name), entry)
        print(f"{name}: INT8 over seeds {seeds}: {zoo.seed_suffix(entry).strip()}")
    print(zoo.table_markdown())
    _write_front()
    return 0


def _check_run(run_dir, analysis=True):
    from fnet_tf.run.rundir import RunDir

    run = RunDir(run_dir)
    for step in ("float", "qat", "export:model_int8.tflite"):
        if not run.verified(step):
            raise UserError(f"{run_dir} has no complete {step} step: finish the run first")
    if analysis and not os.path.isfile(os.path.join(run_dir, "analysis", "metrics.json")):
        raise UserError(f"{run_dir} has no analysis: run python -m fnet_tf.analyze {run_dir}")
    return run


def _agreement(run, content, dataset):
    """Top-1 agreement of the INT8 file (LiteRT) with the QAT Keras model, all test images."""
    import numpy as np

    from fnet_tf.run import artifacts
    from fnet_tf.tflite import convert as export
    from fnet_tf.training.loop import eval_dataset

    model, _ = artifacts.qat_model(run)
    keras_logits = model.predict(eval_dataset(dataset.test, len(dataset.classes))
                                 .map(lambda x, y: x), verbose=0)
    int8_scores = export.predict(content, dataset.test.images)
    return float(np.mean(keras_logits.argmax(1) == int8_scores.argmax(1)))


def _timed_with_peak(contents):
    """Latencies of ``contents`` (the peer last) and the practical int8 peak (GMAC/s).

    ``--passes`` interleaved passes, each timing every model, the peer and the peak probes;
    each latency is the median over passes (``benchmark.median_of_passes``: per-pass p50s
    and ratios to the peer kept), the peak the median of the passes' peaks.
    """
    import numpy as np

    from fnet_tf.tflite import measure as benchmark

    probes = [c for c, _ in benchmark.peak_probes().values()]
    passes, peaks = [], []
    for k in range(FLAGS.passes):
        print(f"timing pass {k + 1}/{FLAGS.passes}: {len(contents)} models and "
              f"{len(probes)} int8 peak probes interleaved (1 thread)", flush=True)
        timed = benchmark.latency(contents + probes, threads=1, runs=FLAGS.latency_runs)
        passes.append(timed[:len(contents)])
        peaks.append(benchmark.peak_gmacs(timed[len(contents):])[0])
    return benchmark.median_of_passes(passes), float(np.median(peaks))


def _latency_fields(lat, peer):
    """A card's latency numbers from ``_timed_with_peak``'s entry of one model and the peer's."""
    return {"latency_ms": lat, "latency_p50_ms": lat["p50"], "peer_latency_p50_ms": peer["p50"],
            "latency_ratio_to_peer": lat["ratio_median"], "latency_passes": len(lat["passes"])}


def _other_seeds(entry, other_runs, dataset):
    """The card's seed fields: float and INT8 (LiteRT, whole test split) top-1 of the other
    seeds' runs after those already on ``entry`` (the released file's own, and any seeds
    added before)."""
    from fnet_tf.tflite import measure as benchmark

    float_top1 = list(entry.get("float_accuracy_seeds", [entry["float_accuracy"]]))
    int8_top1 = list(entry.get("int8_accuracy_seeds", [entry["int8_accuracy"]]))
    for run in other_runs:
        with open(run.file("model_int8.tflite"), "rb") as f:
            int8_top1.append(benchmark.evaluate_tflite(f.read(), dataset.test,
                                                       progress=False)["accuracy_top1"])
        float_top1.append(fileio.read_json(run.file("metrics.json"))["float"]["test_accuracy"])
        print(f"{entry['name']}: other seed {run.path}: INT8 {100 * int8_top1[-1]:.2f}%",
              flush=True)
    from fnet_tf.search.sweep_report import seed_spread

    return seed_spread({"int8_accuracy": int8_top1, "float_accuracy": float_top1})


def _peer_fields(peer):
    """The peer's MACs and file size for every card (the zoo's Pareto plot draws it)."""
    from fnet_tf.tflite import measure as benchmark

    return {"peer_macs": benchmark.graph_stats(peer)["macs"], "peer_size_bytes": len(peer)}


def _write_card(folder, entry):
    """A released model's metrics.json and the card rendered from it (each atomically)."""
    from fnet_tf.release import card as model_card

    fileio.write_json(os.path.join(folder, zoo.METRICS), entry)
    fileio.write_text(os.path.join(folder, zoo.CARD), model_card.card_text(entry))


def _write_front():
    """The zoo's Pareto plot and front table, from every released card (``fnet-zoo pareto``)."""
    default = (os.path.join(os.path.dirname(os.path.abspath(FLAGS.zoo.rstrip("/"))), "zoo-front")
               if FLAGS.zoo else os.path.join(REPO, "results", "zoo"))
    front.write_released(FLAGS.front_out or default)


def retime(argv):
    """Every released model and the peer timed again, interleaved, in ``--passes`` passes."""
    from fnet_tf.tflite import measure as benchmark
    from fnet_tf.analysis import op_latency
    from fnet_tf.analysis.bit_budget import bit_budget

    if len(argv) > 1:
        raise UserError("--retime takes no NAME=RUN_DIR: it re-times every released model")
    names = zoo.names()
    if not names:
        raise UserError(f"no released models in {zoo.zoo_dir()}")
    contents = [open(zoo.load(n), "rb").read() for n in names]
    with open(FLAGS.peer, "rb") as f:
        peer = f.read()
    latencies, peak = _timed_with_peak(contents + [peer])
    machine, peer_fields = benchmark.machine_info(), _peer_fields(peer)
    for name, content, lat in zip(names, contents, latencies):
        timed = op_latency.op_latency(content, threads=1, runs=FLAGS.latency_runs)
        folder = os.path.join(zoo.zoo_dir(), name)
        op_latency.write(timed["ops"], folder, f"{name}: each op timed alone (1 thread)")
        entry = dict(zoo.metrics(name), bit_budget=bit_budget(content)[1],
                     efficiency=benchmark.efficiency(zoo.metrics(name)["macs"], lat, peak),
                     **_latency_fields(lat, latencies[-1]), **peer_fields,
                     machine=machine, latency_by_op=op_latency.summary(timed))
        _write_card(folder, entry)
        print(f"{name}: p50 {lat['p50']:.3f} ms ({entry['latency_ratio_to_peer']:.2f}x the peer)")
    print(zoo.table_markdown())
    _write_front()
    return 0


def _kept_float_weights(model_dir, sha256):
    """{'float_weights': ...} from a released card whose float weights were derived from the
    INT8 file with this ``sha256`` and are still the recorded file, else {}: a re-release of
    the same file (``tools/release.py``) keeps them; a new file must be derived again."""
    path = os.path.join(model_dir, zoo.METRICS)
    weights_path = os.path.join(model_dir, zoo_float.FILE)
    if not (os.path.isfile(path) and os.path.isfile(weights_path)):
        return {}
    old = fileio.read_json(path)
    weights = old.get("float_weights")
    if (weights and old.get("sha256") == sha256
            and fileio.sha256_file(weights_path) == weights.get("sha256")):
        return {"float_weights": weights}
    return {}


def render_cards(argv):
    """Every released card rendered again from its metrics.json, which is left as it is."""
    from fnet_tf.release import card as model_card

    if len(argv) > 1:
        raise UserError("--render_cards takes no NAME=RUN_DIR: it renders every released card")
    names = zoo.names()
    for name in names:
        fileio.write_text(os.path.join(zoo.zoo_dir(), name, zoo.CARD),
                          model_card.card_text(zoo.metrics(name)))
    print(f"rendered {len(names)} cards in {zoo.zoo_dir()}")


def main(argv):
    if FLAGS.zoo:  # every mode reads or writes this zoo (zoo.zoo_dir)
        os.environ["FNET_TF_ZOO"] = FLAGS.zoo
    if FLAGS.add_seeds:
        return add_seeds(argv)
    if FLAGS.render_cards:
        return render_cards(argv)
    if FLAGS.retime:
        if not FLAGS.peer or not os.path.isfile(FLAGS.peer):
            raise UserError("--retime needs --peer, an existing reference .tflite")
        return retime(argv)
    pairs = _parse(argv)
    if not FLAGS.data or not FLAGS.peer:
        raise UserError("--data and --peer are required (the test split, the reference model)")
    if not os.path.isfile(FLAGS.peer):
        raise UserError(f"--peer {FLAGS.peer!r} does not exist")
    runs = [(name, dirs[0], [_check_run(d, analysis=d == dirs[0]) for d in dirs]) for name, dirs in pairs]
    for name, run_dir, seed_runs in runs:
        size = (seed_runs[0].config() or {}).get("image_size")
        if size and list(size) != [32, 32]:
            raise UserError(f"{name}: {run_dir} was trained at {size[0]}x{size[1]}; the zoo's "
                            f"cards compare CIFAR-10 models at 32x32 with the peer on one test "
                            f"split: share a model of another size as its run's model_int8.tflite")
    seeds = {name: _check_seeds(name, seed_runs) for name, _, seed_runs in runs}
    from fnet_tf.tflite import measure as benchmark
    from fnet_tf.data import datasets as data_lib
    from fnet_tf.release import card as model_card
    from fnet_tf.analysis.bit_budget import bit_budget
    from fnet_tf.search.sweep_report import lowest_sqnr_layer

    data_lib.check_source(FLAGS.data)
    dataset = data_lib.load(FLAGS.data, cache_dir=FLAGS.cache_dir)
    with open(FLAGS.peer, "rb") as f:
        peer = f.read()
    peer_accuracy = benchmark.evaluate_tflite(peer, dataset.test, progress=False)["accuracy_top1"]
    peer_fields = _peer_fields(peer)
    entries, contents = [], []
    for name, run_dir, seed_runs in runs:
        run = seed_runs[0]
        with open(os.path.join(run_dir, "model_int8.tflite"), "rb") as f:
            content = f.read()
        config = run.config()
        run_metrics = fileio.read_json(os.path.join(run_dir, "metrics.json"))
        analysis = fileio.read_json(os.path.join(run_dir, "analysis", "metrics.json"))
        accuracy = benchmark.evaluate_tflite(content, dataset.test, progress=False)
        float_info = run_metrics["float"]
        layer, sqnr = lowest_sqnr_layer(run_dir)
        entries.append({
            "name": name, "model": config["model"], "level": config["level"],
            "width": config["width"],
            "params": analysis["params"], "macs": analysis["macs"], "size_bytes": len(content),
            "input_shape": [int(v) for v in benchmark.graph_stats(content)["input"]["shape"]],
            "float_accuracy": float_info["test_accuracy"],
            "int8_accuracy": accuracy["accuracy_top1"], "int8_top5": accuracy["accuracy_top5"],
            "qat_keras_accuracy": run_metrics.get("qat", {}).get("test_accuracy"),
            "int8_drop": float_info["test_accuracy"] - accuracy["accuracy_top1"],
            "keras_agreement": _agreement(run, content, dataset),
            "num_test_images": len(dataset.test), "data": dataset.source,
            "classes": list(dataset.classes), "min_sqnr_layer": layer, "min_sqnr_db": sqnr,
            "float_trained_in": float_info.get("trained_in"),
            "recipe": zoo.card_recipe(config, float_info),
            "peer": os.path.basename(FLAGS.peer), "peer_accuracy": peer_accuracy,
            **peer_fields,
            "sha256": fileio.sha256_file(os.path.join(run_dir, "model_int8.tflite")),
            "source_run": os.path.abspath(run_dir)})
        entries[-1]["bit_budget"] = bit_budget(content)[1]
        if len(seed_runs) > 1:
            entries[-1].update(_other_seeds(entries[-1], seed_runs[1:], dataset),
                               seed_list=seeds[name])
        if analysis.get("latency_by_op"):
            entries[-1]["latency_by_op"] = analysis["latency_by_op"]
        contents.append(content)
        print(f"{name}: INT8 {100 * accuracy['accuracy_top1']:.2f}%, agreement "
              f"{100 * entries[-1]['keras_agreement']:.2f}%", flush=True)
    latencies, peak = _timed_with_peak(contents + [peer])
    machine = benchmark.machine_info()
    for entry, lat, (name, run_dir, _) in zip(entries, latencies, runs):
        entry.update(model_card.kept_arm64_check(os.path.join(zoo.zoo_dir(), name), entry))
        entry.update(_kept_float_weights(os.path.join(zoo.zoo_dir(), name), entry["sha256"]))
        entry.update(efficiency=benchmark.efficiency(entry["macs"], lat, peak))
        entry.update(**_latency_fields(lat, latencies[-1]), machine=machine)
        target = os.path.join(zoo.zoo_dir(), name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with fileio.atomic_dir(target) as tmp:
            shutil.copyfile(os.path.join(run_dir, "model_int8.tflite"),
                            os.path.join(tmp, zoo.MODEL_FILE))
            for extra in PLOTS + ("layers.csv", "op_latency.csv"):
                src = os.path.join(run_dir, "analysis", extra)
                if os.path.isfile(src):
                    shutil.copyfile(src, os.path.join(tmp, extra))
            if "float_weights" in entry:
                shutil.copyfile(os.path.join(target, zoo_float.FILE),
                                os.path.join(tmp, zoo_float.FILE))
            fileio.write_json(os.path.join(tmp, zoo.METRICS), entry)
            fileio.write_text(os.path.join(tmp, zoo.CARD), model_card.card_text(entry))
        print(f"released {target}: INT8 {100 * entry['int8_accuracy']:.2f}%, "
              f"p50 {lat['p50']:.3f} ms ({entry['latency_ratio_to_peer']:.2f}x the peer)")
    print(zoo.table_markdown())
    _write_front()
    return 0


if __name__ == "__main__":
    cli.run(main)
