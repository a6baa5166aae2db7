"""The sweep's table, plots and design selection, from the run directories under ``OUT/runs``.

Reads what the steps left (run ``metrics.json``, ``analysis/metrics.json``, ``layers.csv``, the
INT8 files), so it works on any merged set of runs. Writes ``sweep.csv`` (one row per run),
``summary.md`` (one row per level and initializer: mean ± std over seeds), ``pareto.png``,
``layers_across_levels.png`` and, with several initializers, ``init_ablation.png`` and one
``layers_by_init_l<level>.png`` per level (each layer's ranges and INT8 error, one line per
initializer) with ``layers_by_init.csv`` (each layer's raw and BN-folded weight figures, mean and
std over seeds).
"""
import csv
import io
import math
import os
import re
import sys

import numpy as np

from fnet_tf.analysis import plots
from fnet_tf.arch.architectures import width_text
from fnet_tf.core import fileio
from fnet_tf.core.errors import UserError
from fnet_tf.core.wording import count
from fnet_tf.data import datasets as data_lib
from fnet_tf.tflite import measure as benchmark

QAT_FILE = "model_int8.tflite"
PTQ_FILE = "model_ptq_int8.tflite"
PTQ_PER_TENSOR_FILE = "model_ptq_per_tensor_int8.tflite"
# the post-training-quantized files a sweep step may leave, and the cache of their test top-1
PTQ_FILES = {"ptq_int8_accuracy": (PTQ_FILE, "ptq_metrics.json"),
             "ptq_per_tensor_int8_accuracy": (PTQ_PER_TENSOR_FILE, "ptq_per_tensor_metrics.json")}
SENSITIVITY_BITS = "4"  # the precision of the table's w4_* columns, from analysis/sensitivity.csv
NUMERIC = ("params", "macs", "size_bytes", "float_accuracy", "ptq_int8_accuracy",
           "ptq_per_tensor_int8_accuracy", "qat_int8_accuracy", "qat_keras_accuracy",
           "int8_drop", "w4_val_accuracy", "w4_worst_drop", "latency_p50_ms",
           "max_channel_ratio")
COLUMNS = ("model", "level", "width", "seed", "init", *NUMERIC, "w4_worst_layer", "min_sqnr_layer",
           "min_sqnr_db", "max_channel_ratio_layer", "run")
SELECT_KEYS = {"macs": "macs", "params": "params", "latency_ms": "latency_p50_ms",
               "size_bytes": "size_bytes", "accuracy": "qat_int8_accuracy"}


def level_value(level):
    """A level read back from a CSV or config: an int, or a per-stage string such as '0.3.7'."""
    text = str(level)
    return int(text) if text.isdigit() else text


def level_key(level):
    """Sorts uniform levels by number, then per-stage ones by their stages."""
    value = level_value(level)
    if isinstance(value, int):
        return (0, (value,))
    return (1, tuple(int(v) for v in value.split(".")))


def analysis_complete(run_dir):
    """The analyzer's output exists and is newer than the INT8 file it describes."""
    metrics = os.path.join(run_dir, "analysis", "metrics.json")
    model = os.path.join(run_dir, QAT_FILE)
    return (os.path.isfile(metrics) and os.path.isfile(model)
            and os.path.getmtime(metrics) >= os.path.getmtime(model))


def _read_json(path, default=None):
    """The JSON object in ``path`` (bounded read); ``default`` where it is missing, corrupt or
    not an object (a run directory may come from someone else)."""
    if not os.path.isfile(path):
        return default
    try:
        value = fileio.read_json(path)
    except UserError:
        return default
    return value if isinstance(value, dict) else default


def finished_runs(out):
    """Run directories under ``out/runs`` whose every sweep step is complete, in level order."""
    root = os.path.join(out, "runs")
    if not os.path.isdir(root):
        return []
    runs = []
    for name in sorted(os.listdir(root)):
        if name.startswith("."):  # a run directory still arriving from a Ray node
            continue
        path = os.path.join(root, name)
        config = _read_json(os.path.join(path, "config.json"))
        if config and analysis_complete(path) and os.path.isfile(os.path.join(path, PTQ_FILE)):
            runs.append((config, path))
    return sorted(runs, key=lambda r: (level_key(r[0]["level"]), r[0].get("init", ""),
                                       r[0].get("seed", 0)))


def _layer_rows(run_dir):
    """The rows of the run's ``analysis/layers.csv`` (none where the analyzer has not run)."""
    path = os.path.join(run_dir, "analysis", "layers.csv")
    if not os.path.isfile(path):
        return []
    return fileio.read_csv(path)


def lowest_sqnr_layer(run_dir):
    """(layer, SQNR dB) of the op with the lowest INT8 output SQNR in the run's layers.csv."""
    rows = [r for r in _layer_rows(run_dir) if r.get("sqnr_db") not in (None, "", "nan")]
    if not rows:
        return "", float("nan")
    worst = min(rows, key=lambda r: float(r["sqnr_db"]))
    return worst["layer"], float(worst["sqnr_db"])


def widest_channel_ratio(run_dir):
    """(layer, ratio) of the weight layer whose BN-folded filters' ranges differ most (largest
    over smallest channel range): what a per-tensor weight scale has to cover."""
    rows = [r for r in _layer_rows(run_dir)
            if r.get("weight_layer") and r.get("channel_range_ratio") not in (None, "", "nan")]
    if not rows:
        return "", float("nan")
    widest = max(rows, key=lambda r: float(r["channel_range_ratio"]))
    return widest["weight_layer"], float(widest["channel_range_ratio"])


def _ptq_accuracy(run_dir, dataset, key="ptq_int8_accuracy"):
    """Test top-1 (LiteRT) of one of the run's post-training-quantized files (``PTQ_FILES``),
    cached beside it; NaN where the sweep that made the run did not write that file."""

    name, cache = PTQ_FILES[key]
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        return float("nan")
    digest = fileio.sha256_file(path)
    cached = _read_json(os.path.join(run_dir, cache), {})
    if cached.get("sha256") == digest:
        return cached["accuracy_top1"]
    with open(path, "rb") as f:
        result = benchmark.evaluate_tflite(f.read(), dataset.test, progress=False)
    fileio.write_json(os.path.join(run_dir, cache), {"sha256": digest, **result})
    return result["accuracy_top1"]


def weight_sensitivity(run_dir):
    """From the run's ``analysis/sensitivity.csv`` (``fnet_tf.analyze --sensitivity``): the
    float model's validation top-1 with every layer's weights at 4 bits, the layer whose
    weights alone at 4 bits cost the most, and that cost (NaNs and '' without one)."""
    path = os.path.join(run_dir, "analysis", "sensitivity.csv")
    rows = []
    if os.path.isfile(path):
        rows = [r for r in fileio.read_csv(path) if r.get("bits") == SENSITIVITY_BITS]
    if not rows:
        return {"w4_val_accuracy": float("nan"), "w4_worst_drop": float("nan"),
                "w4_worst_layer": ""}
    worst = max(rows, key=lambda r: float(r["drop_only_this"]))
    return {"w4_val_accuracy": float(rows[0]["accuracy_all_quantized"]),
            "w4_worst_drop": float(worst["drop_only_this"]), "w4_worst_layer": worst["layer"]}


def collect_rows(out, dataset, latency_runs=200, peer=None):
    """One row per finished run (and the peer's, if given), INT8 latencies timed together."""

    runs = finished_runs(out)
    if not runs:
        raise UserError(f"no finished sweep runs in {out}/runs: run the sweep first")
    rows, contents = [], []
    for config, path in runs:
        metrics = _read_json(os.path.join(path, "metrics.json"), {})
        analysis = _read_json(os.path.join(path, "analysis", "metrics.json"), {})
        layer, sqnr = lowest_sqnr_layer(path)
        ratio_layer, ratio = widest_channel_ratio(path)
        float_acc = metrics.get("float", {}).get("test_accuracy", float("nan"))
        qat_acc = analysis["accuracy_top1"]
        rows.append({
            "model": config["model"], "level": config["level"],
            "width": width_text(config.get("width", 1.0)), "seed": config.get("seed", 0),
            "init": config.get("init", "he_normal"), "params": analysis["params"],
            "macs": analysis["macs"], "size_bytes": analysis["size_bytes"],
            "float_accuracy": float_acc,
            **{key: _ptq_accuracy(path, dataset, key) for key in PTQ_FILES},
            "qat_int8_accuracy": qat_acc,
            "qat_keras_accuracy": metrics.get("qat", {}).get("test_accuracy", float("nan")),
            "int8_drop": float_acc - qat_acc, **weight_sensitivity(path),
            "latency_p50_ms": float("nan"),
            "min_sqnr_layer": layer, "min_sqnr_db": sqnr, "max_channel_ratio": ratio,
            "max_channel_ratio_layer": ratio_layer, "run": os.path.relpath(path, out)})
        with open(os.path.join(path, QAT_FILE), "rb") as f:
            contents.append(f.read())
    peer_row = None
    if peer:
        with open(peer, "rb") as f:
            content = f.read()
        stats = benchmark.graph_stats(content)
        acc = benchmark.evaluate_tflite(content, dataset.test, progress=False)["accuracy_top1"]
        peer_row = {**{key: float("nan") for key in NUMERIC},
                    "model": os.path.basename(peer), "level": "", "seed": "", "init": "",
                    "params": stats["params"], "macs": stats["macs"], "size_bytes": len(content),
                    "qat_int8_accuracy": acc, "w4_worst_layer": "", "min_sqnr_layer": "",
                    "max_channel_ratio_layer": "",
                    "min_sqnr_db": float("nan"), "run": "peer"}
        contents.append(content)
    print(f"timing {count(len(contents), 'INT8 model')}, interleaved, 1 thread", file=sys.stderr, flush=True)
    latencies = benchmark.latency(contents, threads=1, runs=latency_runs)
    for row, lat in zip(rows + ([peer_row] if peer_row else []), latencies):
        row["latency_p50_ms"] = lat["p50"]
    return rows, peer_row


def _csv_text(rows, columns=COLUMNS):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return text.getvalue()


def read_csv(path):
    if not os.path.isfile(path):
        raise UserError(f"no {path}: run the sweep (or --report) first")
    rows = fileio.read_csv(path)
    for row in rows:  # a sweep.csv from before a column existed reads NaN there
        for key in NUMERIC + ("min_sqnr_db",):
            row[key] = float(row[key]) if row.get(key) not in (None, "") else float("nan")
        row.setdefault("w4_worst_layer", "")
        row["width"] = row.get("width") or "1"  # sweeps before the width column ran width 1
        row.setdefault("max_channel_ratio_layer", "")
    return [r for r in rows if r["run"] != "peer"]


def mean_and_std(values):
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) of seeds' figures."""
    values = np.asarray(values, dtype=float)
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def seed_spread(figures):
    """The card's fields over seeds from ``{key: [one value per seed]}``, the released first."""
    fields = {"seeds": len(next(iter(figures.values())))}
    for key, values in figures.items():
        mean, std = mean_and_std(values)
        fields.update({f"{key}_seeds": list(values), f"{key}_mean": mean,
                       f"{key}_seed_std": std})
    return fields


def aggregate(rows):
    """Rows grouped by (model, level, width, init): means, and the sample standard deviation
    over seeds (``ddof=1``: with two seeds, the gap between them / sqrt 2; 0 for one seed)."""
    groups = {}
    for row in rows:
        key = (row["model"], level_value(row["level"]), str(row.get("width") or "1"), row["init"])
        groups.setdefault(key, []).append(row)
    result = []
    for (model, level, width, init), members in sorted(
            groups.items(), key=lambda g: (level_key(g[0][1]), g[0][2], g[0][3])):
        entry = {"model": model, "level": level, "width": width, "init": init,
                 "seeds": len(members)}
        for key in NUMERIC:
            entry[key], entry[key + "_std"] = mean_and_std([m.get(key, math.nan) for m in members])
        worst = min(members, key=lambda m: m["min_sqnr_db"]
                    if not math.isnan(m["min_sqnr_db"]) else float("inf"))
        entry["min_sqnr_layer"], entry["min_sqnr_db"] = worst["min_sqnr_layer"], worst["min_sqnr_db"]
        # the layer 4-bit weights hurt most, in the seed where it hurt most
        measured = [m for m in members if not math.isnan(m.get("w4_worst_drop", math.nan))]
        entry["w4_worst_layer"] = (max(measured, key=lambda m: m["w4_worst_drop"])["w4_worst_layer"]
                                   if measured else "")
        result.append(entry)
    return result


def _width_label(width):
    """' w0.5,0.75,1' beside a level whose width (as ``width_text`` writes it) is not 1;
    nothing at width 1."""
    return "" if str(width or "1") == "1" else f" w{width}"


def _pct(entry, key):
    value, std = entry[key], entry.get(key + "_std", 0.0)
    if math.isnan(value):
        return "-"
    return f"{100 * value:.2f}" + (f" ± {100 * std:.2f}" if entry.get("seeds", 1) > 1 else "")


def summary_markdown(entries, peer_row, title):
    # the 4-bit sensitivity columns only where a run measured it (sweep --sensitivity_images)
    w4 = any(not math.isnan(e.get("w4_val_accuracy", float("nan"))) for e in entries)
    lines = [f"# {title}", "",
             "| level | init | seeds | params | MACs (M) | size (KiB) | float top-1 % | "
             "PTQ INT8 % | PTQ INT8 per-tensor % | QAT INT8 % | INT8 drop (pts) | "
             + ("4-bit weights, val % | 4-bit: worst layer (drop, pts) | " if w4 else "")
             + "p50 ms | lowest-SQNR layer (dB) |",
             "|" + " --- |" * (15 if w4 else 13)]
    several_models = len({e["model"] for e in entries}) > 1
    for e in entries:
        drop = 100 * e["int8_drop"]
        level = (f"{e['model']} l{e['level']}" if several_models else f"{e['level']}")
        level += _width_label(e.get("width"))
        sensitivity = (f"{_pct(e, 'w4_val_accuracy')} | {e['w4_worst_layer'] or '-'} "
                       f"({100 * e['w4_worst_drop']:+.2f}) | " if w4 else "")
        lines.append(
            f"| {level} | {e['init']} | {e['seeds']} | {e['params']:,.0f} | "
            f"{e['macs'] / 1e6:.2f} | {e['size_bytes'] / 1024:.1f} | {_pct(e, 'float_accuracy')} | "
            f"{_pct(e, 'ptq_int8_accuracy')} | {_pct(e, 'ptq_per_tensor_int8_accuracy')} | "
            f"{_pct(e, 'qat_int8_accuracy')} | {drop:+.2f} | {sensitivity}"
            f"{e['latency_p50_ms']:.3f} | {e['min_sqnr_layer']} ({e['min_sqnr_db']:.1f}) |")
    if peer_row:
        lines.append(f"| peer: {peer_row['model']} | | | {peer_row['params']:,} | "
                     f"{peer_row['macs'] / 1e6:.2f} | {peer_row['size_bytes'] / 1024:.1f} | - | - | - | "
                     f"{100 * peer_row['qat_int8_accuracy']:.2f} | - | {'- | - | ' if w4 else ''}"
                     f"{peer_row['latency_p50_ms']:.3f} | - |")
    lines += ["", "INT8 accuracies are LiteRT's on the test split; latency: 1 thread, all models "
              "timed in one interleaved pass; INT8 drop = float - QAT INT8."
              + (" 4-bit weights: the float model with every layer's weights (BN folded, per "
                 "filter) at 4 bits, activations float, on validation images; worst layer: the "
                 "one whose weights alone at 4 bits cost the most (`fnet_tf.analyze "
                 "--sensitivity`)." if w4 else "")]
    return "\n".join(lines) + "\n"


def parse_constraints(text):
    """'macs<=5e6,accuracy>=0.8' -> [(column, op, value)]; a bad one is a UserError."""
    constraints = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\w+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*", part)
        if not m or m.group(1) not in SELECT_KEYS:
            raise UserError(f"bad --select constraint {part.strip()!r}: use KEY<=VALUE or "
                            f"KEY>=VALUE with KEY one of {', '.join(SELECT_KEYS)}")
        try:
            value = float(m.group(3))
        except ValueError:
            raise UserError(f"bad number in --select constraint {part.strip()!r}") from None
        constraints.append((SELECT_KEYS[m.group(1)], m.group(2), value))
    return constraints


_OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b, ">": lambda a, b: a > b}


def select(entries, constraints):
    """The entry with the highest QAT INT8 accuracy meeting every constraint (ties: fewer
    MACs), or None."""
    ok = [e for e in entries if all(_OPS[op](e[key], value) for key, op, value in constraints)]
    if not ok:
        return None
    return max(ok, key=lambda e: (e["qat_int8_accuracy"], -e["macs"]))


def select_text(out, text):
    constraints = parse_constraints(text)
    entries = aggregate(read_csv(os.path.join(out, "sweep.csv")))
    best = select(entries, constraints)
    if best is None:
        return f"no level of {out} meets {text}"
    return (f"best under {text}: level {best['level']}{_width_label(best.get('width'))} "
            f"({best['init']}): QAT INT8 {100 * best['qat_int8_accuracy']:.2f}%, "
            f"{best['macs'] / 1e6:.2f} M MACs, "
            f"{best['params']:,.0f} params, {best['size_bytes'] / 1024:.1f} KiB, p50 "
            f"{best['latency_p50_ms']:.3f} ms")


def _layer_key(weight_layer):
    """'b3_gconv' / 'b3_dw' / 'b3_conv' -> 'b3 3x3'; 'b3_pw' -> 'b3 1x1': the same place in
    the network at every level, whatever the factorization made of it."""
    m = re.fullmatch(r"(.+)_(dw|gconv|conv)", weight_layer)
    if m:
        return f"{m.group(1)} kxk"
    m = re.fullmatch(r"(.+)_pw", weight_layer)
    return f"{m.group(1)} 1x1" if m else weight_layer


def layers_by(runs, group):
    """{group(config): {layer key: layers.csv row}} from the first run of each group (runs come
    in level, initializer, seed order: the first seed, and he_normal's where it is one)."""
    result = {}
    for config, path in runs:
        value = group(config)
        if value in result:
            continue
        rows = [r for r in fileio.read_csv(os.path.join(path, "analysis", "layers.csv"))
                if r.get("weight_layer")]
        result[value] = {_layer_key(r["weight_layer"]): r for r in rows}
    return result


def design_label(config):
    """A run's level, with its width where that is not 1: '7', '0.0.7 w0.5,0.75,0.75'."""
    return f"{config['level']}" + _width_label(width_text(config.get("width", 1.0)))


def layers_by_level(runs):
    """{design label: {layer key: layers.csv row}} from the first seed/initializer of each
    level and width, in the runs' (level) order."""
    return layers_by(runs, design_label)


def layers_by_init(runs):
    """{level: {initializer: {layer key: layers.csv row}}}, the first seed of each."""
    levels = []
    for config, _ in runs:
        levels += [config["level"]] if config["level"] not in levels else []
    return {level: layers_by([r for r in runs if r[0]["level"] == level],
                             lambda config: config.get("init", "he_normal")) for level in levels}


LAYER_FIGURES = ("raw_weight_std", "weight_std", "raw_channel_range_ratio", "channel_range_ratio",
                 "weight_sqnr_db_per_tensor", "sqnr_db")


def layer_table_by_init(runs):
    """One row per (level, weight layer, initializer): each of ``LAYER_FIGURES`` from the runs'
    ``layers.csv`` as mean and sample std over every seed. The raw (as trained) weight figures
    beside the BN-folded ones show whether batch norm erases what the initializer left."""
    grouped = {}
    for config, path in runs:
        for row in _layer_rows(path):
            if not row.get("weight_layer"):
                continue
            key = (config["level"], row["weight_layer"], config.get("init", "he_normal"))
            values = grouped.setdefault(key, {name: [] for name in LAYER_FIGURES})
            for name in LAYER_FIGURES:
                values[name].append(float(row.get(name) or "nan"))
    table = []
    for (level, layer, init), values in grouped.items():
        row = {"level": level, "layer": layer, "init": init,
               "seeds": len(values[LAYER_FIGURES[0]])}
        for name in LAYER_FIGURES:
            row[name], row[f"{name}_std"] = mean_and_std(values[name])
        table.append(row)
    return table


def layer_table_csv(table):
    columns = ["level", "layer", "init", "seeds"]
    for name in LAYER_FIGURES:
        columns += [name, f"{name}_std"]
    return _csv_text(table, columns)


def write_report(out, data=None, peer=None, latency_runs=200, cache_dir=None):

    runs = finished_runs(out)
    if not runs:
        raise UserError(f"no finished sweep runs in {out}/runs: run the sweep first")
    source = data or runs[0][0]["data"]
    data_lib.check_source(source)
    size = runs[0][0].get("image_size") or (32, 32)
    dataset = data_lib.load(source, cache_dir=cache_dir, image_size=tuple(size))
    rows, peer_row = collect_rows(out, dataset, latency_runs, peer)
    fileio.write_text(os.path.join(out, "sweep.csv"),
                      _csv_text(rows + ([peer_row] if peer_row else [])))
    entries = aggregate(rows)
    model = " + ".join(sorted({r["model"] for r in rows}))
    title = f"{model} sweep on {dataset.source}"
    fileio.write_text(os.path.join(out, "summary.md"), summary_markdown(entries, peer_row, title))
    inits = sorted({e["init"] for e in entries})
    main_init = "he_normal" if "he_normal" in inits else inits[0]
    main = [e for e in entries if e["init"] == main_init]
    plots.pareto(main, peer_row, os.path.join(out, "pareto.png"),
                 f"{title}: QAT INT8 accuracy vs cost ({main_init})")
    plots.layers_across_levels(layers_by_level(runs), os.path.join(out, "layers_across_levels.png"),
                               f"{model}: per-layer weights and INT8 error at each level")
    written = ["sweep.csv", "summary.md", "pareto.png", "layers_across_levels.png"]
    if len(inits) > 1:
        plots.init_ablation(entries, os.path.join(out, "init_ablation.png"),
                            f"{model}: weight initializer vs INT8 accuracy")
        written.append("init_ablation.png")
        rho = plots.per_tensor_vs_channel_ratio(
            rows, os.path.join(out, "per_tensor_vs_channel_ratio.png"),
            f"{model}: PTQ per-tensor INT8 vs widest channel ratio")
        if rho is not None:  # drawn (3 runs or more)
            written.append("per_tensor_vs_channel_ratio.png")
        fileio.write_text(os.path.join(out, "layers_by_init.csv"),
                          layer_table_csv(layer_table_by_init(runs)))
        written.append("layers_by_init.csv")
        for level, by_init in layers_by_init(runs).items():
            name = f"layers_by_init_l{level}.png"
            plots.layers_across_levels(
                by_init, os.path.join(out, name), f"{model} level {level}: per-layer weights "
                "(BN folded) and INT8 error for each initializer (first seed)", legend="{}")
            written.append(name)
    print(summary_markdown(entries, peer_row, title))
    print(f"wrote {out}/ ({', '.join(written)}) from {count(len(rows), 'run')}")
    return entries
