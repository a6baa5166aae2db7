"""What a file's weights cost at fewer bits: distinct levels, ternary share, packed size, energy.

For every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED op of an int8 ``.tflite`` it reads the
int8 filters (one per output channel) and counts each filter's distinct values. A filter is
**ternary** when its values are within ``{-q, 0, +q}`` for one ``q``: such a filter needs only
adds and subtracts, and 2 bits per weight. A filter is **two-branch** (DBQ, K = 2) when every
value is ``d1 * q1 + d2 * q2`` with digits ``d in {-1, 0, 1}`` for one pair ``q1, q2``, within
1 LSB (the converter rounds each branch sum onto the int8 grid on its own), and its peak is
127 (as the converter's per-channel scale makes it; a filter of small values would fit any
pair within 1 LSB): two ternary branches compute it, 4 bits per weight. Accounting (the same for every file, so an int8 file and a
low-bit one compare directly):

- **packed size**: 2 bits per weight and branch of a ternary or two-branch filter plus one
  magnitude byte per branch, 8 bits per weight of any other filter; plus, for every filter, its
  float32 scale and int32 bias (8 bytes). The ``int8`` figure counts every filter at 8 bits.
- **ternary MAC share**: MACs computed by ternary branches (add/subtract only: ternary and
  two-branch filters) over all MACs of these ops.
- **energy** per inference (pJ) from the per-operation table ``energy_45nm.json`` (Horowitz,
  ISSCC 2014, 45 nm): int8 MAC = multiply + 32-bit add; a MAC of a branch filter = one int32
  add or subtract per nonzero digit (none for a zero weight); plus an SRAM read per packed
  weight byte.
"""
import json
import os

import numpy as np

from fnet_tf.tflite import convert as export
from fnet_tf.tflite.measure import op_macs

ENERGY_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "energy_45nm.json")
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
PER_FILTER_BYTES = 8  # float32 scale + int32 bias


def energy_table(path=ENERGY_TABLE):
    with open(path) as f:
        return json.load(f)


def _filters(op_name, weights):
    """The int8 weights as (values per filter, filters): output channel last."""
    if op_name == "DEPTHWISE_CONV_2D":  # [1, kh, kw, out]
        return weights.reshape(-1, weights.shape[-1])
    return weights.reshape(weights.shape[0], -1).T  # CONV_2D [out, kh, kw, in], FC [out, in]


def is_ternary(column):
    magnitudes = np.unique(np.abs(column[column != 0]))
    return len(magnitudes) <= 1


_DIGITS = np.array([(d1, d2) for d1 in (-1, 0, 1) for d2 in (-1, 0, 1)])  # [9, 2]


def two_branch_digits(column, tolerance=1):
    """The nonzero digit count of the best two-branch form of an int8 filter (see the module
    docstring), or None when it has none: more than 9 values, or no pair ``q1, q2`` whose
    digit sums reach every value within ``tolerance``."""
    values = np.unique(column)
    if len(values) > 9 or np.abs(values).max() != 127:  # the converter maps a filter's peak
        return None                                      # to 127; tiny filters fit anything
    magnitudes = np.unique(np.abs(values[values != 0]))
    base = set(magnitudes.tolist())
    base |= {abs(a - b) for a in magnitudes for b in magnitudes if a != b}
    base |= {(a + b) // 2 for a in magnitudes for b in magnitudes if a != b}
    candidates = np.array(sorted({c + d for c in base for d in (-1, 0, 1) if c + d > 0}))
    if not len(candidates):
        return 0
    q1, q2 = np.meshgrid(candidates, candidates, indexing="ij")
    pairs = np.stack([q1.ravel(), q2.ravel()], 1)
    pairs = pairs[pairs[:, 0] >= pairs[:, 1]]
    levels = pairs @ _DIGITS.T  # [pairs, 9]
    error = np.abs(values[None, :, None] - levels[:, None, :]).min(axis=2)  # [pairs, values]
    fits = np.flatnonzero(error.max(axis=1) <= tolerance)
    if not len(fits):
        return None
    best = None
    for index in fits:  # the fewest adds among the pairs that fit
        gap = np.abs(column[:, None] - levels[index][None, :])
        cost = gap * 10 + np.count_nonzero(_DIGITS, axis=1)[None, :]  # nearest, then fewest
        adds = int(np.count_nonzero(_DIGITS[np.argmin(cost, axis=1)]))
        best = adds if best is None else min(best, adds)
    return best


def layer_budget(op, tensors, it):
    """One row: the op's filters, distinct levels, ternary filters, packed bits, MACs."""

    weights = it.get_tensor(op["inputs"][1]).astype(np.int64)
    filters = _filters(op["op_name"], weights)
    per_filter, count = filters.shape
    macs = op_macs(op, tensors)
    macs_per_weight = macs / max(filters.size, 1)
    ternary = np.array([is_ternary(filters[:, f]) for f in range(count)])
    distinct = np.array([len(np.unique(filters[:, f])) for f in range(count)])
    two_branch, two_branch_adds = np.zeros(count, bool), 0
    for f in np.flatnonzero(~ternary):
        adds = two_branch_digits(filters[:, f])
        if adds is not None:
            two_branch[f], two_branch_adds = True, two_branch_adds + adds
    nonzero_ternary = int(np.count_nonzero(filters[:, ternary]))
    plain = ~ternary & ~two_branch
    packed_bits = (int(ternary.sum()) * (per_filter * 2 + 8)
                   + int(two_branch.sum()) * (per_filter * 4 + 16)
                   + int(plain.sum()) * per_filter * 8 + count * PER_FILTER_BYTES * 8)
    branch_filters = int(ternary.sum() + two_branch.sum())
    return {"op": op["index"], "tflite_op": op["op_name"],
            "tensor": tensors[op["outputs"][0]]["name"][:80],
            "filters": count, "weights": int(filters.size),
            "ternary_filters": int(ternary.sum()), "two_branch_filters": int(two_branch.sum()),
            "distinct_max": int(distinct.max()), "distinct_median": float(np.median(distinct)),
            "packed_bits": packed_bits,
            "int8_bits": count * per_filter * 8 + count * PER_FILTER_BYTES * 8,
            "macs": int(macs),
            "ternary_macs": int(round(macs_per_weight * per_filter * branch_filters)),
            "ternary_nonzero_macs": int(round(macs_per_weight * (nonzero_ternary
                                                                 + two_branch_adds)))}


def bit_budget(content, table=None):
    """(rows per weight op, totals) of a flatbuffer; see the module docstring."""
    table = table or energy_table()
    it = export.interpreter(content)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    rows = [layer_budget(op, tensors, it) for op in it._get_ops_details()
            if op["op_name"] in WEIGHT_OPS]
    total = {k: sum(r[k] for r in rows) for k in ("filters", "weights", "ternary_filters",
                                                  "two_branch_filters", "packed_bits", "int8_bits", "macs",
                                                  "ternary_macs", "ternary_nonzero_macs")}
    int8_macs = total["macs"] - total["ternary_macs"]
    mac_pj = table["int8_multiply_pj"] + table["int32_add_pj"]

    def energy(int8_count, ternary_adds, packed_bits):
        return (int8_count * mac_pj + ternary_adds * table["int32_add_pj"]
                + packed_bits / 8 * table["sram_read_pj_per_byte"])

    total.update(
        packed_bytes=total["packed_bits"] / 8, int8_bytes=total["int8_bits"] / 8,
        packed_vs_int8=total["packed_bits"] / max(total["int8_bits"], 1),
        ternary_weight_share=sum(r["ternary_filters"] * r["weights"] / max(r["filters"], 1)
                                 for r in rows) / max(total["weights"], 1),
        branch_weight_share=sum((r["ternary_filters"] + r["two_branch_filters"]) * r["weights"]
                                / max(r["filters"], 1) for r in rows) / max(total["weights"], 1),
        ternary_mac_share=total["ternary_macs"] / max(total["macs"], 1),
        energy_pj=energy(int8_macs, total["ternary_nonzero_macs"], total["packed_bits"]),
        energy_pj_int8=energy(total["macs"], 0, total["int8_bits"]),
        energy_source=table["source"])
    return rows, total
