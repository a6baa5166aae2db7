"""The interface every quantization scheme implements, and how a scheme declares its options."""
import contextlib
import dataclasses


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting of a scheme, which the training command offers as ``--NAME``
    (``fnet_tf.quantization.options`` defines the flags from the registry)."""

    name: str
    kind: type          # int, float or str
    default: object
    help: str
    is_path: bool = False  # a file: recorded as an absolute path


class Scheme:
    name = ""
    description = ""
    qat = True           # False: post-training quantization only (no fine-tuning)
    per_channel = True   # weights quantized per output channel in the converted model
    declared_options = ()  # Option(...) each: the scheme's own settings (CLI flags)
    options = {}

    @property
    def option_names(self):
        return tuple(o.name for o in self.declared_options)

    def configured(self, **options):
        """A copy of this scheme with its own settings (``option_names``) applied; settings it
        does not take are ignored. Recorded in run.json so the QAT model can be rebuilt."""
        mine = {k: v for k, v in options.items() if k in self.option_names}
        return type(self)(**mine) if mine else self

    def quantize(self, model):
        """Float Keras model -> the model to fine-tune (QAT) and convert."""
        raise NotImplementedError

    def callbacks(self):
        """Keras callbacks the scheme needs during QAT (e.g. a temperature schedule)."""
        return []

    def export_form(self, model):
        """The model the converter gets (default: ``model`` itself). Schemes whose weight
        quantizers compute the deployed weights (below 8 bits) bake them into the kernels here,
        so the converter sees constants it quantizes per channel (its constant folding of such
        graphs is not dependable: weights left as computed tensors become activations)."""
        return model

    def scope(self):
        """A context in which this scheme's models can be built and loaded."""
        return contextlib.nullcontext()

    def configure_converter(self, converter):
        """Set scheme-specific options on a ``tf.lite.TFLiteConverter``."""
        if not self.per_channel:
            # Deploy one scale per weight tensor (the converter's default is per channel).
            converter._experimental_disable_per_channel = True
