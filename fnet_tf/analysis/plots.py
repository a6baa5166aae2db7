"""Matplotlib figures of the analysis (PNG, written atomically, no display needed)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fnet_tf.analysis.pareto import pareto_front  # noqa: E402
from fnet_tf.arch.architectures import width_text, width_tuple
from fnet_tf.core import fileio  # noqa: E402


def _save(fig, path):
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def weight_ranges(per_channel, path, title):
    """Box plot per layer of the per-output-channel weight ranges (BN folded)."""
    names = list(per_channel)
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(names) + 2), 4.5))
    ax.boxplot([per_channel[n] for n in names], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=60, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("max |w| per output channel (BN folded)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def histograms(values_by_layer, path, title, xlabel, max_layers=6):
    """Histograms of a few layers' values: the first, the last and evenly between."""
    names = list(values_by_layer)
    if len(names) > max_layers:
        picks = np.linspace(0, len(names) - 1, max_layers).round().astype(int)
        names = [names[i] for i in picks]
    cols = min(3, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        ax.hist(values_by_layer[name], bins=80, color="tab:blue")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def sqnr_bars(rows, path, title):
    names = [r["layer"] for r in rows]
    values = [min(r["sqnr_db"], 80) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), values, color=["tab:red" if v < 15 else "tab:green" for v in values])
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("SQNR of the INT8 output vs float (dB)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def summary(metrics, path, title):
    lat = metrics["latency_ms"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    keys = ["p50", "p90", "p99", "mean"]
    ax.bar(keys, [lat[k] for k in keys], color="tab:purple")
    ax.set_ylabel(f"latency (ms, {lat['threads']} {'thread' if lat['threads'] == 1 else 'threads'})")
    acc = metrics.get("accuracy_top1")
    ax.set_title(f"{title}\ntop-1 {acc:.2%} on {metrics['num_images']} images, "
                 f"{metrics['macs'] / 1e6:.2f} M MACs, {metrics['size_bytes'] / 1024:.1f} KiB")
    _save(fig, path)


def comparison(entries, path, title):
    """Accuracy against MACs and against latency p50, one labelled point per model."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "macs", "MACs (M)"), (axes[1], "latency_p50", "latency p50 (ms)")):
        for e in entries:
            x = e[key] / 1e6 if key == "macs" else e[key]
            ax.scatter(x, e["accuracy_top1"] * 100, s=40)
            ax.annotate(e["name"], (x, e["accuracy_top1"] * 100), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("INT8 top-1 (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def op_latency(rows, path, title):
    """Per operator in execution order: its p50 latency beside its share of the MACs, so the
    ops whose time strays from their MACs stand out."""
    labels = [f"{r['index']} {r['kind']} {r['output_shape']}" for r in rows]
    times = np.array([r["p50_us"] for r in rows])
    macs = np.array([r["macs"] for r in rows], dtype=float)
    y = np.arange(len(rows))[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, max(3.5, 0.32 * len(rows) + 1.5)), sharey=True)
    axes[0].barh(y, times, color=["tab:red" if r["kernel"] != "XNNPACK" else "tab:blue"
                                  for r in rows])
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].set_xlabel("p50 latency of the op alone (us)")
    axes[0].set_title("time (red: TFLite builtin kernel, blue: XNNPACK)", fontsize=9)
    axes[1].barh(y, 100 * macs / max(macs.sum(), 1), color="tab:gray")
    axes[1].set_xlabel("share of the model's MACs (%)")
    axes[1].set_title("MACs", fontsize=9)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def op_latency_by_kind(entries, kinds, path, title):
    """One stacked bar per model: the sum of its ops' p50 latencies split by op kind (``kinds``:
    the stacking order, ``op_latency.kinds_of``)."""
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(kinds), 2)))
    fig, ax = plt.subplots(figsize=(10, max(3, 0.5 * len(entries) + 1.8)))
    y = np.arange(len(entries))[::-1]
    left = np.zeros(len(entries))
    for kind, color in zip(kinds, colors):
        widths = np.array([e["by_kind"].get(kind, 0.0) for e in entries])
        ax.barh(y, widths, left=left, color=color, label=kind)
        left += widths
    ax.set_yticks(y, [e["name"] for e in entries], fontsize=8)
    ax.set_xlabel("sum of the ops' p50 latencies, each op timed alone (us)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    _save(fig, path)


def evolution(entries, path, title):
    """Per layer, over the epochs of every phase: the widest/narrowest weight channel range
    ratio, the widest weight range and the activation maximum."""
    xs = list(range(1, len(entries) + 1))
    phases = [e["phase"] for e in entries]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    panels = ((axes[0], "weights", "channel_range_ratio", "weight channel-range ratio (max/min)"),
              (axes[1], "weights", "channel_range_max", "widest weight channel range"),
              (axes[2], "activations", "max", "activation maximum (64 training images)"))
    for ax, group, key, label in panels:
        names = list(entries[-1][group])
        for name in names:
            ax.plot(xs, [e[group].get(name, {}).get(key, np.nan) for e in entries], label=name,
                    linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("epoch (all phases in order)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                ax.axvline(i + 0.5, color="k", linestyle="--", linewidth=1)
                ax.text(i + 0.7, ax.get_ylim()[1], phases[i], va="top", fontsize=8)
    axes[2].legend(fontsize=6, ncol=2, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def pareto(entries, peer, path, title):
    """QAT INT8 accuracy against MACs, latency and size: one point per level, the Pareto front
    drawn, the peer model (if any) as a star."""
    axes_spec = (("macs", 1e6, "MACs (M)"), ("latency_p50_ms", 1.0, "latency p50, 1 thread (ms)"),
                 ("size_bytes", 1024.0, "INT8 file size (KiB)"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, (key, unit, label) in zip(axes, axes_spec):
        xs = [e[key] / unit for e in entries]
        ys = [100 * e["qat_int8_accuracy"] for e in entries]
        errs = [100 * e.get("qat_int8_accuracy_std", 0.0) for e in entries]
        ax.errorbar(xs, ys, yerr=errs, fmt="o", color="tab:blue", capsize=3, label="levels")
        for e, x, y in zip(entries, xs, ys):
            ax.annotate(f"L{e['level']}", (x, y), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
        front = pareto_front(list(zip(xs, ys)))
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post",
                color="tab:blue", alpha=0.5, label="Pareto front")
        if peer:
            px, py = peer[key] / unit, 100 * peer["qat_int8_accuracy"]
            ax.scatter([px], [py], marker="*", s=160, color="tab:red", label=peer["model"])
        ax.set_xlabel(label)
        ax.set_ylabel("QAT INT8 top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def _place_labels(fig, ax, labels):
    """Write each ``(x, y, text)`` beside its point, at the first of a few offsets where it
    overlaps no label already placed (the last one tried where every offset does)."""
    renderer = fig.canvas.get_renderer()
    placed = []
    offsets = ((4, 3, "left"), (4, -10, "left"), (-4, 3, "right"), (-4, -10, "right"),
               (4, 12, "left"), (-4, 12, "right"))
    for x, y, text in sorted(labels, key=lambda t: -t[1]):
        for dx, dy, ha in offsets:
            label = ax.annotate(text, (x, y), fontsize=7, xytext=(dx, dy), ha=ha,
                                textcoords="offset points")
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or (dx, dy, ha) == offsets[-1]:
                placed.append(box)
                break
            label.remove()


def zoo_pareto(points, peer, axes_spec, path, title, labeled=()):
    """The released models' INT8 accuracy against each cost in ``axes_spec`` ((key, unit,
    label) triples): one colour per family, the Pareto front over all families, names beside
    the front's models and those in ``labeled`` only (the table has the rest), the accuracy
    axis zoomed on the models; the peer as a star, or, below that range, as an arrow at the
    bottom edge with its accuracy."""
    families = sorted({p["family"] for p in points})
    colors = dict(zip(families, plt.get_cmap("tab10")(np.arange(len(families)) % 10)))
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(4.6 * len(axes_spec), 4.4))
    ys = [100 * p["accuracy"] for p in points]
    spread = [100 * p.get("accuracy_std", 0.0) for p in points]
    low = min(y - s for y, s in zip(ys, spread)) - 0.4
    high = max(y + s for y, s in zip(ys, spread)) + 0.5
    for ax, (key, unit, label) in zip(np.atleast_1d(axes), axes_spec):
        xs = [p[key] / unit for p in points]
        for fam in families:
            idx = [i for i, p in enumerate(points) if p["family"] == fam]
            ax.errorbar([xs[i] for i in idx], [ys[i] for i in idx],
                        yerr=[spread[i] for i in idx], fmt="o", markersize=4,
                        color=colors[fam], capsize=2, label=fam)
        front = pareto_front(list(zip(xs, ys)))
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="k",
                alpha=0.35, label="Pareto front")
        if key != "latency_ratio":  # costs spanning 5-40 M MACs, 60-540 KiB: a log axis
            from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(low, high)
        names = [(i, p["name"]) for i, p in enumerate(points) if i in front or p["name"] in labeled]
        _place_labels(fig, ax, [(xs[i], ys[i], name) for i, name in names])
        if peer and key in peer:
            peer_x, peer_y = peer[key] / unit, 100 * peer["accuracy"]
            if peer_y >= low:
                ax.scatter([peer_x], [peer_y], marker="*", s=150, color="tab:red",
                           label=f"peer: {peer['name']}", zorder=3)
            else:  # far below the models: an arrow at the bottom edge, its value written
                ax.annotate(f"peer: {peer_y:.1f}% (below)", (peer_x, low), xytext=(10, 16),
                            textcoords="offset points", ha="left", fontsize=7,
                            color="tab:red", arrowprops={"arrowstyle": "->", "color": "tab:red"})
        if key == "latency_ratio":
            ax.axvline(1.0, color="tab:red", linestyle=":", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel("QAT INT8 top-1 (%)")
        ax.grid(alpha=0.3)
    handles, names = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="lower center", ncol=min(4, len(names)))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _save(fig, path)


def layers_across_levels(by_level, path, title, legend="level {}"):
    """Per layer position (x) and level (one line each, in ``by_level``'s order; or any other
    grouping, named by ``legend``): the widest weight channel range, the widest/narrowest
    channel range ratio (BN folded; and before folding, where layers.csv has it: what training
    left, against what BN's scales make of it) and the INT8 output SQNR."""
    import re

    def position(key):  # network order: by block numbers, the kxk before its 1x1, dense last
        numbers = [int(n) for n in re.findall(r"\d+", key.split(" ")[0])]
        return (not numbers, numbers, key.endswith("1x1"))

    keys = sorted({key for rows in by_level.values() for key in rows}, key=position)
    panels = [("channel_range_max", "widest channel |w| (BN folded)", True),
              ("channel_range_ratio", "channel range ratio (widest / narrowest)", True),
              ("sqnr_db", "INT8 output SQNR (dB)", False)]
    if any(row.get("raw_channel_range_ratio") not in ("", None)
           for rows in by_level.values() for row in rows.values()):
        panels.insert(2, ("raw_channel_range_ratio", "channel range ratio before BN folding",
                          True))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 0.6 * len(keys) + 3),
                                                      3.3 * len(panels)), sharex=True)
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(by_level), 1)))
    for color, level in zip(colors, by_level):  # in the caller's order (levels may mix types)
        rows = by_level[level]
        for ax, (column, label, log) in zip(axes, panels):
            xs = [i for i, k in enumerate(keys) if k in rows and rows[k].get(column) not in ("", None)]
            ys = [float(rows[keys[i]][column]) for i in xs]
            ax.plot(xs, ys, "o-", color=color, label=legend.format(level), ms=4)
            ax.set_ylabel(label, fontsize=9)
            if log:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[-1].set_xticks(range(len(keys)))
    axes[-1].set_xticklabels(keys, rotation=60, ha="right", fontsize=8)
    axes[0].legend(fontsize=7, ncol=min(len(by_level), 8), loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


# init_ablation's panels: (entry key, y label); a panel no entry measured is left out
INIT_ABLATION_PANELS = (("float_accuracy", "float top-1 (%)"),
                        ("ptq_int8_accuracy", "PTQ INT8 per-channel top-1 (%)"),
                        ("ptq_per_tensor_int8_accuracy", "PTQ INT8 per-tensor top-1 (%)"),
                        ("qat_int8_accuracy", "QAT INT8 top-1 (%)"),
                        ("int8_drop", "INT8 drop, float - QAT INT8 (points)"),
                        ("w4_val_accuracy", "4-bit weights, float activations:\nvalidation top-1 (%)"))


def init_ablation(entries, path, title):
    """Each figure per level, one bar per initializer: the mean over seeds with the seeds'
    sample std as the error bar (the spread a difference must beat). Returns the keys drawn."""
    inits = sorted({e["init"] for e in entries})
    levels = list(dict.fromkeys(e["level"] for e in entries))  # in the entries' level order
    panels = [(key, label) for key, label in INIT_ABLATION_PANELS
              if any(np.isfinite(e.get(key, np.nan)) for e in entries)]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    width = 0.8 / len(inits)
    for ax, (key, label) in zip(axes.flat, panels):
        for j, init in enumerate(inits):
            by_level = {e["level"]: e for e in entries if e["init"] == init}
            shown = [lvl for lvl in levels if lvl in by_level]
            ax.bar([levels.index(lvl) + j * width for lvl in shown],
                   [100 * by_level[lvl][key] for lvl in shown], width,
                   yerr=[100 * by_level[lvl].get(key + "_std", 0) for lvl in shown],
                   capsize=2, label=init)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(levels))])
        ax.set_xticklabels([f"L{lvl}" for lvl in levels])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        values = [100 * e[key] for e in entries if np.isfinite(e.get(key, np.nan))]
        if key != "int8_drop" and values:  # accuracies: zoom on where the bars differ
            ax.set_ylim(max(0, min(values) - 5), min(100, max(values) + 2))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title + " (mean over seeds; bars: their sample std)")
    fig.tight_layout()
    _save(fig, path)
    return [key for key, _ in panels]


def rank_correlation(x, y):
    """Spearman's rho of two equal-length sequences (ties take their mean rank)."""
    def ranks(values):
        values = np.asarray(values, dtype=float)
        order = values.argsort()
        rank = np.empty(len(values))
        rank[order] = np.arange(len(values), dtype=float)
        for value in np.unique(values):  # ties share their mean rank
            rank[values == value] = rank[values == value].mean()
        return rank
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def per_tensor_vs_channel_ratio(rows, path, title):
    """One marker per run: PTQ per-tensor INT8 top-1 against the widest BN-folded channel-range
    ratio of any layer (log scale), colour by initializer, marker by level; the title gives
    Spearman's rho over the runs. Returns rho, or None (nothing drawn) with under 3 runs."""
    runs = [r for r in rows if np.isfinite(r.get("ptq_per_tensor_int8_accuracy", np.nan))
            and np.isfinite(r.get("max_channel_ratio", np.nan))]
    if len(runs) < 3:
        return None
    rho = rank_correlation([r["max_channel_ratio"] for r in runs],
                           [r["ptq_per_tensor_int8_accuracy"] for r in runs])
    inits = sorted({r["init"] for r in runs})
    levels = list(dict.fromkeys(str(r["level"]) for r in runs))
    markers = "osD^v<>P*X"
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, init in enumerate(inits):
        for j, level in enumerate(levels):
            mine = [r for r in runs if r["init"] == init and str(r["level"]) == level]
            if mine:
                ax.scatter([r["max_channel_ratio"] for r in mine],
                           [100 * r["ptq_per_tensor_int8_accuracy"] for r in mine],
                           color=f"C{i}", marker=markers[j % len(markers)],
                           label=f"{init} L{level}")
    ax.set_xscale("log")
    ax.set_xlabel("widest channel-range ratio of any layer (BN folded, max/min filter range)")
    ax.set_ylabel("PTQ per-tensor INT8 top-1 (%)")
    ax.set_title(f"{title}\nSpearman rho = {rho:.2f} over {len(runs)} runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)
    return rho


def val_curves(curves, path, title):
    """Validation accuracy per epoch, one line per tuning trial ({trial: [(epoch, acc)]})."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, curve in curves.items():
        epochs, accuracy = zip(*curve)
        ax.plot(epochs, [100 * a for a in accuracy], marker=".", label=name,
                linewidth=2.5 if name == "base" else 1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def sensitivity_bars(rows, bits, path, title):
    """Per layer (in network order) and precision: top-1 with only that layer quantized, the
    float accuracy as a line."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(layers) + 2), 4))
    width = 0.8 / max(len(bits), 1)
    for k, b in enumerate(bits):
        values = {r["layer"]: r["accuracy_only_this"] for r in rows if r["bits"] == str(b)}
        ax.bar([i + (k - (len(bits) - 1) / 2) * width for i in range(len(layers))],
               [values.get(n, 0.0) for n in layers], width, label=f"{b}" + ("" if b == "ternary"
                                                                             else " bits"))
    if rows:
        ax.axhline(rows[0]["accuracy_float"], color="black", lw=1, ls="--", label="float")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("validation top-1, only this layer quantized")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def low_bit(tables, key, label, path, title):
    """INT8 top-1 against ``key`` (packed bytes or energy) for each model's low-bit variants
    (``benchmarks/low_bit.py`` tables: {model: rows}); the int8 QAT point of each model is a
    square, ternary_hybrid circles, DBQ triangles."""
    markers = {"int8": "s", "ternary_hybrid": "o", "dbq": "^"}
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for (name, rows), color in zip(sorted(tables.items()), plt.cm.tab10.colors):
        for row in rows:
            x, y = float(row[key]), 100 * float(row["litert_top1"])
            ax.scatter([x], [y], marker=markers.get(row["scheme"], "x"), color=color, s=50,
                       label=name if row["variant"] == "int8" else None)
            ax.annotate(row["variant"], (x, y), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    ax.set_xlabel(label)
    ax.set_ylabel("INT8 test top-1, LiteRT (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="square: int8 QAT; circle: hybrid; triangle: DBQ",
              title_fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def qat_recipes(tables, recipes, path, title):
    """INT8 top-1 of each QAT recipe (``recipes``, in order), one bar per model
    (``benchmarks/low_bit.py --study qat_recipes`` tables: {model: {recipe: top-1}})."""
    models = sorted(tables)
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(2.2 * len(recipes) + 2, 4.8))
    values = [v for t in tables.values() for v in t.values()]
    for j, (model, color) in enumerate(zip(models, plt.cm.tab10.colors)):
        xs = [i + (j - (len(models) - 1) / 2) * width for i, r in enumerate(recipes)
              if r in tables[model]]
        ys = [100 * tables[model][r] for r in recipes if r in tables[model]]
        bars = ax.bar(xs, ys, width=width * 0.95, color=color, label=model)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(range(len(recipes)), recipes)
    if values:
        ax.set_ylim(100 * min(values) - 3, 100 * max(values) + 1.5)
    ax.set_ylabel("INT8 test top-1, LiteRT (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def design_space(rows, path, title):
    """Untrained INT8 latency (as a ratio to the peer) against MACs, the front highlighted."""

    def first_stage(width):  # the full-resolution stage's width: what decides the latency
        return width_tuple(width, 1)[0]

    fig, ax = plt.subplots(figsize=(7.5, 5))
    widths = sorted({first_stage(r["width"]) for r in rows})
    per_stage = any(isinstance(r["width"], str) for r in rows)
    for width, color in zip(widths, plt.cm.viridis(np.linspace(0.1, 0.9, len(widths)))):
        mine = [r for r in rows if first_stage(r["width"]) == width]
        ax.scatter([r["macs"] / 1e6 for r in mine], [r["latency_ratio_to_peer"] for r in mine],
                   s=18, color=color, alpha=0.7,
                   label=f"{'stage-1 ' if per_stage else ''}width {width:g}")
    best = sorted((r for r in rows if r["on_front"]), key=lambda r: r["macs"])
    ax.step([r["macs"] / 1e6 for r in best], [r["latency_ratio_to_peer"] for r in best],
            where="post", color="tab:red", label="MACs/latency front")
    for r in best:
        ax.annotate(f"l{r['level']}" + ("" if r["width"] == 1 else f" w{width_text(r['width'])}"),
                    (r["macs"] / 1e6, r["latency_ratio_to_peer"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    capacity = sorted((r for r in rows if r.get("on_capacity_front")), key=lambda r: r["macs"])
    if capacity:
        ax.plot([r["macs"] / 1e6 for r in capacity],
                [r["latency_ratio_to_peer"] for r in capacity], "s-", color="tab:green", ms=5,
                label="capacity front (most MACs per latency)")
        for r in capacity:
            ax.annotate(f"l{r['level']} w{width_text(r['width'])}",
                        (r["macs"] / 1e6, r["latency_ratio_to_peer"]), fontsize=6,
                        xytext=(3, -9), textcoords="offset points", color="tab:green")
    ax.axhline(1.0, color="gray", ls="--", lw=1, label="the peer's latency")
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("untrained INT8 p50 / peer p50 (1 thread)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def layers_by_depth(rows_by_model, path, title):
    """Per model (one line each), against relative depth (first op 0, last 1): the INT8 output
    SQNR, the per-channel weight SQNR and the channel range ratio (BN folded)."""
    panels = (("sqnr_db", "INT8 output SQNR vs float (dB)", False),
              ("weight_sqnr_db_per_channel", "weight SQNR, per channel (dB)", False),
              ("channel_range_ratio", "channel range ratio (widest / narrowest)", True))
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    for name, rows in rows_by_model.items():
        depth = np.linspace(0, 1, len(rows)) if len(rows) > 1 else np.zeros(len(rows))
        for ax, (column, label, log) in zip(axes, panels):
            points = [(d, float(r[column])) for d, r in zip(depth, rows)
                      if r.get(column) not in ("", None) and np.isfinite(float(r[column]))]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, np.minimum(ys, 80) if not log else ys, "o-", ms=3, label=name)
            ax.set_ylabel(label, fontsize=9)
            if log:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[-1].set_xlabel("relative depth (op index / last op index)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def repair_layers(rows, path, title):
    """Per weight layer, before and after the repairs: the channel-range ratio (log), the INT8
    per-tensor output SQNR and the 4-bit-weight output SQNR (``analysis.repair_effect``)."""
    names = [r["layer"] for r in rows]
    x = np.arange(len(names))
    panels = (("repair_channel_range_ratio", "widest / narrowest\nchannel range", True),
              ("repair_int8_per_tensor_sqnr_db", "INT8 per-tensor\noutput SQNR (dB)", False),
              ("repair_w4_sqnr_db", "4-bit weights\noutput SQNR (dB)", False))
    fig, axes = plt.subplots(3, 1, figsize=(max(6, 0.5 * len(names) + 2), 8.5), sharex=True)
    for ax, (key, label, log) in zip(axes, panels):
        for offset, when, color in ((-0.2, "before", "tab:gray"), (0.2, "after", "tab:blue")):
            values = [r.get(f"{key}_{when}") for r in rows]
            values = [np.nan if v is None else min(float(v), 1e6 if log else 80) for v in values]
            ax.bar(x + offset, values, 0.4, color=color, label=when)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title(title)
    axes[-1].set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    _save(fig, path)
