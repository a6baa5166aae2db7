"""The zoo on one figure: every released model's INT8 top-1 against its MACs, its latency
relative to the MLPerf Tiny peer timed in the same pass, and its file size, with the Pareto
front over all families and the peer; and the table of who beats our ResNet-8 on every axis.

Only the released models' ``metrics.json`` are read (``tools/release.py`` measures and times,
this draws), so ``python -m fnet_tf.zoo pareto`` renders it again without timing anything.
"""
import math
import os

from fnet_tf.analysis import plots
from fnet_tf.analysis.pareto import pareto_front
from fnet_tf.core import fileio
from fnet_tf.core.errors import UserError
from fnet_tf.core.wording import count
from fnet_tf.release import zoo

AXES = (("macs", 1e6, "MACs (M)", "MACs"),  # (key, unit, axis label, short name)
        ("latency_ratio", 1.0, "latency / MLPerf peer's, same pass (1 thread)", "latency"),
        ("size_bytes", 1024.0, "INT8 file size (KiB)", "size"))
BASELINE = "resnet8"  # the model the zoo's headline compares against, trained the same way


def family(m):
    """The legend group of one released model's metrics."""
    scheme = (m.get("recipe") or {}).get("qat_scheme") or "int8"
    if scheme != "int8":
        return f"{m['model']} ({scheme})"
    if m["model"] == "factorizenet":
        width = m.get("width", 1.0)
        if not isinstance(m.get("level"), int) or isinstance(width, str):
            return "FactorizeNet, per-stage design"
        return "FactorizeNet, one level" + ("" if width in (1, 1.0) else ", other width")
    return {"resnet8": "ResNet-8 (ours)", "frostnet_cifar": "FrostNet-Small, 32x32 (ours)"}.get(
        m["model"], m["model"])


def entries(rows):
    """Plot points from the zoo's metrics rows (``zoo.table_rows()``)."""
    return [{"name": m["name"], "family": family(m), "macs": m["macs"],
             "size_bytes": m["size_bytes"], "latency_ratio": m["latency_ratio_to_peer"],
             "latency_p50_ms": m["latency_p50_ms"], "accuracy": m["int8_accuracy"],
             "accuracy_std": m.get("int8_accuracy_seed_std") or 0.0,
             "accuracy_mean": m.get("int8_accuracy_mean", m["int8_accuracy"]),
             "seeds": m.get("seeds", 1), "model": m["model"],
             "regime": zoo.training_regime(m.get("recipe") or {})} for m in rows]


def baseline_for(candidate, points):
    """The released ResNet-8 trained the way ``candidate`` was (``zoo.training_regime``: the
    same epochs, regularizers and teacher), or None where there is none to compare with
    fairly; among several, the one named ``resnet8`` first, then by name."""
    same = [p for p in points if p["model"] == BASELINE and p["regime"] == candidate["regime"]]
    return min(same, key=lambda p: (p["name"] != BASELINE, p["name"]), default=None)


def verdict(p, points):
    """The front table's last cell: how ``p`` fares against the ResNet-8 trained its way."""
    if p["model"] == BASELINE:
        return "-"
    base = baseline_for(p, points)
    if base is None:
        regime = zoo.regime_text(p["regime"])
        return f"not compared: no ResNet-8 released with its training ({regime})"
    missed = ", ".join(beats(p, base)) or "**nothing: better on every axis**"
    text = missed if base["name"] == BASELINE else f"{missed} (vs {base['name']})"
    compared = seed_comparison(p, base)
    return text if compared is None else f"{text}; {compared}"


def seed_comparison(candidate, baseline):
    """Where both were trained with several seeds: the difference of their INT8 means against
    twice its standard error, ``sqrt(s1^2/n1 + s2^2/n2)`` (sample stds); None otherwise."""
    if candidate.get("seeds", 1) < 2 or baseline.get("seeds", 1) < 2:
        return None
    difference = candidate["accuracy_mean"] - baseline["accuracy_mean"]
    two_se = 2 * math.sqrt(candidate["accuracy_std"] ** 2 / candidate["seeds"]
                           + baseline["accuracy_std"] ** 2 / baseline["seeds"])
    if difference > two_se:
        word = "ahead by more than 2 SE"
    elif difference < -two_se:
        word = "behind by more than 2 SE"
    else:
        word = "a tie within 2 SE"
    return (f"seed means {100 * difference:+.2f} pts ({candidate['seeds']} vs "
            f"{baseline['seeds']} seeds), 2 SE {100 * two_se:.2f}: {word}")


def peer_entry(rows):
    """The MLPerf peer as a point: its accuracy, MACs and size from the cards (``peer_macs``,
    ``peer_size_bytes``, where the release that wrote them recorded them), its latency ratio 1
    by definition."""
    with_peer = [m for m in rows if m.get("peer_accuracy") is not None]
    if not with_peer:
        return None
    m = max(with_peer, key=lambda m: "peer_macs" in m)
    peer = {"name": m["peer"], "accuracy": m["peer_accuracy"], "latency_ratio": 1.0}
    if "peer_macs" in m:
        peer.update(macs=m["peer_macs"], size_bytes=m["peer_size_bytes"])
    return peer


def beats(candidate, baseline):
    """Axes on which ``candidate`` is not better than ``baseline`` ([] = better or equal on
    all, and more accurate). Accuracy is the released files'; where both were trained with
    several seeds, their means must agree too (a file can win by one lucky seed)."""
    missed = [] if candidate["accuracy"] > baseline["accuracy"] else ["accuracy"]
    if (not missed and candidate.get("seeds", 1) > 1 and baseline.get("seeds", 1) > 1
            and candidate["accuracy_mean"] <= baseline["accuracy_mean"]):
        missed = ["accuracy (seed means)"]
    return missed + [short for key, _, _, short in AXES if candidate[key] > baseline[key]]


def accuracy_text(p):
    """'83.73%', or '83.73% (mean 83.94 ± 0.30, 2 seeds)' where the model has other seeds."""
    if p.get("seeds", 1) < 2:
        return f"{100 * p['accuracy']:.2f}%"
    return (f"{100 * p['accuracy']:.2f}% (mean {100 * p['accuracy_mean']:.2f} ± "
            f"{100 * p['accuracy_std']:.2f}, {p['seeds']} seeds)")


def front_markdown(points, peer=None):
    """Who is on each front, and which models beat our ResNet-8 on every axis."""
    lines = ["# The zoo's accuracy/cost fronts", "",
             "| model | family | QAT INT8 top-1 | MACs (M) | latency vs peer | size (KiB) | "
             "on the front of | vs our ResNet-8 trained the same way: not better in |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    fronts = {key: {points[i]["name"] for i in pareto_front(
        [(p[key], p["accuracy"]) for p in points])} for key, _, _, _ in AXES}
    for p in sorted(points, key=lambda p: (p["macs"], p["name"])):
        on = [short for key, _, _, short in AXES if p["name"] in fronts[key]]
        lines.append(f"| {p['name']} | {p['family']} | {accuracy_text(p)} | "
                     f"{p['macs'] / 1e6:.2f} | {p['latency_ratio']:.2f}x | "
                     f"{p['size_bytes'] / 1024:.1f} | {', '.join(on) or '-'} | "
                     f"{verdict(p, points)} |")
    if peer:
        macs = f"{peer['macs'] / 1e6:.2f}" if "macs" in peer else "-"
        size = f"{peer['size_bytes'] / 1024:.1f}" if "size_bytes" in peer else "-"
        lines.append(f"| peer: {peer['name']} | MLPerf Tiny | {100 * peer['accuracy']:.2f}% | "
                     f"{macs} | 1.00x | {size} | - | - |")
    lines += ["", "INT8 top-1: the released file's, LiteRT on the whole test split (with the "
              "mean and sample std over seeds where a card has more than one); latency: each "
              "model's median ratio to the peer timed in the same interleaved passes "
              "(`tools/release.py`). A model beats our ResNet-8 when it is more accurate (its "
              "file, and its seeds' mean where both have several) with no more MACs, no slower "
              "and no larger, against the ResNet-8 trained the same way (the same float epochs, "
              "regularizers and distillation teacher; the lr may be tuned per model). Where both "
              "have several seeds, the difference of the means is set against twice its "
              "standard error, sqrt(s1^2/n1 + s2^2/n2)."]
    return "\n".join(lines) + "\n"


def headline(points):
    """The models the plot names besides each front's: our ResNet-8s and every model that
    beats the ResNet-8 trained its way on every axis."""
    return {p["name"] for p in points if p["model"] == BASELINE
            or (baseline_for(p, points) is not None and not beats(p, baseline_for(p, points)))}


def write(out, rows):
    """``pareto.png`` and ``front.md`` of the released models ``rows`` into ``out``."""

    if not rows:
        return []
    points, peer = entries(rows), peer_entry(rows)
    data = rows[0].get("data", "")
    plots.zoo_pareto(points, peer, [axis[:3] for axis in AXES], os.path.join(out, "pareto.png"),
                     f"The zoo: QAT INT8 top-1 vs cost ({data})", labeled=headline(points))
    fileio.write_text(os.path.join(out, "front.md"), front_markdown(points, peer))
    return ["pareto.png", "front.md"]


def write_released(out):
    """The released models' Pareto plot and front table into ``out`` (``fnet-zoo pareto``)."""
    rows = zoo.table_rows()
    written = write(out, rows)
    if not written:
        raise UserError(f"no released models in {zoo.zoo_dir()}: nothing to plot")
    print(f"wrote {out}/ ({', '.join(written)}) from {count(len(rows), 'released model')}")
    return written
