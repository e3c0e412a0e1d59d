#!/usr/bin/env bash
# The GPU figures for README in one run (under 10 minutes on one GPU), ending in ONE summary table:
#  - partial/plain model timings at 256² and 512² (bench_model.py; JSON lines in the log);
#  - the train step at 256², depth 7, batch 48 (bench_train.py): float32 and bfloat16, the loss
#    (`config.loss.dtype`) in float32 or bfloat16, remat (`model.remat` and `loss.remat`) on or
#    off; images/s, ms/step and the device's peak memory (`memory_stats()['peak_bytes_in_use']`);
#  - the input pipelines' images/s at 256² on this machine's cores (bench_data.py; in the log);
#  - the data wait of configs/places2.py's train step fed by its own pipeline (worker processes on
#    every core but one) on generated JPEGs, at batch 6 and 48 (bench_data_wait.py);
#  - the scaling projection to 8/64/512 GPUs with 400 Gb/s NICs, its compute term calibrated
#    with the measured bfloat16 step (bench_scaling.py --measured_images_per_s).
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]            # log: OUT_DIR/gpu_bench.jsonl, table:
#                                                     # OUT_DIR/summary.md
#   bash benchmarks/gpu_suite.sh --dry-run OUT_DIR    # the same sequence on CPU, tiny sizes
#
# The dry run (seconds per step, under 2 minutes) keeps the script from rotting: the test suite
# runs it. A step that fails is reported and the suite goes on; its rows read "missing" and the
# script exits with status 1.
#
# Needs jax with a GPU backend, flax, optax, orbax-checkpoint, opencv, pillow, scikit-image,
# psutil, h5py, safetensors, ml_collections and grain with its array_record and portpicker (not
# TensorFlow). On a machine that cannot reach a package index, put the missing wheels in .wheels/
# first, e.g. `pip download ml_collections grain array_record portpicker --no-deps -d .wheels`;
# they are installed with --no-index.
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
if [[ "${1:-}" == "--dry-run" ]]; then dry=1; shift; fi
out="${1:-${OUT:-.}}"
mkdir -p "$out"
log="$out/gpu_bench.jsonl"
rows="$out/rows.tsv"
: > "$log"
: > "$rows"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

if (( dry )); then
  # The runs share a compilation cache: the network's initialisation compiles once, not per run.
  cache=$(mktemp -d)
  trap 'rm -rf "$cache"' EXIT
  export JAX_PLATFORMS=cpu JAX_COMPILATION_CACHE_DIR="$cache" \
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
  tiny=(--set model.depth=4 --set model.base_width=8 --set model.max_width=32)
  train_args=(--size 64 --batch 2 --steps 1 "${tiny[@]}")
  model_args=(--cases 256_d7_b4 --width_scale 0.0625 --repeats 1)
  data_args=(--sizes 64 --sources demo --seconds 0.3 --rounds 1)
  wait_args=(--steps 2 --warmup 1 --generated 12 --set data.image_size=64 "${tiny[@]}")
  wait_batches=(2 4)
  scaling_args=(--quick)
else
  if compgen -G ".wheels/*.whl" > /dev/null; then
    "$python" -m pip install --quiet --no-index --no-deps .wheels/*.whl
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  train_args=(--size 256 --depth 7 --batch 48 --steps 10)
  model_args=(--repeats 3)
  data_args=(--sizes 256 --sources demo folder --seconds 2 --rounds 1 --processes)
  wait_args=(--steps 200 --config configs/places2.py)
  wait_batches=(6 48)
  scaling_args=(--sizes 256 --batches 48)
fi
"$python" -c "import jax; print(jax.devices())"
echo "cores: $(nproc)"

failed=()
# record TAG COMMAND...: runs COMMAND, appends its output to the log and its JSON lines, tagged,
# to the rows file; a failure is remembered, not fatal.
record() {
  local tag=$1
  shift
  echo "== $tag: $*" >&2
  if "$@" > "$out/$tag.out"; then
    cat "$out/$tag.out" >> "$log"
    grep '^{' "$out/$tag.out" | sed "s/^/$tag\t/" >> "$rows" || true
  else
    echo "== $tag failed" >&2
    failed+=("$tag")
  fi
}

record model "$python" benchmarks/bench_model.py "${model_args[@]}"
train() { record "$1" "$python" benchmarks/bench_train.py --variants pconv "${train_args[@]}" "${@:2}"; }
no_remat=(--set model.remat=False --loss_remat off)
remat=(--set model.remat=True --loss_remat on)
train train_float32 --dtype float32 --loss_dtype float32 "${no_remat[@]}"
train train_float32_remat --dtype float32 --loss_dtype float32 "${remat[@]}"
train train_bfloat16 --dtype bfloat16 --loss_dtype float32 "${no_remat[@]}"
train train_bfloat16_loss_bfloat16 --dtype bfloat16 --loss_dtype bfloat16 "${no_remat[@]}"
train train_bfloat16_loss_bfloat16_remat --dtype bfloat16 --loss_dtype bfloat16 "${remat[@]}"
record data "$python" benchmarks/bench_data.py "${data_args[@]}"
for batch in "${wait_batches[@]}"; do
  record "data_wait_$batch" "$python" benchmarks/bench_data_wait.py "${wait_args[@]}" \
    --set data.batch_size="$batch"
done

# The projection's compute term: the measured bfloat16 step (bfloat16 loss, no remat).
measured=$(awk -F '\t' '$1 == "train_bfloat16_loss_bfloat16" {print $2; exit}' "$rows" \
  | "$python" -c "import json, sys; print(json.loads(sys.stdin.readline())['images_per_sec'])" \
  || true)
if [[ -n "$measured" ]]; then
  record scaling env JAX_PLATFORMS=cpu "$python" benchmarks/bench_scaling.py "${scaling_args[@]}" \
    --dtypes bfloat16 --loss_dtype bfloat16 --nic_gbit 400 --measured_images_per_s "$measured"
else
  failed+=(scaling)
fi

"$python" - "$rows" "$out/summary.md" <<'EOF'
"""One table from the tagged JSON lines of the run; a row whose step failed reads 'missing'."""
import json
import sys

rows_file, summary_file = sys.argv[1:]
found = {}
for line in open(rows_file):
    tag, text = line.rstrip("\n").split("\t", 1)
    found.setdefault(tag, []).append(json.loads(text))


def gb(value):
    return "n/a" if value is None else f"{value:.2f} GB"


lines = ["| row | images/s | ms/step | peak memory | note |", "|---|---:|---:|---|---|"]
for tag, label in [("train_float32", "train step, float32, loss float32"),
                   ("train_float32_remat", "train step, float32, loss float32, remat"),
                   ("train_bfloat16", "train step, bfloat16, loss float32"),
                   ("train_bfloat16_loss_bfloat16", "train step, bfloat16, loss bfloat16"),
                   ("train_bfloat16_loss_bfloat16_remat",
                    "train step, bfloat16, loss bfloat16, remat")]:
    if tag not in found:
        lines.append(f"| {label} | missing | | | |")
        continue
    r = found[tag][0]
    note = f"{r['size']}², depth {r['depth']}, batch {r['batch']}, first step {r['first_step_sec']:.0f} s"
    if not r["loss_options_in_config"]:
        note += "; this version has no loss.dtype / loss.remat: float32 loss, no loss remat"
    lines.append(f"| {label} | {r['images_per_sec']:,.1f} | {1e3 * r['sec_per_step']:,.1f} | "
                 f"{gb(r['peak_gb'])} (device) | {note} |")
waits = sorted(t for t in found if t.startswith("data_wait_"))
for tag in waits or ["data_wait"]:
    if tag not in found:
        lines.append("| data wait | missing | | | |")
        continue
    r = found[tag][0]
    lines.append(f"| data wait, batch {r['batch']} | {r['images_per_s']:,.1f} | "
                 f"{1e3 * r['batch'] / r['images_per_s']:,.1f} | | data wait "
                 f"{100 * r['data_wait_fraction']:.1f} % of the step, {r['size']}², "
                 f"source {r['source']} |")
if "scaling" in found:
    r = found["scaling"][0]
    p = r["projection"][0]
    for n in ("8", "64", "512"):
        q = p[n]
        lines.append(
            f"| projection, {n} GPUs, {p['nic_gbit']:g} Gb/s NIC per GPU | "
            f"{q['images_per_s_no_overlap']:,.0f}–{q['images_per_s_overlap']:,.0f} | "
            f"{q['step_ms_no_overlap']:.1f}–{q['step_ms_overlap']:.1f} | "
            f"{gb(r['peak_gb_cpu_analysis'])} (CPU analysis, not GPU) | efficiency "
            f"{100 * q['efficiency_no_overlap']:.0f}–{100 * q['efficiency_overlap']:.0f} % (no "
            f"overlap – full overlap), compute {p['compute_ms']:.1f} ms {p['compute_from']} |")
else:
    lines += [f"| projection, {n} GPUs | missing | | | |" for n in (8, 64, 512)]
table = "\n".join(lines)
open(summary_file, "w").write(table + "\n")
print("\nSummary\n\n" + table)
EOF
echo "wrote $log and $out/summary.md"
if (( ${#failed[@]} )); then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
