"""The trials of a recipe tuning: the base recipe, then one changed setting at a time.

Kept free of flags and TensorFlow (``fnet_tf.tune`` is the CLI around it).
"""

from fnet_tf.core.errors import UserError
from fnet_tf.training.distill import teacher_name

# The recipe settings a trial may change, with the type of their value.
TUNABLE = {"lr": float, "weight_decay": float, "label_smoothing": float, "cutout": int,
           "warmup_epochs": float, "batch_size": int, "optimizer": str, "schedule": str,
           "teacher": str, "kd_alpha": float, "kd_temperature": float}  # distillation too
BASE = "base"


def parse_setting(text, what):
    """'name=v1,v2' -> (name, [typed values]); UserError names the mistake."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not values.strip():
        raise UserError(f"bad {what} {text!r}: use SETTING=VALUE[,VALUE...]")
    if name not in TUNABLE:
        raise UserError(f"{what} {name!r} is not a tunable setting: use one of "
                        f"{', '.join(sorted(TUNABLE))}")
    try:
        return name, [TUNABLE[name](v.strip()) for v in values.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"bad value in {what} {text!r}: {name} takes "
                        f"{TUNABLE[name].__name__} values") from None


def plan_trials(base_items, vary_items):
    """[(trial name, setting, value, settings)]: the base recipe, then one change at a time."""
    base = {}
    for item in base_items:
        name, values = parse_setting(item, "--base")
        if len(values) != 1:
            raise UserError(f"--base {item!r} gives {len(values)} values: give one")
        base[name] = values[0]
    trials = [(BASE, "", "", dict(base))]
    for item in vary_items:
        name, values = parse_setting(item, "--vary")
        for value in values:
            if base.get(name) == value:
                continue  # that is the base trial
            shown = teacher_name(value) if name == "teacher" else value
            trial = f"{name}={shown:g}" if isinstance(value, float) else f"{name}={shown}"
            if trial not in [t[0] for t in trials]:
                trials.append((trial, name, value, {**base, name: value}))
    return trials
