#!/usr/bin/env bash
# Float training of the three reference points of issue 3: FactorizeNet level 7 (the last,
# fully depthwise-separable level), ResNet-8 and FactorizeNet level 0, one after another.
# Re-running resumes each from its last checkpoint; finished runs are skipped.
#   benchmarks/float_baselines.sh [EPOCHS] [DATA]
set -euo pipefail
EPOCHS=${1:-30}
DATA=${2:-../shared/data/cifar10-jpeg.tar.gz}
PY=${PYTHON:-python}
for target in "factorizenet 7" "resnet8 0" "factorizenet 0"; do
  set -- $target
  $PY -m fnet_tf.train --model "$1" --level "$2" --data "$DATA" --epochs "$EPOCHS" \
      --run_dir "runs/baseline-$1-l$2-e$EPOCHS" --verbose 2 --threads 2
done
