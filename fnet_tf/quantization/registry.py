"""The registry of quantization schemes: ``register_scheme`` (a class decorator) fills it,
``get_scheme``/``list_schemes`` read it. Import ``fnet_tf.quantization.schemes`` to have every
scheme registered."""
from fnet_tf.core.errors import UserError

SCHEMES = {}  # name -> the scheme (an instance of its class)


def register_scheme(cls):
    if cls.name in SCHEMES:
        raise ValueError(f"quantization scheme {cls.name!r} registered twice")
    SCHEMES[cls.name] = cls()
    return cls


def list_schemes():
    return sorted(SCHEMES)


def get_scheme(name):
    if name not in SCHEMES:
        raise UserError(f"unknown quantization scheme {name!r}: choose one of "
                        f"{', '.join(list_schemes())}")
    return SCHEMES[name]
