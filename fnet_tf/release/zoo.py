"""The released models, as a library: ``load(name)`` (the INT8 file), ``keras_model(name)``
(its float weights), ``metrics(name)``, ``names()``, the zoo table. The command ``fnet-zoo``
(``fnet_tf/zoo.py``) lists them, and ``fnet_tf.zoo.load`` is this ``load``.

Each released model is a folder ``models/<name>/`` (``fnet_tf/released/<name>/`` in an
installed package) holding ``model_int8.tflite`` (verified
fully-integer, labels embedded), ``card.md`` and ``metrics.json`` with its measured numbers,
and the analyzer's layer-wise plots. Folders are written by ``tools/release.py`` from run
directories, never by hand. ``$FNET_TF_ZOO`` points at another models folder.

``fnet_tf.zoo.keras_model("factorizenet-l3")`` is the float tf_keras model of a released file,
for fine-tuning or as a backbone: its ``float_weights.npz`` was derived from the INT8 file by
``tools/derive_float_weights.py`` (``fnet_tf.release.float_weights`` says how).
"""
import dataclasses
import numbers
import os

import numpy as np

from fnet_tf.arch.architectures import model_spec
from fnet_tf.arch.spec import build_model
from fnet_tf.core import backend, fileio
from fnet_tf.core.errors import UserError
from fnet_tf.core.wording import count
from fnet_tf.release import float_weights as zoo_float
from fnet_tf.release.float_weights import FILE
from fnet_tf.run.portable_weights import load_weights_by_layer
from fnet_tf.training import distill

MODEL_FILE = "model_int8.tflite"
PREFIX = "zoo:"  # how the commands take a released model where they take a model: zoo:NAME
METRICS = "metrics.json"
CARD = "card.md"


_HERE = os.path.dirname(os.path.abspath(__file__))  # fnet_tf/release
PACKAGED = os.path.join(os.path.dirname(_HERE), "released")
CHECKOUT = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "models")


def zoo_dir():
    """``$FNET_TF_ZOO``; else the zoo inside an installed package (``setup.py`` maps the
    checkout's ``models/`` to ``fnet_tf/released/`` in the wheel: one copy, made by
    ``tools/release.py``); else, in a checkout or an editable install, ``models/`` itself."""
    if os.environ.get("FNET_TF_ZOO"):
        return os.environ["FNET_TF_ZOO"]
    return PACKAGED if os.path.isdir(PACKAGED) else CHECKOUT


def released_name(argument):
    """``factorizenet-l3`` for the argument ``zoo:factorizenet-l3``; None for anything else
    (a path). The name is checked when it is used (``load``)."""
    if isinstance(argument, str) and argument.startswith(PREFIX):
        return argument[len(PREFIX):]
    return None


def names():
    root = zoo_dir()
    if not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root)
                  if os.path.isfile(os.path.join(root, n, MODEL_FILE)))


def load(name):
    """The path of released model ``name``'s INT8 ``.tflite`` (run it with LiteRT or
    ``fnet-run``); UserError listing the released names if unknown."""
    path = os.path.join(zoo_dir(), str(name), MODEL_FILE)
    if name not in names() or not os.path.isfile(path):  # a name, never a path (zoo:../x)
        known = ", ".join(names()) or "none (see tools/release.py)"
        raise UserError(f"no released model {name!r}: choose one of {known}")
    return path


def metrics(name):
    load(name)
    return fileio.read_json(os.path.join(zoo_dir(), name, METRICS))


def float_weights_path(name):
    """The path of released model ``name``'s float weights (``float_weights.npz`` beside its
    INT8 file; it may not be derived yet); UserError listing the released names if unknown."""

    return os.path.join(os.path.dirname(load(name)), FILE)


def keras_model(name, num_classes=None, include_top=True, image_size=None, *, seed=0):
    """The float tf_keras model of released model ``name``, carrying its released float
    weights (``float_weights_path``).

    ``num_classes`` other than the released classes gives a fresh, untrained classifier (the
    Dense ``logits``, he_normal drawn with ``seed``, zero bias) on the released features;
    ``include_top=False`` gives the model up to its last feature map, before global pooling
    (as ``keras.applications`` does; ``num_classes`` is then ignored). ``image_size``
    (height, width) builds it for other inputs: every architecture is fully convolutional, so
    the same weights serve any size.
    """
    keras = backend.keras

    card = metrics(name)
    path = float_weights_path(name)
    if not os.path.isfile(path):
        raise UserError(f"released model {name!r} has no float weights yet ({path}): derive "
                        f"them with python tools/derive_float_weights.py --models {name}")
    recorded = (card.get("float_weights") or {}).get("sha256")
    if recorded and fileio.sha256_file(path) != recorded:
        raise UserError(f"{path} is not the file its card records (sha256 differs): derive it "
                        f"again with python tools/derive_float_weights.py --models {name}")
    released_classes = len(card["classes"])
    num_classes = released_classes if num_classes is None or not include_top else num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, not {num_classes!r}")
    if image_size is not None and (np.shape(image_size) != (2,) or not all(
            isinstance(side, numbers.Integral) and side > 0 for side in image_size)):
        raise UserError(f"image_size must be (height, width) in pixels, not {image_size!r}")
    spec = model_spec(card["model"], card["level"], card.get("width", 1.0), image_size=image_size)
    model = build_model(dataclasses.replace(spec, num_classes=num_classes))
    arrays = zoo_float.read(path)
    if num_classes != released_classes:
        head = model.get_layer("logits")
        kernel_shape = tuple(head.kernel.shape)
        arrays["logits/0"] = keras.initializers.HeNormal(seed=seed)(kernel_shape).numpy()
        arrays["logits/1"] = np.zeros(num_classes, np.float32)
    load_weights_by_layer(model, arrays)
    if not include_top:
        model = keras.Model(model.input, model.get_layer("pool").input,
                            name=f"{model.name}_features")
    return model


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
                         "teacher": None, "kd_alpha": 0.0, "kd_temperature": 4.0,
                         "crop_pad": 4, "crop_mode": "zeros", "lookahead": False,
                         "image_size": None, "init_from": None, "freeze_epochs": 0,
                         "teacher_bank": 0, "teacher_tta": "none", "bank_mirror": False,
                         "qat_calibration_images": 0}


def card_recipe(config, float_info):
    """The recipe a card records, from a run's config and its float phase's metrics: every
    field the card's recipe sentence (``model_card.recipe_text``) and the same-recipe check of
    other seeds read. A teacher is named by its folder or file, not this machine's path."""
    keras3 = float_info.get("keras3_recipe") or {}
    recipe = {**{k: config.get(k) for k in (
        "lr", "warmup_epochs", "weight_decay", "batch_size", "label_smoothing", "val_split",
        "seed", "init", "optimizer", "momentum", "schedule", "warmup", "cutout", "teacher",
        "kd_alpha", "kd_temperature", "qat_recipe", "qat_epochs", "qat_scheme", "qat_lr",
        "qat_options", "crop_pad", "crop_mode", "lookahead", "image_size", "init_from",
        "freeze_epochs", "teacher_bank", "teacher_tta", "bank_mirror", "qat_calibration_images")
        if k in config},
        **{k: v for k, v in keras3.items() if k != "epochs"},
        "float_epochs": keras3.get("epochs", float_info.get("epochs", config.get("epochs")))}
    if recipe.get("teacher"):
        recipe["teacher"] = distill.teacher_name(recipe["teacher"])
    if recipe.get("init_from") and released_name(recipe["init_from"]) is None:
        recipe["init_from"] = distill.teacher_name(recipe["init_from"])  # its name, not a path
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
    parts = [count(epochs, 'epoch')] + ([f"cutout {cutout}"] if cutout else []) + (
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
