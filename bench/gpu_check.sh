#!/usr/bin/env bash
# One-call GPU check for fusedloss. Installs nothing and needs no network (the GPU image has
# torch, triton, pytest-xdist, matplotlib, tqdm). From the repository root:
#
#     bash bench/gpu_check.sh [DIR]        # DIR: default $OUT, else ./gpu-check-<UTC time>
#
# Within GPU_CHECK_BUDGET seconds (default 530: the whole check stays under 9 minutes) it runs
#   1. the full test suite on CUDA: FUSEDLOSS_TEST_DEVICE=cuda python -m pytest -n 8 tests
#      (no TRITON_INTERPRET; limit GPU_CHECK_TEST_LIMIT seconds, default 240)
#   2. python -m fusedloss.bench --standard --profile, with --time-limit set to what is left
#      (results are written after every case, so a cut-short run still leaves its numbers)
# and leaves in DIR at most 8 files (what the device tool brings back from $OUT):
#   summary.txt  pytest.log  bench.log  results.json  results.md  speedup.png  traces.tar
# Exit status: 0 when the tests passed and the benchmark completed, else 1 (2: no CUDA).
# GPU_CHECK_DRY_RUN=1 checks the plumbing on a machine without CUDA (numbers mean nothing).
set -u
cd "$(dirname "$0")/.." || exit 2
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET:-530}
TEST_LIMIT=${GPU_CHECK_TEST_LIMIT:-240}
PY=${PYTHON:-$(command -v python3 || command -v python)}
DEST=${1:-${OUT:-$PWD/gpu-check-$(date -u +%Y%m%d-%H%M%S)}}
mkdir -p "$DEST" || exit 2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fusedloss-gpu-check.XXXXXX") || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
unset TRITON_INTERPRET
SUMMARY="$DEST/summary.txt"
: > "$SUMMARY"
log() { echo "$*" | tee -a "$SUMMARY"; }

# ---------------------------------------------------------------- environment
GPU_NAME=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no-cuda")' 2>/dev/null || echo unknown)
# the GPU name as a path component: [A-Za-z0-9._-] only ("NVIDIA H100 80GB HBM3" -> NVIDIA-H100-80GB-HBM3)
SLUG=$(printf '%s' "$GPU_NAME" | tr -c 'A-Za-z0-9._-' '-' | sed -e 's/--*/-/g' -e 's/^[-.]*//' -e 's/[-.]*$//')
SLUG=${SLUG:-unknown}
DATE=$(date -u +%Y-%m-%d)
log "fusedloss GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "gpu: $GPU_NAME"
log "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
log "$("$PY" -c 'import sys, torch, triton; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}, cuda {torch.version.cuda}")' 2>&1)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader >> "$SUMMARY" 2>&1
# GPU_CHECK_DRY_RUN=1: check this script's plumbing on a CPU machine (tests/test_bench.py under
# the interpreter, a tiny --quick bench); the numbers mean nothing
DRY=${GPU_CHECK_DRY_RUN:-0}
if [ "$DRY" = 1 ]; then
    log "DRY RUN on $GPU_NAME: plumbing only"
    export TRITON_INTERPRET=1
    TEST_CMD=(env "$PY" -m pytest -q -p no:cacheprovider tests/test_bench.py)
    BENCH_ARGS=(--quick --loss huber,sigmoid_focal --sizes 10 --profile --profile-size 10)
elif [ "$GPU_NAME" = no-cuda ] || [ "$GPU_NAME" = unknown ]; then
    log "no CUDA device visible to torch: nothing to check"
    exit 2
else
    TEST_CMD=(env FUSEDLOSS_TEST_DEVICE=cuda "$PY" -m pytest -n 8 -q -p no:cacheprovider tests)
    BENCH_ARGS=(--standard --profile)
fi

# ---------------------------------------------------------------- 1. tests on CUDA
log ""
log "== tests: ${TEST_CMD[*]:1} (limit ${TEST_LIMIT}s)"
T0=$SECONDS
timeout -k 10 "$TEST_LIMIT" "${TEST_CMD[@]}" > "$DEST/pytest.log" 2>&1
TEST_RC=$?
if [ "$TEST_RC" = 124 ] || [ "$TEST_RC" = 137 ]; then
    log "tests: TIMED OUT after ${TEST_LIMIT}s (rc $TEST_RC)"
else
    log "tests: rc $TEST_RC in $((SECONDS - T0))s: $(tail -n 1 "$DEST/pytest.log")"
fi
grep -E '^(FAILED|ERROR) ' "$DEST/pytest.log" | head -n 40 | tee -a "$SUMMARY"
# keep the log returnable (16 MiB a file)
if [ "$(wc -c < "$DEST/pytest.log")" -gt 8000000 ]; then
    tail -c 8000000 "$DEST/pytest.log" > "$WORK/pytest.tail" && mv "$WORK/pytest.tail" "$DEST/pytest.log"
fi

# ---------------------------------------------------------------- 2. benchmark + profile
LEFT=$((BUDGET - (SECONDS - START) - 20))  # 20 s to copy and pack
BENCH_RC=skipped
log ""
if [ "$LEFT" -lt 40 ]; then
    log "== bench: skipped, only ${LEFT}s left of ${BUDGET}s"
else
    log "== bench: fusedloss-bench ${BENCH_ARGS[*]} --time-limit $((LEFT - 15))"
    T0=$SECONDS
    timeout -k 10 "$LEFT" "$PY" -m fusedloss.bench "${BENCH_ARGS[@]}" \
        --time-limit "$((LEFT - 15))" --out "$WORK/bench" > "$DEST/bench.log" 2>&1
    BENCH_RC=$?
    log "bench: rc $BENCH_RC in $((SECONDS - T0))s"
    for f in results.json results.md speedup.png; do
        if [ -f "$WORK/bench/$f" ]; then cp "$WORK/bench/$f" "$DEST/"; else log "bench: no $f"; fi
    done
    if [ -d "$WORK/bench/traces" ]; then
        tar -C "$WORK/bench" -cf "$DEST/traces.tar" traces
    fi
    "$PY" - "$WORK/bench/results.json" <<'PYEOF' 2>&1 | tee -a "$SUMMARY"
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:  # noqa: BLE001
    print(f"bench: results.json unreadable: {e}")
    raise SystemExit
bw = d.get("copy_bandwidth") or {}
print(f"bench: complete={d['complete']} stopped={d['stopped_reason']} rows={len(d['rows'])} "
      f"skipped={len(d['skipped'])} errors={sum(1 for r in d['rows'] if r.get('error'))} "
      f"copy={bw.get('GBps', 0):.0f} GB/s elapsed={d['elapsed_s']:.0f}s")
PYEOF
    sed -n '/^summary (fused):/,/^$/p' "$DEST/bench.log" >> "$SUMMARY"
fi
rm -rf "$WORK"

log ""
log "commit the results as bench/results/$DATE-$SLUG/ (results.json, results.md, speedup.png,"
log "traces.tar, summary.txt) with a short README; see bench/README.md"
log "whole check: $((SECONDS - START))s"
ls -la "$DEST" >> "$SUMMARY"

# what the device tool's reply shows (its tail): the fused summary, then the status lines
echo
echo "---- fused rows (full table: results.md) ----"
sed -n '/^summary (fused):/,/^$/p' "$DEST/bench.log" 2>/dev/null | sed -n '2,81p' | grep -v '^$'
echo "---- status ----"
grep -E '^(fusedloss GPU check|gpu:|commit|python|DRY|tests:|FAILED|ERROR|bench:|whole check)' "$SUMMARY" | head -n 60
ls "$DEST"
[ "$TEST_RC" = 0 ] && [ "$BENCH_RC" = 0 ] && grep -q '"complete": true' "$DEST/results.json" 2>/dev/null
[ $? = 0 ] && exit 0 || exit 1
