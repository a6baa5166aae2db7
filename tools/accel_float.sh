#!/usr/bin/env bash
# Float-train several models at once in Keras 3 on an accelerator machine without TensorFlow
# (JAX backend), one process per model sharing the GPU. Each model lands in OUT/<model>-l<level>/
# (float_weights.npz, keras3_result.json, history.csv, log.txt); import one for QAT with
#   python -m fnet_tf.train --model M --level L --epochs 0 --init_from OUT/M-lL --qat_epochs Q
#
# usage: tools/accel_float.sh DATA OUT EPOCHS MODEL:LEVEL [MODEL:LEVEL ...]
#   extra keras3_float flags (e.g. --seed 1 --init glorot_uniform) go in $EXTRA_FLAGS.
# Needs python3 with numpy, Pillow, absl-py, jax and Keras 3 (keras, namex, optree wheels).
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 DATA OUT EPOCHS MODEL:LEVEL [MODEL:LEVEL ...]" >&2; exit 2
fi
data=$1 out=$2 epochs=$3; shift 3
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
# decode the archive once, before the trainers start (they would race to fill the cache)
python3 -c "import sys; from fnet_tf import data; print(data.load(sys.argv[1]).describe())" "$data"
mkdir -p "$out"
items=("$@") pids=()
for item in "${items[@]}"; do
  model=${item%%:*} level=${item##*:}
  dir="$out/$model-l$level"
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  python3 -m fnet_tf.keras3_float --model "$model" --level "$level" --data "$data" \
    --epochs "$epochs" --out "$dir" ${EXTRA_FLAGS:-} >"$dir/log.txt" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "FAILED: ${items[$i]} (see its log.txt)" >&2; status=1
  fi
done
for dir in "$out"/*/; do tail -n 1 "$dir/log.txt"; done
exit $status
