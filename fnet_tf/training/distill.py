"""Knowledge distillation in float training (Hinton et al. 2015): ``--teacher``, ``--kd_alpha``,
``--kd_temperature``.

The loss of a batch with labels ``y`` (one-hot, label smoothing applied), student logits ``s``
and teacher logits ``t`` computed on the *same augmented batch*::

    (1 - alpha) * CE(y, softmax(s)) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

(``T^2`` keeps the soft term's gradients on the scale of the hard one's). The teacher's logits
travel with the labels: the training stream yields ``[one-hot | teacher logits]`` as targets,
so the model, its checkpoints and resume are those of plain training; validation targets are
plain one-hot and score plain cross-entropy. ``alpha = 0`` is plain cross-entropy.
"""
import os

import numpy as np

from fnet_tf.arch import architectures
from fnet_tf.arch.spec import build_model
from fnet_tf.core import backend
from fnet_tf.core.errors import UserError
from fnet_tf.run import artifacts
from fnet_tf.run.portable_weights import (RESULT, WEIGHTS, load_weights_by_layer, read_result,
                                          read_weights)
from fnet_tf.run.rundir import RunDir


def teacher_name(path):
    """How cards and tuning trials name a teacher: its folder or file, not this machine's path."""
    return os.path.basename(os.path.normpath(path))


def kd_loss(targets, logits, alpha, temperature, num_classes, ops, label_smoothing=0.0):
    """Per-example loss; ``targets`` is one-hot (``num_classes`` wide: plain cross-entropy) or
    ``[one-hot | teacher logits]``. ``ops`` provides log_softmax/softmax/sum (tf or keras.ops
    adapters, see ``tf_ops``)."""
    onehot = targets[:, :num_classes]
    if label_smoothing:
        onehot = onehot * (1.0 - label_smoothing) + label_smoothing / num_classes
    hard = -ops.sum(onehot * ops.log_softmax(logits), axis=-1)
    if targets.shape[-1] == num_classes or not alpha:
        return hard
    teacher = targets[:, num_classes:]
    t = float(temperature)
    p_teacher = ops.softmax(teacher / t)
    soft = ops.sum(p_teacher * (ops.log_softmax(teacher / t) - ops.log_softmax(logits / t)),
                   axis=-1)
    return (1.0 - alpha) * hard + alpha * t * t * soft


class tf_ops:  # noqa: N801  (a namespace)
    @staticmethod
    def log_softmax(x):
        tf = backend.tf
        return tf.nn.log_softmax(x, axis=-1)

    @staticmethod
    def softmax(x):
        tf = backend.tf
        return tf.nn.softmax(x, axis=-1)

    @staticmethod
    def sum(x, axis):
        tf = backend.tf
        return tf.reduce_sum(x, axis=axis)


def keras3_ops(keras):
    class ops:  # noqa: N801
        log_softmax = staticmethod(lambda x: keras.ops.log_softmax(x, axis=-1))
        softmax = staticmethod(lambda x: keras.ops.softmax(x, axis=-1))
        sum = staticmethod(lambda x, axis: keras.ops.sum(x, axis=axis))
    return ops


def loss_and_accuracy(keras, num_classes, alpha, temperature, ops, label_smoothing=0.0):
    """The compiled loss and an ``accuracy`` metric that read only the one-hot part."""
    def loss(targets, logits):
        return kd_loss(targets, logits, alpha, temperature, num_classes, ops, label_smoothing)

    def accuracy(targets, logits):
        return keras.metrics.categorical_accuracy(targets[:, :num_classes], logits)

    return loss, keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


def load_teacher(path, num_classes, trust_code=False):
    """The teacher as a tf_keras model: a run directory (its float model), a ``.keras`` file,
    or a Keras 3 ``--out`` directory (its float_weights.npz into the spec it names)."""

    if os.path.isfile(os.path.join(path, RESULT)):

        theirs = read_result(path)
        spec = architectures.model_spec(theirs["model"], theirs["level"], theirs.get("width", 1.0))
        from dataclasses import replace

        spec = replace(spec, num_classes=num_classes)
        model = load_weights_by_layer(build_model(spec), read_weights(os.path.join(path, WEIGHTS)))
    elif artifacts.is_run_dir(path):

        model = artifacts.float_model(RunDir(path), trust_code)
    elif os.path.isfile(path):
        model = artifacts.load_keras_model(path, trust_code)
    else:
        raise UserError(f"--teacher {path!r} does not exist: pass a run directory, a .keras file "
                        f"or a Keras 3 --out directory")
    if model.output_shape[-1] != num_classes:
        raise UserError(f"--teacher {path} predicts {model.output_shape[-1]} classes but the data "
                        f"has {num_classes}")
    model.trainable = False
    return model


def target_figures(logits, labels, temperature):
    """What distillation targets carry, from a teacher's ``logits`` (N, C) and the integer
    ``labels``: ``top1``; ``p_true``, the mean probability the T-softened target gives the true
    class; ``entropy``, its mean entropy as a share of the uniform one (1: no information);
    ``wrong_spread``, the mean over images of std(the other logits) / (top logit - their mean),
    how much the target says about class similarity beyond the label (label smoothing erases
    it; ``benchmarks/teacher_targets.py`` prints these per teacher)."""
    logits = np.asarray(logits, np.float64)
    scaled = logits / temperature
    scaled -= scaled.max(-1, keepdims=True)
    probs = np.exp(scaled)
    probs /= probs.sum(-1, keepdims=True)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1) / np.log(logits.shape[-1])
    ordered = np.sort(logits, -1)
    others = ordered[:, :-1]
    lead = ordered[:, -1] - others.mean(-1)
    spread = others.std(-1) / np.maximum(lead, 1e-9)
    return {"top1": float((logits.argmax(-1) == labels).mean()),
            "p_true": float(probs[np.arange(len(labels)), labels].mean()),
            "entropy": float(entropy.mean()), "wrong_spread": float(spread.mean())}
