"""The model card of a released zoo model, rendered from its ``metrics.json`` (never typed).

``tools/release.py`` writes both files; ``tools/arm64_check.py`` adds the arm64 comparison to
``metrics.json`` and renders the card again, as ``tools/derive_float_weights.py`` does with
the released float weights.
"""
import os

from fnet_tf.arch.architectures import width_text
from fnet_tf.core import fileio
from fnet_tf.core.wording import count
from fnet_tf.release import zoo
from fnet_tf.release.zoo import METRICS, RECIPE_FIELD_DEFAULTS, distilled_from
from fnet_tf.tflite import measure as benchmark

# what each registered model is, in the card's first line (FactorizeNet unless named here)
ARCHITECTURES = {
    "resnet8": "the MLPerf Tiny ResNet-8 architecture",
    "frostnet_cifar": "our 32x32 adaptation of FrostNet-Small (Kim, Yoo, Yang, arXiv 2006.09679)",
    "airbench_cifar": "a distillation teacher after the airbench94 CIFAR-10 network's layout",
    "airbench_whitened": "a distillation teacher: airbench94's network with its whitening stem",
}


def description(m):
    kind = ARCHITECTURES.get(m["model"], "FactorizeNet")
    return (f"{m['model']} level {m['level']}: {kind}, trained with fnet_tf's pipeline and "
            f"recipe.")


def arm64_line(check):
    """The card's arm64 row: how the emulated Cortex-A72 run agrees with x86 (never a latency)."""
    if not check:
        return "not checked yet (`python tools/arm64_check.py`)"
    return (f"top-1 agreement {100 * check['top1_agreement']:.2f}% on {check['images']:,} test "
            f"images, max diff {check['max_diff_lsb']} LSB, bit-exact "
            f"{100 * check['bit_exact_outputs']:.2f}% of outputs (LiteRT "
            f"{check['arm64_litert']} under qemu {check['qemu']} vs {check['x86_litert']} on x86)")


def kept_arm64_check(model_dir, entry):
    """{'arm64': ...} from the released metrics when it checked this very file, else {}."""

    path = os.path.join(model_dir, METRICS)
    if not os.path.isfile(path):
        return {}
    old = fileio.read_json(path)
    check = old.get("arm64")
    if check and check.get("sha256") == entry["sha256"]:
        return {"arm64": check}
    return {}


def latency_line(m):
    """The card's latency row: p50, the peer's, the ratio, and over how many passes."""
    passes = (m.get("latency_ms") or {}).get("passes") or []
    line = (f"{m['latency_p50_ms']:.3f} ms (ResNet-8 peer timed interleaved with it: "
            f"{m['peer_latency_p50_ms']:.3f} ms, ratio {m['latency_ratio_to_peer']:.2f}x")
    if len(passes) > 1:
        ratios = [p["ratio_to_peer"] for p in passes]
        line += (f", medians of {len(passes)} passes; ratio per pass "
                 + ", ".join(f"{r:.2f}x" for r in ratios))
    return line + ")"


def time_split_line(by_op):
    """The card's row on where the time goes: the op kinds' shares of the summed op latencies."""
    if not by_op:
        return "not measured (`python -m fnet_tf.analyze RUN_DIR` writes op_latency.csv)"
    kinds = sorted(by_op["by_kind_us"].items(), key=lambda kv: -kv[1])  # JSON sorts by name
    total = sum(us for _, us in kinds)
    shares = ", ".join(f"{kind} {100 * us / total:.0f}%" for kind, us in kinds)
    return f"{shares} (each op timed alone: `op_latency.png`, `op_latency.csv`)"


def bit_budget_line(b):
    """The card's row on what the weights cost (``fnet_tf.analysis.bit_budget``)."""
    if not b:
        return "not measured (`python -m fnet_tf.analyze RUN_DIR`)"
    branch = b.get("branch_weight_share", b["ternary_weight_share"])
    return (f"packed {b['packed_bytes']:,.0f} bytes ({100 * b['packed_vs_int8']:.1f}% of "
            f"{b['int8_bytes']:,.0f} at 8 bits); {100 * branch:.1f}% of weights in ternary "
            f"branch filters ({b['ternary_filters']:,} ternary, {b.get('two_branch_filters', 0):,}"
            f" two-branch of {b['filters']:,}), {100 * b['ternary_mac_share']:.1f}% of MACs "
            f"add-only; energy estimate {b['energy_pj'] / 1e3:,.1f} nJ per inference "
            f"({b['energy_pj_int8'] / 1e3:,.1f} nJ all-int8; 45 nm table, "
            f"`fnet_tf/analysis/bit_budget.py`)")


def qat_note(recipe):
    options = recipe.get("qat_options") or {}
    shown = ", ".join(f"{k} {v}" for k, v in sorted(options.items())
                      if v is not None and k != "sensitivity_csv")
    return f"`{recipe.get('qat_scheme')}`" + (f" ({shown})" if shown else "")


def recipe_text(recipe):
    """The float recipe in words, from the fields the card recorded (a field an older card
    lacks reads as the value every release then had: ``zoo.RECIPE_FIELD_DEFAULTS``)."""

    def get(key):
        return recipe.get(key, RECIPE_FIELD_DEFAULTS.get(key))

    base, _, extra = get("optimizer").partition("_")
    optimizer = (f"SGD Nesterov (momentum {get('momentum'):g})" if base == "sgd" else
                 "AdamW" if base == "adamw" else base)
    optimizer += " + GradBoost" if extra == "gradboost" else ""
    schedule = "cosine to 0" if get("schedule") == "cosine" else get("schedule")
    warmup = (f"linear warm-up {get('warmup_epochs')} epochs (capped at 20% of the phase) then "
              f"{schedule}" if get("warmup") == "capped" else
              f"the first part of a {get('warmup_epochs')}-epoch linear ramp (no decay)")
    crop = f"pad-{get('crop_pad')} crop" + (" (reflected)" if get("crop_mode") == "reflect" else "")
    augment = f"{crop} + flip" + (f" + cutout {get('cutout')} px" if get("cutout") else "")
    if get("image_size"):
        augment += f" (lengths at 32 px, scaled to {'x'.join(map(str, get('image_size')))})"
    text = (f"{optimizer}, lr {recipe.get('lr')}, {warmup}, decoupled weight decay "
            f"{recipe.get('weight_decay')}, batch {recipe.get('batch_size')}, {augment}, label "
            f"smoothing {recipe.get('label_smoothing')}, {recipe.get('val_split')} training "
            f"images held out for validation")
    if get("lookahead"):
        text += ", airbench's lookahead"
    teacher = distilled_from(recipe)
    if teacher:
        text += (f", distilled from `{teacher}` (alpha {get('kd_alpha'):g}, "
                 f"temperature {get('kd_temperature'):g}"
                 + (", its flip test-time-augmented logits" if get("teacher_tta") == "flip"
                    else "")
                 + (f", from a bank of {get('teacher_bank')} augmented epochs"
                    if get("teacher_bank") else "")
                 + (", each view mirrored at random" if get("bank_mirror") else "") + ")")
    if get("init_from"):
        text += (f", fine-tuned from `{get('init_from')}`" + (
            f" (the classifier alone for the first {count(get('freeze_epochs'), 'epoch')})"
            if get("freeze_epochs") else ""))
    return text


def calibration_note(recipe):
    """'' for QAT started from TF-MOT's [-6, 6] activation ranges (every card before the
    field existed)."""
    images = recipe.get("qat_calibration_images") or 0
    return f"; its activation ranges set from {images:,} training images first" if images else ""


def qat_recipe_note(recipe):
    """'' for QAT fine-tuned after float training (every card before the field existed)."""
    name = recipe.get("qat_recipe") or "finetune"
    return "" if name == "finetune" else f" (recipe `{name}`, `fnet_tf.train --qat_recipe`)"


def efficiency_line(e):
    if not e:
        return "not measured (`python tools/release.py --retime`)"
    return (f"{e['achieved_gmacs']:.1f} GMAC/s, {100 * e['peak_share']:.0f}% of this CPU's "
            f"practical int8 peak ({e['peak_gmacs']:.0f} GMAC/s: large single convs timed in "
            f"the same pass)")


def top5_text(m):
    """The card's top-5 clause: left out for five classes or fewer, where it measures nothing."""
    return "" if m.get("int8_top5") is None else f"top-5 {100 * m['int8_top5']:.2f}%; "


def seed_note(m):
    """Whether the card's accuracies are one training run or a mean over seeds."""
    spread = m.get("int8_accuracy_seed_std")
    if m.get("seeds", 1) > 1 and spread is not None:
        seeds = m.get("seed_list") or list(range(m["seeds"]))
        return (f"this file is seed {seeds[0]}; over {m['seeds']} seeds ({', '.join(map(str, seeds))}) "
                f"INT8 {100 * m['int8_accuracy_mean']:.2f}% ± {100 * spread:.2f} (sample std), "
                f"float {100 * m['float_accuracy_mean']:.2f}% ± "
                f"{100 * m['float_accuracy_seed_std']:.2f}")
    return "one training seed: no seed spread measured"


def float_weights_text(m):
    """The card's section on the released float weights: where they came from, what they
    score, and how to load them (the card's own float top-1 is the original float model's,
    which was not kept)."""
    weights = m.get("float_weights")
    if not weights:
        return ("Not derived yet: `python tools/derive_float_weights.py --data DATA --models "
                f"{m['name']}` writes `float_weights.npz` from this file.")
    name = m["name"]
    return (f"`{weights['file']}`, {weights['source']}.\n"
            f"Float top-1 {100 * weights['float_accuracy']:.2f}% on the "
            f"{weights['test_images']:,} test images of {weights['data']}; top-1 agreement "
            f"with this INT8 file {100 * weights['int8_agreement']:.2f}%.\n"
            f"The table's float top-1 ({100 * m['float_accuracy']:.2f}%) is the original float "
            f"model's, which was not kept.\n"
            f"Raw pixels 0..255 in, logits out; BN is kept, its statistics set so that "
            f"fine-tuning starts where the INT8 model is:\n\n"
            f"```python\n"
            f"import fnet_tf.zoo\n"
            f"model = fnet_tf.zoo.keras_model(\"{name}\")                        # tf_keras\n"
            f"head = fnet_tf.zoo.keras_model(\"{name}\", num_classes=100)        # fresh classifier\n"
            f"features = fnet_tf.zoo.keras_model(\"{name}\", include_top=False)  # last feature map\n"
            f"```")


def input_shape(m):
    """The released file's input shape: as metrics.json records it, else (cards released
    before it was recorded) read from the file itself."""
    if m.get("input_shape"):
        return [int(v) for v in m["input_shape"]]

    with open(zoo.load(m["name"]), "rb") as f:
        return [int(v) for v in benchmark.graph_stats(f.read())["input"]["shape"]]


def card_text(m):
    recipe = m["recipe"]
    float_note = (f"float trained {recipe.get('float_epochs')} epochs in {m['float_trained_in']}"
                  if m.get("float_trained_in") else f"float trained {recipe.get('float_epochs')} "
                  f"epochs in tf_keras on a CPU (BUILD_NOTES.md names the machine)")
    return f"""# {m['name']}

{description(m)}

| | |
| --- | --- |
| architecture | `{m['model']}`, level {m['level']}, width {width_text(m['width'])} |
| params (int8 file) | {m['params']:,} |
| MACs | {m['macs']:,} ({m['macs'] / 1e6:.2f} M) |
| file size | {m['size_bytes']:,} bytes |
| float top-1 | {100 * m['float_accuracy']:.2f}% |
| **QAT INT8 top-1 (LiteRT)** | **{100 * m['int8_accuracy']:.2f}%** ({top5_text(m)}{seed_note(m)}) |
| INT8 drop (float - INT8) | {100 * m['int8_drop']:+.2f} points |
| INT8 vs QAT Keras top-1 agreement | {100 * m['keras_agreement']:.2f}% of {m['num_test_images']:,} test images |
| latency p50, 1 thread | {latency_line(m)} |
| compute efficiency | {efficiency_line(m.get('efficiency'))} |
| where the time goes | {time_split_line(m.get('latency_by_op'))} |
| weights below 8 bits | {bit_budget_line(m.get('bit_budget'))} |
| lowest INT8 SQNR | {m['min_sqnr_layer']} ({m['min_sqnr_db']:.1f} dB) |
| arm64 (emulated Cortex-A72) | {arm64_line(m.get('arm64'))} |

**Data**: {m['data']}, test split ({m['num_test_images']:,} images). The JPEG copy of CIFAR-10
scores below the original pixels (the published MLPerf Tiny ResNet-8 INT8 file:
{100 * m['peer_accuracy']:.2f}% here against 88.5% published).

**Recipe**: {float_note}: {recipe_text(recipe)}, seed {recipe.get('seed')}.
QAT: {count(recipe.get('qat_epochs'), 'epoch')}{qat_recipe_note(recipe)}, scheme {qat_note(recipe)}, peak lr
{recipe.get('qat_lr')} cosine to 0, in tf_keras + TF-MOT on {m['machine']['cpu']}{calibration_note(recipe)}.

**Latency** measured with the LiteRT interpreter (ai-edge-litert {m['machine'].get('ai_edge_litert', '?')}), 1 thread,
XNNPACK, on {m['machine']['cpu']} ({m['machine']['cores']} cores), all released models and the
peer timed interleaved (`tools/release.py --passes`: each figure the median over passes).

## Run it on a device

```bash
pip install ai-edge-litert numpy Pillow          # Raspberry Pi OS (arm64) or Termux
python run_tflite.py model_int8.tflite image.jpg  # export/run_tflite.py from this repo
```

Input: int8 `{input_shape(m)}`, raw pixels minus 128 (the scale and zero point are read from the
file). Output: int8 logits for {len(m['classes'])} classes; labels are embedded in the file.
From Python: `fnet_tf.zoo.load("{m['name']}")` returns this file's path.

Plots: `summary.png`, `weight_ranges.png`, `sqnr.png` (per-layer INT8 error),
`weight_histograms.png`, `activation_histograms.png`{', `op_latency.png`' if m.get('latency_by_op') else ''}; per-layer numbers in `layers.csv`.

## Float weights (tf_keras)

{float_weights_text(m)}
"""
