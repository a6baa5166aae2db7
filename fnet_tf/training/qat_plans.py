"""How QAT follows float training (``--qat_recipe NAME``): one plan each, in a registry.

- ``finetune``: float to convergence (``--epochs``), then QAT at a lower LR (``--qat_lr``,
  default the float LR / 20), no warm-up.
- ``scratch``: QAT from initialized weights (no float phase, ``--epochs 0``), with the float
  recipe's peak LR and warm-up.
- ``statassist`` (FrostNet): a short float warm-up (``--statassist_epochs``) whose weights and
  optimizer state carry into QAT, which then trains from scratch (the full LR schedule,
  restarted); GradBoost's noise is left out of the warm-up.

The command asks the plan, never the plan's name: a new plan is a new entry here.
"""
import dataclasses

from fnet_tf.core.errors import UserError


@dataclasses.dataclass(frozen=True)
class QatPlan:
    name: str
    help: str
    float_phase: bool        # False: QAT starts from initialized weights
    float_is_warmup: bool    # the float phase is a warm-up whose optimizer state carries on
    qat_lr_divisor: float    # the QAT peak LR is the float one divided by this
    qat_warmup: bool         # QAT keeps the float recipe's warm-up (False: none)
    takes_init_from: bool    # starting from trained weights makes sense

    def float_epochs(self, epochs, statassist_epochs):
        """The float phase's epochs."""
        return statassist_epochs if self.float_is_warmup and statassist_epochs else epochs

    def float_warmup(self, statassist_warmup):
        """The float phase's warm-up shape: ``capped`` (a schedule of its own), or for a
        warm-up plan run as the reference code does, ``ramp``."""
        return "ramp" if self.float_is_warmup and statassist_warmup == "ramp" else "capped"

    def qat_recipe(self, recipe, qat_epochs, qat_lr=None):
        """The QAT phase's recipe from the float one: its LR, warm-up and epochs; lookahead is
        a float-training recipe (airbench's) and stays off."""
        lr = qat_lr if qat_lr is not None else recipe.lr / self.qat_lr_divisor
        changes = dict(epochs=qat_epochs, lr=lr, warmup="capped", lookahead=False)
        if not self.qat_warmup:
            changes["warmup_epochs"] = 0.0
        return dataclasses.replace(recipe, **changes)

    def problems(self, epochs, qat_epochs, init_from, statassist_epochs, statassist_warmup,
                 epochs_given):
        """The flag combinations this plan refuses, as one-line messages (empty: fine)."""
        found = []
        if self.name != "finetune" and qat_epochs <= 0:
            found.append(f"--qat_recipe {self.name} is a QAT recipe: pass --qat_epochs N (N > 0)")
        if not self.takes_init_from and init_from is not None:
            found.append(f"--qat_recipe {self.name} trains from scratch: drop --init_from")
        if not self.float_phase and epochs != 0:
            found.append(f"--qat_recipe {self.name} has no float phase: pass --epochs 0")
        if not self.float_is_warmup:
            if statassist_epochs is not None:
                found.append("--statassist_epochs needs --qat_recipe statassist")
            if statassist_warmup != "anneal":
                found.append("--statassist_warmup needs --qat_recipe statassist")
            return found
        if statassist_epochs is not None and statassist_epochs <= 0:
            found.append(f"--statassist_epochs must be 1 or more, got {statassist_epochs}")
        if statassist_epochs is not None and epochs_given and epochs != statassist_epochs:
            found.append(f"--epochs {epochs} and --statassist_epochs {statassist_epochs} "
                         f"disagree: with --qat_recipe {self.name} the float phase is the "
                         f"warm-up; pass one of them")
        if epochs <= 0 and not statassist_epochs:
            found.append(f"--qat_recipe {self.name} needs a float warm-up: --statassist_epochs "
                         f"N (N > 0)")
        return found


PLANS = {plan.name: plan for plan in (
    QatPlan("finetune", "float to convergence (--epochs), then QAT at a lower LR",
            float_phase=True, float_is_warmup=False, qat_lr_divisor=20.0, qat_warmup=False,
            takes_init_from=True),
    QatPlan("scratch", "QAT from initialized weights (--epochs 0)",
            float_phase=False, float_is_warmup=False, qat_lr_divisor=1.0, qat_warmup=True,
            takes_init_from=False),
    QatPlan("statassist", "a short float warm-up (--statassist_epochs) whose weights and "
            "optimizer state carry into QAT, which then trains from scratch (full LR schedule, "
            "restarted)", float_phase=True, float_is_warmup=True, qat_lr_divisor=1.0,
            qat_warmup=True, takes_init_from=False),
)}


def get_plan(name):
    if name not in PLANS:
        raise UserError(f"unknown --qat_recipe {name!r}: choose one of {', '.join(PLANS)}")
    return PLANS[name]


def flag_help():
    """``--qat_recipe``'s help: every plan and what it does."""
    return "; ".join(f"{plan.name}: {plan.help}" for plan in PLANS.values()) + "."
