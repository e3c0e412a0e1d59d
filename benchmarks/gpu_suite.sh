#!/usr/bin/env bash
# The GPU figures for README, in one short run: partial/plain model timings at 256² and 512²,
# and train-step images/s in float32 and bfloat16 at 256² (batch 6) and 512² (batch 6).
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]      # JSON lines in OUT_DIR/gpu_bench.jsonl
#
# Needs jax with a GPU backend, flax, optax, orbax-checkpoint, opencv, h5py, safetensors and
# ml_collections (not TensorFlow: the benchmarks build no data pipeline). On a machine that
# cannot reach a package index, put the missing wheels in .wheels/ first, e.g.
# `pip download ml_collections --no-deps -d .wheels`; they are installed with --no-index.
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

"$python" benchmarks/bench_model.py --repeats 7 | tee -a "$log"
for dtype in float32 bfloat16; do
  "$python" benchmarks/bench_train.py --dtype "$dtype" --size 256 --depth 7 --batch 6 --steps 10 | tee -a "$log"
  "$python" benchmarks/bench_train.py --dtype "$dtype" --size 512 --depth 8 --batch 6 --steps 10 | tee -a "$log"
done
echo "wrote $log"
