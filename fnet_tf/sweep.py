"""The progressive depth-factorization sweep: ``python -m fnet_tf.sweep --levels 0-7 ...``.

For every level (x seed x initializer) it trains float, QAT, exports the INT8 file (and
post-training-quantized ones, per channel and per tensor, for comparison), optionally measures
the float model's per-layer weight sensitivity (``--sensitivity_images``) and analyzes it, each
step in the point's own run directory ``OUT/runs/<model>-l<level>-s<seed>-<init>/``, skipping
steps already complete there.
An interrupted sweep therefore resumes where it stopped; a finished one re-reports in seconds.
At the end all INT8 files are timed in one interleaved pass and ``OUT`` gets ``sweep.csv``,
``summary.md`` and the plots (``fnet_tf.search.sweep_report``).

    python -m fnet_tf.sweep --levels 0-7 --data ../shared/data/cifar10-jpeg.tar.gz \\
        --out sweeps/fnet --epochs 30 --qat_epochs 3
    python -m fnet_tf.sweep --out sweeps/fnet --report            # merge + re-plot only
    python -m fnet_tf.sweep --out sweeps/fnet --select "macs<=1e7,latency_ms<=0.5"

Float training can come from Keras 3 on an accelerator machine (``tools/accel_float.sh``):
``--float_from DIR`` imports ``DIR/<model>-l<level>/`` instead of training float here.
Several machines can each take some levels (``--levels 0-3`` here, ``--levels 4-7`` there)
into copies of the same ``--out``; ``--report`` over the merged ``runs/`` makes one table.
"""
import os
import time

from absl import flags

from fnet_tf.arch import flags as arch_flags
from fnet_tf.arch.architectures import width_text
from fnet_tf.core import cli, fileio
from fnet_tf.core.child import run_streamed
from fnet_tf.core.errors import UserError
from fnet_tf.run.rundir import same_setting

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "factorizenet", "Registered model to sweep.")
flags.DEFINE_string("levels", None, "Levels: 'all', '0-7', '0,3,7' or a mix ('0-2,7'); a "
                    "part with dots is one design with a level per stage ('0.0.7', with "
                    "--width 0.5,0.75,1).")
arch_flags.define_width()
flags.DEFINE_string("data", None, "Dataset (as fnet_tf.train --data).")
flags.DEFINE_string("out", None, "Sweep directory (runs/, sweep.csv, summary.md, plots).")
flags.DEFINE_integer("epochs", 30, "Float epochs per point (ignored with --float_from).")
flags.DEFINE_integer("qat_epochs", 3, "QAT epochs per point.")
flags.DEFINE_string("qat_scheme", "int8", "QAT scheme.")
flags.DEFINE_string("recipe_flags", None, "An absl flagfile of recipe settings passed to every "
                    "point's training, e.g. the tuner's chosen.flags (python -m fnet_tf.tune).")
flags.DEFINE_integer("seeds", 1, "Seeds per level (first_seed .. first_seed+seeds-1); the table "
                     "shows mean ± std over every seed in --out.")
flags.DEFINE_integer("first_seed", 0, "First seed: add seeds to a finished sweep (--first_seed 2 "
                     "--seeds 1 trains seed 2) or split one sweep's seeds across processes.")
flags.DEFINE_list("init", ["he_normal"], "Kernel initializers to compare (a sweep dimension).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("val_split", 5000, "Training images held out for validation.")
flags.DEFINE_string("image_size", None, "Input size of every point (as fnet_tf.train "
                    "--image_size; default 32x32).")
flags.DEFINE_integer("threads", 0, "CPU threads for training (0: all); INT8 timing uses 1.")
flags.DEFINE_string("float_from", None, "Directory of Keras 3 float runs "
                    "(tools/accel_float.sh output): import <model>-l<level>/ instead of "
                    "training float here (seed 0, he_normal only).")
flags.DEFINE_string("peer", None, "A reference INT8 .tflite (e.g. the MLPerf Tiny ResNet-8) "
                    "added to the table and the Pareto plots.")
flags.DEFINE_integer("check_images", 2000, "Test images for the export's Keras/LiteRT check.")
flags.DEFINE_integer("latency_runs", 200, "Timed invokes per model in the interleaved pass.")
flags.DEFINE_integer("latency_probes", 0, "--design_space: time this many designs (spread over "
                     "MACs) first, fit a latency model (fnet_tf/search/latency_model.py) and choose the "
                     "--max_candidates others by predicted latency (0: spread over MACs).",
                     lower_bound=0)
flags.DEFINE_integer("latency_passes", 1, "--design_space: interleaved timing passes; the table "
                     "keeps median p50s and the median of the per-pass ratios to the peer.",
                     lower_bound=1)
flags.DEFINE_bool("ptq_per_tensor", True, "Also export each run post-training quantized with "
                  "one scale per tensor (the table's 'PTQ INT8 per-tensor': how much a model's "
                  "channel ranges cost without per-channel scales).")
flags.DEFINE_integer("sensitivity_images", 0, "Also measure each run's per-layer weight "
                     "sensitivity (fnet_tf.analyze --sensitivity) on this many validation "
                     "images; the table gives its 4-bit figures (0: skip).")
flags.DEFINE_bool("report", False, "Only collect the finished runs in --out and re-plot.")
flags.DEFINE_string("select", None, "Print the best level under constraints, e.g. "
                    "'macs<=5e6,latency_ms<=0.3' (keys: macs, params, latency_ms, size_bytes, "
                    "accuracy), from the existing sweep.csv; trains nothing.")
flags.DEFINE_string("cache_dir", None, "Dataset cache directory.")
flags.DEFINE_string("design_space", None, "Time a design space untrained and stop (no training): "
                    "'levels=0-7 per stage; width=0.75,1,1.25' (fnet_tf/search/design_space.py); then "
                    "--levels front trains its MACs/latency front, --levels capacity_front the "
                    "most MACs at each latency no slower than the peer.")
flags.DEFINE_float("max_macs", None, "--design_space: drop designs above this many MACs.")
flags.DEFINE_float("max_params", None, "--design_space: drop designs above this many params.")
flags.DEFINE_integer("max_candidates", 60, "--design_space: at most this many designs are "
                     "converted and timed (spread evenly over MACs).")
flags.DEFINE_integer("calibration_images", 200, "--design_space: training images to calibrate "
                     "each untrained file.")


class Point:
    """One sweep point (level, seed, initializer) and its run directory."""

    def __init__(self, out, model, level, seed, init, width=None):
        self.level, self.seed, self.init = level, seed, init
        self.width = FLAGS.width if width is None else width
        # a design's own width (--levels front) is named; the sweep-wide --width never was
        shown = str(level).replace(".", "_") + ("" if self.width == FLAGS.width else (
            "-w" + width_text(self.width).replace(",", "-").replace(".", "_")))
        self.name = f"{model}-l{shown}-s{seed}-{init}"
        self.run_dir = os.path.join(out, "runs", self.name)

    def run(self):
        from fnet_tf.run.rundir import RunDir

        return RunDir(self.run_dir)


def plan_points(out, model, designs, inits, seeds):
    """Every (design, init, seed) point, in the order the sweep trains them."""
    return [Point(out, model, lvl, seed, init, width)
            for lvl, width in designs for init in inits for seed in seeds]


def _image_size():
    from fnet_tf.data import datasets as data_lib

    return data_lib.image_size_flag(FLAGS.image_size)


def train_args(point):
    args = ["-m", "fnet_tf.train", "--model", FLAGS.model, "--level", str(point.level),
            "--width", str(point.width), "--data", FLAGS.data, "--run_dir", point.run_dir,
            "--qat_epochs", str(FLAGS.qat_epochs), "--qat_scheme", FLAGS.qat_scheme,
            "--batch_size", str(FLAGS.batch_size), "--val_split", str(FLAGS.val_split),
            "--seed", str(point.seed), "--init", point.init, "--threads", str(FLAGS.threads),
            "--verbose", "2"]
    if FLAGS.cache_dir:
        args += ["--cache_dir", FLAGS.cache_dir]
    if FLAGS.image_size:
        args += ["--image_size", FLAGS.image_size]
    if FLAGS.recipe_flags:
        args += ["--flagfile", os.path.abspath(FLAGS.recipe_flags)]
    if FLAGS.float_from:
        source = os.path.join(FLAGS.float_from, f"{FLAGS.model}-l{point.level}")
        return args + ["--epochs", "0", "--init_from", source]
    return args + ["--epochs", str(FLAGS.epochs)]


def export_args(point, scheme, out):
    args = ["-m", "fnet_tf.to_tflite", point.run_dir, "--scheme", scheme, "--out", out,
            "--check_images", str(FLAGS.check_images)]
    return args + (["--cache_dir", FLAGS.cache_dir] if FLAGS.cache_dir else [])


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


def point_changes(point):
    """``[(flag, recorded, now)]`` for the training settings this sweep would give ``point``
    that its run directory's config.json records otherwise (empty for a new run)."""
    stored = point.run().config() or {}
    size = _image_size()
    wanted = {"model": FLAGS.model, "epochs": 0 if FLAGS.float_from else FLAGS.epochs,
              "qat_epochs": FLAGS.qat_epochs, "qat_scheme": FLAGS.qat_scheme,
              "batch_size": FLAGS.batch_size, "val_split": FLAGS.val_split, "data": FLAGS.data,
              "seed": point.seed, "init": point.init,
              "image_size": list(size) if size else None}
    if not FLAGS.recipe_flags:
        wanted["teacher"] = None  # a distilled point is not reused for an undistilled sweep
    else:
        wanted.update({k: (os.path.abspath(v) if k in ("teacher", "sensitivity_csv") else v)
                       for k, v in recipe_file_settings(FLAGS.recipe_flags).items()})
    return [(k, stored[k], v) for k, v in wanted.items()
            if k in stored and not _agrees(stored[k], v)]


def run_point(point, index, total):
    """Every missing step of one point, in order; complete steps are reused."""
    from fnet_tf.search import sweep_report as report

    prefix = f"level {point.level} ({index}/{total}) seed {point.seed} {point.init}"
    run = point.run()
    cache_args = ["--cache_dir", FLAGS.cache_dir] if FLAGS.cache_dir else []
    after_training = [
        ("export QAT int8", lambda: run.is_complete(f"export:{report.QAT_FILE}"),
         lambda: run_streamed(export_args(point, "auto", os.path.join(point.run_dir, report.QAT_FILE)),
                         f"{prefix}: export")),
        ("export PTQ int8", lambda: run.is_complete(f"export:{report.PTQ_FILE}"),
         lambda: run_streamed(export_args(point, "ptq", os.path.join(point.run_dir, report.PTQ_FILE)),
                         f"{prefix}: export PTQ")),
        ("export PTQ per-tensor int8",
         lambda: not FLAGS.ptq_per_tensor or run.is_complete(f"export:{report.PTQ_PER_TENSOR_FILE}"),
         lambda: run_streamed(export_args(point, "ptq_per_tensor",
                                          os.path.join(point.run_dir, report.PTQ_PER_TENSOR_FILE)),
                              f"{prefix}: export PTQ per-tensor")),
        ("sensitivity", lambda: not FLAGS.sensitivity_images or os.path.isfile(
            os.path.join(point.run_dir, "analysis", "sensitivity.csv")),
         lambda: run_streamed(["-m", "fnet_tf.analyze", point.run_dir, "--sensitivity",
                               "--limit", str(FLAGS.sensitivity_images)] + cache_args,
                              f"{prefix}: sensitivity")),
        ("analyze", lambda: report.analysis_complete(point.run_dir),
         lambda: run_streamed(["-m", "fnet_tf.analyze", point.run_dir, "--tool_check=false",
                          "--latency_runs", "50", "--threads", "1"] + cache_args,
                         f"{prefix}: analyze")),
    ]
    # Training is done when its models are, or when every step that reads them is (a finished
    # run parked by tools/park.py travels without its Keras models).
    steps = [("train", lambda: (run.is_complete("float") and run.is_complete("qat"))
              or all(done() for _, done, _ in after_training),
              lambda: run_streamed(train_args(point), f"{prefix}: train"))] + after_training
    changes = point_changes(point) if run.has_progress() else []
    if changes:
        shown = ", ".join(f"--{k}={old!r} (now {new!r})" for k, old, new in changes[:4])
        raise UserError(f"{point.run_dir} was trained with other settings: {shown}; pass a new "
                        f"--out for the new settings, or the recorded ones to resume or re-report")
    for name, done, do in steps:
        if done():
            print(f"{prefix}: {name} complete, reusing {point.run_dir}", flush=True)
            continue
        started = time.time()
        print(f"{prefix}: {name} ...", flush=True)
        do()
        print(f"{prefix}: {name} done in {time.time() - started:.0f}s", flush=True)


def _validate():
    if not FLAGS.out:
        raise UserError("--out is required: the sweep directory, e.g. sweeps/factorizenet")
    _image_size()  # fails fast if malformed
    if FLAGS.select or FLAGS.report:
        return
    if FLAGS.design_space:
        if not FLAGS.data or not FLAGS.peer:
            raise UserError("--design_space needs --data (calibration images) and --peer (the "
                            "reference .tflite it is timed against)")
        return
    checks = [
        (FLAGS.data, "--data is required to train (e.g. ../shared/data/cifar10-jpeg.tar.gz)"),
        (FLAGS.seeds >= 1, f"--seeds must be 1 or more, got {FLAGS.seeds}"),
        (FLAGS.first_seed >= 0, f"--first_seed must be 0 or more, got {FLAGS.first_seed}"),
        (FLAGS.qat_epochs >= 1, f"--qat_epochs must be 1 or more, got {FLAGS.qat_epochs}"),
        (FLAGS.epochs >= 1 or FLAGS.float_from, f"--epochs must be 1 or more, got {FLAGS.epochs}"),
        (FLAGS.threads >= 0, f"--threads must be 0 (all cores) or more, got {FLAGS.threads}"),
        (FLAGS.sensitivity_images >= 0, "--sensitivity_images must be 0 (skip) or more, got "
         f"{FLAGS.sensitivity_images}"),
        (not FLAGS.float_from or (FLAGS.seeds == 1 and FLAGS.first_seed == 0
                                  and FLAGS.init == ["he_normal"]),
         "--float_from imports one float model per level: use it with --seeds 1 and the "
         "default --init"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if FLAGS.float_from and not os.path.isdir(FLAGS.float_from):
        raise UserError(f"--float_from {FLAGS.float_from!r} is not a directory")
    if FLAGS.recipe_flags and not os.path.isfile(FLAGS.recipe_flags):
        raise UserError(f"--recipe_flags {FLAGS.recipe_flags!r} does not exist: pass a flagfile "
                        f"such as the tuner's chosen.flags")
    if FLAGS.peer and not os.path.isfile(FLAGS.peer):
        raise UserError(f"--peer {FLAGS.peer!r} does not exist: pass an INT8 .tflite file")


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])!r}: flags only")
    _validate()
    from fnet_tf.search import sweep_report as report

    if FLAGS.select:
        print(report.select_text(FLAGS.out, FLAGS.select))
        return 0
    if FLAGS.design_space:
        from fnet_tf.data import datasets as data_lib
        from fnet_tf.search import design_space

        data_lib.check_source(FLAGS.data)
        design_space.run(FLAGS.design_space, FLAGS.model, FLAGS.out, FLAGS.data, FLAGS.peer,
                         max_macs=FLAGS.max_macs, max_params=FLAGS.max_params,
                         max_candidates=FLAGS.max_candidates,
                         calibration_images=FLAGS.calibration_images,
                         latency_runs=FLAGS.latency_runs, cache_dir=FLAGS.cache_dir,
                         passes=FLAGS.latency_passes, probes=FLAGS.latency_probes,
                         image_size=_image_size())
        return 0
    if not FLAGS.report:
        from fnet_tf.arch import architectures
        from fnet_tf.data import datasets as data_lib

        top = architectures.model_spec(FLAGS.model, 0, FLAGS.width).meta["max_level"]
        if FLAGS.levels in ("front", "capacity_front"):
            from fnet_tf.search import design_space

            designs = design_space.read_front(FLAGS.out, FLAGS.levels)
        else:
            designs = [(lvl, FLAGS.width) for lvl in arch_flags.parse_levels(FLAGS.levels, top, FLAGS.model)]
        for lvl, width in designs:  # a per-stage design of the wrong length fails here, not later
            architectures.model_spec(FLAGS.model, lvl, width)
        levels = [lvl for lvl, _ in designs]
        data_lib.check_source(FLAGS.data)
        from fnet_tf.arch import initializers

        for init in FLAGS.init:
            if not initializers.is_well_formed(init):
                raise UserError(f"bad --init {init!r}: a Keras initializer name or a naive "
                                f"one such as normal_std0.01")
        if FLAGS.float_from:
            missing = [lvl for lvl in levels if not os.path.isdir(
                os.path.join(FLAGS.float_from, f"{FLAGS.model}-l{lvl}"))]
            if missing:
                raise UserError(f"--float_from {FLAGS.float_from} has no {FLAGS.model}-l"
                                f"{missing[0]}/: train it there or drop that level")
        points = plan_points(FLAGS.out, FLAGS.model, designs, FLAGS.init,
                             range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds))
        for i, point in enumerate(points, 1):
            run_point(point, i, len(points))
    report.write_report(FLAGS.out, data=FLAGS.data, peer=FLAGS.peer,
                        latency_runs=FLAGS.latency_runs, cache_dir=FLAGS.cache_dir)
    return 0


console = cli.entry_point(  # the fnet-sweep command
    main, usage="fnet-sweep --out DIR --data D [flags]   (python -m fnet_tf.sweep in a checkout)",
    common=("model", "levels", "width", "data", "out", "epochs", "qat_epochs", "seeds",
            "recipe_flags", "peer", "image_size", "threads", "report", "select"))

if __name__ == "__main__":
    console()
