"""Analyze INT8 models: ``python -m fnet_tf.analyze TARGET [TARGET ...] --out DIR``.

TARGET is a run directory (its ``model_int8.tflite``, plus its Keras model for the layer-wise
analysis) or any ``.tflite`` image classifier (e.g. the MLPerf Tiny ResNet-8). One target
writes ``metrics.json``, ``layers.csv``, ``report.md`` and PNG plots to ``--out``; several are
compared side by side (``comparison.md``/``.json`` and an accuracy-vs-MACs/latency plot), with
their latencies measured interleaved in one pass so the ratios are fair.
"""
import csv
import io
import os
import sys
import time

import numpy as np
from absl import flags

from fnet_tf.core import cli
from fnet_tf.core.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "Dataset for accuracy and calibration images (default: the "
                    "run's --data); required for a .tflite file.")
flags.DEFINE_string("out", None, "Output directory (default: RUN_DIR/analysis, or "
                    "analysis/<name> for a .tflite file).")
flags.DEFINE_integer("limit", None, "Evaluate only the first N test images (a quick look).")
flags.DEFINE_integer("threads", 1, "Interpreter threads for accuracy and latency.")
flags.DEFINE_integer("latency_runs", 300, "Timed invokes per model (after a warm-up).")
flags.DEFINE_integer("layer_images", 128, "Training images for the layer-wise analysis.")
flags.DEFINE_bool("tool_check", True, "Also time with benchmark_litert_model for comparison.")
flags.DEFINE_string("cache_dir", None, "Dataset cache directory.")
flags.DEFINE_bool("op_latency", True, "Also time each operator on its own (op_latency.csv/.png: "
                  "where the time goes, and which kernel ran each op).")
flags.DEFINE_bool("compare_layers", True, "With several targets, also run each one's layer-wise "
                  "analysis and compare where INT8 error enters (layers_compared.md/.png).")
flags.DEFINE_bool("evolution", False, "Plot how each layer's ranges evolved over the training "
                  "epochs (from RUN_DIR/layer_stats.jsonl) and stop.")
flags.DEFINE_bool("sensitivity", False, "Per-layer sensitivity of a run's float model and stop: "
                  "validation accuracy with only each layer (and all but it) quantized to "
                  "ternary, 4 and 8 bits (sensitivity.csv/.png/.md; --limit images, default "
                  "2,000, spread over the validation split).")
flags.DEFINE_string("repair", None, "Also measure repairs before post-training quantization on "
                    "the float model, e.g. 'cle,bias_correction' or 'cle,adaround' (one run "
                    "directory or zoo:NAME): PTQ per-channel, per-tensor and 4-bit-weight "
                    "accuracy and per-layer ratios and SQNR before and after (repair.csv/.png, "
                    "repair_* columns in layers.csv, a report section); with --sensitivity, "
                    "the sensitivity of the repaired model.")
flags.DEFINE_integer("calibration_samples", 500, "--repair: training images to calibrate, "
                     "correct and AdaRound on.")
flags.DEFINE_integer("adaround_iterations", 1000, "--repair adaround: optimisation steps per "
                     "layer.")
cli.define_trust_model_code()


class Target:
    """A model to analyze: its flatbuffer and, for a run directory, its Keras models."""

    def __init__(self, path):
        from fnet_tf.release import zoo
        from fnet_tf.run import artifacts
        from fnet_tf.run.rundir import RunDir

        self.path, self.run = path, None
        self.released = zoo.released_name(path)  # zoo:NAME: a released model
        self.budget_rows = None  # per weight op: fnet_tf.analysis.bit_budget, set by measure()
        if self.released is not None:
            self.tflite, self.name, self.data = zoo.load(self.released), self.released, None
        elif artifacts.is_run_dir(path):
            self.run = RunDir(path)
            self.tflite = self.run.file("model_int8.tflite")
            if not os.path.isfile(self.tflite):
                raise UserError(f"no INT8 model in {path}: run python export/to_tflite.py {path} first")
            self.name = os.path.basename(os.path.abspath(path))
            self.data = (self.run.config() or {}).get("data")
            self.run.manifest()  # a corrupt run.json fails now, not after the evaluation
        elif os.path.isfile(path):
            self.tflite, self.name, self.data = path, os.path.splitext(os.path.basename(path))[0], None
        elif not os.path.exists(path):
            raise UserError(f"{path!r} does not exist: pass a run directory or a .tflite file")
        else:
            raise UserError(f"{path!r} is neither a run directory nor a .tflite file")
        with open(self.tflite, "rb") as f:
            self.content = f.read()
        if len(self.content) < 8 or self.content[4:8] != b"TFL3":
            raise UserError(f"{self.tflite!r} is not a .tflite file (no TFL3 identifier): pass a "
                            f"model exported by export/to_tflite.py")

    def float_sibling(self):
        """A float .tflite beside a bare int8 file (x_int8.tflite -> x_float32.tflite)."""
        if self.run is not None:
            return None
        from fnet_tf.tflite.convert import float_reference_name

        folder, base = os.path.split(os.path.abspath(self.tflite))
        path = os.path.join(folder, float_reference_name(base))
        return path if os.path.isfile(path) else None

    def is_ptq(self):
        """Whether the run's model_int8.tflite was post-training quantized (no QAT)."""
        from fnet_tf.quantization.schemes import get_scheme

        if self.run is None:
            return False
        exported = self.run.manifest()["steps"].get("export:model_int8.tflite", {})
        if exported.get("scheme"):
            return not get_scheme(exported["scheme"]).qat
        return not self.run.verified("qat")

    def keras_models(self):
        """(model, float architecture) for the layer-wise analysis, or None with a reason."""
        from fnet_tf.run import artifacts

        if self.released is not None:  # its INT8 file was QAT-trained: compare with the float
            from fnet_tf.release import zoo

            model = zoo.keras_model(self.released)
            return (model, model), None
        if self.run is None:
            return None, ("no Keras model or float .tflite beside a bare .tflite (give a run "
                          "directory, or put x_float32.tflite beside x_int8.tflite)")
        if self.run.verified("qat") and not self.is_ptq():
            trust = FLAGS.trust_model_code
            model, _ = artifacts.qat_model(self.run, trust)
            return (model, artifacts.float_model(self.run, trust)), None
        if self.run.verified("float"):
            model = artifacts.float_model(self.run, FLAGS.trust_model_code)
            return (model, model), None
        return None, f"no trained model in {self.run.path}"

    def float_model(self):
        """The float Keras model the repairs act on; UserError where there is none."""
        from fnet_tf.run import artifacts

        if self.released is not None:
            from fnet_tf.release import zoo

            return zoo.keras_model(self.released)
        if self.run is None or not self.run.verified("float"):
            raise UserError(f"--repair needs a float Keras model: {self.path} has none (pass a "
                            f"run directory with a trained float model, or zoo:NAME)")
        return artifacts.float_model(self.run, FLAGS.trust_model_code)


def measure(target, dataset):
    """Accuracy and graph statistics of one target (latency is measured separately)."""
    from fnet_tf.tflite import measure as benchmark

    stats = benchmark.graph_stats(target.content)
    print(f"{target.name}: evaluating on {len(dataset.test) if FLAGS.limit is None else FLAGS.limit} "
          f"test images", file=sys.stderr, flush=True)
    acc = benchmark.evaluate_tflite(target.content, dataset.test, FLAGS.limit, FLAGS.threads)
    from fnet_tf.analysis.bit_budget import bit_budget

    budget_rows, budget = bit_budget(target.content)
    target.budget_rows = budget_rows
    return {"bit_budget": budget, "model": target.name, "file": os.path.abspath(target.tflite),
            "accuracy_top1": acc["accuracy_top1"], "accuracy_top5": acc["accuracy_top5"],
            "num_images": acc["num_images"], "eval_seconds": acc["seconds"],
            "size_bytes": len(target.content), "params": stats["params"], "macs": stats["macs"],
            "elementwise_ops": stats["elementwise_ops"],
            "peak_activation_bytes": stats["peak_activation_bytes"], "ops": stats["ops"],
            "input": stats["input"], "output": stats["output"],
            "fully_int8": not stats["problems"], "int8_problems": stats["problems"],
            "data": {"source": dataset.source, "split": "test"}}


def layerwise(target, dataset, out, repair_layers=None):
    """layers.csv and the layer-wise plots; returns (rows, note). ``repair_layers``: the
    ``--repair`` figures per weight layer, added as repair_* columns."""
    from fnet_tf.analysis import layerwise as lw
    from fnet_tf.analysis import plots
    from fnet_tf.core import fileio

    images = dataset.train.images[:FLAGS.layer_images]  # calibration data: training split
    sibling = target.float_sibling()
    if sibling:
        with open(sibling, "rb") as f:
            rows, per_channel, activations, weights = lw.analyze_tflite_pair(
                target.content, f.read(), images)
        architecture = None
    else:
        models, note = target.keras_models()
        if models is None:
            return [], f"layer-wise analysis skipped: {note}"
        model, architecture = models
        rows, per_channel, activations, weights = lw.analyze_layers(model, target.content, images,
                                                                    architecture)
    fields = ["op", "tflite_op", "layer", "weight_layer", "weight_kind", "params", "channels",
              "weight_min", "weight_max", "weight_std", "channel_range_min", "channel_range_max",
              "channel_range_ratio", "weight_sqnr_db_per_channel", "weight_sqnr_db_per_tensor",
              "raw_weight_std", "raw_channel_range_max", "raw_channel_range_ratio",
              "act_min", "act_p0_1", "act_p1", "act_p50", "act_p99", "act_p99_9", "act_max",
              "scale", "mse", "sqnr_db", "rmse_lsb", "max_err_lsb", "tensor"]
    if repair_layers:
        from fnet_tf.analysis.repair_effect import LAYER_FIELDS

        by_layer = {r["layer"]: r for r in repair_layers}
        fields += list(LAYER_FIELDS)
        for row in rows:
            row.update({k: v for k, v in by_layer.get(row.get("weight_layer"), {}).items()
                        if k in LAYER_FIELDS})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text(os.path.join(out, "layers.csv"), buf.getvalue())
    plots.weight_ranges(per_channel, os.path.join(out, "weight_ranges.png"),
                        f"{target.name}: per-channel weight ranges")
    plots.histograms(activations, os.path.join(out, "activation_histograms.png"),
                     f"{target.name}: activations on {len(images)} training images", "activation value")
    plots.histograms(weights, os.path.join(out, "weight_histograms.png"),
                     f"{target.name}: weights as the int8 file stores them (BN folded)", "weight value")
    plots.sqnr_bars(rows, os.path.join(out, "sqnr.png"),
                    f"{target.name}: INT8 vs float per layer ({len(images)} training images)")
    if sibling:
        return rows, f"layer-wise analysis against the float file {sibling}"
    if target.is_ptq():
        from fnet_tf.analysis.ptq_debugger import debug_ptq
        from fnet_tf.data import datasets as data_lib

        debug_ptq(architecture, data_lib.representative_dataset(dataset.train, len(images)),
                  os.path.join(out, "ptq_debugger.csv"))
        return rows, ("post-training quantized: ptq_debugger.csv holds TF's QuantizationDebugger "
                      "per-op errors (each op fed the same input)")
    return rows, None


def time_ops(target):
    """Each op of the target timed alone: (rows, the summary kept in metrics.json)."""
    from fnet_tf.analysis import op_latency

    print(f"{target.name}: timing each op alone", file=sys.stderr, flush=True)
    timed = op_latency.op_latency(target.content, FLAGS.threads, FLAGS.latency_runs)
    return timed["ops"], op_latency.summary(timed)


def write_op_latency(rows, name, out):
    from fnet_tf.analysis import op_latency

    op_latency.write(rows, out, f"{name}: each op timed alone ({cli.count(FLAGS.threads, 'thread')})")


def _op_latency_lines(metrics, rows):
    from fnet_tf.analysis import op_latency

    by_op = metrics["latency_by_op"]
    lines = ["## Where the time goes (each op timed alone)", "",
             f"Sum of the ops' p50: {by_op['sum_of_ops_p50_ms'] * 1e3:.1f} us; the whole model "
             f"in the same pass: {by_op['whole_p50_ms'] * 1e3:.1f} us (each timed invoke carries "
             f"the interpreter's fixed cost once). Ops on TFLite's builtin kernels instead of "
             f"XNNPACK: {by_op['builtin_kernel_ops'] or 'none'}.", "",
             "| op | kind | output | MACs | kernel | p50 us | share |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in op_latency.slowest_first(rows):
        lines.append(f"| {r['index']} | {r['kind']} | {r['output_shape']} | {r['macs']:,} | "
                     f"{r['kernel']} | {r['p50_us']:.1f} | {r['share']:.1%} |")
    return lines + ["", "![op latency](op_latency.png)", ""]


def share(value):
    """A share as a percentage, or "n/a" for a figure that was not measured (top-5 of a model
    with five classes or fewer)."""
    return "n/a" if value is None else f"{value:.2%}"


def report(metrics, rows, note, out, op_rows=None, extra_lines=()):
    from fnet_tf.core import fileio

    lat = metrics["latency_ms"]
    lines = [f"# Analysis of {metrics['model']}", "",
             f"- file: `{metrics['file']}` ({metrics['size_bytes']:,} bytes, fully int8: "
             f"{metrics['fully_int8']})",
             f"- accuracy: top-1 {metrics['accuracy_top1']:.2%}, top-5 {share(metrics['accuracy_top5'])} "
             f"on {cli.count(metrics['num_images'], 'image')} of {metrics['data']['source']} ({metrics['data']['split']})",
             f"- latency (LiteRT, {cli.count(lat['threads'], 'thread')}, XNNPACK {metrics['xnnpack']}): p50 "
             f"{lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms, p99 {lat['p99']:.3f} ms, mean "
             f"{lat['mean']:.3f} ms over {cli.count(lat['runs'], 'invoke')}",
             f"- params {metrics['params']:,}, MACs {metrics['macs']:,}, peak activation memory "
             f"{metrics['peak_activation_bytes']:,} bytes",
             f"- input {metrics['input']['dtype']} {metrics['input']['shape']}, scale "
             f"{metrics['input']['scale']:g}, zero point {metrics['input']['zero_point']}",
             f"- ops: {', '.join(f'{k} x{v}' for k, v in sorted(metrics['ops'].items()))}",
             f"- machine: {metrics['machine']['cpu']}, {metrics['machine']['cores']} cores, "
             f"ai-edge-litert {metrics['machine']['ai_edge_litert']}", ""]
    if metrics.get("efficiency"):
        e = metrics["efficiency"]
        lines.insert(5, f"- compute efficiency: {e['achieved_gmacs']:.2f} GMAC/s achieved, "
                        f"{e['peak_share']:.1%} of this CPU's int8 peak ({e['peak_gmacs']:.1f} "
                        f"GMAC/s, the best large conv probe timed in the same pass)")
    b = metrics["bit_budget"]
    lines.insert(-1, f"- weights: {b['filters']:,} filters, {b['ternary_filters']:,} ternary "
                     f"and {b.get('two_branch_filters', 0):,} two-branch ("
                     f"{b.get('branch_weight_share', b['ternary_weight_share']):.1%} of weights, "
                     f"{b['ternary_mac_share']:.1%} of MACs add-only); packed size {b['packed_bytes']:,.0f} bytes ({b['int8_bytes']:,.0f} at "
                     f"8 bits); energy estimate {b['energy_pj'] / 1e3:,.1f} nJ per inference "
                     f"({b['energy_pj_int8'] / 1e3:,.1f} nJ all-int8; Horowitz 45 nm table, "
                     f"fnet_tf/analysis/bit_budget.py)")
    if metrics.get("latency_ms_all_cores"):
        a = metrics["latency_ms_all_cores"]
        lines.insert(5, f"- latency with all {a['threads']} cores: p50 {a['p50']:.3f} ms, p99 {a['p99']:.3f} ms")
    if metrics.get("latency_ms_litert_tool"):
        t = metrics["latency_ms_litert_tool"]
        lines.insert(5, f"- benchmark_litert_model, same threads: median {t['median']} ms, p95 {t['p95']} ms")
    if note:
        lines += [f"_{note}._", ""]
    if rows:
        lines += ["## Layers (INT8 output vs float, on training images)", "",
                  "| op | layer | weights | channel range ratio | weight SQNR dB per-channel / "
                  "per-tensor | output SQNR dB | RMSE (steps) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            ratio = r.get("channel_range_ratio")
            wsq = (f"{r['weight_sqnr_db_per_channel']:.1f} / {r['weight_sqnr_db_per_tensor']:.1f}"
                   if ratio is not None else "-")
            lines.append(f"| {r['op']} {r['tflite_op']} | {r['layer']} | {r.get('weight_kind', '-')} "
                         f"| {'-' if ratio is None else f'{ratio:.1f}'} | {wsq} | {r['sqnr_db']:.1f} "
                         f"| {r.get('rmse_lsb', float('nan')):.2f} |")
        lines += ["", "![weight ranges](weight_ranges.png)", "![SQNR](sqnr.png)",
                  "![activations](activation_histograms.png)", "![weights](weight_histograms.png)"]
    if op_rows:
        lines += [""] + _op_latency_lines(metrics, op_rows)
    if extra_lines:
        lines += [""] + list(extra_lines)
    lines += ["", "![summary](summary.png)", ""]
    fileio.write_text(os.path.join(out, "report.md"), "\n".join(lines))


def main(argv):
    if len(argv) < 2:
        raise UserError("usage: python -m fnet_tf.analyze RUN_DIR_OR_TFLITE [...] [--data D] [--out DIR]")
    if FLAGS.threads < 1:
        raise UserError(f"--threads must be 1 or more, got {FLAGS.threads}")
    if FLAGS.latency_runs < 1:
        raise UserError(f"--latency_runs must be 1 or more, got {FLAGS.latency_runs}")
    if FLAGS.limit is not None and FLAGS.limit < 1:
        raise UserError(f"--limit must be positive, got {FLAGS.limit}")
    from fnet_tf.quantization.repair import parse_repairs

    repairs = parse_repairs(FLAGS.repair)
    if repairs and (len(argv) != 2 or FLAGS.evolution):
        raise UserError("--repair analyses one run directory or released model (zoo:NAME), "
                        "without --evolution")
    if FLAGS.calibration_samples < 1 or FLAGS.adaround_iterations < 1:
        raise UserError("--calibration_samples and --adaround_iterations must be positive")
    if FLAGS.evolution:
        return plot_evolution(argv[1:])
    if FLAGS.sensitivity:
        return run_sensitivity(argv[1:])
    from fnet_tf.analysis.output_names import unique_names
    from fnet_tf.data import datasets as data_lib

    targets = unique_names([Target(p) for p in argv[1:]])
    if repairs and targets[0].run is None and targets[0].released is None:
        raise UserError(f"--repair needs a float Keras model: {argv[1]} is a bare .tflite (pass "
                        f"its run directory, or zoo:NAME)")
    source = FLAGS.data or next((t.data for t in targets if t.data), None)
    if not source:
        raise UserError("pass --data (e.g. ../shared/data/cifar10-jpeg.tar.gz): a .tflite file "
                        "does not say which data it was trained on")
    data_lib.check_source(source)
    from fnet_tf.core import fileio
    from fnet_tf.tflite import convert as export
    from fnet_tf.tflite import measure as benchmark

    interpreters = [export.interpreter(t.content) for t in targets]  # a corrupt file fails here
    for t, it in zip(targets, interpreters):
        if not any(np.dtype(d["dtype"]) == np.int8 for d in it.get_tensor_details()):
            raise UserError(f"{t.name} is a float .tflite (no int8 tensor): fnet-analyze measures "
                            f"INT8 files (export one with fnet-export); a float file serves only "
                            f"as the layer-wise reference, x_float32.tflite beside x_int8.tflite")
    from fnet_tf.analysis import plots
    from fnet_tf.analysis.op_latency import kinds_of

    sizes = {tuple(it.get_input_details()[0]["shape"][1:3]) for it in interpreters}
    if len(sizes) > 1:
        raise UserError(f"the models take different input sizes ({', '.join(f'{h}x{w}' for h, w in sorted(sizes))}): "
                        f"analyze models of one input size together")
    dataset = data_lib.load(source, cache_dir=FLAGS.cache_dir, image_size=sizes.pop())
    for t, it in zip(targets, interpreters):
        outputs = int(it.get_output_details()[0]["shape"][-1])
        if outputs != len(dataset.classes):
            raise UserError(f"{t.name} predicts {outputs} classes but {dataset.source} has "
                            f"{len(dataset.classes)}: pass the dataset the model was trained on")
    started = time.time()
    results = [measure(t, dataset) for t in targets]
    print(f"timing {cli.count(len(targets), 'model')}, interleaved", file=sys.stderr, flush=True)
    probes = [content for content, _ in benchmark.peak_probes().values()]
    latencies = benchmark.latency([t.content for t in targets] + probes, FLAGS.threads,
                                  FLAGS.latency_runs)
    peak, by_probe = benchmark.peak_gmacs(latencies[len(targets):])
    machine = benchmark.machine_info()
    for t, m, lat in zip(targets, results, latencies):
        m.update(latency_ms=lat, machine=machine, xnnpack=benchmark.uses_xnnpack(t.content),
                 efficiency={**benchmark.efficiency(m["macs"], lat, peak), "probes": by_probe})
    if len(targets) == 1:
        target, metrics = targets[0], results[0]
        cores = os.cpu_count() or 1
        if cores > 1 and cores != FLAGS.threads:
            metrics["latency_ms_all_cores"] = benchmark.latency([target.content], cores,
                                                                FLAGS.latency_runs)[0]
        if FLAGS.tool_check:
            metrics["latency_ms_litert_tool"] = benchmark.litert_tool_latency(
                target.tflite, FLAGS.threads, FLAGS.latency_runs)
        out = FLAGS.out or (os.path.join(target.path, "analysis") if target.run
                            else os.path.join("analysis", target.name))
        op_rows = None
        if FLAGS.op_latency:
            op_rows, metrics["latency_by_op"] = time_ops(target)
            write_op_latency(op_rows, target.name, out)
        _write_csv(os.path.join(out, "bit_budget.csv"), target.budget_rows)
        repair_layers, repair_lines = (run_repairs(target, repairs, dataset, out) if repairs
                                       else (None, ()))
        rows, note = layerwise(target, dataset, out, repair_layers)
        metrics["analysis_seconds"] = time.time() - started
        plots.summary(metrics, os.path.join(out, "summary.png"), target.name)
        fileio.write_json(os.path.join(out, "metrics.json"), metrics)
        report(metrics, rows, note, out, op_rows, repair_lines)
        if target.run:
            target.run.update_metrics("int8", {k: metrics[k] for k in (
                "accuracy_top1", "accuracy_top5", "num_images", "latency_ms", "size_bytes",
                "params", "macs", "peak_activation_bytes")})
        print(_table(results))
        if note:
            print(note)
        print(f"wrote {out}/ (metrics.json, report.md{', layers.csv' if rows else ''}"
              f"{', repair.csv' if repairs else ''}, plots) "
              f"in {metrics['analysis_seconds']:.1f}s")
        return 0
    out = FLAGS.out or "analysis/comparison"
    entries = [{"name": m["model"], "macs": m["macs"], "latency_p50": m["latency_ms"]["p50"],
                "accuracy_top1": m["accuracy_top1"]} for m in results]
    plots.comparison(entries, os.path.join(out, "comparison.png"),
                     f"INT8 models on {dataset.source} (latency interleaved, {cli.count(FLAGS.threads, 'thread')})")
    if FLAGS.op_latency:
        for t, m in zip(targets, results):
            op_rows, m["latency_by_op"] = time_ops(t)
            write_op_latency(op_rows, t.name, os.path.join(out, t.name))
        by_kind = [m["latency_by_op"]["by_kind_us"] for m in results]
        plots.op_latency_by_kind(
            [{"name": m["model"], "by_kind": k} for m, k in zip(results, by_kind)],
            kinds_of(by_kind), os.path.join(out, "op_latency_by_kind.png"),
            f"Where the time goes ({cli.count(FLAGS.threads, 'thread')}, each op timed alone)")
    layers_text = compare_layers(targets, dataset, out) if FLAGS.compare_layers else ""
    fileio.write_json(os.path.join(out, "comparison.json"), results)
    fileio.write_text(os.path.join(out, "comparison.md"), _table(results) + "\n" + (
        "\n" + _kind_table(results) + "\n" if FLAGS.op_latency else "") + layers_text)
    print(_table(results))
    print(f"wrote {out}/ (comparison.md, comparison.json, comparison.png"
          f"{', op_latency_by_kind.png, <model>/op_latency.csv' if FLAGS.op_latency else ''}"
          f"{', layers_compared.md/.png, <model>/layers.csv' if FLAGS.compare_layers else ''})")
    return 0


def run_repairs(target, repairs, dataset, out):
    """``--repair``: repair.csv, repair.png and the report section; returns (per-layer rows
    for layers.csv, report lines)."""
    from fnet_tf.analysis import plots, repair_effect
    from fnet_tf.quantization.adaround import AdaRoundSettings

    model = target.float_model()

    def progress(text):
        print(f"{target.name}: repair: {text}", file=sys.stderr, flush=True)

    accuracy, layers, fixed = repair_effect.measure_repairs(
        model, repairs, dataset, FLAGS.calibration_samples, FLAGS.layer_images, FLAGS.limit,
        FLAGS.threads, AdaRoundSettings(iterations=FLAGS.adaround_iterations), progress)
    _write_csv(os.path.join(out, "repair.csv"), accuracy)
    plots.repair_layers(layers, os.path.join(out, "repair.png"),
                        f"{target.name}: before and after {', '.join(repairs)}")
    for row in accuracy:
        print(f"{target.name}: {row['weights']} weights, {row['activations']} activations, "
              f"{row['when']} the repairs: {row['accuracy']:.2%}")
    return layers, repair_effect.report_lines(repairs, accuracy, layers, fixed,
                                              FLAGS.calibration_samples, FLAGS.layer_images)


def compare_layers(targets, dataset, out):
    """Each target's layer-wise analysis (in ``out/<name>/``), compared: layers_compared.png and
    a markdown section of where INT8 error enters (``analysis.layer_compare``)."""
    from fnet_tf.analysis import layer_compare, plots
    from fnet_tf.core import fileio

    rows_by_model, notes = {}, []
    for t in targets:
        rows, note = layerwise(t, dataset, os.path.join(out, t.name))
        if rows:
            rows_by_model[t.name] = rows
        else:
            notes.append(f"{t.name}: {note}")
    if not rows_by_model:
        return "\n" + "\n".join(notes) + "\n"
    plots.layers_by_depth(rows_by_model, os.path.join(out, "layers_compared.png"),
                          f"Where INT8 error enters ({FLAGS.layer_images} training images)")
    summaries = {name: layer_compare.summarize(rows) for name, rows in rows_by_model.items()}
    text = ("\n## Where INT8 error enters\n\n" + layer_compare.markdown(summaries)
            + "".join(f"\n{n}" for n in notes) + "\n")
    fileio.write_text(os.path.join(out, "layers_compared.md"), text)
    return text


def plot_evolution(paths):
    from fnet_tf.analysis import plots
    from fnet_tf.analysis.callback import STATS_FILE, read_stats
    from fnet_tf.run import artifacts

    if len(paths) != 1 or not artifacts.is_run_dir(paths[0]):
        raise UserError("--evolution takes one run directory")
    entries = read_stats(os.path.join(paths[0], STATS_FILE))
    if not entries:
        raise UserError(f"no {STATS_FILE} in {paths[0]}: train with --layer_stats (the default)")
    out = FLAGS.out or os.path.join(paths[0], "analysis")
    name = os.path.basename(os.path.abspath(paths[0]))
    plots.evolution(entries, os.path.join(out, "evolution.png"),
                    f"{name}: layer ranges over {cli.count(len(entries), 'epoch')}")
    print(f"wrote {os.path.join(out, 'evolution.png')} ({cli.count(len(entries), 'epoch')})")
    return 0


def run_sensitivity(paths):
    """``--sensitivity``: fnet_tf.analysis.sensitivity on a run's float model (repaired first
    with ``--repair``)."""
    from fnet_tf.analysis import plots, sensitivity
    from fnet_tf.core import fileio
    from fnet_tf.data import datasets as data_lib
    from fnet_tf.quantization.repair import parse_repairs
    from fnet_tf.release import zoo
    from fnet_tf.run import artifacts
    from fnet_tf.run.rundir import RunDir

    released = zoo.released_name(paths[0]) if len(paths) == 1 else None
    if len(paths) != 1 or not (released or artifacts.is_run_dir(paths[0])):
        raise UserError("--sensitivity takes one run directory or released model (zoo:NAME): "
                        "its float model is analysed")
    if released:
        model, config, where, default_out = _released_for_sensitivity(released)
    else:
        run = RunDir(paths[0])
        config, where = run.config() or {}, run.path
        default_out = os.path.join(run.path, "analysis")
    source = FLAGS.data or config.get("data")
    if not source:
        raise UserError(f"pass --data: {where} names no dataset file")
    if not config.get("val_split"):
        raise UserError(f"{where} was trained with --val_split 0: sensitivity is measured on "
                        f"held-out validation images (never the test split); train with "
                        f"--val_split N")
    if not released:
        model = artifacts.float_model(run, FLAGS.trust_model_code)
    dataset = data_lib.load(source, cache_dir=FLAGS.cache_dir, val_split=config["val_split"],
                            image_size=tuple(model.input_shape[1:3]))
    repairs = parse_repairs(FLAGS.repair)
    if repairs:  # the sensitivity of the repaired float model (AdaRound: on the 8-bit grid)
        from fnet_tf.quantization import repair
        from fnet_tf.quantization.adaround import AdaRoundSettings

        context = repair.Context(
            images=dataset.train.images[:FLAGS.calibration_samples].astype(np.float32),
            rounding=AdaRoundSettings(iterations=FLAGS.adaround_iterations))
        model, fixed = repair.repaired(model, repairs, context=context)
        print("\n".join(fixed.lines()), file=sys.stderr, flush=True)
    count = min(FLAGS.limit or 2000, len(dataset.val))
    pick = np.linspace(0, len(dataset.val) - 1, count).round().astype(int)  # every class
    images, labels = dataset.val.images[pick], dataset.val.labels[pick]
    evaluate = _fast_evaluator(config, images, labels)
    rows, baselines = sensitivity.layer_sensitivity(
        model, images, labels, evaluate=evaluate,
        progress=lambda text: print(f"sensitivity: {text}", file=sys.stderr, flush=True))
    out = FLAGS.out or default_out
    _write_csv(os.path.join(out, "sensitivity.csv"), rows)
    name = (released or os.path.basename(run.path)) + (
        f" after {', '.join(repairs)}" if repairs else "")
    plots.sensitivity_bars(rows, sensitivity.BITS, os.path.join(out, "sensitivity.png"),
                           f"{name}: validation top-1 with only each layer quantized")
    lines = [f"# Sensitivity of {name}", ""] + sensitivity.report_lines(rows, baselines, count)
    fileio.write_text(os.path.join(out, "sensitivity.md"), "\n".join(lines))
    for b in sensitivity.BITS:
        ranked = sensitivity.ranking(rows, b)
        print(f"{b}{'' if b == 'ternary' else ' bits'}: all layers {baselines[str(b)]:.2%} (float {baselines['float']:.2%}); "
              f"most sensitive {ranked[0]['layer']} ({ranked[0]['accuracy_only_this']:.2%} alone), "
              f"least {ranked[-1]['layer']} ({ranked[-1]['accuracy_only_this']:.2%} alone)")
    print(f"wrote {out}/ (sensitivity.csv, sensitivity.png, sensitivity.md)")
    return 0


def _released_for_sensitivity(name):
    """(float model, a run-like config, what to name in errors, default output folder) of
    released model ``name``: its float weights, and the validation split its recipe held out
    (the same images its training never saw, given the same --data)."""
    from fnet_tf.release import zoo

    released = zoo.metrics(name)
    config = {"model": released["model"], "level": released["level"],
              "width": released.get("width", 1.0),
              "val_split": (released.get("recipe") or {}).get("val_split")}
    return zoo.keras_model(name), config, f"released model {name}", os.path.join(
        "analysis", name)


def _fast_evaluator(config, images, labels):
    """Top-1 of a model on ``images``, run in the block-diagonal training form where the run's
    architecture has grouped convs (TF's grouped-conv kernels are 50-200x slower on a CPU)."""

    def accuracy(model):
        logits = model.predict(images.astype(np.float32), batch_size=500, verbose=0)
        return float(np.mean(np.argmax(logits, -1) == labels))

    from fnet_tf.arch import architectures
    from fnet_tf.arch.spec import build_model, has_grouped_convs

    try:
        spec = architectures.model_spec(config["model"], config["level"], config.get("width", 1.0),
                                        config.get("image_size"))
    except (KeyError, UserError):
        return accuracy
    if not has_grouped_convs(spec):
        return accuracy
    from dataclasses import replace

    from fnet_tf.arch.grouped import transfer_weights

    fast = {}

    def fast_accuracy(model):
        if "model" not in fast:
            fast["model"] = build_model(replace(spec, num_classes=model.output_shape[-1]),
                                        grouped_form="block_diagonal")
        return accuracy(transfer_weights(model, fast["model"]))

    return fast_accuracy


def _write_csv(path, rows):
    from fnet_tf.core import fileio

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["op"])
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text(path, buf.getvalue())


def _kind_table(results):
    """Microseconds per op kind (each op timed alone) for each model."""
    from fnet_tf.analysis.op_latency import kinds_of

    kinds = kinds_of(m["latency_by_op"]["by_kind_us"] for m in results)
    lines = ["Where the time goes (us, each op timed alone; sum vs the whole model):", "",
             "| model | " + " | ".join(kinds) + " | sum | whole |",
             "| --- |" + " --- |" * (len(kinds) + 2)]
    for m in results:
        by_op = m["latency_by_op"]
        cells = [f"{by_op['by_kind_us'].get(k, 0.0):.1f}" for k in kinds]
        lines.append(f"| {m['model']} | " + " | ".join(cells) + f" | "
                     f"{by_op['sum_of_ops_p50_ms'] * 1e3:.1f} | {by_op['whole_p50_ms'] * 1e3:.1f} |")
    return "\n".join(lines)


def _table(results):
    base = results[0]["latency_ms"]["p50"]
    lines = ["| model | top-1 | top-5 | MACs (M) | params | KiB | p50 ms | vs first |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in results:
        lines.append(f"| {m['model']} | {m['accuracy_top1']:.2%} | {share(m['accuracy_top5'])} | "
                     f"{m['macs'] / 1e6:.2f} | {m['params']:,} | {m['size_bytes'] / 1024:.1f} | "
                     f"{m['latency_ms']['p50']:.3f} | {m['latency_ms']['p50'] / base:.2f}x |")
    return "\n".join(lines)


console = cli.entry_point(  # the fnet-analyze command
    main, usage="fnet-analyze RUN_DIR | FILE.tflite | zoo:NAME [...] [flags]   (python -m "
                "fnet_tf.analyze in a checkout)",
    common=("data", "out", "sensitivity", "limit", "latency_runs", "threads"))

if __name__ == "__main__":
    console()
