"""Post-training quantization only: the float model is calibrated and converted as it is."""
from fnet_tf.quantization.base import Scheme
from fnet_tf.quantization.registry import register_scheme


@register_scheme
class PostTraining(Scheme):
    name = "ptq"
    description = "no QAT: post-training int8 quantization (weights per channel)"
    qat = False

    def quantize(self, model):
        return model


@register_scheme
class PostTrainingPerTensor(PostTraining):
    name = "ptq_per_tensor"
    description = "no QAT: post-training int8 quantization, one weight scale per layer"
    per_channel = False
