"""The registry of models: ``register_model`` (a decorator on a function that returns the
baseline ``ModelSpec``) fills it. ``fnet_tf.arch.architectures`` registers every network and
derives a level and width from its baseline (``model_spec``, ``create_model``)."""

MODELS = {}  # name -> the function returning its baseline spec


def register_model(fn):
    """Register ``fn`` (no arguments, returns the baseline ModelSpec) under its name."""
    if fn.__name__ in MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    MODELS[fn.__name__] = fn
    return fn


def list_models():
    return sorted(MODELS)
