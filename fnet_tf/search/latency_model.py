"""A latency predictor fitted on timed designs, to choose which designs of a large space to time.

Converting a design to a calibrated int8 file takes seconds, timing it a fraction of that; a
space of thousands cannot all be converted. The int8 kernels of one interpreter run at a rate
that depends on the op kind and the resolution (a 32x32 depthwise conv or a grouped conv with
few channels per group runs far below the dense 1x1 rate), so a design's latency is close to

    sum over (op kind, resolution) of MACs / rate + outputs * write cost  +  ops * overhead

(depthwise convs are bound by memory traffic more than by MACs). ``features`` splits a spec's
MACs and output elements that way; ``fit`` finds non-negative coefficients (ms per
million MACs of each group, ms per op) by least squares on designs timed in one pass, and
``predict`` costs the rest. It ranks; the chosen designs are then timed for real.
"""
import numpy as np

from fnet_tf.arch.spec import Conv, Residual, out_hw

KINDS = ("dense", "grouped", "depthwise", "pointwise")


def _conv_terms(conv, shape):
    """[(kind, height, MACs, output elements)] of one Conv at input ``shape``."""

    cin = shape[-1]
    h, w = out_hw(shape, conv.stride)
    k2 = conv.kernel * conv.kernel
    if conv.spatial_groups is None:
        kind = "pointwise" if conv.kernel == 1 else "dense"
        return [(kind, h, h * w * k2 * cin * conv.filters, h * w * conv.filters)]
    found = [("pointwise", h, h * w * cin * conv.filters, h * w * conv.filters)]
    if conv.spatial_groups == cin:
        return [("depthwise", h, h * w * k2 * cin, h * w * cin)] + found
    # a grouped conv runs group by group: its cost grows with the groups at each pixel
    return [("grouped", h, h * w * k2 * (cin // conv.spatial_groups) * cin, h * w * cin),
            ("grouped pixel-groups", h, h * w * conv.spatial_groups, 0)] + found


def terms(spec):
    """[(kind, height, MACs, output elements)] of every conv op of ``spec``, and its op count (convs, pools,
    residual adds, the dense head). MACs of other blocks go to kind ``other``."""

    found, shape, ops = [], spec.input_shape, 1  # the dense head
    for block in spec.blocks:
        new_shape, cost = block.cost(shape)
        if isinstance(block, Conv):
            found += _conv_terms(block, shape)
        elif isinstance(block, Residual):
            inner = shape
            for conv in block.body:
                found += _conv_terms(conv, inner)
                inner, _ = conv.cost(inner)
            if block.shortcut is not None:
                found += _conv_terms(block.shortcut, shape)
            ops += 1  # the add
        else:
            ops += 1
            if cost.macs:
                found.append(("other", new_shape[0], cost.macs, 0))
        shape = new_shape
    return found, ops + sum(t[0] != "other" for t in found)


def feature_names(specs):
    """The (kind@height) groups present in ``specs``, then ``ops``."""
    groups = sorted({f"{t[0]}@{t[1]}" for spec in specs for t in terms(spec)[0]})
    return groups + [f"{g} outputs" for g in groups] + ["ops"]


def features(spec, names):
    """A spec's MACs and output elements (millions) per ``names`` group, and its op count."""
    row = dict.fromkeys(names, 0.0)
    found, ops = terms(spec)
    for kind, h, macs, outputs in found:
        key = f"{kind}@{h}"
        if key in row:
            row[key] += macs / 1e6
            row[key + " outputs"] += outputs / 1e6
    row["ops"] = float(ops)
    return np.array([row[n] for n in names])


def fit(specs, latencies_ms):
    """Non-negative coefficients (ms per M MACs per group, ms per op) for ``specs``' timings."""
    from scipy.optimize import nnls

    names = feature_names(specs)
    x = np.stack([features(s, names) for s in specs])
    coef, _ = nnls(x, np.asarray(latencies_ms, dtype=float))
    return {"names": names, "coef": coef.tolist()}


def predict(model, spec):
    """Predicted latency (ms) of ``spec``; MACs in a group the fit never saw cost nothing."""
    return float(features(spec, model["names"]) @ np.asarray(model["coef"]))


def agreement(predicted, measured):
    """How well predictions rank and size measured latencies: Spearman rank correlation and
    the median relative error."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    ranks = [np.argsort(np.argsort(v)) for v in (predicted, measured)]
    rho = float(np.corrcoef(*ranks)[0, 1]) if len(predicted) > 2 else float("nan")
    return {"spearman": rho,
            "median_relative_error": float(np.median(np.abs(predicted - measured) / measured)),
            "designs": len(measured)}
