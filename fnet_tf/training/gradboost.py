"""GradBoost (Kim, Yoo, Yang, "FrostNet", arXiv 2006.09679): gradient noise scaled by each
parameter's recent gradient range, as a wrapper of the Keras SGD and AdamW optimizers.

Per parameter element the optimizer keeps exponential moving averages (``beta`` 0.9) of the
running minimum and maximum of ``|g|``. While it is **warming up** (StatAssist's float
warm-up, ``boost=False``) only those statistics update. Otherwise, at step ``k`` (1, 2, ...) of
this optimizer's boosting, before the usual update::

    noise = |Laplace(0, 1)| * (max - min) * (1 - decay)^k * coin * sign(g),  clipped to +-clip
    g <- g + noise

with ``coin`` a fair coin per element (0 or 1). Defaults as in the reference code: clip
``1e-3``, decay ``1e-2``. The noise is drawn from a stateless generator keyed by (seed,
parameter index, step), so a run resumed from a checkpoint draws what it would have drawn.

Reproduced from the reference (``clovaai/frostnet``, ``utils/optimizer.py``) or not:
- the **stated intent**, not the reference's arithmetic: the reference starts the "min" average
  at 0, so ``min(avg, |g|)`` keeps it at 0 forever, and it divides the stored averages by the
  bias correction every step (compounding it). Here both averages are ordinary EMAs started at
  0 and bias-corrected when read (as Adam's moments), and the first step's running min and max
  are ``|g|`` itself, so ``max - min`` is the spread of recent gradient magnitudes;
- as the reference: the noise has the gradient's sign, is masked by the coin, is clipped, and
  enters before momentum (SGD) or the moments (AdamW); weight decay here is Keras' decoupled
  one, applied by the base optimizer as for every other optimizer of fnet_tf.

The statistics are optimizer variables (``gradboost_min``, ``gradboost_max``), so they are in
every checkpoint; ``carried_steps`` counts statistic updates made by an earlier optimizer whose
state this one took over (StatAssist), for the bias correction.
"""
import numpy as np

from fnet_tf.core import backend

SLOT_NAMES = ("gradboost_min", "gradboost_max")


def boost_noise(gradient, low, high, step, clip, decay, uniform, coin, tf):
    """The noise GradBoost adds to ``gradient`` at boosting step ``step`` (1-based), given the
    corrected running ``low``/``high`` of |g| and draws ``uniform`` in (0, 1] and ``coin`` in
    {0, 1} of the gradient's shape."""
    laplace = -tf.math.log(uniform)  # |Laplace(0, 1)| is Exponential(1)
    scale = (high - low) * tf.pow(1.0 - decay, tf.cast(step, gradient.dtype))
    noise = laplace * scale * coin * tf.sign(gradient)
    return tf.clip_by_value(noise, -clip, clip)


def running_range(m_min, m_max, magnitude, t, beta, ops):
    """GradBoost's statistics at step ``t`` (1-based): the next stored EMAs of the running min
    and max of ``|g|`` and their bias-corrected values ``(next_min, next_max, low, high)``.
    ``ops``: ``tf`` or a keras.ops adapter with maximum, minimum, where and pow."""
    previous = ops.maximum(1.0 - ops.pow(beta, t - 1.0), 1e-12)
    first = t <= 1.0
    new_min = ops.where(first, magnitude, ops.minimum(m_min / previous, magnitude))
    new_max = ops.where(first, magnitude, ops.maximum(m_max / previous, magnitude))
    next_min = beta * m_min + (1.0 - beta) * new_min
    next_max = beta * m_max + (1.0 - beta) * new_max
    correction = 1.0 - ops.pow(beta, t)
    return next_min, next_max, next_min / correction, next_max / correction


def with_gradboost(base):
    """A subclass of tf_keras optimizer class ``base`` (SGD or AdamW) with GradBoost."""
    tf = backend.tf

    class GradBoost(base):
        def __init__(self, *args, gradboost_clip=1e-3, gradboost_decay=1e-2,
                     gradboost_beta=0.9, boost=True, gradboost_seed=0, **kwargs):
            super().__init__(*args, **kwargs)
            self.gradboost_clip, self.gradboost_decay = float(gradboost_clip), float(gradboost_decay)
            self.gradboost_beta, self.boost = float(gradboost_beta), bool(boost)
            self.gradboost_seed = int(gradboost_seed)

        def build(self, var_list):
            super().build(var_list)
            if getattr(self, "_gradboost_built", False):
                return
            self.gradboost_min = [self.add_variable_from_reference(v, "gradboost_min")
                                  for v in var_list]
            self.gradboost_max = [self.add_variable_from_reference(v, "gradboost_max")
                                  for v in var_list]
            self.carried_steps = tf.Variable(0, dtype=tf.int64, trainable=False,
                                             name="gradboost_carried_steps")
            self._gradboost_built = True

        def update_step(self, gradient, variable):
            index = self._index_dict[self._var_key(variable)]
            super().update_step(self.boosted(gradient, index), variable)

        def boosted(self, gradient, index):
            gradient = tf.convert_to_tensor(gradient)
            t = tf.cast(self.iterations + 1 + self.carried_steps, gradient.dtype)
            m_min, m_max = self.gradboost_min[index], self.gradboost_max[index]
            next_min, next_max, low, high = running_range(m_min, m_max, tf.abs(gradient), t,
                                                          self.gradboost_beta, tf)
            m_min.assign(next_min)
            m_max.assign(next_max)
            if not self.boost:
                return gradient
            step = self.iterations + 1
            seed = tf.stack([tf.cast(self.gradboost_seed * 10007 + index, tf.int32),
                             tf.cast(step, tf.int32)])
            shape = tf.shape(gradient)
            uniform = tf.random.stateless_uniform(shape, seed, minval=1e-12, maxval=1.0,
                                                  dtype=gradient.dtype)
            coin = tf.cast(tf.random.stateless_uniform(shape, seed + [0, 1 << 30],
                                                       dtype=gradient.dtype) < 0.5,
                           gradient.dtype)
            return gradient + boost_noise(gradient, low, high, step, self.gradboost_clip,
                                          self.gradboost_decay, uniform, coin, tf)

        def get_config(self):
            return {**super().get_config(), "gradboost_clip": self.gradboost_clip,
                    "gradboost_decay": self.gradboost_decay,
                    "gradboost_beta": self.gradboost_beta, "boost": self.boost,
                    "gradboost_seed": self.gradboost_seed}

    GradBoost.__name__ = f"{base.__name__}GradBoost"
    return GradBoost


def _slot_lists(optimizer):
    """{slot name: list of variables, one per trainable variable in build order}."""
    names = ("momentums", "_momentums", "_velocities", "gradboost_min", "gradboost_max")
    return {n: getattr(optimizer, n) for n in names
            if isinstance(getattr(optimizer, n, None), list)}


def _var_names(optimizer, variables):
    order = sorted(variables, key=lambda v: optimizer._index_dict[optimizer._var_key(v)])
    return [v.name for v in order]


def state_arrays(optimizer, variables):
    """The optimizer's per-variable state as {'<slot>/<variable name>': array}, with the
    statistic steps done so far (``__steps__``): what StatAssist carries into QAT."""
    arrays = {}
    names = _var_names(optimizer, variables)
    for slot, values in _slot_lists(optimizer).items():
        for name, value in zip(names, values):
            arrays[f"{slot}/{name}"] = value.numpy()
    steps = int(optimizer.iterations.numpy())
    if hasattr(optimizer, "carried_steps"):
        steps += int(optimizer.carried_steps.numpy())
    arrays["__steps__"] = np.array(steps, np.int64)
    return arrays


def load_state(optimizer, variables, arrays):
    """Put ``state_arrays`` of another optimizer into ``optimizer`` (built on ``variables``):
    slots of variables with the same name and shape are copied; the others stay fresh.
    Returns how many were copied. The step counter is not copied (the LR schedule restarts);
    GradBoost's bias correction continues through ``carried_steps``."""
    optimizer.build(variables)
    names = _var_names(optimizer, variables)
    copied = 0
    for slot, values in _slot_lists(optimizer).items():
        for name, target in zip(names, values):
            source = arrays.get(f"{slot}/{name}")
            if source is not None and tuple(source.shape) == tuple(target.shape):
                target.assign(source)
                copied += 1
    if hasattr(optimizer, "carried_steps") and "__steps__" in arrays:
        optimizer.carried_steps.assign(int(arrays["__steps__"]))
    return copied


def _hash_draws(shape, step, index, ops):
    """Keras 3: uniform draws in (0, 1] and fair coins for every element, from an integer hash
    of (element, step, parameter index): stateless and the same on every backend."""
    count = int(np.prod(shape)) if len(shape) else 1
    x = ops.arange(count, dtype="int32") + ops.cast(step, "int32") * 16777619 + index * 1013904223
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x2C1B3C6D)):
        x = ops.bitwise_xor(x, ops.bitwise_and(ops.right_shift(x, shift), (1 << (32 - shift)) - 1))
        x = x * multiplier  # wraps around in int32, as a hash wants
    x = ops.bitwise_xor(x, ops.bitwise_and(ops.right_shift(x, 16), 0xFFFF))
    uniform = (ops.cast(ops.bitwise_and(x, 0x7FFFFF), "float32") + 1.0) / float(1 << 23)
    coin = ops.cast(ops.bitwise_and(ops.right_shift(x, 23), 1), "float32")
    return ops.reshape(uniform, shape), ops.reshape(coin, shape)


def with_gradboost_keras3(base, keras):
    """The same wrapper for a Keras 3 optimizer class (``fnet_tf.keras3_float``; float training
    only, so it always boosts). Its draws come from ``_hash_draws``, not TensorFlow's stateless
    generator, so the noise values differ from tf_keras' (the rule is the same)."""
    ops = keras.ops

    class _Ops:  # what boost_noise needs, in keras.ops
        class math:
            log = staticmethod(ops.log)
        sign, pow, cast = staticmethod(ops.sign), staticmethod(ops.power), staticmethod(ops.cast)
        maximum, minimum, where = (staticmethod(ops.maximum), staticmethod(ops.minimum),
                                   staticmethod(ops.where))

        @staticmethod
        def clip_by_value(x, low, high):
            return ops.clip(x, low, high)

    class GradBoost(base):
        def __init__(self, *args, gradboost_clip=1e-3, gradboost_decay=1e-2,
                     gradboost_beta=0.9, **kwargs):
            super().__init__(*args, **kwargs)
            self.gradboost_clip, self.gradboost_decay = float(gradboost_clip), float(gradboost_decay)
            self.gradboost_beta = float(gradboost_beta)

        def build(self, variables):
            if self.built:
                return
            super().build(variables)
            self.gradboost_min = [self.add_variable_from_reference(v, "gradboost_min")
                                  for v in variables]
            self.gradboost_max = [self.add_variable_from_reference(v, "gradboost_max")
                                  for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            index = self._get_variable_index(variable)
            t = ops.cast(self.iterations + 1, gradient.dtype)
            m_min, m_max = self.gradboost_min[index], self.gradboost_max[index]
            next_min, next_max, low, high = running_range(m_min, m_max, ops.abs(gradient), t,
                                                          self.gradboost_beta, _Ops)
            self.assign(m_min, next_min)
            self.assign(m_max, next_max)
            uniform, coin = _hash_draws(tuple(gradient.shape), self.iterations + 1, index, ops)
            noise = boost_noise(gradient, low, high, self.iterations + 1, self.gradboost_clip, self.gradboost_decay,
                                uniform, coin, _Ops)
            super().update_step(gradient + noise, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "gradboost_clip": self.gradboost_clip,
                    "gradboost_decay": self.gradboost_decay, "gradboost_beta": self.gradboost_beta}

    GradBoost.__name__ = f"{base.__name__}GradBoost"
    return GradBoost
