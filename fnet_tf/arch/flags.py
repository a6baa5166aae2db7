"""The architecture flags the commands share: ``--level`` and ``--width`` (one value for
every stage, or one per stage), and ``--levels`` ranges for sweeps."""
from absl import flags

from fnet_tf.arch.architectures import level_tuple, parse_level, parse_width
from fnet_tf.core.errors import UserError

# define_level/define_width define flags for the command that calls them: absl then lists
# them under that command's --help, not under this module.
flags.disclaim_key_flags()


class LevelParser(flags.ArgumentParser):
    """``--level``: an integer (every stage) or one level per stage (``0,3,7``)."""

    def parse(self, argument):
        try:
            return parse_level(argument)
        except ValueError as e:
            raise ValueError(str(e)) from None

    def flag_type(self):
        return "level"


def define_level(default=0, help_text=None):
    """``--level`` (``fnet_tf.arch.architectures.parse_level``): 3, or 0,3,7 for one per stage."""
    flags.DEFINE(LevelParser(), "level", default, help_text or "Depth-factorization level: one "
                 "for every stage (0: the baseline) or one per stage, e.g. 0,3,7.")


def parse_levels(text, top, model="the model"):
    """'all', '0-7', '0,3,7', '0-2,7' -> sorted unique levels, each in 0..top. A part with dots
    is one design with a level per stage ('0.0.7'); those follow the levels, in the given order,
    as ``architectures.parse_level`` strings."""
    if text is None:
        raise UserError("--levels is required, e.g. --levels 0-7 or --levels all")
    if text.strip() == "all":
        return list(range(top + 1))
    levels, per_stage = set(), []
    for part in text.split(","):
        part = part.strip()
        if "." in part:
            try:
                design = parse_level(part)
            except ValueError:
                raise UserError(f"bad --levels part {part!r}: a per-stage design is one level "
                                f"per stage joined by dots, e.g. 0.0.7") from None
            if not all(0 <= v <= top for v in level_tuple(design, stages=None)):
                raise UserError(f"--levels {part}: every stage's level must be in 0..{top} "
                                f"for {model}")
            if design not in per_stage:
                per_stage.append(design)
            continue
        try:
            lo, _, hi = part.partition("-")
            lo, hi = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise UserError(f"bad --levels part {part!r}: use e.g. 0-7, 0,3,7 or a per-stage "
                            f"design 0.0.7") from None
        if not 0 <= lo <= hi <= top:
            raise UserError(f"--levels {part} is outside 0..{top} for {model}")
        levels.update(range(lo, hi + 1))
    return sorted(levels) + per_stage


class WidthParser(flags.ArgumentParser):
    """``--width``: a multiplier (every stage) or one per stage (``0.5,1,1.25``)."""

    def parse(self, argument):
        return parse_width(argument)

    def flag_type(self):
        return "width"


def define_width(default=1.0, help_text=None):
    """``--width`` (``fnet_tf.arch.architectures.parse_width``): 0.75, or 0.5,1,1.25 per stage."""
    flags.DEFINE(WidthParser(), "width", default, help_text or "Channel width multiplier: one "
                 "for every stage or one per stage, e.g. 0.5,1,1.25.")
