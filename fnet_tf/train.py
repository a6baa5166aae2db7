"""Train a model of the zoo: ``python -m fnet_tf.train --model factorizenet --level 3``.

Two phases, each resumable: float training (``--epochs``), then quantization-aware training
(``--qat_epochs``) with a scheme from ``fnet_tf.quantization`` at a lower learning rate, the
TF-MOT recipe. ``--epochs 0 --qat_epochs Q --init_from RUN_DIR`` starts QAT from another run's
float model.

Float training with SGD (Nesterov) or AdamW, warm-up + cosine LR, decoupled weight decay
(not on BN, biases or depthwise kernels), standard CIFAR augmentation. Every epoch is
checkpointed atomically; re-running the same command on the same ``--run_dir`` resumes after
the last completed epoch (Ctrl-C stops cleanly; ``kill -9`` loses at most the epoch in
progress). The run directory gains config.json, history.csv, run.json, model_float.keras and
metrics.json (test accuracy, measured once at the end).
"""
import dataclasses
import os
import sys
from dataclasses import replace

from absl import flags

from fnet_tf.arch import flags as arch_flags
from fnet_tf.core import cli
from fnet_tf.core.errors import UserError
from fnet_tf.quantization import options as quantization_options
from fnet_tf.run.rundir import local_or_name
from fnet_tf.training import qat_plans
from fnet_tf.training.recipe import Recipe

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "factorizenet", "Registered model (python -m fnet_tf.models lists them).")
arch_flags.define_level(0)
arch_flags.define_width()
flags.DEFINE_string("data", "cifar10", "'cifar10' (tensorflow-datasets), an image-folder tree, "
                    "or its .tar.gz/.zip, e.g. ../shared/data/cifar10-jpeg.tar.gz.")
flags.DEFINE_string("run_dir", None, "Run directory (default runs/<model>-l<level>, with "
                    "-HxW for another --image_size and -finetuned with --init_from).")
flags.DEFINE_string("cache_dir", None, "Where archives are extracted and decoded images cached "
                    "(default $FNET_TF_CACHE or ~/.cache/fnet_tf).")
flags.DEFINE_integer("val_split", 5000, "Training images held out for validation (0: none).")
flags.DEFINE_integer("epochs", 30, "Float training epochs.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adamw", "sgd_gradboost", "adamw_gradboost"],
                  "Optimizer (SGD: Nesterov momentum 0.9); *_gradboost adds FrostNet's GradBoost "
                  "gradient noise (fnet_tf/training/gradboost.py).")
flags.DEFINE_float("gradboost_clip", 1e-3, "GradBoost: the noise is clipped to +-this.")
flags.DEFINE_float("gradboost_decay", 1e-2, "GradBoost: the noise scales by (1 - decay)^step.")
flags.DEFINE_string("teacher", None, "Distill float training from this model's logits (a run "
                    "directory, a .keras file or a Keras 3 --out directory; fnet_tf/training/distill.py).")
flags.DEFINE_float("kd_alpha", 0.5, "--teacher: weight of the distillation term (0: plain "
                   "cross-entropy).")
flags.DEFINE_float("kd_temperature", 4.0, "--teacher: softmax temperature of the distillation.")
flags.DEFINE_integer("teacher_bank", 0, "--teacher: compute its logits once for this many "
                     "augmented epochs, kept in the cache and reused by every student (student "
                     "epoch e trains on bank epoch e mod N); 0: run the teacher on every batch.")
flags.DEFINE_enum("teacher_tta", "none", ["none", "flip"], "--teacher: its logits as they are, "
                  "or the mean over the image and its mirror (flip test-time augmentation).")
flags.DEFINE_bool("bank_mirror", False, "--teacher_bank with --teacher_tta flip: mirror a "
                  "random half of each bank epoch's views, drawn anew each student epoch (a flip-TTA "
                  "logit is its mirror's too), so the student sees twice the bank's views.")
flags.DEFINE_enum("qat_recipe", "finetune", list(qat_plans.PLANS), qat_plans.flag_help())
flags.DEFINE_integer("statassist_epochs", None, "--qat_recipe statassist: float warm-up epochs "
                     "(default: --epochs).")
flags.DEFINE_enum("statassist_warmup", "anneal", ["anneal", "ramp"], "--qat_recipe statassist: "
                  "the float warm-up's LR. anneal: a schedule of its own (warm-up capped at 20%, "
                  "cosine to 0); ramp: as the reference code runs it, the first epochs of the "
                  "linear --warmup_epochs warm-up (not capped, never annealed), restarted for QAT.")
flags.DEFINE_float("lr", None, "Peak learning rate (default 0.1 for sgd, 2e-3 for adamw).")
flags.DEFINE_enum("schedule", "cosine", ["cosine", "constant"], "LR after the warm-up.")
flags.DEFINE_float("warmup_epochs", 2.0, "Linear LR warm-up (capped at 20% of training).")
flags.DEFINE_float("weight_decay", None, "Decoupled weight decay, Keras semantics: each step "
                   "w -= lr*wd*w (default 5e-3 for sgd, about PyTorch's 5e-4 with momentum 0.9; "
                   "0.05 for adamw).")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing of the cross-entropy.")
flags.DEFINE_integer("cutout", 0, "Cutout square side in pixels (0: off).")
flags.DEFINE_integer("crop_pad", 4, "Random crops of each training image padded by this many "
                     "pixels (0: no crops).")
flags.DEFINE_enum("crop_mode", "zeros", ["zeros", "reflect"], "What --crop_pad pads with: "
                  "zeros, or the image's reflection (airbench's translate).")
flags.DEFINE_bool("lookahead", False, "airbench's lookahead: the weights move to their moving "
                  "average every 5,120 images, with a decay growing as the cube of progress.")
flags.DEFINE_integer("seed", 0, "Seed of the weights, data order and augmentation.")
flags.DEFINE_string("init", "he_normal", "Kernel initializer of convs and dense: a Keras name "
                    "(he_normal, glorot_uniform, ...) or a naive fixed-range one, normal_stdS or "
                    "uniform_limL (fnet_tf.arch.initializers).")
flags.DEFINE_integer("threads", 0, "CPU threads for TensorFlow (0: all cores).")
flags.DEFINE_enum("distribute", "none", ["none", "mirrored", "multi_worker"],
                  "tf.distribute strategy: mirrored (several GPUs), multi_worker (TF_CONFIG; "
                  "only the chief writes --run_dir, see fnet_tf.training.distribute).")
flags.DEFINE_string("worker_dir", None, "With --distribute multi_worker, where a non-chief "
                    "worker writes its copy of the run (default: a temporary directory, deleted "
                    "at the end). The chief ignores it.")
flags.DEFINE_integer("qat_epochs", 0, "Quantization-aware training epochs after float "
                     "training (0: stop after float).")
quantization_options.define_flags()  # --qat_scheme and each scheme's own options
flags.DEFINE_integer("qat_calibration_images", 512, "Before QAT's first step, set its activation "
                     "ranges from this many training images run through the float model (0: "
                     "TF-MOT's [-6, 6] start, which a short QAT on a small dataset never leaves).")
flags.DEFINE_float("qat_lr", None, "Peak QAT learning rate (default --lr / 20); cosine to 0, "
                   "no warm-up.")
flags.DEFINE_string("init_from", None, "Trained float weights to start from: a released model "
                    "(zoo:factorizenet-l3), a run directory, a .keras/.h5 file (tf_keras or "
                    "Keras 3) or the --out directory of python -m fnet_tf.keras3_float. With "
                    "--epochs N they are fine-tuned (a new classifier where the classes differ); "
                    "with --epochs 0 they are the float model as they are (QAT only).")
flags.DEFINE_integer("freeze_epochs", 0, "With --init_from: train only the classifier for this "
                     "many epochs first (the rest frozen), then the whole model for --epochs.")
flags.DEFINE_string("image_size", None, "Input size: 96 or height,width (96,128). Images are "
                    "resized so the shorter side fits, then center-cropped. Default: 32x32, or "
                    "the input size of the --init_from model.")
flags.DEFINE_bool("layer_stats", True, "Record layer-wise weight/activation statistics after "
                  "every epoch (layer_stats.jsonl, TensorBoard histograms).")
flags.DEFINE_bool("evaluate_test", True, "Measure the test split once at the end of each phase. "
                  "Recipe tuning (python -m fnet_tf.tune) turns it off: the phase's last "
                  "validation accuracy is recorded instead and the test split is never scored.")
flags.DEFINE_integer("verbose", None, "Keras verbosity: 1 progress bar, 2 a line per epoch, "
                     "0 silent (default: 1 on a terminal, 2 otherwise).")

cli.define_trust_model_code()

# Settings that may change between a run and its resume without changing the result.
RESUMABLE_ANYWAY = ("threads", "verbose", "run_dir", "cache_dir", "distribute", "layer_stats",
                    "trust_model_code", "worker_dir")

OPTIMIZER_DEFAULTS = {"sgd": {"lr": 0.1, "weight_decay": 5e-3},
                      "adamw": {"lr": 2e-3, "weight_decay": 0.05}}


def validate_flags():
    """Check every flag before any time is spent; UserError names the flag and the fix."""
    checks = [
        (FLAGS.epochs >= 0, f"--epochs must be 0 or more, got {FLAGS.epochs}"),
        (FLAGS.batch_size > 0, f"--batch_size must be positive, got {FLAGS.batch_size}"),
        (FLAGS.threads >= 0, f"--threads must be 0 (all cores) or a positive count, got {FLAGS.threads}"),
        (FLAGS.val_split >= 0, f"--val_split must be 0 or more, got {FLAGS.val_split}"),
        (FLAGS.lr is None or FLAGS.lr > 0, f"--lr must be positive, got {FLAGS.lr}"),
        (FLAGS.weight_decay is None or FLAGS.weight_decay >= 0,
         f"--weight_decay must be 0 or more, got {FLAGS.weight_decay}"),
        (0 <= FLAGS.label_smoothing < 1, f"--label_smoothing must be in [0, 1), got {FLAGS.label_smoothing}"),
        (FLAGS.cutout >= 0, f"--cutout must be 0 or more, got {FLAGS.cutout}"),
        (FLAGS.crop_pad >= 0, f"--crop_pad must be 0 or more, got {FLAGS.crop_pad}"),
        (FLAGS.warmup_epochs >= 0, f"--warmup_epochs must be 0 or more, got {FLAGS.warmup_epochs}"),
        (FLAGS.qat_epochs >= 0, f"--qat_epochs must be 0 or more, got {FLAGS.qat_epochs}"),
        (FLAGS.qat_lr is None or FLAGS.qat_lr > 0, f"--qat_lr must be positive, got {FLAGS.qat_lr}"),
        (FLAGS.qat_calibration_images >= 0, f"--qat_calibration_images must be 0 or more, got "
         f"{FLAGS.qat_calibration_images}"),
        (FLAGS.epochs > 0 or FLAGS.qat_epochs > 0, "--epochs and --qat_epochs are both 0: "
         "nothing to train"),
        (FLAGS.evaluate_test or FLAGS.val_split > 0, "--evaluate_test=false records validation "
         "accuracy instead of test accuracy: pass --val_split N (N > 0) with it"),
        (FLAGS.freeze_epochs >= 0, f"--freeze_epochs must be 0 or more, got {FLAGS.freeze_epochs}"),
        (FLAGS.freeze_epochs == 0 or (FLAGS.init_from and FLAGS.epochs > 0),
         "--freeze_epochs trains a new classifier on trained weights: pass --init_from SOURCE "
         "and --epochs N (N > 0)"),
        (0 <= FLAGS.kd_alpha <= 1, f"--kd_alpha must be in [0, 1], got {FLAGS.kd_alpha}"),
        (FLAGS.kd_temperature > 0, f"--kd_temperature must be positive, got {FLAGS.kd_temperature}"),
        (FLAGS.teacher is None or os.path.exists(FLAGS.teacher),
         f"--teacher {FLAGS.teacher!r} does not exist: pass a run directory, a .keras file or a "
         f"Keras 3 --out directory"),
        (FLAGS.teacher is None or FLAGS.epochs > 0 or FLAGS.statassist_epochs,
         "--teacher distills float training: pass --epochs N (N > 0)"),
        (FLAGS.teacher_bank >= 0, f"--teacher_bank must be 0 or more, got {FLAGS.teacher_bank}"),
        (FLAGS.teacher or not (FLAGS.teacher_bank or FLAGS.teacher_tta != "none"),
         "--teacher_bank and --teacher_tta need --teacher"),
        (not FLAGS.bank_mirror or (FLAGS.teacher_bank and FLAGS.teacher_tta == "flip"),
         "--bank_mirror mirrors views whose logits are flip-invariant: pass it with "
         "--teacher_bank N and --teacher_tta flip"),
        (FLAGS.gradboost_clip > 0, f"--gradboost_clip must be positive, got {FLAGS.gradboost_clip}"),
        (0 <= FLAGS.gradboost_decay < 1, f"--gradboost_decay must be in [0, 1), got "
         f"{FLAGS.gradboost_decay}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    for message in plan().problems(FLAGS.epochs, FLAGS.qat_epochs, FLAGS.init_from,
                                   FLAGS.statassist_epochs, FLAGS.statassist_warmup,
                                   FLAGS["epochs"].present):
        raise UserError(message)
    image_size()  # fails fast if malformed


def plan():
    """The QAT phase plan of --qat_recipe (``fnet_tf.training.qat_plans``)."""
    return qat_plans.get_plan(FLAGS.qat_recipe)


def image_size():
    """--image_size as (height, width), or None when not given."""
    from fnet_tf.data import datasets as data_lib

    return data_lib.image_size_flag(FLAGS.image_size)


def input_size():
    """The input size to train at: --image_size; else, for --init_from a run directory (or its
    model), the size that run trained at; else None (32x32). A model of the user's own keeps
    its input size (``_train`` checks it)."""
    size = image_size()
    source = FLAGS.init_from
    if size or not source or (os.path.isfile(source) and
                              os.path.basename(source) != "model_float.keras"):
        return size
    from fnet_tf.run.artifacts import is_run_dir
    from fnet_tf.run.rundir import RunDir

    folder = source if os.path.isdir(source) else os.path.dirname(source)
    recorded = (RunDir(folder).config() or {}).get("image_size") if is_run_dir(folder) else None
    return tuple(recorded) if recorded else None


def model_fields():
    """(model, level, width) of the architecture to train: the flags', or, for
    ``--init_from zoo:NAME``, the released model's (flags given with it must agree)."""
    from fnet_tf.release import zoo

    name = zoo.released_name(FLAGS.init_from)
    if name is None:
        return FLAGS.model, FLAGS.level, FLAGS.width

    released = zoo.metrics(name)  # UserError listing the released names if unknown
    fields = (released["model"], released["level"], released.get("width", 1.0))
    for key, value in zip(("model", "level", "width"), fields):
        if FLAGS[key].present and str(getattr(FLAGS, key)) != str(value):
            raise UserError(f"--init_from zoo:{name} is {key} {value!r}, not --{key} "
                            f"{getattr(FLAGS, key)!r}: drop --{key}")
    return fields


def float_epochs():
    """The float phase's epochs: --epochs, or a warm-up plan's (StatAssist's) own."""
    return plan().float_epochs(FLAGS.epochs, FLAGS.statassist_epochs)


def recipe_from_flags():
    defaults = OPTIMIZER_DEFAULTS[FLAGS.optimizer.split("_")[0]]
    return Recipe(
        epochs=float_epochs(), batch_size=FLAGS.batch_size, optimizer=FLAGS.optimizer,
        gradboost_clip=FLAGS.gradboost_clip, gradboost_decay=FLAGS.gradboost_decay,
        kd_alpha=FLAGS.kd_alpha if FLAGS.teacher else 0.0, kd_temperature=FLAGS.kd_temperature,
        teacher_bank=FLAGS.teacher_bank if FLAGS.teacher else 0,
        teacher_tta=FLAGS.teacher_tta if FLAGS.teacher else "none",
        bank_mirror=bool(FLAGS.bank_mirror and FLAGS.teacher),
        lr=FLAGS.lr if FLAGS.lr is not None else defaults["lr"],
        schedule=FLAGS.schedule,
        warmup=plan().float_warmup(FLAGS.statassist_warmup),
        warmup_epochs=FLAGS.warmup_epochs,
        weight_decay=(FLAGS.weight_decay if FLAGS.weight_decay is not None
                      else defaults["weight_decay"]),
        label_smoothing=FLAGS.label_smoothing, cutout=FLAGS.cutout, crop_pad=FLAGS.crop_pad,
        crop_mode=FLAGS.crop_mode, lookahead=FLAGS.lookahead, seed=FLAGS.seed)


def qat_recipe(recipe):
    """The QAT phase's recipe: the plan's LR and warm-up, or --qat_lr."""
    return plan().qat_recipe(recipe, FLAGS.qat_epochs, FLAGS.qat_lr)


def recorded_flags():
    """A run directory with progress remembers how it was started: every flag not given on the
    command line takes its value from DIR/config.json, so ``fnet-train --run_dir DIR`` (the
    command every hint prints) resumes it, and ``--run_dir DIR --qat_epochs 3`` adds QAT to
    it. A run without progress (failed before its first epoch) takes the command line as it
    is. Returns whether recorded values were used."""
    if not FLAGS.run_dir or not os.path.isfile(os.path.join(FLAGS.run_dir, "config.json")):
        return False
    from fnet_tf.run.rundir import RunDir

    run = RunDir(FLAGS.run_dir)
    if not run.has_progress():
        return False
    own = {f.name for f in FLAGS.get_key_flags_for_module(__name__)}
    filled = []
    for key, value in (run.config() or {}).items():
        if key in own and key not in RESUMABLE_ANYWAY and not FLAGS[key].present:
            if key == "image_size" and isinstance(value, list):
                value = ",".join(map(str, value))
            try:  # through the flag's own parser: a config.json may come from someone else
                value = None if value is None else FLAGS[key].parser.parse(value)
            except (ValueError, TypeError) as e:
                raise UserError(f"{run.file('config.json')} records --{key}={value!r:.60}, which "
                                f"is not a valid value ({e}): pass --{key} yourself, or a new "
                                f"--run_dir") from None
            if FLAGS[key].value != value:
                FLAGS[key].value = value
                filled.append(key)
    if filled:
        print(f"{FLAGS.run_dir}: flags not given are its recorded settings (config.json)",
              flush=True)
    return bool(filled)


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])!r}: fnet_tf.train takes flags only")
    recorded_flags()
    validate_flags()
    from fnet_tf.arch import architectures
    from fnet_tf.data import datasets as data_lib
    from fnet_tf.run.rundir import RunDir
    from fnet_tf.training import distribute

    spec = architectures.model_spec(*model_fields(), input_size())  # fails fast if unknown
    if FLAGS.qat_epochs and not spec.meta["qat"]:
        raise UserError(f"{FLAGS.model} is a float model that TF-MOT cannot quantize-aware-train "
                        f"(a BN after pooling folds into no conv): train it with --qat_epochs 0 "
                        f"and export it with post-training quantization, --scheme ptq")
    data_lib.check_source(FLAGS.data)
    h, w = spec.input_shape[:2]
    run_path = FLAGS.run_dir or os.path.join("runs", spec.name + (
        "" if (h, w) == (32, 32) else f"-{h}x{w}") + ("-finetuned" if FLAGS.init_from else ""))
    with distribute.writable_run_path(run_path, FLAGS.distribute, FLAGS.worker_dir) as (path, task):
        if task:
            print(f"multi-worker: this process is {task}; " + (
                f"it writes {run_path}" if path == run_path else
                f"the chief writes {run_path}, this worker writes only {path}"), flush=True)
        return _train(spec, RunDir(path))


def _train(spec, run):
    from fnet_tf.data import datasets as data_lib
    from fnet_tf.training import distribute

    recipe = recipe_from_flags()
    model, level, width = model_fields()
    config = {"model": model, "level": level, "width": width,
              "image_size": list(input_size()) if input_size() else None,
              "init_from": local_or_name(FLAGS.init_from), "freeze_epochs": FLAGS.freeze_epochs,
              "data": local_or_name(FLAGS.data), "val_split": FLAGS.val_split, "init": FLAGS.init,
              "teacher": os.path.abspath(FLAGS.teacher) if FLAGS.teacher else None,
              **dataclasses.asdict(recipe), **{k: getattr(FLAGS, k) for k in RESUMABLE_ANYWAY}}
    if FLAGS.qat_epochs:
        scheme = quantization_options.configured_scheme(FLAGS.qat_scheme, FLAGS)
        if not scheme.qat:
            raise UserError(f"--qat_scheme {scheme.name} does no training ({scheme.description}): "
                            f"export it with export/to_tflite.py --scheme {scheme.name}")
        qrecipe = qat_recipe(recipe)
        config.update(qat_epochs=FLAGS.qat_epochs, qat_scheme=FLAGS.qat_scheme, qat_lr=qrecipe.lr,
                      qat_recipe=FLAGS.qat_recipe, qat_options=scheme.options,
                      qat_calibration_images=FLAGS.qat_calibration_images)
    init_source = _check_init_from(FLAGS.init_from, run) if FLAGS.init_from else None
    # before TensorFlow loads, so a changed flag fails in a second; nothing is written until the
    # data has loaded and checked out, so a run that fails before its first epoch is no trap
    run.check_config(config, ignore=RESUMABLE_ANYWAY,
                     resume_command=f"fnet-train --run_dir {run.path} (its recorded settings)")

    need_float = not run.is_complete("float")
    need_qat = FLAGS.qat_epochs > 0 and not run.is_complete("qat")
    if need_float and recipe.epochs == 0 and not init_source and plan().float_phase:
        raise UserError(f"--epochs 0 needs a trained float model: pass --init_from RUN_DIR, or "
                        f"train float first in {run.path}")
    if not (need_float or need_qat):
        metrics = run.read_json(run.METRICS, {})
        done = ", ".join(f"{k} {split} accuracy {v[f'{split}_accuracy']:.4f}"
                         for k, v in metrics.items() if k in ("float", "qat")
                         for split in ("test", "val") if f"{split}_accuracy" in v)
        print(f"training in {run.path} is already complete ({done}); nothing to do")
        return 0

    from fnet_tf.core.backend import configure_threads

    configure_threads(FLAGS.threads)
    strategy = distribute.make_strategy(FLAGS.distribute)
    from fnet_tf.arch import initializers
    from fnet_tf.core.backend import keras

    initializers.check(FLAGS.init, keras)
    users_model = None
    if init_source and _is_users_model_file(init_source):
        from fnet_tf.run import artifacts

        users_model = (artifacts.load_keras_model(init_source, FLAGS.trust_model_code)
                       if need_float else  # a Keras 3 file: its tf_keras twin
                       artifacts.float_model(run, FLAGS.trust_model_code))
    size = tuple(spec.input_shape[:2])
    if users_model is not None:
        size = tuple(users_model.input_shape[1:3])
        if image_size() and image_size() != size:
            raise UserError(f"--init_from {init_source} takes {size[0]}x{size[1]} images, not "
                            f"--image_size {FLAGS.image_size}: drop --image_size (a model of "
                            f"your own keeps its input size)")
    dataset = data_lib.load(FLAGS.data, cache_dir=FLAGS.cache_dir, val_split=FLAGS.val_split,
                            image_size=size)
    run.bind_config(config, ignore=RESUMABLE_ANYWAY)
    print(dataset.describe(), flush=True)
    print(f"images at {size[0]}x{size[1]}: {data_lib.RESIZE_RULE}; training crops padded by "
          f"{data_lib.scaled_to(recipe.crop_pad, size)} px ({recipe.crop_mode})"
          + (f", cutout {data_lib.scaled_to(recipe.cutout, size)} px" if recipe.cutout else ""),
          flush=True)
    if users_model is not None:  # the user's architecture, not a registered spec
        spec = None
        print(f"{users_model.name} (from {init_source}): params {users_model.count_params():,}, "
              f"input {tuple(users_model.input_shape[1:])}", flush=True)
    else:
        spec = replace(spec, num_classes=len(dataset.classes))
        from fnet_tf.arch.spec import summarize

        cost, stored = summarize(spec), spec.cost()
        print(f"{spec.name}: params {cost['params']:,} (Keras, BN statistics included; "
              f"{stored.weights + stored.biases:,} in the INT8 file, BN folded), macs "
              f"{cost['macs']:,}, size_int8_bytes {cost['size_int8_bytes']:,}, size_fp32_bytes "
              f"{cost['size_fp32_bytes']:,}", flush=True)
    verbose = FLAGS.verbose if FLAGS.verbose is not None else (1 if sys.stdout.isatty() else 2)
    with strategy.scope():
        float_model = None
        if need_float:
            if users_model is not None and recipe.epochs == 0:
                float_model = _float_from_users_model(users_model, init_source, run, dataset)
            elif init_source and recipe.epochs == 0:
                float_model = _float_from(init_source, run, dataset, spec)
            elif init_source:
                start = _start_model(init_source, users_model, spec, dataset)
                float_model = _train_float(spec, dataset, recipe, run, verbose, start)
            elif not plan().float_phase:
                float_model = _float_initialized(spec, dataset, run)
            else:
                float_model = _train_float(spec, dataset, recipe, run, verbose)
            if float_model is None:
                return 130
        if need_qat:
            if not _train_qat(float_model, spec, dataset, qrecipe, scheme, run, verbose):
                return 130
    return 0


def _check_init_from(path, run):
    """The float model file ``--init_from`` names, checked before any time is spent."""
    from fnet_tf.release import zoo
    from fnet_tf.run.artifacts import FLOAT_MODEL, is_run_dir
    from fnet_tf.run.portable_weights import RESULT, WEIGHTS, read_result
    from fnet_tf.run.rundir import RunDir

    if zoo.released_name(path) is not None:  # its architecture is the spec (model_fields)
        return path
    if os.path.isfile(os.path.join(path, RESULT)):  # float weights trained in Keras 3
        if not os.path.isfile(os.path.join(path, WEIGHTS)):
            raise UserError(f"--init_from {path} has no {WEIGHTS}: its Keras 3 training did not "
                            f"finish; run it again")
        theirs = read_result(path)
        for key in ("model", "level", "width"):
            if theirs.get(key) != getattr(FLAGS, key):
                raise UserError(f"--init_from {path} holds --{key}={theirs.get(key)!r}, not "
                                f"{getattr(FLAGS, key)!r}: pass the same --model/--level/--width")
        return os.path.join(path, WEIGHTS)
    if is_run_dir(path):
        source = RunDir(path)
        if os.path.abspath(path) == run.path:
            raise UserError("--init_from names this run directory itself: drop --init_from")
        if not source.is_complete("float"):
            raise UserError(f"--init_from {path} has no complete float model: train it first")
        theirs = source.config() or {}
        for key in ("model", "level", "width"):
            if key in theirs and theirs[key] != getattr(FLAGS, key):
                raise UserError(f"--init_from {path} holds --{key}={theirs[key]!r}, not "
                                f"{getattr(FLAGS, key)!r}: pass the same --model/--level/--width")
        return source.file(FLOAT_MODEL)
    if not os.path.isfile(path):
        raise UserError(f"--init_from {path!r} does not exist: pass a run directory or a .keras file")
    return path


def _record_final_metrics(run, phase, model, dataset, **extra):
    """Measure ``model`` on the test split once and record it as ``phase`` in metrics.json
    (with ``--evaluate_test=false``: the phase's last validation accuracy, never the test's)."""
    from fnet_tf.training.loop import evaluate

    history = [r for r in run.history() if r.get("phase") == phase]
    seconds = [float(r["seconds"]) for r in history]
    timing = {"mean_epoch_seconds": sum(seconds) / len(seconds) if seconds else None}
    if not FLAGS.evaluate_test:
        val = evaluate(model, dataset.val, len(dataset.classes))
        run.update_metrics(phase, {"val_accuracy": val["accuracy"], "val_loss": val["loss"],
                                   "num_val_images": val["num_images"], **timing, **extra})
        return {**val, "split": "validation"}
    test = evaluate(model, dataset.test, len(dataset.classes))
    run.update_metrics(phase, {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "num_test_images": test["num_images"], **timing, **extra})
    return {**test, "split": "test"}


def _finish_float(model, dataset, spec, run, extra_artifacts=(), **info):
    """Save the float model, measure it on the test split once, mark the step complete."""
    from fnet_tf.arch.spec import summarize
    from fnet_tf.core import fileio
    from fnet_tf.run.artifacts import FLOAT_MODEL

    model_path = run.file(FLOAT_MODEL)
    with fileio.atomic_path(model_path) as tmp:
        model.save(tmp)
    cost = summarize(spec) if spec is not None else {}  # a user's model: its own params
    result = _record_final_metrics(run, "float", model, dataset, data=dataset.source,
                                   classes=list(dataset.classes), **cost, **info)
    run.complete("float", [model_path, *extra_artifacts], **info)
    print(f"[float] {result['split']} accuracy {result['accuracy']:.4f} on "
          f"{cli.count(result['num_images'], 'image')}; model: {model_path}", flush=True)


def _stats_callbacks(run, phase, dataset):
    if not FLAGS.layer_stats:
        return []
    from fnet_tf.analysis.callback import LayerStatsCallback

    return [LayerStatsCallback(run.path, phase, dataset.train.images[:64])]


def _training_form(spec):
    """How grouped convs are built for training: as block-diagonal standard convs where the
    spec has any (TF's grouped-conv kernels train 50-200x slower on CPU; fnet_tf.arch.grouped)."""
    from fnet_tf.arch.spec import has_grouped_convs

    return "block_diagonal" if spec is not None and has_grouped_convs(spec) else "native"


def _start_model(source, users_model, spec, dataset):
    """The float model fine-tuning starts from (``fnet_tf.training.finetune``), described in one line."""
    from fnet_tf.arch.spec import build_model
    from fnet_tf.core.backend import keras
    from fnet_tf.training import finetune

    num_classes = len(dataset.classes)
    if users_model is not None:
        start = finetune.users_model_start(users_model, num_classes, source, FLAGS.seed)
    else:
        arrays, classes, description = _source_weights(source)
        head_bias = arrays.get(f"{finetune.HEAD}/1")
        keep = (list(classes) == list(dataset.classes) if classes is not None
                else head_bias is not None and head_bias.shape == (num_classes,))
        keras.utils.set_random_seed(FLAGS.seed)  # the new classifier's draw
        model = finetune.copy_by_name(arrays, build_model(spec, kernel_initializer=FLAGS.init),
                                      keep)
        start = finetune.Start(model, source, finetune.head_text(keep, num_classes), description)
    print(f"[float] fine-tuning from {start.description}; classifier: {start.head}", flush=True)
    return start


def _source_weights(source):
    """({'<layer>/<i>': array}, the classes they predict or None, a description) of an
    --init_from that names a registered architecture's weights."""
    from fnet_tf.release import zoo
    from fnet_tf.run import portable_weights

    name = zoo.released_name(source)
    if name is not None:
        released = zoo.metrics(name)  # its float weights, checked against the card's sha256
        arrays = portable_weights.weights_by_layer(zoo.keras_model(name))
        return arrays, released.get("classes"), (
            f"the float weights released with {name} (the release's note: "
            f"{released.get('float_weights', {}).get('source', 'none')})")
    if source.endswith(".npz"):
        classes = portable_weights.read_result(os.path.dirname(source)).get("classes")
        return portable_weights.read_weights(source), classes, f"Keras 3 float weights {source}"
    from fnet_tf.run.artifacts import load_keras_model

    model = load_keras_model(source, FLAGS.trust_model_code)
    classes = None
    run_dir = os.path.dirname(os.path.abspath(source))
    if os.path.basename(source) == "model_float.keras":
        from fnet_tf.run.rundir import RunDir

        classes = (RunDir(run_dir).read_json(RunDir.METRICS, {}).get("float") or {}).get("classes")
    return portable_weights.weights_by_layer(model), classes, f"{source}"


def _train_float(spec, dataset, recipe, run, verbose, start=None):
    """Float training from scratch, or, with ``start`` (``fnet_tf.training.finetune.Start``), from its
    model: the classifier alone first for --freeze_epochs, then everything."""
    from fnet_tf.arch.grouped import transfer_weights
    from fnet_tf.arch.spec import build_model
    from fnet_tf.core.backend import keras
    from fnet_tf.training.loop import fit_phase

    keras.utils.set_random_seed(recipe.seed)  # --seed decides the initial weights too
    form = _training_form(spec)
    if start is None:
        model = build_model(spec, kernel_initializer=FLAGS.init, grouped_form=form)
        from fnet_tf.arch import whitening as teacher_init

        if teacher_init.prepare(model, dataset.train.images, recipe.seed):  # a resume overwrites
            print("[float] whitening stem set from the training images; group convs dirac-"
                  "initialised", flush=True)
    else:
        model = start.model
        if form != "native":
            model = transfer_weights(model, build_model(spec, grouped_form=form))
        if FLAGS.freeze_epochs and not _train_head(model, dataset, recipe, run, verbose):
            print(f"stopped; resume with the same command (run directory {run.path})",
                  file=sys.stderr)
            return None
    statassist = plan().float_is_warmup
    if statassist:
        print(f"[float] StatAssist warm-up: {cli.count(recipe.epochs, 'epoch')}; the weights "
              f"and the optimizer state carry into QAT", flush=True)
    teacher = bank = None
    if FLAGS.teacher:
        from fnet_tf.training.distill import load_teacher

        teacher = load_teacher(FLAGS.teacher, len(dataset.classes), FLAGS.trust_model_code)
        if tuple(teacher.input_shape[1:3]) != dataset.image_shape[:2]:
            h, w = teacher.input_shape[1:3]
            raise UserError(f"--teacher {FLAGS.teacher} takes {h}x{w} images, the student "
                            f"{dataset.image_shape[0]}x{dataset.image_shape[1]}: distill from a "
                            f"teacher of the student's input size")
        if recipe.teacher_bank and recipe.kd_alpha > 0:
            from fnet_tf.training.logit_bank import LogitBank

            bank = LogitBank(teacher, FLAGS.teacher, dataset.train, dataset.source, recipe,
                             recipe.teacher_bank, recipe.teacher_tta, FLAGS.cache_dir,
                             mirror=recipe.bank_mirror)
            teacher = None
            print(f"[float] teacher logits from a bank of "
                  f"{cli.count(recipe.teacher_bank, 'augmented epoch')} in {bank.folder}",
                  flush=True)
        print(f"[float] distilling from {FLAGS.teacher} (alpha {recipe.kd_alpha:g}, temperature "
              f"{recipe.kd_temperature:g})", flush=True)
    if not fit_phase("float", model, dataset, recipe, run, verbose=verbose,
                     callbacks=_stats_callbacks(run, "float", dataset), boost=not statassist,
                     teacher=teacher, bank=bank):
        print(f"stopped; resume with the same command (run directory {run.path})",
              file=sys.stderr)
        return None
    extra = []
    if statassist:  # before the step completes, so a resumed QAT always finds it
        extra = [_save_optimizer_state(run, model)]
    if form != "native":  # what is saved and exported is the native grouped model
        model = transfer_weights(model, build_model(spec, kernel_initializer=FLAGS.init))
    started = {} if start is None else {
        "init_from": start.source, "started_from": start.description, "classifier": start.head,
        "freeze_epochs": FLAGS.freeze_epochs}
    if spec is None:
        started["params"] = model.count_params()
    _finish_float(model, dataset, spec, run, extra_artifacts=extra, epochs=recipe.epochs,
                  **started)
    return model


def _train_head(model, dataset, recipe, run, verbose):
    """--freeze_epochs: the classifier alone (phase 'head', resumable like the others), at the
    float recipe's peak LR without warm-up."""
    from fnet_tf.training import finetune
    from fnet_tf.training.loop import fit_phase

    before = finetune.freeze_body(model)
    print(f"[head] training the classifier alone for {cli.count(FLAGS.freeze_epochs, 'epoch')}",
          flush=True)
    head = replace(recipe, epochs=FLAGS.freeze_epochs, warmup_epochs=0.0, lookahead=False)
    done = fit_phase("head", model, dataset, head, run, verbose=verbose)
    finetune.restore_trainable(model, before)
    return done


OPTIMIZER_STATE = "statassist_optimizer.npz"


def _save_optimizer_state(run, model):
    import numpy as np

    from fnet_tf.core import fileio
    from fnet_tf.training.gradboost import state_arrays

    path = run.file(OPTIMIZER_STATE)
    with fileio.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **state_arrays(model.optimizer, model.trainable_variables))
    return path


def _carry_optimizer_state(run):
    """on_fresh_start of StatAssist's QAT phase: the warm-up's optimizer state into QAT's."""
    def carry(model, optimizer):
        from fnet_tf.run.portable_weights import read_weights
        from fnet_tf.training.gradboost import load_state

        arrays = read_weights(run.file(OPTIMIZER_STATE))
        copied = load_state(optimizer, model.trainable_variables, arrays)
        print(f"[qat] StatAssist: {copied} optimizer slots carried from the float warm-up "
              f"({int(arrays['__steps__'])} steps)", flush=True)
    return carry


def _float_initialized(spec, dataset, run):
    """--qat_recipe scratch: the float 'model' is the initialized one (no float training)."""
    from fnet_tf.arch import whitening as teacher_init
    from fnet_tf.arch.spec import build_model
    from fnet_tf.core.backend import keras

    keras.utils.set_random_seed(FLAGS.seed)
    model = build_model(spec, kernel_initializer=FLAGS.init)
    teacher_init.prepare(model, dataset.train.images, FLAGS.seed)  # airbench_whitened's stem
    _finish_float(model, dataset, spec, run, epochs=0, initialized_only=True)
    return model


def _is_users_model_file(path):
    """True for a model file the user made (not a run directory's own float model, whose
    registered spec the config names)."""
    from fnet_tf.run.artifacts import FLOAT_MODEL, KERAS_EXTENSIONS

    return (path.lower().endswith(KERAS_EXTENSIONS) and
            not (os.path.basename(path) == FLOAT_MODEL and
                 os.path.isfile(os.path.join(os.path.dirname(path), "config.json"))))


def _float_from_users_model(model, path, run, dataset):
    """A user's float model (tf_keras, or the tf_keras twin of a Keras 3 model) as this run's
    float model, recorded with its own parameter count."""
    if model.output_shape[-1] != len(dataset.classes):
        raise UserError(f"--init_from {path} predicts {model.output_shape[-1]} classes but the "
                        f"data has {len(dataset.classes)}")
    _finish_float(model, dataset, None, run, epochs=0, init_from=os.path.abspath(path),
                  params=model.count_params())
    return model


def _float_from(path, run, dataset, spec):
    from fnet_tf.release import zoo
    from fnet_tf.run.artifacts import load_keras_model

    name = zoo.released_name(path)
    if name is not None:  # the released float model itself, for QAT or PTQ
        released = zoo.metrics(name).get("classes")
        if released is not None and list(released) != list(dataset.classes):
            raise UserError(f"released model {name} predicts {len(released)} other classes than "
                            f"the data's {len(dataset.classes)}: pass --epochs N to fine-tune it "
                            f"with a new classifier")
        model = zoo.keras_model(name, image_size=spec.input_shape[:2])
        _finish_float(model, dataset, spec, run, epochs=0, init_from=path)
        return model
    if path.endswith(".npz"):  # Keras 3 float weights: into the tf_keras model of the spec
        return _float_from_keras3(path, run, dataset, spec)
    model = load_keras_model(path, FLAGS.trust_model_code)
    if model.output_shape[-1] != len(dataset.classes):
        raise UserError(f"--init_from {path} predicts {model.output_shape[-1]} classes but the "
                        f"data has {len(dataset.classes)}")
    if tuple(model.input_shape[1:3]) != tuple(spec.input_shape[:2]):
        h, w = model.input_shape[1:3]
        raise UserError(f"--init_from {path} takes {h}x{w} images and --epochs 0 uses it as it "
                        f"is: drop --image_size, or fine-tune it at the new size with --epochs N")
    _finish_float(model, dataset, spec, run, epochs=0, init_from=os.path.abspath(path))
    return model


def _float_from_keras3(path, run, dataset, spec):
    from fnet_tf.arch.spec import build_model
    from fnet_tf.run.portable_weights import load_weights_by_layer, read_result, read_weights

    arrays = read_weights(path)
    model = load_weights_by_layer(build_model(spec), arrays)
    theirs = read_result(os.path.dirname(path))
    _finish_float(model, dataset, spec, run, epochs=theirs.get("recipe", {}).get("epochs", 0),
                  init_from=os.path.abspath(path), trained_in=f"Keras {theirs.get('keras')} "
                  f"({theirs.get('backend')}, {theirs.get('device')})",
                  keras3_test_accuracy=theirs.get("test_accuracy"),
                  keras3_recipe=theirs.get("recipe"))
    return model


def _calibrate_ranges(float_model, dataset, batch_size):
    """on_fresh_start of QAT: its activation ranges from --qat_calibration_images training
    images (``fnet_tf.quantization.range_calibration``), not TF-MOT's [-6, 6]."""
    def calibrate(model, optimizer):
        import numpy as np

        from fnet_tf.quantization.range_calibration import calibrate as set_ranges

        count = min(FLAGS.qat_calibration_images, len(dataset.train))
        if not count:
            return
        pick = np.sort(np.random.default_rng([FLAGS.seed, 3]).choice(
            len(dataset.train), count, replace=False))
        ranges = set_ranges(model, float_model, dataset.train.images[pick], batch_size)
        print(f"[qat] {cli.count(ranges, 'activation range')} set from "
              f"{cli.count(count, 'training image')} (mean batch range of the float model)",
              flush=True)
    return calibrate


def _train_qat(float_model, spec, dataset, recipe, scheme, run, verbose):
    from fnet_tf.arch.grouped import transfer_weights
    from fnet_tf.arch.spec import build_model
    from fnet_tf.core import fileio
    from fnet_tf.run import artifacts
    from fnet_tf.training.loop import fit_phase

    if float_model is None:
        float_model = artifacts.float_model(run, FLAGS.trust_model_code)
    form = _training_form(spec)
    trainable = float_model
    if form != "native":
        trainable = transfer_weights(float_model, build_model(spec, grouped_form=form))
    model = scheme.quantize(trainable)  # a layer TF-MOT cannot QAT is one line
    print(f"[qat] scheme {scheme.name}: {scheme.description}; {cli.count(recipe.epochs, 'epoch')} "
          f"at peak lr {recipe.lr:g}", flush=True)
    carry = _carry_optimizer_state(run) if plan().float_is_warmup else None
    calibrate = _calibrate_ranges(trainable, dataset, recipe.batch_size)

    def fresh_start(model, optimizer):
        calibrate(model, optimizer)
        if carry is not None:
            carry(model, optimizer)

    if not fit_phase("qat", model, dataset, recipe, run, verbose=verbose,
                     callbacks=[*scheme.callbacks(), *_stats_callbacks(run, "qat", dataset)],
                     on_fresh_start=fresh_start):
        print(f"stopped; resume with the same command (run directory {run.path})",
              file=sys.stderr)
        return False
    if form != "native":  # saved QAT weights are those of the native grouped QAT model
        model = transfer_weights(model, scheme.quantize(float_model))
    weights = run.file(artifacts.QAT_WEIGHTS)
    with fileio.atomic_path(weights) as tmp:
        model.save_weights(tmp)
    result = _record_final_metrics(run, "qat", model, dataset, epochs=recipe.epochs,
                                   scheme=scheme.name)
    run.complete("qat", [weights], scheme=scheme.name, options=scheme.options,
                 epochs=recipe.epochs)
    print(f"[qat] {result['split']} accuracy {result['accuracy']:.4f} on {result['num_images']} "
          f"images (Keras QAT model); weights: {weights}", flush=True)
    return True


console = cli.entry_point(  # the fnet-train command
    main, usage="fnet-train [flags]   (python -m fnet_tf.train in a checkout)",
    common=("model", "level", "width", "data", "run_dir", "epochs", "qat_epochs", "batch_size",
            "lr", "init_from", "image_size", "freeze_epochs", "teacher", "seed", "threads"))

if __name__ == "__main__":
    console()
