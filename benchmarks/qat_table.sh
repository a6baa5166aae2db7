#!/usr/bin/env bash
# Issue 4's table for one FactorizeNet level: FP32 / PTQ INT8 / QAT INT8 per-channel / QAT INT8
# per-tensor, all from the same float model, exported and evaluated on the full test split.
#   benchmarks/qat_table.sh LEVEL FLOAT_RUN QAT_EPOCHS [DATA]     (re-running resumes)
# FLOAT_RUN: a finished float run of that level (e.g. from benchmarks/float_baselines.sh).
set -euo pipefail
LEVEL=${1:?level}
FLOAT_RUN=${2:?float run directory}
QAT=${3:-5}
DATA=${4:-../shared/data/cifar10-jpeg.tar.gz}
PY=${PYTHON:-python}
RUN=runs/qat-factorizenet-l$LEVEL
COMMON="--model factorizenet --level $LEVEL --data $DATA --verbose 2 --threads 2 --epochs 0 --init_from $FLOAT_RUN"
$PY -m fnet_tf.train $COMMON --qat_epochs "$QAT" --qat_scheme int8 --run_dir "$RUN"
$PY -m fnet_tf.train $COMMON --qat_epochs "$QAT" --qat_scheme int8_per_tensor --run_dir "$RUN-per-tensor"
$PY export/to_tflite.py "$RUN" --float32 --check_images 10000
$PY export/to_tflite.py "$RUN" --scheme ptq --out "$RUN/model_int8_ptq.tflite" --check_images 0
$PY export/to_tflite.py "$RUN" --scheme ptq_per_tensor --out "$RUN/model_int8_ptq_per_tensor.tflite" --check_images 0
$PY export/to_tflite.py "$RUN-per-tensor" --check_images 10000
$PY benchmarks/quantization_table.py --run "$RUN" --per_tensor_run "$RUN-per-tensor" \
    --out "results/quantization-factorizenet-l$LEVEL"
$PY -m fnet_tf.analyze "$RUN" --out "results/quantization-factorizenet-l$LEVEL/analysis"
$PY -m fnet_tf.analyze "$RUN-per-tensor" --out "results/quantization-factorizenet-l$LEVEL/analysis-per-tensor" --notool_check
