"""airbench's lookahead: every few steps the weights move to an exponential moving average of
themselves (``ema += (1 - decay) * (w - ema); w = ema``), with a decay that grows from 0 to
``PEAK_DECAY`` as the cube of training progress, so the average only smooths the end of
training (Keller Jordan's ``airbench``, legacy/airbench94.py, ``LookaheadState``).

Every float weight takes part, BN's moving statistics included, as in airbench's state dict.
An update always falls on an epoch's last step, so at every checkpoint the weights equal the
average: a resumed run starts its average from the restored weights and loses nothing.
"""
import numpy as np

from fnet_tf.core.backend import keras, tf

PEAK_DECAY = 0.95 ** 5
IMAGES_PER_UPDATE = 5 * 1024  # airbench: every 5 steps of 1,024 images


def decay_at(step, total_steps):
    """The average's decay at ``step`` of ``total_steps``: PEAK_DECAY * (step / total)^3."""
    return PEAK_DECAY * min(step / max(total_steps, 1), 1.0) ** 3


class Lookahead(keras.callbacks.Callback):
    """The lookahead of a phase of ``total_steps`` optimizer steps of ``batch_size`` images."""

    def __init__(self, total_steps, batch_size):
        super().__init__()
        self.total_steps = int(total_steps)
        self.every = max(1, round(IMAGES_PER_UPDATE / batch_size))
        self._average = None

    def on_train_begin(self, logs=None):
        # each epoch is one fit: the weights equal the average here (see the module's note);
        # the variables are made once, so the traced update keeps using them
        if self._average is None:
            self._average = [tf.Variable(w, trainable=False) for w in self._tracked()]
        for average, weight in zip(self._average, self._tracked()):
            average.assign(weight)

    def _tracked(self):
        return [w for w in self.model.weights if w.dtype.is_floating]

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        last_of_epoch = batch + 1 == self.params.get("steps")
        if step % self.every and not last_of_epoch:
            return
        self._update(np.float32(decay_at(step, self.total_steps)))

    @tf.function
    def _update(self, decay):
        for average, weight in zip(self._average, self._tracked()):
            average.assign(average + (1.0 - decay) * (weight - average))
            weight.assign(average)
