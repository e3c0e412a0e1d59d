#!/usr/bin/env bash
# The GPU figures for README, in one short run:
#  - partial/plain model timings at 256² and 512² (bench_model.py);
#  - train-step images/s of the partial-convolution network in float32 and bfloat16 at 256²
#    batch 48 (depth 7) and 512² batch 12 (depth 8) (bench_train.py);
#  - the input pipelines' images/s on this machine's cores: one core, all cores with threads and
#    with worker processes (bench_data.py; demo and folder: preparing TFDS sets needs TensorFlow);
#  - the data wait of configs/places2.py's train step fed by its own pipeline (worker processes
#    on every core but one) on generated JPEGs, at its batch of 6 and at 48 (bench_data_wait.py).
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]      # JSON lines in OUT_DIR/gpu_bench.jsonl
#
# Needs jax with a GPU backend, flax, optax, orbax-checkpoint, opencv, pillow, scikit-image,
# psutil, h5py, safetensors, ml_collections and grain with its array_record and portpicker (not
# TensorFlow). On a machine that cannot reach a package index, put the missing wheels in .wheels/
# first, e.g. `pip download ml_collections grain array_record portpicker --no-deps -d .wheels`;
# they are installed with --no-index.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
log="$out/gpu_bench.jsonl"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
if compgen -G ".wheels/*.whl" > /dev/null; then
  "$python" -m pip install --quiet --no-index --no-deps .wheels/*.whl
fi
"$python" -c "import jax; print(jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc

"$python" benchmarks/bench_model.py --repeats 7 | tee -a "$log"
for dtype in float32 bfloat16; do
  "$python" benchmarks/bench_train.py --dtype "$dtype" --size 256 --depth 7 --batch 48 --steps 10 --variants pconv | tee -a "$log"
  "$python" benchmarks/bench_train.py --dtype "$dtype" --size 512 --depth 8 --batch 12 --steps 10 --variants pconv | tee -a "$log"
done
"$python" benchmarks/bench_data.py --sizes 256 512 --sources demo folder --seconds 3 --rounds 1 \
  --processes | tee -a "$log"
for batch in 6 48; do
  "$python" benchmarks/bench_data_wait.py --config configs/places2.py --steps 300 \
    --set data.batch_size="$batch" | tee -a "$log"
done
echo "wrote $log"
