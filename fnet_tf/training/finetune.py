"""Fine-tuning: the float model that ``fnet-train --init_from SOURCE --epochs N`` starts from.

SOURCE is a released model (``zoo:factorizenet-l3``: its float weights, ``fnet_tf.zoo``), a
run directory or its ``model_float.keras``, the ``--out`` folder of ``fnet_tf.keras3_float``,
or a user's own tf_keras or Keras 3 model file.

For a registered architecture (everything but a user's own model) the model is built from its
spec at the run's image size and number of classes, and the source's weights are copied by
layer name; the architectures are fully convolutional, so weights trained at 32x32 initialise a
96x96 model. The classifier (the ``logits`` layer) is kept when the source predicts the same
classes, and is a new, untrained one otherwise. A user's own model keeps its layers; its last
``Dense`` is replaced the same way, and a softmax on it is dropped (fnet_tf trains on logits).

``--freeze_epochs N`` first trains the classifier alone (everything else frozen, BN in
inference mode), then the whole model for ``--epochs``.
"""
import dataclasses

from fnet_tf.core import backend
from fnet_tf.core.errors import UserError
from fnet_tf.run.portable_weights import load_weights_by_layer

HEAD = "logits"  # the classifier's layer name in every spec (``layers.classifier_head``)


@dataclasses.dataclass
class Start:
    """A float model to train and what it was made from, for the run's records."""

    model: object
    source: str        # what --init_from said
    head: str          # "kept" or "new N-class classifier"
    description: str   # one line: where the weights came from


def copy_by_name(source_arrays, target, keep_head):
    """Set ``target``'s weights from ``{'<layer>/<i>': array}``; the classifier only when
    ``keep_head``. Every other layer must be there with the same shapes (a one-line UserError
    naming the first that is not: another architecture, level or width)."""

    return load_weights_by_layer(target, source_arrays, skip=() if keep_head else (HEAD,))


def head_text(keep, num_classes):
    return "kept" if keep else f"new {num_classes}-class classifier"


def _last_dense(model, keras):
    last = model.layers[-1]
    if not isinstance(last, keras.layers.Dense):
        raise UserError(f"{model.name}'s last layer is a {type(last).__name__}, not a Dense "
                        f"classifier: fine-tuning replaces the last Dense layer; end the model "
                        f"with one")
    return last


def users_model_start(model, num_classes, source, seed=0):
    """A user's own tf_keras model (or a Keras 3 model's tf_keras twin) ready to fine-tune on
    ``num_classes`` classes: its last Dense replaced when the classes differ, its softmax
    dropped either way."""
    keras = backend.keras

    last = _last_dense(model, keras)
    keep = last.units == num_classes
    softmax = keras.activations.serialize(last.activation) == "softmax"
    if keep and not softmax:
        return Start(model, source, "kept", f"the user's model {model.name}")
    keras.utils.set_random_seed(seed)
    head = keras.layers.Dense(num_classes, name=last.name,
                              kernel_initializer="he_normal")(last.input)
    new = keras.Model(model.inputs, head, name=model.name)
    if keep:  # only the softmax goes
        new.get_layer(last.name).set_weights(last.get_weights())
    note = head_text(keep, num_classes) + (" (its softmax dropped)" if softmax else "")
    return Start(new, source, note, f"the user's model {model.name}")


def freeze_body(model):
    """Everything but the classifier frozen (BN then runs in inference mode); returns what
    each layer was, for ``restore_trainable``."""
    before = {layer.name: layer.trainable for layer in model.layers}
    for layer in model.layers:
        layer.trainable = layer is model.layers[-1]
    return before


def restore_trainable(model, before):
    for layer in model.layers:
        layer.trainable = before[layer.name]
