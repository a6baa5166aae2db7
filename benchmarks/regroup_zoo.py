"""Regroup every released model's grouped convs for this CPU and measure what it buys.

    python benchmarks/regroup_zoo.py --data ../shared/data/cifar10-jpeg.tar.gz \\
        --peer ../shared/peers/mlperf-tiny-ic/resnet8_int8.tflite --out results/regroup

For each zoo model with grouped convs, ``export/regroup.py``'s tuning picks each conv's group
count on this machine; then the regrouped file's top-1 on the whole test split is compared with
the released file's (the outputs must be identical), and every released file, its regrouped
twin and the peer are timed in one interleaved pass (1 thread). Writes regroup.json, regroup.md
and the regrouped files (``<name>_regrouped.tflite``); prints the table.
"""
import importlib.util
import os
import sys

from absl import flags

from fnet_tf.core import cli
from fnet_tf.core.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "Dataset whose test split checks the accuracy.")
flags.DEFINE_string("peer", None, "A reference INT8 .tflite timed in the same pass.")
flags.DEFINE_string("out", "results/regroup", "Output folder.")
flags.DEFINE_integer("latency_runs", 1000, "Timed invokes per model in the interleaved pass.")
flags.DEFINE_integer("tune_runs", 300, "Timed invokes per candidate layout while tuning.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _regroup_module():
    spec = importlib.util.spec_from_file_location(
        "regroup", os.path.join(REPO, "export", "regroup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv):
    if not FLAGS.data or not FLAGS.peer or not os.path.isfile(FLAGS.peer):
        raise UserError("--data and an existing --peer .tflite are required")
    import numpy as np

    from fnet_tf.release import zoo
    from fnet_tf.tflite import measure as benchmark
    from fnet_tf.data import datasets as data_lib
    from fnet_tf.tflite import convert as export
    from fnet_tf.core import fileio

    regroup = _regroup_module()
    data_lib.check_source(FLAGS.data)
    dataset = data_lib.load(FLAGS.data)
    rows, contents = [], []
    for name in zoo.names():
        content = open(zoo.load(name), "rb").read()
        model = regroup.read_model(content)
        if not regroup.grouped_convs(model):
            continue
        print(f"{name}: tuning its grouped convs", file=sys.stderr, flush=True)
        tuned, choices = regroup.tune(content, runs=FLAGS.tune_runs,
                                      log=lambda line: print(f"  {line}", file=sys.stderr))
        before = export.predict(content, dataset.test.images)
        after = export.predict(tuned, dataset.test.images)
        if not np.array_equal(before, after):
            raise UserError(f"{name}: the regrouped file's outputs differ on the test split")
        fileio.write_bytes(os.path.join(FLAGS.out, f"{name}_regrouped.tflite"), tuned)
        rows.append({"name": name,
                     "int8_accuracy": float(np.mean(before.argmax(1) == dataset.test.labels)),
                     "outputs_identical_on_test_split": True,
                     "macs": zoo.metrics(name)["macs"],
                     "executed_macs": benchmark.graph_stats(tuned)["macs"],
                     "size_bytes": len(content), "regrouped_size_bytes": len(tuned),
                     "convs": choices})
        contents += [content, tuned]
    if not rows:
        raise UserError("no released model has grouped convs")
    peer = open(FLAGS.peer, "rb").read()
    print(f"timing {len(contents) + 1} files interleaved (1 thread)", file=sys.stderr, flush=True)
    latencies = benchmark.latency(contents + [peer], threads=1, runs=FLAGS.latency_runs)
    peer_p50 = latencies[-1]["p50"]
    for k, row in enumerate(rows):
        row["p50_ms"], row["regrouped_p50_ms"] = (latencies[2 * k]["p50"],
                                                  latencies[2 * k + 1]["p50"])
        row["speedup"] = row["p50_ms"] / row["regrouped_p50_ms"]
    result = {"machine": benchmark.machine_info(), "threads": 1, "runs": FLAGS.latency_runs,
              "peer": os.path.basename(FLAGS.peer), "peer_p50_ms": peer_p50,
              "test_images": len(dataset.test), "data": dataset.source, "models": rows}
    lines = [f"| model | INT8 top-1 (both files) | MACs (M) | executed MACs (M) | size KiB -> | "
             f"p50 ms released | p50 ms regrouped | speed-up | vs peer ({peer_p50:.3f} ms) | "
             f"groups per conv |", "| --- |" + " --- |" * 9]
    for r in rows:
        groups = ", ".join(f"{c['groups']}->{c['chosen_groups']}" for c in r["convs"])
        lines.append(f"| {r['name']} | {100 * r['int8_accuracy']:.2f}% | {r['macs'] / 1e6:.2f} | "
                     f"{r['executed_macs'] / 1e6:.2f} | {r['size_bytes'] / 1024:.1f} -> "
                     f"{r['regrouped_size_bytes'] / 1024:.1f} | {r['p50_ms']:.3f} | "
                     f"{r['regrouped_p50_ms']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['regrouped_p50_ms'] / peer_p50:.2f}x | {groups} |")
    table = "\n".join(lines)
    fileio.write_json(os.path.join(FLAGS.out, "regroup.json"), result)
    fileio.write_text(os.path.join(FLAGS.out, "regroup.md"), table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    cli.run(main)
