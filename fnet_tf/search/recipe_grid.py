"""The trials of a recipe tuning: the base recipe, then one changed setting at a time.

Kept free of flags and TensorFlow (``fnet_tf.tune`` is the CLI around it).
"""
import time
from dataclasses import dataclass

from fnet_tf.core.child import run_streamed
from fnet_tf.core.errors import UserError
from fnet_tf.core.wording import count
from fnet_tf.run.rundir import RunDir
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


def trial_result(run_dir):
    """Validation figures of a finished trial, or None when it has not finished."""
    run = RunDir(run_dir)
    if not run.is_complete("float"):
        return None
    curve = [(int(r["epoch"]), float(r["val_accuracy"])) for r in run.history()
             if r.get("phase") == "float" and r.get("val_accuracy")]
    if not curve:
        return None
    metrics = run.read_json(run.METRICS, {}).get("float", {})
    best_epoch, best = max(curve, key=lambda c: c[1])
    return {"val_accuracy": metrics.get("val_accuracy", curve[-1][1]),
            "best_val_accuracy": best, "best_epoch": best_epoch, "epochs": len(curve),
            "mean_epoch_seconds": metrics.get("mean_epoch_seconds"), "curve": curve}


def trial_finished(run_dir):
    return trial_result(run_dir) is not None


def run_trial(args, prefix, epochs, run_dir):
    """One trial's work (an executor job): train ``python ARGS --run_dir RUN_DIR`` unless it
    has finished; a trial in progress resumes from its last epoch."""
    if trial_finished(run_dir):
        print(f"{prefix}: complete, reusing {run_dir}", flush=True)
        return
    started = time.time()
    print(f"{prefix}: training {count(epochs, 'epoch')} ...", flush=True)
    run_streamed([*args, "--run_dir", run_dir], prefix)
    print(f"{prefix}: done in {time.time() - started:.0f}s", flush=True)


@dataclass(frozen=True)
class Range:
    """One searched setting: ``low..high`` (``log``: sampled on a log scale) or ``choices``."""

    name: str
    low: float = None
    high: float = None
    log: bool = False
    choices: tuple = ()


def parse_space(items):
    """``--space`` items -> {name: Range}: ``lr=0.02:0.5:log``, ``label_smoothing=0:0.2``,
    ``batch_size=64:256`` (an int setting samples ints), ``optimizer=sgd,adamw``."""
    space = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not text.strip():
            raise UserError(f"bad --space {item!r}: use SETTING=LOW:HIGH[:log] or "
                            f"SETTING=CHOICE,CHOICE")
        if name not in TUNABLE:
            raise UserError(f"--space {name!r} is not a tunable setting: use one of "
                            f"{', '.join(sorted(TUNABLE))}")
        kind = TUNABLE[name]
        if ":" in text:
            parts = text.split(":")
            log = parts[2:] == ["log"]
            if len(parts) not in (2, 3) or (len(parts) == 3 and not log) or kind is str:
                raise UserError(f"bad --space {item!r}: a range is LOW:HIGH or LOW:HIGH:log, "
                                f"for a number setting")
            try:
                low, high = kind(parts[0]), kind(parts[1])
            except ValueError:
                raise UserError(f"bad --space {item!r}: {name} takes {kind.__name__} "
                                f"values") from None
            if not low < high or (log and low <= 0):
                raise UserError(f"bad --space {item!r}: need LOW < HIGH (and LOW > 0 for log)")
            space[name] = Range(name, low, high, log)
        else:
            _, values = parse_setting(item, "--space")
            if len(values) < 2:
                raise UserError(f"--space {item!r} gives one choice: give a range or several")
            space[name] = Range(name, choices=tuple(values))
    if not space:
        raise UserError("--search needs at least one --space SETTING=LOW:HIGH[:log]")
    return space
