"""Where INT8 error enters, compared across models: a summary per model of its layers.csv rows.

Each row is one op's output: ``sqnr_db`` compares the INT8 file's output of that op with the
float model's on the same images, so it holds the error of every op before it. The op where the
SQNR falls most from the op before is where the most error enters; the SQNR of the last op is
what reaches the logits.
"""
import math

import numpy as np


def _float(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def summarize(rows):
    """{layers, output_sqnr_db, min_sqnr_layer/_db, worst_step_layer/_db, by_kind} of one model.

    ``by_kind``: per weight kind (Conv2D, DepthwiseConv2D, ...), how many ops and the mean SQNR
    drop across them (the SQNR before minus after): which kind of layer loses most precision.
    """
    sqnr = [_float(r.get("sqnr_db")) for r in rows]
    valid = [i for i, v in enumerate(sqnr) if not math.isnan(v)]
    if not valid:
        raise ValueError("no layer has an SQNR: the layer-wise analysis found no INT8/float pair")
    worst = min(valid, key=lambda i: sqnr[i])
    steps = {i: sqnr[p] - sqnr[i] for p, i in zip(valid, valid[1:])}
    step = max(steps, key=steps.get) if steps else worst
    by_kind = {}
    for i, drop in steps.items():
        kind = rows[i].get("weight_kind") or rows[i].get("tflite_op") or "?"
        by_kind.setdefault(kind, []).append(drop)
    return {"layers": len(rows), "output_sqnr_db": sqnr[valid[-1]],
            "median_sqnr_db": float(np.median([sqnr[i] for i in valid])),
            "min_sqnr_layer": rows[worst]["layer"], "min_sqnr_db": sqnr[worst],
            "worst_step_layer": rows[step]["layer"], "worst_step_db": steps.get(step, 0.0),
            "by_kind": {k: {"ops": len(v), "mean_drop_db": float(np.mean(v))}
                        for k, v in sorted(by_kind.items())}}


def markdown(summaries):
    """A table of ``{model: summarize(...)}``."""
    lines = ["| model | ops | output SQNR dB | median SQNR dB | lowest SQNR | largest drop "
             "(where error enters) | mean drop per op kind (dB) |",
             "| --- | ---: | ---: | ---: | --- | --- | --- |"]
    for name, s in summaries.items():
        kinds = ", ".join(f"{k} {v['mean_drop_db']:+.1f} ({v['ops']})"
                          for k, v in s["by_kind"].items())
        lines.append(f"| {name} | {s['layers']} | {s['output_sqnr_db']:.1f} | "
                     f"{s['median_sqnr_db']:.1f} | {s['min_sqnr_layer']} ({s['min_sqnr_db']:.1f}) | "
                     f"{s['worst_step_layer']} ({s['worst_step_db']:+.1f}) | {kinds} |")
    return "\n".join(lines) + "\n"
