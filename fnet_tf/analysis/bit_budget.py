"""What a file's weights cost at fewer bits: distinct levels, ternary share, packed size, energy.

For every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED op of an int8 ``.tflite`` it reads the
int8 filters (one per output channel) and counts each filter's distinct values. A filter is
**ternary** when its values are within ``{-q, 0, +q}`` for one ``q``: such a filter needs only
adds and subtracts, and 2 bits per weight. Accounting (the same for every file, so an int8 file
and a hybrid one compare directly):

- **packed size**: 2 bits per weight of a ternary filter plus its one magnitude ``q`` (1 byte),
  8 bits per weight of any other filter; plus, for every filter, its float32 scale and int32
  bias (8 bytes). The ``int8`` figure counts every filter at 8 bits.
- **ternary MAC share**: MACs computed by ternary filters over all MACs of these ops.
- **energy** per inference (pJ) from the per-operation table ``energy_45nm.json`` (Horowitz,
  ISSCC 2014, 45 nm): int8 MAC = multiply + 32-bit add; ternary MAC = a 32-bit add when the
  weight is nonzero, nothing when it is zero; plus an SRAM read per packed weight byte.
"""
import json
import os

import numpy as np

from fnet_tf import export

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


def layer_budget(op, tensors, it):
    """One row: the op's filters, distinct levels, ternary filters, packed bits, MACs."""
    from fnet_tf.benchmark import op_macs

    weights = it.get_tensor(op["inputs"][1]).astype(np.int64)
    filters = _filters(op["op_name"], weights)
    per_filter, count = filters.shape
    macs = op_macs(op, tensors)
    macs_per_weight = macs / max(filters.size, 1)
    ternary = np.array([is_ternary(filters[:, f]) for f in range(count)])
    distinct = np.array([len(np.unique(filters[:, f])) for f in range(count)])
    nonzero_ternary = int(np.count_nonzero(filters[:, ternary]))
    packed_bits = (int(ternary.sum()) * (per_filter * 2 + 8)
                   + int((~ternary).sum()) * per_filter * 8 + count * PER_FILTER_BYTES * 8)
    return {"op": op["index"], "tflite_op": op["op_name"],
            "tensor": tensors[op["outputs"][0]]["name"][:80],
            "filters": count, "weights": int(filters.size),
            "ternary_filters": int(ternary.sum()),
            "distinct_max": int(distinct.max()), "distinct_median": float(np.median(distinct)),
            "packed_bits": packed_bits,
            "int8_bits": count * per_filter * 8 + count * PER_FILTER_BYTES * 8,
            "macs": int(macs), "ternary_macs": int(round(macs_per_weight * per_filter * ternary.sum())),
            "ternary_nonzero_macs": int(round(macs_per_weight * nonzero_ternary))}


def bit_budget(content, table=None):
    """(rows per weight op, totals) of a flatbuffer; see the module docstring."""
    table = table or energy_table()
    it = export.interpreter(content)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    rows = [layer_budget(op, tensors, it) for op in it._get_ops_details()
            if op["op_name"] in WEIGHT_OPS]
    total = {k: sum(r[k] for r in rows) for k in ("filters", "weights", "ternary_filters",
                                                  "packed_bits", "int8_bits", "macs",
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
        ternary_mac_share=total["ternary_macs"] / max(total["macs"], 1),
        energy_pj=energy(int8_macs, total["ternary_nonzero_macs"], total["packed_bits"]),
        energy_pj_int8=energy(total["macs"], 0, total["int8_bits"]),
        energy_source=table["source"])
    return rows, total
