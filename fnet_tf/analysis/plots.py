"""Matplotlib figures of the analysis (PNG, written atomically, no display needed)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fnet_tf import fileio  # noqa: E402


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
    ax.set_ylabel(f"latency (ms, {lat['threads']} thread(s))")
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
