"""The training recipe: every setting that decides what a training phase computes.

Kept free of TensorFlow so a CLI can check a run directory's recipe before loading it.
"""
import dataclasses


@dataclasses.dataclass
class Recipe:
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"       # sgd (Nesterov momentum) or adamw; *_gradboost: with GradBoost
    lr: float = 0.1              # peak learning rate, reached after the warm-up
    schedule: str = "cosine"     # cosine decay to 0, or constant, after the warm-up
    warmup_epochs: float = 2.0   # linear warm-up, capped at 20% of the phase (but for "ramp")
    warmup: str = "capped"       # "ramp": the phase is the start of a longer warm-up, neither
                                 # capped nor annealed (StatAssist's float epochs, as the reference)
    weight_decay: float = 5e-3   # decoupled (Keras): each step w -= lr * wd * w
    momentum: float = 0.9
    label_smoothing: float = 0.0
    cutout: int = 0
    crop_pad: int = 4              # random crops of the image padded by this many pixels,
    crop_mode: str = "zeros"       # with zeros or reflected pixels
    lookahead: bool = False        # airbench's weight averaging (fnet_tf.training.lookahead)
    seed: int = 0
    gradboost_clip: float = 1e-3   # GradBoost (fnet_tf.training.gradboost): noise clipped to +-clip
    gradboost_decay: float = 1e-2  # and scaled by (1 - decay)^step
    kd_alpha: float = 0.0          # distillation (fnet_tf.training.distill): weight of the teacher's term
    kd_temperature: float = 4.0    # and its softmax temperature
    teacher_bank: int = 0          # >0: its logits from a bank of this many augmented epochs
    teacher_tta: str = "none"      # "flip": the mean of its logits on the image and its mirror
    bank_mirror: bool = False      # a bank of flip-TTA logits: mirror a random half of each
                                   # epoch's views (a mirror has the same logits): 2x the views
