"""What a repair changed, layer by layer (fnet_tf.quantization.repair)."""
import dataclasses


@dataclasses.dataclass
class RepairReport:
    """What the repairs changed: per-layer channel-range ratios before and after equalization,
    offsets absorbed, biases corrected, AdaRound's reconstruction errors, skipped layers."""

    pairs: list = dataclasses.field(default_factory=list)  # (A name, B name)
    skipped: list = dataclasses.field(default_factory=list)  # (layer name, why)
    ratio_before: dict = dataclasses.field(default_factory=dict)  # layer -> widest/narrowest
    ratio_after: dict = dataclasses.field(default_factory=dict)
    absorbed: dict = dataclasses.field(default_factory=dict)  # layer -> largest offset moved
    bias_shift: dict = dataclasses.field(default_factory=dict)  # layer -> max |delta| corrected
    rounding: dict = dataclasses.field(default_factory=dict)  # layer -> AdaRound's errors

    def lines(self):
        out = [f"cross-layer equalization: {len(self.pairs)} pairs"] if self.ratio_before else []
        for name in self.ratio_before:
            if name in self.ratio_after:
                out.append(f"  {name}: channel-range ratio {self.ratio_before[name]:.1f} -> "
                           f"{self.ratio_after[name]:.1f}")
        for name, offset in self.absorbed.items():
            out.append(f"  {name}: absorbed a bias of up to {offset:.3g} into the next layer")
        for name, shift in self.bias_shift.items():
            out.append(f"  {name}: bias corrected by up to {shift:.3g}")
        for name, row in self.rounding.items():
            out.append(f"  {name}: AdaRound reconstruction error {row['error_nearest']:.4g} "
                       f"(nearest) -> {row['error_adaround']:.4g}, kept {row['kept']}")
        for name, why in self.skipped:
            out.append(f"  {name}: skipped ({why})")
        return out
