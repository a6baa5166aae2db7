"""The training loop: one resumable phase (float now; QAT reuses it) over a run directory.

Resuming is exact up to floating-point reduction order: the data order and augmentation of
epoch ``e`` depend only on (seed, e), and the checkpoint holds the weights, the optimizer's
slots and its step counter, which drives the LR schedule.
"""
import concurrent.futures
import math
import os
import signal
import sys
import time

import numpy as np

from fnet_tf.core.backend import keras, tf
from fnet_tf.data import datasets as data_lib
from fnet_tf.run.checkpoints import EpochCheckpoints
from fnet_tf.training import distill
from fnet_tf.training.gradboost import with_gradboost
from fnet_tf.training.lookahead import Lookahead
from fnet_tf.training.recipe import Recipe  # noqa: F401  (re-exported for callers)


@keras.utils.register_keras_serializable(package="fnet_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to 0
    (``cosine=False``: constant after warm-up)."""

    def __init__(self, peak, warmup_steps, total_steps, cosine=True):
        self.peak, self.warmup_steps, self.total_steps, self.cosine = (
            float(peak), int(warmup_steps), int(total_steps), bool(cosine))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        if self.cosine:
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            after = 0.5 * self.peak * (1.0 + tf.cos(math.pi * progress))
        else:
            after = tf.constant(self.peak)
        return tf.where(step < self.warmup_steps, warm, after)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "cosine": self.cosine}


NO_DECAY = ("gamma", "beta", "bias", "depthwise_kernel")  # BN, biases, depthwise kernels


def lr_schedule(recipe, steps_per_epoch):
    """The phase's learning rate by step: a linear warm-up (capped at 20% of the phase, but for
    ``ramp``, a slice of a longer warm-up: StatAssist's float epochs as the reference runs them),
    then cosine to 0 or constant."""
    total = max(recipe.epochs * steps_per_epoch, 1)
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    if recipe.warmup == "ramp":
        return WarmupCosine(recipe.lr, warmup, total, cosine=False)
    warmup = min(warmup, total // 5)
    return WarmupCosine(recipe.lr, warmup, total, cosine=recipe.schedule == "cosine")


def make_optimizer(recipe, steps_per_epoch, boost=True):
    """The phase's optimizer. ``*_gradboost`` optimizers (``fnet_tf.training.gradboost``) add their
    noise only when ``boost`` (StatAssist's float warm-up only gathers the statistics)."""
    lr = lr_schedule(recipe, steps_per_epoch)
    base, _, extra = recipe.optimizer.partition("_")
    kwargs = {}
    sgd, adamw = keras.optimizers.SGD, keras.optimizers.AdamW
    if extra == "gradboost":

        sgd, adamw = with_gradboost(sgd), with_gradboost(adamw)
        kwargs = {"gradboost_clip": recipe.gradboost_clip,
                  "gradboost_decay": recipe.gradboost_decay, "boost": boost,
                  "gradboost_seed": recipe.seed}
    if base == "sgd":
        opt = sgd(lr, momentum=recipe.momentum, nesterov=True,
                  weight_decay=recipe.weight_decay or None, **kwargs)
    else:
        opt = adamw(lr, weight_decay=recipe.weight_decay, **kwargs)
    if recipe.weight_decay:
        opt.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return opt


def compile_model(model, optimizer, recipe, num_classes=None, distilling=False):
    """Cross-entropy and top-1; ``distilling``: ``fnet_tf.training.distill``'s loss, whose targets carry
    the teacher's logits beside the one-hot labels."""
    if distilling:

        loss, accuracy = distill.loss_and_accuracy(keras, num_classes, recipe.kd_alpha,
                                                   recipe.kd_temperature, distill.tf_ops,
                                                   recipe.label_smoothing)
        model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy])
        return
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                  label_smoothing=recipe.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])


def _as_tensors(num_classes):
    def convert(images, labels):
        return tf.cast(images, tf.float32), tf.one_hot(labels, num_classes)
    return convert


def epoch_arrays(split, recipe, epoch):
    """The augmented (images uint8, labels int32) arrays of training epoch ``epoch``, in batch
    order: the batches of ``data.epoch_batches``, whose order and augmentation are a function
    of the seed and the epoch, so a resumed run sees what an uninterrupted one would."""
    batches = list(data_lib.epoch_batches(split, recipe.batch_size, seed=recipe.seed,
                                          epoch=epoch, cutout=recipe.cutout,
                                          crop_pad=recipe.crop_pad,
                                          crop_mode=recipe.crop_mode))
    return (np.concatenate([b[0] for b in batches]),
            np.concatenate([b[1] for b in batches]).astype(np.int32))


def array_dataset(images, labels, batch_size, num_classes, teacher=None, teacher_logits=None):
    """In-memory arrays as a tf.data dataset of ``batch_size`` batches (the last one short),
    with the teacher's logits appended to the labels when ``teacher`` (a model, run on each
    batch) or ``teacher_logits`` (an array, one row per image: ``fnet_tf.training.logit_bank``) is
    given. Training
    epochs (``epoch_arrays``) and evaluation both go through it.

    No Python runs inside the dataset, and tf.data's autotuning is off (these pipelines have
    nothing to tune). At every few epoch ends Keras' teardown of the epoch's iterator waited
    up to ~40 s with the CPU idle on a thread of tf.data's pool, with a ``from_generator``
    stream and with an in-memory pipeline alike, about a quarter of a 200-epoch run's wall
    time. The likely thread is the autotuner's (its timer grows to 60 s); with autotuning
    off, no stall in the rest of that run."""
    if teacher_logits is not None:
        convert = _as_tensors(num_classes)

        def with_logits(x, y, t):
            x, y = convert(x, y)
            return x, tf.concat([y, t], axis=-1)

        ds = (tf.data.Dataset.from_tensor_slices((images, labels, teacher_logits))
              .batch(batch_size).map(with_logits))
    else:
        ds = (tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
              .map(_as_tensors(num_classes)))
    if teacher is not None:  # the teacher sees the same augmented batch as the student
        ds = ds.map(lambda x, y: (x, tf.concat([y, teacher(x)], axis=-1)))
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(2).with_options(options)


class EpochArraysAhead:
    """``epoch_arrays`` built one epoch ahead on a background thread, so that augmenting
    epoch k+1 (seconds of numpy on this CPU) overlaps training epoch k instead of idling the
    trainer between epochs. ``take(epoch)`` returns that epoch's arrays (waiting if it is
    still being built) and starts the next one, up to ``epochs - 1``. Use it as a context
    manager: leaving waits for a build in flight (at most one epoch's augmentation)."""

    def __init__(self, split, recipe, epochs):
        self.split, self.recipe, self.epochs = split, recipe, epochs
        self._builder = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="epoch-arrays")
        self._pending = {}

    def _start(self, epoch):
        if epoch < self.epochs and epoch not in self._pending:
            self._pending[epoch] = self._builder.submit(epoch_arrays, self.split,
                                                        self.recipe, epoch)

    def take(self, epoch):
        self._start(epoch)
        arrays = self._pending.pop(epoch).result()
        for stale in [e for e in self._pending if e != epoch + 1]:
            self._pending.pop(stale).cancel()
        self._start(epoch + 1)
        return arrays

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for future in self._pending.values():
            future.cancel()
        self._builder.shutdown(wait=True)
        return False


def eval_dataset(split, num_classes, batch_size=500):
    return array_dataset(split.images, split.labels, batch_size, num_classes)


class _PhaseProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, but 'Epoch 12/200' counts the phase's epochs, not the one-epoch
    ``fit`` that ``fit_phase`` runs for each."""

    def __init__(self, epochs):
        super().__init__(count_mode="steps")
        self.phase_epochs = epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.phase_epochs


class _EpochEnd(keras.callbacks.Callback):
    """After each epoch: checkpoint, history row, one-line summary. SIGINT stops cleanly."""

    def __init__(self, phase, run, checkpoints, epochs):
        super().__init__()
        self.phase, self.run, self.checkpoints, self.epochs = phase, run, checkpoints, epochs
        self.interrupted = False
        self._started = 0.0

    def on_train_begin(self, logs=None):
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def on_train_end(self, logs=None):
        signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum, frame):
        if self.interrupted:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.interrupted = True
        self.model.stop_training = True
        print("\ninterrupted: stopping after this batch; completed epochs are saved "
              "(Ctrl-C again to stop at once)", file=sys.stderr)

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if self.interrupted:  # the epoch did not finish: do not checkpoint it
            return
        logs = dict(logs or {})
        seconds = time.time() - self._started
        lr = float(keras.backend.get_value(self.model.optimizer.learning_rate))  # last step's
        self.checkpoints.save(epoch + 1, self.model, self.model.optimizer)
        row = {"phase": self.phase, "epoch": epoch + 1, "lr": f"{lr:.6g}",
               "seconds": f"{seconds:.1f}",
               **{k: f"{float(v):.6g}" for k, v in sorted(logs.items())}}
        self.run.append_history(row)
        parts = [f"{k} {float(v):.4f}" for k, v in sorted(logs.items())]
        print(f"[{self.phase}] epoch {epoch + 1}/{self.epochs}  {'  '.join(parts)}  "
              f"lr {lr:.4g}  {seconds:.1f}s  (checkpoint saved)", flush=True)


def teacher_logits_fn(teacher, tta="none"):
    """The teacher's logits on a batch, in the graph; ``tta="flip"``: the mean of its logits
    on the batch and on its mirror image (as ``fnet_tf.training.logit_bank`` stores them)."""
    if tta == "flip":
        return lambda x: 0.5 * (teacher(x, training=False)
                                + teacher(tf.reverse(x, axis=[2]), training=False))
    return lambda x: teacher(x, training=False)


def fit_phase(phase, model, dataset, recipe, run, *, verbose=1, callbacks=(), boost=True,
              on_fresh_start=None, teacher=None, bank=None):
    """Train ``model`` for ``recipe.epochs`` epochs as phase ``phase`` of ``run``, resuming
    from the newest valid checkpoint in ``run/checkpoints/<phase>``. Callbacks that define
    ``on_resume(completed_epochs)`` are told where training restarts, so that what they
    wrote for later epochs can be dropped. ``boost``: see ``make_optimizer``.
    ``on_fresh_start(model, optimizer)`` runs when no checkpoint exists (StatAssist puts the
    warm-up's optimizer state into the QAT optimizer there). ``teacher``: a Keras model whose
    logits on each augmented batch the loss distills (``fnet_tf.training.distill``); ``bank``: a
    ``fnet_tf.training.logit_bank.LogitBank`` whose stored logits (and augmented epochs) it distills
    instead.

    Returns True when all epochs are done, False when interrupted (Ctrl-C).
    """
    keras.utils.set_random_seed(recipe.seed)
    num_classes = len(dataset.classes)
    steps = math.ceil(len(dataset.train) / recipe.batch_size)
    optimizer = make_optimizer(recipe, steps, boost=boost)
    distilling = (teacher is not None or bank is not None) and recipe.kd_alpha > 0
    compile_model(model, optimizer, recipe, num_classes, distilling)
    checkpoints = EpochCheckpoints(os.path.join(run.path, "checkpoints", phase))
    start, path = checkpoints.latest()
    if not path and on_fresh_start is not None:
        on_fresh_start(model, optimizer)
    if path:
        checkpoints.restore(path, model, optimizer)
        run.truncate_history(phase, start)
        print(f"[{phase}] resuming after epoch {start} from {path}", flush=True)
    else:
        run.truncate_history(phase, 0)
    for callback in callbacks:
        if hasattr(callback, "on_resume"):
            callback.on_resume(start)
    if start >= recipe.epochs:
        return True
    validation = eval_dataset(dataset.val, num_classes) if dataset.val is not None else None
    end = _EpochEnd(phase, run, checkpoints, recipe.epochs)
    if recipe.lookahead:

        callbacks = [*callbacks, Lookahead(recipe.epochs * steps, recipe.batch_size)]
    progbar = _PhaseProgbar(recipe.epochs)
    banked = bank is not None and distilling
    with EpochArraysAhead(dataset.train, recipe, 0 if banked else recipe.epochs) as ahead:
        for epoch in range(start, recipe.epochs):  # one fit per epoch, over its own batches
            if banked:
                images, labels, logits = bank.epoch(epoch, recipe.seed)
                train = array_dataset(images, labels, recipe.batch_size, num_classes,
                                      teacher_logits=logits)
            else:
                train = array_dataset(*ahead.take(epoch), recipe.batch_size, num_classes,
                                      teacher_logits_fn(teacher, recipe.teacher_tta)
                                      if distilling else None)
            model.fit(train, epochs=epoch + 1, initial_epoch=epoch,
                      validation_data=validation, verbose=verbose,
                      callbacks=[progbar, end, *callbacks])
            if end.interrupted:
                break
    return not end.interrupted


def evaluate(model, split, num_classes, batch_size=500):
    """Test loss and accuracy from predictions, so the model need not be compiled."""
    logits = model.predict(eval_dataset(split, num_classes, batch_size).map(lambda x, y: x),
                           verbose=0)
    labels = split.labels.astype("int64")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return {"loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
            "accuracy": float((logits.argmax(axis=1) == labels).mean()),
            "num_images": int(len(split))}
