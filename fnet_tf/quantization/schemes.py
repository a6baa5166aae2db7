"""Every quantization scheme, registered: ``get_scheme(name)``, ``list_schemes()``.

Importing a scheme's module registers it (a scheme loads TF-MOT only when used); a new scheme
is one module, added to the import below.
"""
from fnet_tf.quantization import dbq, ptq, ternary_hybrid, tfmot_int8  # noqa: F401  (register)
from fnet_tf.quantization.registry import get_scheme, list_schemes  # noqa: F401  (the API)
