"""A Keras 3 model of built-in layers -> its tf_keras twin (same layers, names and weights).

TF-MOT's ``quantize_model`` takes tf_keras models only, so a user's Keras 3 model is QAT-trained
through its twin. The translation works on data, never on code: the Keras 3 functional (or
Sequential) config is rewritten into tf_keras' config format (dtype policies become dtype
names, initializers and other objects lose Keras 3's ``module`` fields, ``batch_shape`` becomes
``batch_input_shape``, inbound nodes become tf_keras' ``[layer, node, tensor, kwargs]`` lists),
every layer class must be a tf_keras built-in, and the weights move layer by layer by name
(``get_weights``/``set_weights``; nested models recursively). ``to_tf_keras`` checks that the
twin's outputs equal the Keras 3 model's on a random batch.

Random augmentation and noise layers (RandomFlip, GaussianNoise, ...) are the identity at
inference and are left out of the twin: fnet_tf's training pipeline augments the images itself.
A layer that has no tf_keras twin, or a setting tf_keras lacks (say, a LoRA rank), is named in
one line with what to do.
"""
import inspect

import numpy as np

from fnet_tf.core import backend
from fnet_tf.core.errors import UserError, first_line

MAX_OUTPUT_DIFFERENCE = 1e-4  # on a random batch, relative to the largest logit
# Keras 3 config keys that tf_keras' layers do not take, and the value that means "unused".
_DROPPED_IF_DEFAULT = {"lora_rank": None, "lora_alpha": None, "quantization_config": None,
                       "optional": False, "synchronized": False}
_DROPPED = ("build_config", "compile_config", "shared_object_id")


def _plain_object(node):
    """A Keras 3 serialized object (module/class_name/config/registered_name) -> tf_keras'."""
    if isinstance(node, dict):
        if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            config = node.get("config") or {}
            return config.get("name", "float32")
        if "class_name" in node and "config" in node and "module" in node:
            config = _plain_object(node["config"])
            twin = _object_class(node["class_name"])
            if twin is not None and isinstance(config, dict):  # Keras 3-only settings go
                accepted = set(inspect.signature(twin.__init__).parameters)
                config = {k: v for k, v in config.items() if k in accepted}
            return {"class_name": node["class_name"], "config": config}
        return {k: _plain_object(v) for k, v in node.items() if k not in _DROPPED}
    if isinstance(node, list):
        return [_plain_object(v) for v in node]
    return node


def _object_class(class_name):
    """tf_keras' initializer, regularizer or constraint class of that name, or None."""
    keras = backend.keras

    for module in (keras.initializers, keras.regularizers, keras.constraints):
        cls = getattr(module, class_name, None)
        if inspect.isclass(cls):
            return cls
    return None


def _history(arg):
    """The (layer, node, tensor) triples of the Keras tensors in a call's arguments."""
    if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
        layer, node, tensor = arg["config"]["keras_history"]
        return [[layer, node, tensor, {}]]
    if isinstance(arg, (list, tuple)):
        return [h for a in arg for h in _history(a)]
    return []


def _layer_class(class_name, keras):
    cls = getattr(keras.layers, class_name, None)
    if class_name in ("Functional", "Model"):
        return keras.Model
    if class_name == "Sequential":
        return keras.Sequential
    return cls if inspect.isclass(cls) else None


def _layer_config(layer, keras, path):
    """A Keras 3 layer entry -> tf_keras' (config cleaned of Keras 3-only settings)."""
    class_name = layer["class_name"]
    if class_name == "InputLayer":
        config = dict(layer["config"])
        config["batch_input_shape"] = config.pop("batch_shape", config.get("batch_input_shape"))
        config.pop("optional", None)
        return {"class_name": "InputLayer", "config": _plain_object(config)}
    cls = _layer_class(class_name, keras)
    if cls is None or class_name in ("Lambda", "TFSMLayer"):
        raise UserError(f"model {path}: layer {layer.get('name') or layer['config'].get('name')!r} "
                        f"is a Keras 3 {class_name}, which has no tf_keras twin (QAT needs one): "
                        f"replace it with built-in layers, or export without QAT "
                        f"(python export/to_tflite.py {path} --data DIR)")
    if class_name in ("Functional", "Model", "Sequential"):
        return {"class_name": "Functional" if class_name != "Sequential" else "Sequential",
                "config": _model_config(layer, keras, path)}
    config = _plain_object(layer["config"])
    accepted = set(inspect.signature(cls.__init__).parameters) | {
        "name", "trainable", "dtype", "input_shape", "batch_input_shape", "activity_regularizer"}
    for key in [k for k in config if k not in accepted]:
        if key in _DROPPED_IF_DEFAULT and config[key] != _DROPPED_IF_DEFAULT[key]:
            raise UserError(f"model {path}: layer {config.get('name')!r} ({class_name}) sets "
                            f"{key}={config[key]!r}, which tf_keras does not have: remove it "
                            f"(or merge it into the weights) before QAT")
        del config[key]  # a Keras 3-only setting at its default; the output check stays
    activation = config.get("activation")
    if isinstance(activation, str):
        try:
            keras.activations.get(activation)
        except (ValueError, TypeError):
            raise UserError(f"model {path}: layer {config.get('name')!r} uses the Keras 3 "
                            f"activation {activation!r}, which tf_keras does not have (QAT needs "
                            f"a tf_keras twin): use relu/relu6, or export it without QAT "
                            f"(python export/to_tflite.py {path} --data DIR)") from None
    return {"class_name": class_name, "config": config}


def identity_at_inference(class_name):
    """Random augmentation and noise layers: the identity in inference, so the twin leaves them
    out (fnet_tf's training pipeline augments the data itself). RandomCrop is not among them:
    at inference it crops to its size."""
    return class_name in _IDENTITY_LAYERS or (class_name.startswith("Random") and
                                              "Crop" not in class_name)


_IDENTITY_LAYERS = frozenset({"GaussianNoise", "GaussianDropout", "AlphaDropout", "AugMix",
                              "CutMix", "MixUp", "RandAugment"})


def _model_config(model, keras, path):
    config = model["config"]
    if model["class_name"] == "Sequential":
        return {"name": config.get("name"),
                "layers": [_layer_config(layer, keras, path) for layer in config["layers"]
                           if not identity_at_inference(layer["class_name"])]}
    layers, bypass = [], {}  # bypass: a left-out layer's output -> the tensor it passed on

    def through(history):
        while (history[0], history[1], history[2]) in bypass:
            history = bypass[(history[0], history[1], history[2])]
        return history

    for layer in config["layers"]:
        if identity_at_inference(layer["class_name"]):
            name = layer.get("name") or layer["config"].get("name")
            for index, node in enumerate(layer.get("inbound_nodes", [])):
                sources = _history(node.get("args", [])) if isinstance(node, dict) else node
                if len(sources) == 1:
                    bypass[(name, index, 0)] = list(sources[0])
            continue
        entry = _layer_config(layer, keras, path)
        entry["name"] = layer.get("name") or entry["config"].get("name")
        entry["config"]["name"] = entry["name"]
        nodes = []
        for node in layer.get("inbound_nodes", []):
            if isinstance(node, dict):
                if node.get("kwargs"):
                    kwargs = {k: v for k, v in node["kwargs"].items() if k not in ("training",
                                                                                  "mask")}
                    if kwargs:
                        raise UserError(f"model {path}: layer {entry['name']!r} is called with "
                                        f"{sorted(kwargs)}, which the translation to tf_keras "
                                        f"does not carry: call it on tensors only")
                nodes.append([through(h) for h in _history(node.get("args", []))])
            else:  # already tf_keras' list form
                nodes.append([through(h) for h in node])
        entry["inbound_nodes"] = nodes
        layers.append(entry)

    def endpoints(value):
        if value and isinstance(value[0], str):  # a single [name, node, tensor]
            return [value]
        return [list(v) for v in value]

    return {"name": config.get("name"), "layers": layers,
            "input_layers": endpoints(config["input_layers"]),
            "output_layers": [through(h) for h in endpoints(config["output_layers"])]}


def translate_config(config, path="model"):
    """A Keras 3 model's ``get_config``-style serialization (as in ``config.json``) -> a
    ``(class, config)`` pair that tf_keras rebuilds (``from_config``)."""
    keras = backend.keras

    if config.get("class_name") not in ("Functional", "Sequential", "Model"):
        raise UserError(f"model {path} is a {config.get('class_name')} (a subclassed model): "
                        f"its layers are Python code, so it has no tf_keras twin; rebuild it as "
                        f"a functional or Sequential model")
    cls = keras.Sequential if config["class_name"] == "Sequential" else keras.Model
    return cls, _model_config(config, keras, path)


def _copy_weights(source, target, path):
    by_name = {layer.name: layer for layer in target.layers}
    for layer in source.layers:
        if identity_at_inference(type(layer).__name__):
            continue
        twin = by_name.get(layer.name)
        if twin is None:
            raise UserError(f"model {path}: layer {layer.name!r} has no twin after the "
                            f"translation to tf_keras")
        if hasattr(layer, "layers") and hasattr(twin, "layers"):
            _copy_weights(layer, twin, path)
            continue
        weights = [np.asarray(w) for w in layer.get_weights()]
        if len(weights) != len(twin.get_weights()):
            raise UserError(f"model {path}: layer {layer.name!r} has {len(weights)} weights in "
                            f"Keras 3 and {len(twin.get_weights())} in tf_keras: it cannot be "
                            f"translated")
        try:
            twin.set_weights(weights)
        except ValueError as e:
            raise UserError(f"model {path}: layer {layer.name!r}'s weights do not fit its "
                            f"tf_keras twin ({str(e)[:120]})") from None


def to_tf_keras(model, path="model", check=True):
    """The tf_keras twin of a loaded Keras 3 model; with ``check``, its outputs must match
    the Keras 3 model's on a random batch (UserError otherwise)."""
    import keras as keras3

    config = keras3.saving.serialize_keras_object(model)
    cls, twin_config = translate_config(config, path)
    try:
        twin = cls.from_config(twin_config)
    except Exception as e:  # noqa: BLE001  (Keras raises many types)
        raise UserError(f"model {path}: tf_keras cannot rebuild the translated model "
                        f"({first_line(e)}); export it without QAT instead") from None
    _copy_weights(model, twin, path)
    if check:
        difference = output_difference(model, twin)
        if difference > MAX_OUTPUT_DIFFERENCE:
            raise UserError(f"model {path}: its tf_keras twin's outputs differ from the Keras 3 "
                            f"model's by {difference:.2g} (relative): the translation does not "
                            f"hold for one of its layers; export it without QAT instead")
    return twin


def output_difference(model, twin, batch=4, seed=0):
    """Largest absolute output difference of the two models on random pixels 0..255, relative
    to the largest absolute output."""
    shape = tuple(d or 1 for d in model.inputs[0].shape[1:])
    images = np.random.default_rng(seed).uniform(0, 255, (batch, *shape)).astype(np.float32)
    theirs = np.asarray(model(images, training=False))
    ours = np.asarray(twin(images, training=False))
    return float(np.max(np.abs(theirs - ours)) / max(np.max(np.abs(theirs)), 1e-6))
