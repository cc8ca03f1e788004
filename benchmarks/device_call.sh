#!/usr/bin/env bash
# The prepared device call of issue #22 (docs/performance.md, "The prepared device call"):
#
#   bash benchmarks/device_call.sh            # on the GPU machine: about 7.5 minutes
#   bash benchmarks/device_call.sh --smoke    # the rehearsal on a CPU: seconds
#
# 1. The CUDA tests: `pytest -m cuda` over tests/test_cuda.py and the CUDA cases of
#    tests/test_models.py, 150 s at most per test (pytest-timeout, where installed) and
#    TESTS_S in all -> $OUT/cuda_tests.log (a line per test as it ends), cuda_tests.xml.
#    A failing test does not stop the script (its exit status says so at the end).
# 2. benchmarks/fused_convs.py on CUDA: MR2U-Net's train.fused_convs against the reference
#    (ATen ops, CUDA kernels, step time) -> $OUT/fused_convs.md; and
#    benchmarks/train_many_speed.py: the four networks trained together on streams against
#    one after another (wall times, bit-identity) -> $OUT/train_many.json.  FUSED_S and
#    MANY_S seconds at most (40 and 90).
# 3. benchmarks/gpu_check.py --phases e: the paper's protocol run as a user runs it (the
#    four networks one after another, params.yaml's settings), time-boxed to what is
#    left of TOTAL_S -> $OUT/gpu_check-h200.json and gpu_check-h200.log.
# 4. A summary -> stdout and $OUT/summary.txt.
#
# Runs from the repository root with PYTHONPATH=src; everything it writes is under $OUT
# (a new temporary folder when OUT is unset).  --smoke runs the same steps at tiny sizes
# (the CUDA tests skip without a GPU): tests/test_device_call.py.  Environment:
# PYTHON (default python3), TOTAL_S (seconds for it all: 450, 90 with --smoke), TESTS_S
# (the tests' limit: 240, 60 with --smoke).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
smoke=0
case "${1:-}" in
  --smoke) smoke=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/device_call.sh [--smoke]" >&2; exit 2 ;;
esac
OUT="${OUT:-$(mktemp -d -t device_call-XXXXXX)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS, before its first call
scratch="$(mktemp -d -t device_call-scratch-XXXXXX)"  # pytest's files: not in $OUT
trap 'rm -rf "$scratch"' EXIT
start=$SECONDS

if (( smoke )); then
  total_s=${TOTAL_S:-90} tests_s=${TESTS_S:-60}
  check_args=(--smoke --models unet resunet attention_unet mr2unet
              --protocol-epochs 2 --protocol-images 8)
  fused_args=(--device cpu --sizes 32:4:2 --repeats 1 --steps 1)
  many_args=(--smoke --epochs 1)
else
  total_s=${TOTAL_S:-450} tests_s=${TESTS_S:-220}
  check_args=()
  fused_args=(--device cuda --sizes 128:64:8 128:16:8 --repeats 5)
  many_args=(--epochs 2 --images 256)
fi

echo "== 1. CUDA tests (at most ${tests_s} s)"
per_test=()
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
  per_test=(--timeout 150)
fi
tests_rc=0
timeout -k 10 "$tests_s" "$PY" -m pytest -m cuda tests/test_cuda.py tests/test_models.py \
  -v -rA -p no:cacheprovider --continue-on-collection-errors --basetemp "$scratch/pytest" \
  --junitxml "$OUT/cuda_tests.xml" "${per_test[@]}" 2>&1 | tee "$OUT/cuda_tests.log" \
  || tests_rc=$?

echo "== 2. fused MR2U-Net convolutions; networks trained together"
bench_rc=0
timeout -k 5 "${FUSED_S:-40}" "$PY" benchmarks/fused_convs.py "${fused_args[@]}" 2>&1 \
  | grep -v '^USDT' | tee "$OUT/fused_convs.md" || bench_rc=$?
timeout -k 5 "${MANY_S:-90}" "$PY" benchmarks/train_many_speed.py "${many_args[@]}" \
  --json "$OUT/train_many.json" 2>&1 | tail -n 30 || bench_rc=$?

# What is left, less 30 s for gpu_check's start (imports, CUDA), its last epoch and the
# summary; gpu_check ends its phase within its budget (benchmarks/gpucheck/phases.py).
budget=$(( total_s - (SECONDS - start) - 30 ))
if (( budget < 20 )); then budget=20; fi
echo "== 3. gpu_check --phases e (budget ${budget} s)"
check_rc=0
timeout -k 10 $(( budget + 40 )) "$PY" benchmarks/gpu_check.py --phases e \
  --budget-s "$budget" --out "$OUT" "${check_args[@]}" 2>&1 | tee "$OUT/gpu_check-h200.log" \
  || check_rc=$?
if [[ -f "$OUT/gpu_check.json" ]]; then
  mv "$OUT/gpu_check.json" "$OUT/gpu_check-h200.json"
fi
rm -f "$OUT/gpu_check.log"  # its lines are in gpu_check-h200.log

echo "== 4. summary"
{
  echo "device_call: $(( SECONDS - start )) s; cuda tests exit ${tests_rc}; benchmarks exit ${bench_rc}; gpu_check exit ${check_rc}"
  tail -n +2 "$OUT/fused_convs.md" 2>/dev/null || true
  [[ -f "$OUT/train_many.json" ]] && "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print('together:', d['seconds'], 'speed-up', d['together_speedup'], 'bit-identical', d['bit_identical'])" "$OUT/train_many.json" || echo "train_many: no result file"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  fi
  grep -E '^=+ .*[0-9]+ (passed|failed|skipped|error|deselected).* =+$' \
    "$OUT/cuda_tests.log" | tail -n 1 || echo "cuda tests: no result line"
  "$PY" - "$OUT/gpu_check-h200.json" <<'PY' || echo "gpu_check: no result file"
import json
import sys

data = json.load(open(sys.argv[1]))
run = data.get("protocol_run") or {}
print(f"gpu_check on {data['device']}, torch {data['torch']}, {data['elapsed_s']} s")
if run:
    total = run["full_protocol_wall_s"] or run["projected_s"]
    how = "measured" if run["full_protocol_measured"] else "projected"
    print(f"protocol run ({run['epochs']} epochs x {run['images']} images, params.yaml's "
          f"settings, one network after another): full_protocol_measured "
          f"{run['full_protocol_measured']}, {how} "
          f"{total / 60 if total else float('nan'):.2f} min; plain loop's time / ours "
          f"{run['vs_plain'] or float('nan'):.2f}")
    for arch, row in run["networks"].items():
        seconds = row["seconds"] or float("nan")
        print(f"  {arch:<14} {row['epochs_done']:>4} of {run['epochs']} epochs, "
              f"{seconds:9.1f} s {'measured' if row['measured'] else 'projected'}, "
              f"plain / ours {row.get('vs_plain') or float('nan'):.2f}")
PY
} | tee "$OUT/summary.txt"
exit $(( tests_rc || bench_rc || check_rc ? 1 : 0 ))
