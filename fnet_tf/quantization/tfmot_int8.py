"""TF-MOT's 8-bit QAT: int8 weights and activations, BN folded at conversion.

``int8``: weights per output channel, activations per tensor (TF-MOT's default scheme).
Known asymmetry (model-optimization issue #808): TF-MOT fake-quantizes DepthwiseConv2D weights
per tensor during QAT while the converter deploys them per channel, which is finer, so the
deployed model is at least as precise as the trained one.

``int8_per_tensor``: one scale per weight tensor everywhere, in QAT (``disable_per_axis``)
and in the converted model (the converter's per-channel quantization switched off); checked
end to end on TF 2.21 / TF-MOT 0.8.1: the exported file has one weight scale per conv.
"""
import contextlib

from fnet_tf.core import backend
from fnet_tf.core.errors import UserError
from fnet_tf.quantization.base import Scheme
from fnet_tf.quantization.registry import register_scheme


class TfmotScheme(Scheme):
    def scope(self):
        import tensorflow_model_optimization as tfmot

        return tfmot.quantization.keras.quantize_scope()

    def quantize(self, model):
        import tensorflow_model_optimization as tfmot
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import \
            default_8bit_quantize_scheme

        scheme = default_8bit_quantize_scheme.Default8BitQuantizeScheme(
            disable_per_axis=not self.per_channel)
        with self.scope(), unsupported_layers_refused(model):
            annotated = tfmot.quantization.keras.quantize_annotate_model(
                annotate_preprocessing(model))
            return tfmot.quantization.keras.quantize_apply(annotated, scheme=scheme)


@contextlib.contextmanager
def unsupported_layers_refused(model):
    """TF-MOT's refusal of a layer it has no QAT config for (a BN that follows no conv, a
    custom layer) as one line naming the layer and the way out."""
    try:
        yield
    except RuntimeError as e:
        if "is not supported" not in str(e):
            raise
        layer = str(e).split(":", 1)[0].replace("Layer ", "").strip()
        kind = type(model.get_layer(layer)).__name__ if layer in {
            l.name for l in model.layers} else "this kind of"
        raise UserError(f"QAT cannot quantize layer {layer!r} of {model.name} (TF-MOT has no "
                        f"quantization config for {kind} layers; a BatchNormalization must "
                        f"follow a conv to fold): replace it with built-in conv/dense/pooling "
                        f"layers, or export the float model with post-training quantization "
                        f"(--scheme ptq)") from None


PREPROCESSING_LAYERS = ("Rescaling", "Normalization")


def annotate_preprocessing(model):
    """``model`` with its preprocessing layers (Rescaling, Normalization: a per-channel
    ``x * scale + offset`` with no trainable weight, which a user's model may hold; fnet_tf's
    own take raw pixels) annotated to quantize their output only, as TF-MOT does for an Add.
    TF-MOT has no config of its own for them and would refuse the model. Other layers are
    left to ``quantize_annotate_model``."""
    if not any(type(layer).__name__ in PREPROCESSING_LAYERS for layer in model.layers):
        return model
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import \
        default_8bit_quantize_configs

    keras = backend.keras

    def annotate(layer):
        if type(layer).__name__ in PREPROCESSING_LAYERS:
            return tfmot.quantization.keras.quantize_annotate_layer(
                layer, default_8bit_quantize_configs.Default8BitOutputQuantizeConfig())
        return layer

    return keras.models.clone_model(model, clone_function=annotate)


@register_scheme
class Int8(TfmotScheme):
    name = "int8"
    description = "TF-MOT QAT, int8 weights per channel, activations per tensor"


@register_scheme
class Int8PerTensor(TfmotScheme):
    name = "int8_per_tensor"
    description = "TF-MOT QAT, int8 weights per tensor (one scale per layer)"
    per_channel = False
