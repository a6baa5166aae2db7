"""The training-time half of the analysis: layer statistics after every epoch.

``LayerStatsCallback`` (on by default in ``fnet_tf.train``) appends one JSON line per epoch
to ``RUN_DIR/layer_stats.jsonl``: for each conv/dense layer its BN-folded weight range (max,
narrowest channel, their ratio, std) and for each ReLU/output layer the activation range on a
fixed batch of training images; and writes the same as TensorBoard histograms under
``RUN_DIR/tensorboard/<phase>``. ``python -m fnet_tf.analyze RUN_DIR --evolution`` plots it.
It costs one forward pass of 64 images per epoch.
"""
import json
import os

import numpy as np

from fnet_tf.analysis import layerwise
from fnet_tf.core import fileio
from fnet_tf.core.backend import keras, tf
from fnet_tf.core.errors import UserError

STATS_FILE = "layer_stats.jsonl"


def _entry_problem(entry):
    if not isinstance(entry, dict):
        return "not an object"
    if not isinstance(entry.get("phase"), str):
        return "no string 'phase'"
    if isinstance(entry.get("epoch"), bool) or not isinstance(entry.get("epoch"), int):
        return "no integer 'epoch'"
    for group in ("weights", "activations"):
        layers = entry.get(group, {})
        if not isinstance(layers, dict) or not all(isinstance(v, dict) for v in layers.values()):
            return f"{group!r} is not an object of per-layer objects"
    return None


def read_stats(path):
    """The whole entries of ``path`` (a line torn by a kill is dropped), read with a size bound
    and checked: the file may come with someone else's run directory."""

    if not os.path.isfile(path):
        return []
    entries = []
    lines = fileio.read_text(path, fileio.CSV_LIMIT).splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip().endswith("}"):
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            entry = None
        problem = _entry_problem(entry) if entry is not None else "not JSON"
        if problem:
            raise UserError(f"{path} is malformed (line {number}: {problem}): delete it, or the "
                            f"run directory, and run again")
        entries.append(entry)
    return entries


def truncate_stats(path, phase, epochs):
    """Rewrite the file with the whole entries of other phases and of ``phase`` up to
    ``epochs`` (the restored checkpoint), dropping a line torn by a kill."""

    if not os.path.isfile(path):
        return
    kept = [e for e in read_stats(path) if not (e["phase"] == phase and e["epoch"] > epochs)]
    fileio.write_text(path, "".join(json.dumps(e) + "\n" for e in kept))


class LayerStatsCallback(keras.callbacks.Callback):
    def __init__(self, run_dir, phase, images):
        super().__init__()
        self.path = os.path.join(run_dir, STATS_FILE)
        self.phase = phase
        self.images = tf.constant(images.astype(np.float32))
        self.writer = None
        try:
            import tensorboard  # noqa: F401  (tf.summary.histogram needs it)

            self.writer = tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard", phase))
        except ImportError:
            print("note: TensorBoard is not installed: layer statistics go to layer_stats.jsonl "
                  "only (pip install tensorboard for histograms)")
        self._probe = None

    def _histogram(self, tag, values, epoch):
        if self.writer is not None:
            with self.writer.as_default(step=epoch + 1):
                tf.summary.histogram(tag, values)

    def on_resume(self, completed_epochs):
        truncate_stats(self.path, self.phase, completed_epochs)

    def _activation_probe(self):
        layers = [layer for layer in self.model.layers
                  if type(layerwise._inner(layer)).__name__ == "ReLU"] + [self.model.layers[-1]]
        names = [layerwise._inner(layer).name for layer in layers]
        return names, keras.Model(self.model.inputs, [layer.output for layer in layers])

    def on_epoch_end(self, epoch, logs=None):
        weights = {}
        for name, (kind, kernel, axis) in layerwise.folded_kernels(self.model).items():
            stats = layerwise.weight_stats(kernel, axis)
            per_channel = stats.pop("per_channel_range")
            weights[name] = {"kind": kind, **{k: stats[k] for k in (
                "weight_std", "channel_range_max", "channel_range_min", "channel_range_ratio")}}
            self._histogram(f"weights/{name}", kernel, epoch)
            self._histogram(f"channel_ranges/{name}", per_channel, epoch)
        if self._probe is None:
            self._probe = self._activation_probe()
        names, probe = self._probe
        outputs = probe(self.images, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        activations = {}
        for name, out in zip(names, outputs):
            values = out.numpy().ravel()
            activations[name] = {"min": float(values.min()), "max": float(values.max()),
                                 "p99_9": float(np.percentile(values, 99.9)),
                                 "mean": float(values.mean())}
            self._histogram(f"activations/{name}", values, epoch)
        if self.writer is not None:
            self.writer.flush()
        entry = {"phase": self.phase, "epoch": epoch + 1, "weights": weights,
                 "activations": activations}
        with open(self.path, "a") as f:  # one line per epoch; a torn last line is ignored
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
