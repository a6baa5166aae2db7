"""Latency before training: a design space of per-stage levels and widths, timed untrained.

    python -m fnet_tf.sweep --design_space "levels=0-7 per stage; width=0.75,1,1.25" \\
        --out sweeps/ds --data ../shared/data/cifar10-jpeg.tar.gz \\
        --peer ../shared/peers/mlperf-tiny-ic/resnet8_int8.tflite --max_macs 12.5e6

Every (per-stage level, width) of the space is built as a spec and costed analytically; specs
that build the same network are counted once; budgets (``--max_macs``, ``--max_params``)
prune the rest before anything is converted, and at most ``--max_candidates`` survivors go on:
spread evenly over their MACs, or, with ``--latency_probes N``, chosen by a latency model
(``fnet_tf.search.latency_model``) fitted on N designs timed first (those predicted no slower than
1.1x the peer, the most MACs first, then the predicted front). Each is built with its initial weights, converted to a
fully-int8 file calibrated on ``--calibration_images`` training images, and all are timed in
one interleaved pass with the peer (``fnet_tf.tflite.measure.latency``, 1 thread). Nothing is
trained: a trained model has the same graph, so the same latency (``--with_released`` times
the zoo's trained files of the same specs in the pass to show it). Writes
``design_space.csv``, ``design_space.md`` (the MACs/latency Pareto front) and
``design_space.png``; ``python -m fnet_tf.sweep --levels front --out DIR`` then trains only
the front (``--levels capacity_front``: the designs no slower than the peer with the most MACs
at each latency, the ones that can beat it on every axis).
"""
import itertools
import os

from fnet_tf.analysis import plots
from fnet_tf.arch import architectures
from fnet_tf.arch.architectures import parse_width, width_text
from fnet_tf.arch.spec import summarize
from fnet_tf.core import backend, fileio
from fnet_tf.core.errors import UserError
from fnet_tf.data import datasets as data_lib
from fnet_tf.quantization.schemes import get_scheme
from fnet_tf.release import zoo
from fnet_tf.search import latency_model
from fnet_tf.tflite import convert as export
from fnet_tf.tflite import measure as benchmark

COLUMNS = ("model", "level", "width", "spec", "macs", "params", "size_bytes", "latency_p50_ms",
           "latency_ratio_to_peer", "predicted_ratio_to_peer", "on_front", "on_capacity_front")
TABLE = "design_space.csv"


def parse_space(text, model="factorizenet"):
    """``levels=0-7 per stage; width=0.75,1,1.25`` -> (per-stage level lists, widths).

    ``levels=A-B`` or ``levels=0,3,7`` (each stage takes any of them, "per stage" is implied);
    ``stages=...`` is not needed: the model's stage count decides. ``width=`` defaults to 1;
    ``width=0.5,0.75,1 per stage`` lets each stage take any of them (``--width`` values such
    as ``'0.5,1,1'``), otherwise one multiplier serves every stage."""

    levels, widths, widths_per_stage = None, [1.0], False
    for part in filter(None, (p.strip() for p in text.replace("\n", ";").split(";"))):
        key, sep, value = part.partition("=")
        if key.strip() == "width" and "per stage" in value:
            widths_per_stage = True
        value = value.replace("per stage", "").strip()
        if not sep or key.strip() not in ("levels", "width"):
            raise UserError(f"bad --design_space part {part!r}: use levels=0-7 per stage; "
                            f"width=0.75,1,1.25")
        try:
            if key.strip() == "levels":
                if "-" in value:
                    low, high = (int(v) for v in value.split("-"))
                    levels = list(range(low, high + 1))
                else:
                    levels = [int(v) for v in value.split(",")]
            else:
                widths = [float(v) for v in value.split(",")]
        except ValueError:
            raise UserError(f"bad --design_space value in {part!r}: integers for levels, numbers "
                            f"for width") from None
    if not levels:
        raise UserError("--design_space needs levels=..., e.g. levels=0-7 per stage")
    base = architectures.model_spec(model, 0)
    stages = architectures.stage_indices(base)[-1] + 1
    top = base.meta["max_level"]
    if max(levels) > top or min(levels) < 0:
        raise UserError(f"--design_space levels must be within 0-{top} for {model}")
    if not all(w > 0 for w in widths):
        raise UserError("--design_space widths must be positive")
    if widths_per_stage:  # every stage takes any of the widths; uniform ones keep one number
        widths = [combo[0] if len(set(combo)) == 1 else architectures.parse_width(combo)
                  for combo in itertools.product(widths, repeat=stages)]
    return [list(levels)] * stages, widths


def candidates(model, per_stage, widths, max_macs=None, max_params=None, image_size=None):
    """Analytic rows of every distinct network in the space within the budgets, for
    ``image_size`` inputs (default 32x32)."""

    seen, rows = set(), []
    for width in widths:
        top = architectures.model_spec(model, 0, width).meta["max_level"]
        # uniform levels first, so a network that one level builds keeps that level's name
        combos = sorted(itertools.product(*per_stage), key=lambda c: len(set(c)) > 1)
        for combo in combos:
            combo = tuple(min(lvl, top) for lvl in combo)  # above top: depthwise, the same net
            level = architectures.parse_level(combo) if len(set(combo)) > 1 else combo[0]
            spec = architectures.model_spec(model, level, width, image_size)
            if spec.blocks in seen:  # e.g. levels above a stage's depthwise point
                continue
            seen.add(spec.blocks)
            cost = summarize(spec)
            if (max_macs and cost["macs"] > max_macs) or (max_params and cost["params"] > max_params):
                continue
            rows.append({"model": model, "level": level, "width": width, "spec": spec.name,
                         "image_size": "x".join(map(str, spec.input_shape[:2])),
                         "macs": cost["macs"], "params": cost["params"]})
    return rows


def spread(rows, count):
    """At most ``count`` rows, evenly spaced over the MACs range (the cheapest and dearest kept)."""
    if len(rows) <= count:
        return rows
    ordered = sorted(rows, key=lambda r: r["macs"])
    picks = sorted({round(i * (len(ordered) - 1) / (count - 1)) for i in range(count)})
    return [ordered[i] for i in picks]


def untrained_int8(model_name, level, width, images):
    """The fully-int8 file of a spec with its initial weights, calibrated on ``images``."""
    import numpy as np

    keras = backend.keras

    keras.utils.set_random_seed(0)
    model = architectures.create_model(model_name, level, width)

    def representative():
        for image in images:
            yield [np.asarray(image, np.float32)[None]]

    return export.convert_int8(model, representative, get_scheme("ptq"))


def front(rows):
    """Indices of rows on the MACs/latency Pareto front (lower is better on both)."""
    best, keep = float("inf"), []
    for i in sorted(range(len(rows)), key=lambda i: (rows[i]["macs"], rows[i]["latency_p50_ms"])):
        if rows[i]["latency_p50_ms"] < best:
            best = rows[i]["latency_p50_ms"]
            keep.append(i)
    return keep


def choose_by_prediction(every, predicted, peer_ms, count, slack=1.1):
    """At most ``count`` rows to time, by predicted latency: those predicted within ``slack`` x
    the peer's latency, the most MACs first (more compute at the same speed: the likeliest to
    be accurate), then the rest of the predicted MACs/latency front, cheapest first."""
    fast = sorted((i for i, p in enumerate(predicted) if p <= slack * peer_ms),
                  key=lambda i: -every[i]["macs"])
    ranked = [dict(r, latency_p50_ms=p) for r, p in zip(every, predicted)]
    chosen = fast[:count]
    chosen += [i for i in front(ranked) if i not in chosen][:count - len(chosen)]
    return [every[i] for i in chosen]


def _convert_all(model, rows, images, label):
    contents = []
    for i, row in enumerate(rows, 1):
        content = untrained_int8(model, row["level"], row["width"], images)
        row["size_bytes"] = len(content)
        contents.append(content)
        print(f"design space: {label} {i}/{len(rows)} {row['spec']} ({row['macs'] / 1e6:.2f} M "
              f"MACs, {len(content):,} bytes)", flush=True)
    return contents


def _spec(row):


    size = data_lib.parse_image_size(row["image_size"]) if row.get("image_size") else None
    return architectures.model_spec(row["model"], row["level"], row["width"], size)


def _predicted_choice(model, every, images, peer_content, probes, count, latency_runs, out):
    """Time ``probes`` designs spread over the MACs, fit ``fnet_tf.search.latency_model`` on them and
    choose ``count`` more by prediction; returns (probe rows, their files, chosen rows, fit)."""

    sample = spread(every, probes)
    contents = _convert_all(model, sample, images, "probe")
    print(f"design space: timing {len(sample)} probe designs and the peer to fit the latency "
          f"model", flush=True)
    timed = benchmark.latency(contents + [peer_content], threads=1, runs=latency_runs)
    fitted = latency_model.fit([_spec(r) for r in sample], [t["p50"] for t in timed[:-1]])
    # predictions in units of this pass's peer p50, so a later pass can be compared
    fitted["peer_p50_ms"] = timed[-1]["p50"]
    names = {r["spec"] for r in sample}
    rest = [r for r in every if r["spec"] not in names]
    predicted = [latency_model.predict(fitted, _spec(r)) for r in rest]
    for row, p in zip(rest, predicted):
        row["predicted_ratio_to_peer"] = p / fitted["peer_p50_ms"]
    chosen = choose_by_prediction(rest, predicted, fitted["peer_p50_ms"], count)
    fileio.write_json(os.path.join(out, "latency_model.json"), fitted)
    print(f"design space: latency model fitted on {len(sample)} designs; {len(chosen)} of "
          f"{len(rest)} others chosen by predicted latency", flush=True)
    return sample, contents, chosen, fitted


def capacity_front(rows, max_ratio=1.0):
    """Indices of rows no slower than ``max_ratio`` x the peer that have more MACs than every
    design at least as fast: the most compute (the likeliest accuracy) at each latency."""
    most, keep = -1, []
    for i in sorted(range(len(rows)), key=lambda i: (rows[i]["latency_ratio_to_peer"],
                                                     -rows[i]["macs"])):
        if rows[i]["latency_ratio_to_peer"] <= max_ratio and rows[i]["macs"] > most:
            most = rows[i]["macs"]
            keep.append(i)
    return keep


def write_report(out, state):
    """design_space.csv, .md, .png and .json from ``state`` (rows, trained, peer_p50, total,
    max_macs, max_params, passes, prediction, model): the fronts are marked here."""
    import csv
    import io


    rows = state["rows"]
    on_front, on_capacity = set(front(rows)), set(capacity_front(rows))
    for i, row in enumerate(rows):
        row["on_front"], row["on_capacity_front"] = i in on_front, i in on_capacity
    text_csv = io.StringIO()
    writer = csv.DictWriter(text_csv, fieldnames=list(COLUMNS))
    writer.writeheader()
    writer.writerows({k: r.get(k) for k in COLUMNS} for r in rows)
    fileio.write_text(os.path.join(out, TABLE), text_csv.getvalue())
    fileio.write_json(os.path.join(out, "design_space.json"), state)
    report = markdown(rows, state["trained"], state["peer_p50"], state["total"],
                      state["max_macs"], state["max_params"], state["passes"],
                      state.get("prediction"))
    fileio.write_text(os.path.join(out, "design_space.md"), report)
    plots.design_space(rows, os.path.join(out, "design_space.png"),
                       f"{state['model']}: untrained INT8 latency vs MACs ({len(rows)} designs)")
    return report


def run(text, model, out, data, peer, *, max_macs=None, max_params=None, max_candidates=60,
        calibration_images=200, latency_runs=200, cache_dir=None, with_released=True, passes=1,
        probes=0, image_size=None):
    """The design-space step (see the module docstring) for ``image_size`` inputs (default
    32x32; the released models, all 32x32, are timed beside only at that size); returns the
    table's rows."""

    per_stage, widths = parse_space(text, model)
    if not peer or not os.path.isfile(peer):
        raise UserError("--design_space needs --peer, the reference INT8 .tflite to time against")
    every = candidates(model, per_stage, widths, max_macs, max_params, image_size)
    if not every:
        raise UserError("no design within --max_macs/--max_params: widen the budgets")
    size = tuple(image_size or (32, 32))
    dataset = data_lib.load(data, cache_dir=cache_dir, image_size=size)
    with_released = with_released and size == (32, 32)
    images = dataset.train.images[:calibration_images]
    with open(peer, "rb") as f:
        peer_content = f.read()
    fitted, probe_rows, probe_contents = None, [], []
    if probes and len(every) > max_candidates + probes:
        probe_rows, probe_contents, rows, fitted = _predicted_choice(
            model, every, images, peer_content, probes, max_candidates, latency_runs, out)
    else:
        rows = spread(every, max_candidates)
    released_names = set(zoo.names()) if with_released else set()
    # the zoo's trained specs are timed untrained too, beside their files
    rows += [r for r in every if r["spec"] in released_names and r not in rows + probe_rows]
    print(f"design space: {len(every)} distinct designs within the budgets, "
          f"{len(rows) + len(probe_rows)} timed", flush=True)
    contents = probe_contents + _convert_all(model, rows, images, "converted")
    rows = probe_rows + rows
    released = []
    for name in sorted(released_names & {r["spec"] for r in rows}):
        with open(zoo.load(name), "rb") as f:
            released.append((name, f.read()))
    timed = []
    for k in range(passes):
        print(f"design space: timing pass {k + 1}/{passes}: {len(contents)} untrained files, "
              f"{len(released)} released ones and the peer interleaved (1 thread, "
              f"{latency_runs} invokes each)", flush=True)
        timed.append(benchmark.latency(contents + [c for _, c in released] + [peer_content],
                                       threads=1, runs=latency_runs))
    timed = benchmark.median_of_passes(timed)
    peer_p50 = timed[-1]["p50"]
    for row, t in zip(rows, timed):
        row.update(latency_p50_ms=t["p50"], latency_ratio_to_peer=t["ratio_median"])
    trained = []
    for (name, _), t in zip(released, timed[len(rows):-1]):
        untrained = next(r for r in rows if r["spec"] == name)
        trained.append({"spec": name, "untrained_p50_ms": untrained["latency_p50_ms"],
                        "trained_p50_ms": t["p50"]})
    report = write_report(out, {
        "model": model, "rows": rows, "trained": trained, "peer_p50": peer_p50,
        "total": len(every), "max_macs": max_macs, "max_params": max_params, "passes": passes,
        "prediction": _prediction_check(rows, probe_rows, fitted)})
    print(report)
    return rows


def _prediction_check(rows, probe_rows, fitted):
    """How the latency model's predicted ratios compare with the timed ones (designs not in
    its fit), or None without a model."""

    if not fitted:
        return None
    probes = {r["spec"] for r in probe_rows}
    held_out = [r for r in rows if r["spec"] not in probes and "predicted_ratio_to_peer" in r]
    if len(held_out) < 3:
        return None
    check = latency_model.agreement([r["predicted_ratio_to_peer"] for r in held_out],
                                    [r["latency_ratio_to_peer"] for r in held_out])
    return dict(check, probes=len(probes))


def markdown(rows, trained, peer_p50, total, max_macs, max_params, passes=1, prediction=None):

    timing = ("one interleaved pass" if passes == 1 else
              f"{passes} interleaved passes (medians: p50s, and ratios to the peer per pass)")
    lines = ["# Design space: latency before training", "",
             f"{total} distinct designs within the budgets (MACs <= {max_macs or 'any'}, params "
             f"<= {max_params or 'any'}); {len(rows)} converted untrained and timed with the "
             f"peer in {timing} (1 thread; peer p50 {peer_p50:.3f} ms).", "",
             "## MACs/latency Pareto front", "",
             "| design | level | width | MACs (M) | params | bytes | p50 ms | vs peer |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted((r for r in rows if r["on_front"]), key=lambda r: r["macs"]):
        lines.append(f"| {r['spec']} | {r['level']} | {width_text(r['width'])} | {r['macs'] / 1e6:.2f} | "
                     f"{r['params']:,} | {r['size_bytes']:,} | {r['latency_p50_ms']:.3f} | "
                     f"{r['latency_ratio_to_peer']:.2f}x |")
    lines += ["", "## Capacity front: the most MACs at each latency, no slower than the peer",
              "", "| design | level | width | MACs (M) | params | bytes | p50 ms | vs peer |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted((r for r in rows if r.get("on_capacity_front")),
                    key=lambda r: r["latency_ratio_to_peer"]):
        lines.append(f"| {r['spec']} | {r['level']} | {width_text(r['width'])} | {r['macs'] / 1e6:.2f} | "
                     f"{r['params']:,} | {r['size_bytes']:,} | {r['latency_p50_ms']:.3f} | "
                     f"{r['latency_ratio_to_peer']:.2f}x |")
    faster = [r for r in rows if r["latency_ratio_to_peer"] <= 1.0]
    lines += ["", f"{len(faster)} of {len(rows)} timed designs are no slower than the peer."]
    if prediction:
        lines += ["", f"Chosen by a latency model (`fnet_tf/search/latency_model.py`, "
                  f"`latency_model.json`) fitted on {prediction['probes']} probe designs timed "
                  f"first; on the {prediction['designs']} designs it chose, predicted vs timed "
                  f"ratio to the peer: Spearman {prediction['spearman']:.2f}, median relative "
                  f"error {prediction['median_relative_error']:.1%}."]
    if trained:
        lines += ["", "## Untrained vs trained (the released file of the same spec, same pass)",
                  "", "| spec | untrained p50 ms | trained p50 ms | ratio |",
                  "| --- | ---: | ---: | ---: |"]
        for t in trained:
            lines.append(f"| {t['spec']} | {t['untrained_p50_ms']:.3f} | {t['trained_p50_ms']:.3f} "
                         f"| {t['untrained_p50_ms'] / t['trained_p50_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def read_front(out, which="front"):
    """The levels and widths on a front of ``out``'s design-space table: ``front`` (MACs and
    latency both lowest) or ``capacity_front`` (the most MACs at each latency)."""

    path = os.path.join(out, TABLE)
    if not os.path.isfile(path):
        raise UserError(f"--levels {which} needs {path}: run python -m fnet_tf.sweep "
                        f"--design_space ... --out {out} first")
    rows = [r for r in fileio.read_csv(path) if r.get(f"on_{which}") == "True"]

    return [(r["level"], parse_width(r["width"])) for r in rows]
