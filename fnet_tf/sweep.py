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
Several machines: ``--executor ray`` runs each point as a Ray task on this machine's cores or
a cluster (``--ray_address``; ``fnet_tf/search/executors.py``, docs/sweeps.md); by hand, each
machine can take some levels into a copy of ``--out`` and ``--report`` merges the ``runs/``.
A point's steps are ``fnet_tf/search/sweep_points.py``.
"""
import functools
import os

from absl import flags

from fnet_tf.arch import flags as arch_flags
from fnet_tf.core import cli
from fnet_tf.core.errors import UserError
from fnet_tf.data import datasets as data_lib
from fnet_tf.search import executors, sweep_points
from fnet_tf.search import sweep_report as report

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
executors.define_flags()
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


def settings_from_flags(threads=None):
    """The flags every point shares, as a plain value a Ray task can carry."""
    return sweep_points.SweepSettings(
        model=FLAGS.model, width=FLAGS.width, data=FLAGS.data, out=FLAGS.out,
        epochs=FLAGS.epochs, qat_epochs=FLAGS.qat_epochs, qat_scheme=FLAGS.qat_scheme,
        recipe_flags=FLAGS.recipe_flags, batch_size=FLAGS.batch_size,
        val_split=FLAGS.val_split, image_size=FLAGS.image_size,
        threads=FLAGS.threads if threads is None else threads, float_from=FLAGS.float_from,
        check_images=FLAGS.check_images, ptq_per_tensor=FLAGS.ptq_per_tensor,
        sensitivity_images=FLAGS.sensitivity_images, cache_dir=FLAGS.cache_dir)


def point_jobs(settings, points):
    """The executor's jobs: one per point, each every missing step of the point."""
    return [executors.Job(p.name, p.run_dir,
                          functools.partial(sweep_points.run_point, settings, p, i, len(points)),
                          functools.partial(sweep_points.point_finished, settings, p))
            for i, p in enumerate(points, 1)]


def _validate():
    if not FLAGS.out:
        raise UserError("--out is required: the sweep directory, e.g. sweeps/factorizenet")
    data_lib.image_size_flag(FLAGS.image_size)  # fails fast if malformed
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
    if FLAGS.select:
        print(report.select_text(FLAGS.out, FLAGS.select))
        return 0
    if FLAGS.design_space:
        from fnet_tf.search import design_space

        data_lib.check_source(FLAGS.data)
        design_space.run(FLAGS.design_space, FLAGS.model, FLAGS.out, FLAGS.data, FLAGS.peer,
                         max_macs=FLAGS.max_macs, max_params=FLAGS.max_params,
                         max_candidates=FLAGS.max_candidates,
                         calibration_images=FLAGS.calibration_images,
                         latency_runs=FLAGS.latency_runs, cache_dir=FLAGS.cache_dir,
                         passes=FLAGS.latency_passes, probes=FLAGS.latency_probes,
                         image_size=data_lib.image_size_flag(FLAGS.image_size))
        return 0
    if not FLAGS.report:
        from fnet_tf.arch import architectures

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
        executor = executors.from_flags(FLAGS)
        settings = settings_from_flags(executor.threads)
        if executor.name != "local":
            settings = settings.absolute()  # a task runs in another folder, maybe elsewhere
        points = sweep_points.plan_points(settings, designs, FLAGS.init,
                                          range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds))
        executor.run(point_jobs(settings, points), FLAGS.out)
    report.write_report(FLAGS.out, data=FLAGS.data, peer=FLAGS.peer,
                        latency_runs=FLAGS.latency_runs, cache_dir=FLAGS.cache_dir)
    return 0


console = cli.entry_point(  # the fnet-sweep command
    main, usage="fnet-sweep --out DIR --data D [flags]   (python -m fnet_tf.sweep in a checkout)",
    common=("model", "levels", "width", "data", "out", "epochs", "qat_epochs", "seeds",
            "recipe_flags", "peer", "image_size", "threads", "report", "select"))

if __name__ == "__main__":
    console()
