"""The released models: ``fnet_tf.zoo.load("factorizenet-l3")`` and ``fnet-zoo list``
(``python -m fnet_tf.zoo list``); ``fnet-zoo pareto [OUT_DIR]`` draws them all on one Pareto
plot with the MLPerf peer (``results/zoo/`` by default).

Each released model is a folder ``models/<name>/`` (``fnet_tf/released/<name>/`` in an
installed package) holding ``model_int8.tflite`` (verified
fully-integer, labels embedded), ``card.md`` and ``metrics.json`` with its measured numbers,
and the analyzer's layer-wise plots. Folders are written by ``tools/release.py`` from run
directories, never by hand. ``$FNET_TF_ZOO`` points at another models folder.
"""
import os
import sys

from fnet_tf import cli, distill, fileio
from fnet_tf.errors import UserError

MODEL_FILE = "model_int8.tflite"
METRICS = "metrics.json"
CARD = "card.md"


PACKAGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "released")
CHECKOUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


def zoo_dir():
    """``$FNET_TF_ZOO``; else the zoo inside an installed package (``setup.py`` maps the
    checkout's ``models/`` to ``fnet_tf/released/`` in the wheel: one copy, made by
    ``tools/release.py``); else, in a checkout or an editable install, ``models/`` itself."""
    if os.environ.get("FNET_TF_ZOO"):
        return os.environ["FNET_TF_ZOO"]
    return PACKAGED if os.path.isdir(PACKAGED) else CHECKOUT


def names():
    root = zoo_dir()
    if not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root)
                  if os.path.isfile(os.path.join(root, n, MODEL_FILE)))


def load(name):
    """The path of released model ``name``'s INT8 ``.tflite`` (run it with LiteRT or
    ``fnet-run``); UserError listing the released names if unknown."""
    path = os.path.join(zoo_dir(), name, MODEL_FILE)
    if not os.path.isfile(path):
        known = ", ".join(names()) or "none (see tools/release.py)"
        raise UserError(f"no released model {name!r}: choose one of {known}")
    return path


def metrics(name):
    load(name)
    return fileio.read_json(os.path.join(zoo_dir(), name, METRICS))


def table_rows():
    """One dict per released model, from its metrics.json, in MACs order."""
    rows = [metrics(n) for n in names()]
    return sorted(rows, key=lambda m: (m["macs"], m["name"]))


# Recipe fields that cards released before the field was recorded lack, with the value every
# such release had (int8 QAT has no scheme options; SGD with Nesterov momentum 0.9, a capped
# warm-up then cosine, no cutout, no teacher, and QAT finetuned after float training, were all
# there was or all that was released).
RECIPE_FIELD_DEFAULTS = {"qat_options": {}, "optimizer": "sgd", "qat_recipe": "finetune",
                         "momentum": 0.9, "schedule": "cosine", "warmup": "capped", "cutout": 0,
                         "teacher": None, "kd_alpha": 0.0, "kd_temperature": 4.0}


def card_recipe(config, float_info):
    """The recipe a card records, from a run's config and its float phase's metrics: every
    field the card's recipe sentence (``model_card.recipe_text``) and the same-recipe check of
    other seeds read. A teacher is named by its folder or file, not this machine's path."""
    keras3 = float_info.get("keras3_recipe") or {}
    recipe = {**{k: config.get(k) for k in (
        "lr", "warmup_epochs", "weight_decay", "batch_size", "label_smoothing", "val_split",
        "seed", "init", "optimizer", "momentum", "schedule", "warmup", "cutout", "teacher",
        "kd_alpha", "kd_temperature", "qat_recipe", "qat_epochs", "qat_scheme", "qat_lr",
        "qat_options") if k in config},
        **{k: v for k, v in keras3.items() if k != "epochs"},
        "float_epochs": keras3.get("epochs", float_info.get("epochs", config.get("epochs")))}
    if recipe.get("teacher"):
        recipe["teacher"] = distill.teacher_name(recipe["teacher"])
    return recipe


def recipe_differences(card, run_recipe):
    """The recipe fields (but the seed) in which a run differs from a released card's."""
    return [k for k in run_recipe if k != "seed" and run_recipe[k] != card.get(
        k, RECIPE_FIELD_DEFAULTS.get(k))]


def distilled_from(recipe):
    """The teacher a recipe distilled from, or None (a teacher at alpha 0 taught nothing)."""
    return recipe.get("teacher") if recipe.get("kd_alpha") else None


def recipe_summary(recipe):
    """The recipe settings that differ between released models, in a few words: the lr, then
    the training regime (``regime_text``)."""
    return f"lr {recipe.get('lr'):g}, " + regime_text(training_regime(recipe))


def training_regime(recipe):
    """What a fair comparison must share: the float epochs, the regularizers and the teacher
    (a per-model tuned lr, the initializer and the seed may differ). Distilling from a teacher
    or training longer lifts any model, so a model trained that way is compared with a ResNet-8
    trained the same way."""
    return (recipe.get("float_epochs"), recipe.get("cutout") or 0,
            recipe.get("label_smoothing") or 0.0, distilled_from(recipe))


def regime_text(regime):
    """A ``training_regime`` in words: '80 epochs, cutout 8, distilled from X'."""
    epochs, cutout, smoothing, teacher = regime
    parts = [f"{epochs} epochs"] + ([f"cutout {cutout}"] if cutout else []) + (
        [f"label smoothing {smoothing:g}"] if smoothing else []) + (
        [f"distilled from {teacher}"] if teacher else [])
    return ", ".join(parts)


def seed_suffix(m):
    """' (mean 84.1 ± 0.3, 2 seeds)' where a model was released with other seeds' runs."""
    if m.get("seeds", 1) > 1 and m.get("int8_accuracy_seed_std") is not None:
        return (f" (mean {100 * m['int8_accuracy_mean']:.2f} ± "
                f"{100 * m['int8_accuracy_seed_std']:.2f}, {m['seeds']} seeds)")
    return ""


def table_markdown(rows=None):
    """The results table of the README, generated from the released models' metrics."""
    rows = table_rows() if rows is None else rows
    lines = ["| model | float top-1 | QAT INT8 top-1 | INT8 drop | MACs (M) | params | "
             "size (KiB) | p50 ms (1 thread) | latency vs ResNet-8 peer | arm64 vs x86 top-1 | "
             "float recipe |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in rows:
        arm64 = m.get("arm64")
        arm64 = (f"{100 * arm64['top1_agreement']:.2f}% ({arm64['max_diff_lsb']} LSB)"
                 if arm64 else "not checked")
        lines.append(
            f"| [{m['name']}](models/{m['name']}/card.md) | {100 * m['float_accuracy']:.2f}% | "
            f"{100 * m['int8_accuracy']:.2f}%{seed_suffix(m)} | {100 * m['int8_drop']:+.2f} | "
            f"{m['macs'] / 1e6:.2f} | {m['params']:,} | {m['size_bytes'] / 1024:.1f} | "
            f"{m['latency_p50_ms']:.3f} | {m['latency_ratio_to_peer']:.2f}x | {arm64} | "
            f"{recipe_summary(m['recipe'])} |")
    return "\n".join(lines)


def write_front(out):
    """The zoo's Pareto plot and front table (``fnet_tf.analysis.zoo_front``) into ``out``."""
    from fnet_tf.analysis import zoo_front

    rows = table_rows()
    written = zoo_front.write(out, rows)
    if not written:
        raise UserError(f"no released models in {zoo_dir()}: nothing to plot")
    print(f"wrote {out}/ ({', '.join(written)}) from {len(rows)} released models")
    return written


def main(argv):
    args = argv[1:]
    if args == ["list"]:
        if not names():
            print(f"no released models in {zoo_dir()}", file=sys.stderr)
        else:
            print(table_markdown())
        return 0
    if len(args) == 2 and args[0] == "path":
        print(load(args[1]))
        return 0
    if args and args[0] == "pareto" and len(args) <= 2:
        write_front(args[1] if len(args) == 2 else "results/zoo")
        return 0
    raise UserError("usage: fnet-zoo list | path NAME | pareto [OUT_DIR] "
                    "(or python -m fnet_tf.zoo ...)")


console = cli.entry_point(main)  # the fnet-zoo command

if __name__ == "__main__":
    console()
