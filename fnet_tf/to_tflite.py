"""Export a trained model to a verified fully-integer TFLite flatbuffer (``fnet-export``).

    fnet-export runs/factorizenet-l3                             # -> runs/.../model_int8.tflite
    python export/to_tflite.py model.keras --data ../shared/data/cifar10-jpeg.tar.gz  # checkout

TARGET is a run directory (its QAT model when QAT is done, else post-training quantization
of its float model), any Keras CNN as a .keras/.h5 file or SavedModel directory (post-
training quantization), or a released model's float weights, ``zoo:factorizenet-l7``
(``--scheme ptq`` or ``ptq_per_tensor``; writes ./factorizenet-l7_int8.tflite). Calibration uses the training split, never test. The file is
verified with the LiteRT interpreter (int8 input/output, builtin ops only, no float tensor)
and written atomically; a failed check is a one-line error (``--allow_float``: a warning).
"""
import os
import sys

from absl import flags

from fnet_tf.core import cli
from fnet_tf.core.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output .tflite (default: RUN_DIR/model_int8.tflite, or "
                    "<model>_int8.tflite beside a model file).")
flags.DEFINE_string("scheme", "auto", "auto (the run's QAT scheme, or ptq without QAT), int8, "
                    "int8_per_tensor, ptq or ptq_per_tensor.")
flags.DEFINE_bool("float32", False, "Also write the float32 .tflite (model_float32.tflite).")
flags.DEFINE_string("data", None, "Calibration data (default: the run's --data). Required for "
                    "a model file.")
flags.DEFINE_integer("calibration_samples", 500, "Training images used to calibrate.")
flags.DEFINE_float("input_scale", 1.0, "For a foreign model expecting pixel*scale+offset: the "
                   "scale (e.g. 1/127.5 for MobileNetV2), folded into the graph.")
flags.DEFINE_float("input_offset", 0.0, "The offset (e.g. -1 for MobileNetV2).")
flags.DEFINE_bool("allow_float", False, "Write the file even if it is not fully int8 (warn).")
flags.DEFINE_integer("check_images", 500, "Test images on which the int8 file's top-1 is "
                     "compared with the Keras model's (0: skip).")
flags.DEFINE_float("min_agreement", None, "Fail (exit 2, no file written) when the INT8 file's "
                   "top-1 agreement with the Keras model on --check_images test images is below "
                   "this share, e.g. 0.98 in a pipeline. Below 0.90 a warning is printed anyway.")
flags.DEFINE_string("cache_dir", None, "Dataset cache directory.")
flags.DEFINE_string("repair", None, "Before post-training quantization (a ptq scheme), a "
                    "comma list of cle (cross-layer equalization), bias_absorption, adaround "
                    "(learned 8-bit rounding) and bias_correction, e.g. 'cle,bias_correction' "
                    "(fnet_tf/quantization/repair.py); the file is named "
                    "*_repaired_int8.tflite unless --out says otherwise.")
cli.define_trust_model_code()

WARN_BELOW_AGREEMENT = 0.90
flags.DEFINE_integer("threads", 0, "CPU threads for TensorFlow (0: all).")


def _resolve(target):
    """(keras model, scheme, run or None, default output path, classes-from-run, data source)."""
    from fnet_tf.quantization.schemes import get_scheme
    from fnet_tf.run import artifacts
    from fnet_tf.run.rundir import RunDir

    if artifacts.is_run_dir(target):
        run = RunDir(target)
        config = run.config() or {}
        resume = f"resume it with fnet-train --run_dir {run.path}"
        done_scheme = artifacts.qat_scheme_name(run) if run.verified("qat") else None
        if not done_scheme and not run.is_complete("float"):
            raise UserError(f"{run.path}'s float training did not finish: {resume} (its "
                            f"recorded settings), then export")
        wanted = FLAGS.scheme
        if wanted == "auto" and not done_scheme and config.get("qat_epochs"):
            raise UserError(f"{run.path}'s QAT did not finish: {resume}, or pass --scheme ptq "
                            f"to export its float model with post-training quantization")
        if wanted == "auto":
            wanted = done_scheme or "ptq"
            if not done_scheme:
                print(f"note: no QAT model in {run.path}: exporting the float model with "
                      f"post-training quantization (train with --qat_epochs N for QAT)",
                      file=sys.stderr)
        scheme = get_scheme(wanted)
        if scheme.qat:
            if done_scheme is None:
                raise UserError(f"no QAT model in {run.path}: run python -m fnet_tf.train "
                                f"--run_dir {run.path} --qat_epochs N first, or pass --scheme ptq")
            if done_scheme != scheme.name:
                raise UserError(f"{run.path} was QAT-trained with {done_scheme}, not "
                                f"{scheme.name}: pass --scheme {done_scheme} or ptq")
            model, scheme = artifacts.qat_model(run, FLAGS.trust_model_code)  # with its options
        else:
            model = artifacts.float_model(run, FLAGS.trust_model_code)
        return model, scheme, run, run.file("model_int8.tflite"), FLAGS.data or config.get("data")
    if FLAGS.scheme != "auto" and get_scheme(FLAGS.scheme).qat:
        raise UserError(f"--scheme {FLAGS.scheme} needs a QAT run directory; a model file is "
                        f"exported with --scheme ptq or ptq_per_tensor")
    from fnet_tf.release import zoo

    name = zoo.released_name(target)
    if name is not None:  # a released model's float weights, quantized again
        model = zoo.keras_model(name)
        target = os.path.join(os.getcwd(), name)  # the default output: ./NAME_int8.tflite
    else:
        model = artifacts.load_model(target, FLAGS.trust_model_code)
    if FLAGS.input_scale != 1.0 or FLAGS.input_offset != 0.0:
        from fnet_tf.tflite.convert import with_input_transform

        model = with_input_transform(model, FLAGS.input_scale, FLAGS.input_offset)
    stem = os.path.splitext(os.path.abspath(target).rstrip(os.sep))[0]
    if not FLAGS.data:
        raise UserError("a model file needs --data for calibration (training images), e.g. "
                        "--data ../shared/data/cifar10-jpeg.tar.gz")
    scheme = get_scheme("ptq" if FLAGS.scheme == "auto" else FLAGS.scheme)
    return model, scheme, None, f"{stem}_int8.tflite", FLAGS.data


def _agreement(model, content, dataset, run, scheme):
    """Top-1 agreement of the INT8 ``content`` with ``model`` on the first --check_images test
    images. Below WARN_BELOW_AGREEMENT a warning names the layers where the INT8 error is
    largest; below --min_agreement it is an error and nothing is written."""
    import numpy as np

    from fnet_tf.run import artifacts
    from fnet_tf.tflite import convert as export

    images = dataset.test.images[:FLAGS.check_images]
    keras_top1 = np.argmax(model.predict(images.astype(np.float32), verbose=0), -1)
    agreement = float(np.mean(keras_top1 == np.argmax(export.predict(content, images), -1)))
    failing = FLAGS.min_agreement is not None and agreement < FLAGS.min_agreement
    if agreement >= WARN_BELOW_AGREEMENT and not failing:
        return agreement
    from fnet_tf.analysis.layerwise import lowest_sqnr_layers

    if hasattr(model, "layers"):
        architecture = artifacts.float_model(run, FLAGS.trust_model_code) if scheme.qat else None
        worst = lowest_sqnr_layers(model, content, dataset.train.images[:64], architecture)
        shown = ", ".join(f"{layer} {sqnr:.1f} dB" for layer, sqnr in worst) or "none matched"
    else:  # a SavedModel has no layers to compare; fnet-analyze compares the float .tflite
        shown = "not available for a SavedModel (export with --float32 and analyze the pair)"
    message = (f"the INT8 file agrees with the Keras model on only {agreement:.2%} of "
               f"{len(images)} test images; lowest INT8 SQNR: {shown}; see where it breaks with "
               f"python -m fnet_tf.analyze")
    if failing:
        raise UserError(f"{message} (below --min_agreement {FLAGS.min_agreement:g}: nothing "
                        f"written)")
    print(f"warning: {message}", file=sys.stderr)
    return agreement


def main(argv):
    if len(argv) != 2:
        raise UserError("usage: python export/to_tflite.py RUN_DIR_OR_MODEL_OR_zoo:NAME [flags]")
    if FLAGS.calibration_samples <= 0:
        raise UserError(f"--calibration_samples must be positive, got {FLAGS.calibration_samples}")
    if FLAGS.min_agreement is not None:
        if not 0 <= FLAGS.min_agreement <= 1:
            raise UserError(f"--min_agreement is a share of images in [0, 1], got "
                            f"{FLAGS.min_agreement:g}")
        if FLAGS.check_images <= 0:
            raise UserError("--min_agreement needs --check_images N (N > 0) to measure it")
    target = argv[1]
    from fnet_tf.quantization import repair

    repairs = repair.parse_repairs(FLAGS.repair)
    if FLAGS.out is not None and (FLAGS.out.endswith(("/", os.sep)) or os.path.isdir(FLAGS.out)
                                  or not FLAGS.out.endswith(".tflite")):
        raise UserError(f"--out {FLAGS.out!r} is not a .tflite file name: pass the file to write, "
                        f"e.g. --out {os.path.join(FLAGS.out.rstrip('/' + os.sep) or '.', 'model_int8.tflite')}")
    from fnet_tf.release import zoo

    if zoo.released_name(target) is None and not os.path.exists(target):
        raise UserError(f"{target!r} does not exist: pass a run directory, a .keras/.h5 file or a "
                        f"SavedModel directory")
    from fnet_tf.core.backend import configure_threads
    from fnet_tf.data import datasets as data_lib

    configure_threads(FLAGS.threads)
    from fnet_tf.core import fileio
    from fnet_tf.run import artifacts
    from fnet_tf.tflite import convert as export
    from fnet_tf.tflite import measure as benchmark

    model, scheme, run, default_out, data_source = _resolve(target)
    if repairs and scheme.qat:
        raise UserError(f"--repair acts on the float model before post-training quantization, "
                        f"not on the {scheme.name} QAT model: pass --scheme ptq or ptq_per_tensor")
    if repairs:
        default_out = default_out[:-len("_int8.tflite")] + "_repaired_int8.tflite"
    if not data_source:
        raise UserError("no calibration data: pass --data (the run's config names none)")
    image_size = tuple(model.input_shape[1:3])
    dataset = data_lib.load(data_source, cache_dir=FLAGS.cache_dir, image_size=image_size)
    out = FLAGS.out or default_out
    if repairs:
        calibration = dataset.train.images[:FLAGS.calibration_samples].astype("float32")
        context = repair.Context(images=calibration, per_channel=scheme.per_channel,
                                 progress=lambda text: print(text, file=sys.stderr, flush=True))
        model, repair_report = repair.repaired(model, repairs, context=context)
        print("\n".join(repair_report.lines()), flush=True)
    representative = data_lib.representative_dataset(dataset.train, FLAGS.calibration_samples)
    content = export.convert_int8(model, representative, scheme)
    report = benchmark.graph_stats(content)  # the int8 check, ops, params, I/O quantization
    if report["problems"]:
        message = (f"{target} is not fully int8: {'; '.join(report['problems'][:3])}"
                   + (f" (+{len(report['problems']) - 3} more)" if len(report["problems"]) > 3 else ""))
        if not FLAGS.allow_float:
            raise UserError(message + ": replace those layers, or pass --allow_float to keep them")
        print(f"warning: {message}", file=sys.stderr)
    agreement = None
    if FLAGS.check_images:
        agreement = _agreement(model, content, dataset, run, scheme)
    classes = list(dataset.classes) if model.output_shape[-1] == len(dataset.classes) else None
    if classes:
        content = export.attach_labels(content, classes)
    fileio.write_bytes(out, content)
    written = [out]
    if FLAGS.float32:
        float_out = os.path.join(os.path.dirname(out),
                                 export.float_reference_name(os.path.basename(out)))
        float_model = (model if not scheme.qat
                       else artifacts.float_model(run, FLAGS.trust_model_code))
        float_content = export.convert_float32(float_model)
        if classes:  # every file the exporter writes carries its labels
            float_content = export.attach_labels(float_content, classes)
        fileio.write_bytes(float_out, float_content)
        written.append(float_out)
    from fnet_tf.analysis.bit_budget import bit_budget

    budget_rows, budget = bit_budget(content)
    distinct = [r["distinct_max"] for r in budget_rows]
    ops = ", ".join(f"{k} x{v}" for k, v in sorted(report["ops"].items()))
    inp = report["input"]
    print(f"wrote {out}: {len(content):,} bytes, {report['params']:,} params, scheme "
          f"{scheme.name}\n  ops: {ops}\n  input {inp['dtype']} {inp['shape']} scale "
          f"{inp['scale']:g} zero point {inp['zero_point']} (feed pixel/scale + zero point)\n"
          f"  weights: {cli.count(len(budget_rows), 'layer')}, distinct int8 values per filter at most "
          f"{', '.join(map(str, distinct))}; {budget['ternary_filters']} of {budget['filters']} "
          f"filters ternary, {budget['two_branch_filters']} two-branch; packed "
          f"{budget['packed_bytes']:,.0f} bytes"
          + (f"\n  top-1 agreement with the Keras model: {agreement:.2%} on "
             f"{min(FLAGS.check_images, len(dataset.test))} test images"
             if agreement is not None else "")
          + "".join(f"\nwrote {path} (float32, for the layer-wise comparison)"
                    for path in written[1:]))
    # a file written outside the run directory (--out elsewhere) is the user's, not the run's:
    # run.json lists only the run directory's own files
    if run is not None and all(run.inside(os.path.relpath(p, run.path)) for p in written):
        run.complete(f"export:{os.path.basename(out)}", written, scheme=scheme.name,
                     agreement=agreement, calibration_samples=FLAGS.calibration_samples,
                     repair=list(repairs))
    return 0


console = cli.entry_point(  # the fnet-export command
    main, usage="fnet-export RUN_DIR | MODEL_FILE | zoo:NAME [flags]   (python "
                "export/to_tflite.py in a checkout)",
    common=("data", "out", "scheme", "check_images", "float32", "min_agreement"))

if __name__ == "__main__":
    console()
