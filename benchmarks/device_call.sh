#!/usr/bin/env bash
# The prepared device call of issue #22 (docs/performance.md, "The prepared device call"):
#
#   bash benchmarks/device_call.sh            # on the GPU machine: about 7 minutes
#   bash benchmarks/device_call.sh --smoke    # the rehearsal on a CPU: seconds
#
# 1. The CUDA tests: `pytest -m cuda` over tests/test_cuda.py and the CUDA cases of
#    tests/test_models.py, 150 s at most per test (pytest-timeout, where installed) and
#    TESTS_S in all -> $OUT/cuda_tests.log (a line per test as it ends), cuda_tests.xml.
#    A failing test does not stop the script (its exit status says so at the end).
# 2. benchmarks/gpu_check.py: the paper's protocol run as a user runs it (the four
#    networks one after another, params.yaml's settings), time-boxed to what is left of
#    TOTAL_S -> $OUT/gpu_check-h200.json and gpu_check-h200.log.
# 3. A summary -> stdout and $OUT/summary.txt.
# (Until commit 63e852b a step measured fused_convs.py and train_many_speed.py too: both
# levers are gone, docs/performance.md.)
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
  check_args=(--smoke --protocol-epochs 2 --protocol-images 8)
else
  total_s=${TOTAL_S:-450} tests_s=${TESTS_S:-220}
  check_args=()
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

# What is left, less 30 s for gpu_check's start (imports, CUDA), its last epoch and the
# summary; gpu_check ends its last network within its budget.
budget=$(( total_s - (SECONDS - start) - 30 ))
if (( budget < 20 )); then budget=20; fi
echo "== 2. gpu_check (budget ${budget} s)"
check_rc=0
timeout -k 10 $(( budget + 40 )) "$PY" benchmarks/gpu_check.py \
  --budget-s "$budget" --out "$OUT" "${check_args[@]}" 2>&1 | tee "$OUT/gpu_check-h200.log" \
  || check_rc=$?
if [[ -f "$OUT/gpu_check.json" ]]; then
  mv "$OUT/gpu_check.json" "$OUT/gpu_check-h200.json"
fi

echo "== 3. summary"
{
  echo "device_call: $(( SECONDS - start )) s; cuda tests exit ${tests_rc}; gpu_check exit ${check_rc}"
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
exit $(( tests_rc || check_rc ? 1 : 0 ))
