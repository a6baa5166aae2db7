"""One point of a sweep (a design, seed and initializer) and the steps that make it.

A point's steps run as child processes in its run directory (``OUT/runs/<name>/``): train
(float, then QAT), export the QAT INT8 file, the PTQ files for comparison, optionally the
per-layer sensitivity, then the analysis. Each step is skipped when its outputs are complete,
so a point resumes wherever it stopped. The settings are a plain ``SweepSettings`` (no flags),
so a point can run in the sweep's own process or as a Ray task on another machine
(``fnet_tf.search.executors``).
"""
import dataclasses
import os
import time
from typing import Optional

from fnet_tf.arch.architectures import width_text
from fnet_tf.core import fileio
from fnet_tf.core.child import run_streamed
from fnet_tf.core.errors import UserError
from fnet_tf.data import datasets as data_lib
from fnet_tf.run.rundir import RunDir, same_setting
from fnet_tf.search import sweep_report as report

PATH_SETTINGS = ("data", "out", "recipe_flags", "float_from", "cache_dir")


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """What every point of one sweep shares (``fnet_tf.sweep``'s flags)."""

    model: str
    width: object  # a float, or a per-stage tuple
    data: str
    out: str
    epochs: int
    qat_epochs: int
    qat_scheme: str = "int8"
    recipe_flags: Optional[str] = None
    batch_size: int = 128
    val_split: int = 5000
    image_size: Optional[str] = None
    threads: int = 0
    float_from: Optional[str] = None
    check_images: int = 2000
    ptq_per_tensor: bool = True
    sensitivity_images: int = 0
    cache_dir: Optional[str] = None

    def absolute(self):
        """The same settings with every path absolute (a Ray task runs in another folder)."""
        return dataclasses.replace(self, **{k: os.path.abspath(getattr(self, k))
                                            for k in PATH_SETTINGS if getattr(self, k)})


@dataclasses.dataclass(frozen=True)
class Point:
    """One sweep point (design, seed, initializer) and its run directory under ``--out``."""

    level: object
    seed: int
    init: str
    width: object
    name: str
    run_dir: str


def make_point(settings, level, seed, init, width=None):
    width = settings.width if width is None else width
    # a design's own width (--levels front) is named; the sweep-wide --width never was
    shown = str(level).replace(".", "_") + ("" if width == settings.width else (
        "-w" + width_text(width).replace(",", "-").replace(".", "_")))
    name = f"{settings.model}-l{shown}-s{seed}-{init}"
    return Point(level, seed, init, width, name, os.path.join(settings.out, "runs", name))


def plan_points(settings, designs, inits, seeds):
    """Every (design, init, seed) point, in the order the sweep trains them."""
    return [make_point(settings, lvl, seed, init, width)
            for lvl, width in designs for init in inits for seed in seeds]


def train_args(settings, point, run_dir):
    args = ["-m", "fnet_tf.train", "--model", settings.model, "--level", str(point.level),
            "--width", str(point.width), "--data", settings.data, "--run_dir", run_dir,
            "--qat_epochs", str(settings.qat_epochs), "--qat_scheme", settings.qat_scheme,
            "--batch_size", str(settings.batch_size), "--val_split", str(settings.val_split),
            "--seed", str(point.seed), "--init", point.init, "--threads", str(settings.threads),
            "--verbose", "2"]
    if settings.cache_dir:
        args += ["--cache_dir", settings.cache_dir]
    if settings.image_size:
        args += ["--image_size", settings.image_size]
    if settings.recipe_flags:
        args += ["--flagfile", os.path.abspath(settings.recipe_flags)]
    if settings.float_from:
        source = os.path.join(settings.float_from, f"{settings.model}-l{point.level}")
        return args + ["--epochs", "0", "--init_from", source]
    return args + ["--epochs", str(settings.epochs)]


def export_args(settings, run_dir, scheme, out):
    args = ["-m", "fnet_tf.to_tflite", run_dir, "--scheme", scheme, "--out", out,
            "--check_images", str(settings.check_images)]
    return args + (["--cache_dir", settings.cache_dir] if settings.cache_dir else [])


def recipe_file_settings(path):
    """``{flag: value text}`` of a --recipe_flags file's ``--name=value`` lines (``--name``:
    "true", ``--noname``: "false")."""
    settings = {}
    for line in fileio.read_text(path, fileio.JSON_LIMIT).splitlines():
        line = line.strip()
        if not line.startswith("--"):
            continue
        name, has_value, value = line[2:].partition("=")
        if not has_value:
            name, value = (name[2:], "false") if name.startswith("no") else (name, "true")
        settings[name] = value
    return settings


def _agrees(stored, wanted):
    """Whether a config.json value and the sweep's setting (a value or its flag text) agree."""
    if isinstance(wanted, str) and not isinstance(stored, str) and stored is not None:
        if isinstance(stored, bool):
            return wanted.lower() in ("true", "1") if stored else wanted.lower() in ("false", "0")
        try:
            return float(wanted) == float(stored)
        except (TypeError, ValueError):
            return False
    return same_setting(stored, wanted)


def point_changes(settings, point, run_dir=None):
    """``[(flag, recorded, now)]`` for the training settings this sweep would give ``point``
    that its run directory's config.json records otherwise (empty for a new run)."""
    stored = RunDir(run_dir or point.run_dir).config() or {}
    size = data_lib.image_size_flag(settings.image_size)
    wanted = {"model": settings.model, "epochs": 0 if settings.float_from else settings.epochs,
              "qat_epochs": settings.qat_epochs, "qat_scheme": settings.qat_scheme,
              "batch_size": settings.batch_size, "val_split": settings.val_split,
              "data": settings.data, "seed": point.seed, "init": point.init,
              "image_size": list(size) if size else None}
    if not settings.recipe_flags:
        wanted["teacher"] = None  # a distilled point is not reused for an undistilled sweep
    else:
        wanted.update({k: (os.path.abspath(v) if k in ("teacher", "sensitivity_csv") else v)
                       for k, v in recipe_file_settings(settings.recipe_flags).items()})
    return [(k, stored[k], v) for k, v in wanted.items()
            if k in stored and not _agrees(stored[k], v)]


def point_steps(settings, point, run_dir, prefix):
    """``[(name, done(), do())]``: every step of one point, in order, in ``run_dir``."""
    run = RunDir(run_dir)
    cache_args = ["--cache_dir", settings.cache_dir] if settings.cache_dir else []

    def export(scheme, name, label):
        return lambda: run_streamed(export_args(settings, run_dir, scheme,
                                                os.path.join(run_dir, name)), f"{prefix}: {label}")

    after_training = [
        ("export QAT int8", lambda: run.is_complete(f"export:{report.QAT_FILE}"),
         export("auto", report.QAT_FILE, "export")),
        ("export PTQ int8", lambda: run.is_complete(f"export:{report.PTQ_FILE}"),
         export("ptq", report.PTQ_FILE, "export PTQ")),
        ("export PTQ per-tensor int8",
         lambda: not settings.ptq_per_tensor or run.is_complete(
             f"export:{report.PTQ_PER_TENSOR_FILE}"),
         export("ptq_per_tensor", report.PTQ_PER_TENSOR_FILE, "export PTQ per-tensor")),
        ("sensitivity", lambda: not settings.sensitivity_images or os.path.isfile(
            os.path.join(run_dir, "analysis", "sensitivity.csv")),
         lambda: run_streamed(["-m", "fnet_tf.analyze", run_dir, "--sensitivity", "--limit",
                               str(settings.sensitivity_images)] + cache_args,
                              f"{prefix}: sensitivity")),
        ("analyze", lambda: report.analysis_complete(run_dir),
         lambda: run_streamed(["-m", "fnet_tf.analyze", run_dir, "--tool_check=false",
                               "--latency_runs", "50", "--threads", "1"] + cache_args,
                              f"{prefix}: analyze")),
    ]
    # Training is done when its models are, or when every step that reads them is (a finished
    # run parked by tools/park.py travels without its Keras models).
    return [("train", lambda: (run.is_complete("float") and run.is_complete("qat"))
             or all(done() for _, done, _ in after_training),
             lambda: run_streamed(train_args(settings, point, run_dir), f"{prefix}: train"))
            ] + after_training


def point_finished(settings, point, run_dir=None):
    """Whether every step of ``point`` is complete in ``run_dir`` (default: its own)."""
    return all(done() for _, done, _ in point_steps(settings, point, run_dir or point.run_dir, ""))


def point_prefix(point, index, total):
    return f"level {point.level} ({index}/{total}) seed {point.seed} {point.init}"


def run_point(settings, point, index, total, run_dir=None):
    """Every missing step of one point, in order, in ``run_dir`` (default: its own under
    ``--out``); complete steps are reused."""
    run_dir = run_dir or point.run_dir
    prefix = point_prefix(point, index, total)
    changes = point_changes(settings, point, run_dir) if RunDir(run_dir).has_progress() else []
    if changes:
        shown = ", ".join(f"--{k}={old!r} (now {new!r})" for k, old, new in changes[:4])
        raise UserError(f"{point.run_dir} was trained with other settings: {shown}; pass a new "
                        f"--out for the new settings, or the recorded ones to resume or re-report")
    for name, done, do in point_steps(settings, point, run_dir, prefix):
        if done():
            print(f"{prefix}: {name} complete, reusing {run_dir}", flush=True)
            continue
        started = time.time()
        print(f"{prefix}: {name} ...", flush=True)
        do()
        print(f"{prefix}: {name} done in {time.time() - started:.0f}s", flush=True)
