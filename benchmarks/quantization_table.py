"""FP32 / PTQ INT8 / QAT INT8 (per-channel) / QAT INT8 (per-tensor) on the full test split.

    python benchmarks/quantization_table.py --run RUN --per_tensor_run RUN_PT --out DIR

RUN: float training + int8 QAT, exported with ``export/to_tflite.py RUN --float32``,
``--scheme ptq --out RUN/model_int8_ptq.tflite`` and ``--scheme ptq_per_tensor --out
RUN/model_int8_ptq_per_tensor.tflite``; RUN_PT: the same float model QAT-trained
with int8_per_tensor (``--epochs 0 --init_from RUN``) and exported. Every .tflite is
evaluated with the LiteRT interpreter (1 thread) on all test images and set beside the Keras
accuracy the training measured; the parity column is |LiteRT - Keras| in points.
"""
import json
import os

from absl import flags

from fnet_tf.core import cli
from fnet_tf.core.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "Run directory with float + int8 QAT and its exports.")
flags.DEFINE_string("per_tensor_run", None, "Run directory QAT-trained with int8_per_tensor.")
flags.DEFINE_string("out", "results/quantization", "Where table.md and table.json go.")
flags.DEFINE_string("data", None, "Dataset (default: the run's --data).")


def main(argv):
    from fnet_tf.tflite import measure as benchmark
    from fnet_tf.data import datasets as data_lib
    from fnet_tf.core import fileio
    from fnet_tf.run.rundir import RunDir

    if not FLAGS.run or not FLAGS.per_tensor_run:
        raise UserError("pass --run and --per_tensor_run")
    run, run_pt = RunDir(FLAGS.run), RunDir(FLAGS.per_tensor_run)
    metrics, metrics_pt = run.read_json(run.METRICS, {}), run_pt.read_json(run.METRICS, {})
    config = run.config() or {}
    dataset = data_lib.load(FLAGS.data or config["data"])
    rows = [
        ("FP32", run.file("model_float32.tflite"), metrics["float"]["test_accuracy"]),
        ("PTQ INT8 (per-channel)", run.file("model_int8_ptq.tflite"), None),
        ("PTQ INT8 (per-tensor)", run.file("model_int8_ptq_per_tensor.tflite"), None),
        ("QAT INT8 (per-channel)", run.file("model_int8.tflite"), metrics["qat"]["test_accuracy"]),
        ("QAT INT8 (per-tensor)", run_pt.file("model_int8.tflite"),
         metrics_pt["qat"]["test_accuracy"]),
    ]
    results = []
    for name, path, keras_acc in rows:
        if not os.path.isfile(path):
            raise UserError(f"{path} is missing: export it first (see this script's docstring)")
        print(f"{name}: evaluating {path}", flush=True)
        r = benchmark.evaluate_tflite(open(path, "rb").read(), dataset.test)
        results.append({"model": name, "file": os.path.relpath(path), "bytes": os.path.getsize(path),
                        "litert_top1": r["accuracy_top1"], "litert_top5": r["accuracy_top5"],
                        "keras_top1": keras_acc, "num_images": r["num_images"],
                        "parity_points": (None if keras_acc is None
                                          else abs(r["accuracy_top1"] - keras_acc) * 100)})
    float_epochs = config.get("epochs")
    if config.get("init_from"):  # QAT started from another run's float model
        source = RunDir(config["init_from"]).config() or {}
        float_epochs = f"{source.get('epochs')} (in {config['init_from']})"
    lines = [f"Model: {config.get('model')} level {config.get('level')}, width {config.get('width')}; "
             f"float {float_epochs} epochs, QAT {config.get('qat_epochs')} epochs; "
             f"data {dataset.source}, test split ({len(dataset.test)} images), LiteRT 1 thread.",
             "", "| model | LiteRT top-1 | LiteRT top-5 | Keras top-1 | parity (points) | bytes |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        keras = f"{r['keras_top1']:.2%}" if r["keras_top1"] is not None else "-"
        parity = f"{r['parity_points']:.2f}" if r["parity_points"] is not None else "-"
        lines.append(f"| {r['model']} | {r['litert_top1']:.2%} | {r['litert_top5']:.2%} | {keras} "
                     f"| {parity} | {r['bytes']:,} |")
    table = "\n".join(lines) + "\n"
    os.makedirs(FLAGS.out, exist_ok=True)
    fileio.write_text(os.path.join(FLAGS.out, "table.md"), table)
    fileio.write_json(os.path.join(FLAGS.out, "table.json"), {"config": config, "rows": results})
    print(table)


if __name__ == "__main__":
    cli.run(main)
