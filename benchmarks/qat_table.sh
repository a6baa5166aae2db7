#!/usr/bin/env bash
# Issue 4's table: FactorizeNet level 3, float + QAT int8 (per-channel), QAT int8_per_tensor
# from the same float model, PTQ, all exported and evaluated on the full test split.
#   benchmarks/qat_table.sh [EPOCHS] [QAT_EPOCHS] [DATA]      (re-running resumes)
set -euo pipefail
EPOCHS=${1:-30}
QAT=${2:-5}
DATA=${3:-../shared/data/cifar10-jpeg.tar.gz}
PY=${PYTHON:-python}
RUN=runs/qat-factorizenet-l3-e$EPOCHS
COMMON="--model factorizenet --level 3 --data $DATA --verbose 2 --threads 2"
$PY -m fnet_tf.train $COMMON --epochs "$EPOCHS" --qat_epochs "$QAT" --qat_scheme int8 --run_dir "$RUN"
$PY -m fnet_tf.train $COMMON --epochs 0 --init_from "$RUN" --qat_epochs "$QAT" \
    --qat_scheme int8_per_tensor --run_dir "$RUN-per-tensor"
$PY export/to_tflite.py "$RUN" --float32 --check_images 10000
$PY export/to_tflite.py "$RUN" --scheme ptq --out "$RUN/model_int8_ptq.tflite" --check_images 0
$PY export/to_tflite.py "$RUN-per-tensor" --check_images 10000
$PY benchmarks/quantization_table.py --run "$RUN" --per_tensor_run "$RUN-per-tensor" \
    --out results/quantization-factorizenet-l3
