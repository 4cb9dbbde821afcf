#!/usr/bin/env bash
# The device check: everything worth knowing from a short turn on a GPU machine, in one
# call, from the repository root of a plain checkout:
#
#   bash bench/device_check.sh [--output DIR] [--rehearse]
#
# It needs only python3 with NumPy (and, for the peers and the tests, PyTorch, CuPy and
# pytest): it installs nothing, imports the package from this checkout (PYTHONPATH) and
# compiles into a fresh CuPy cache. Four steps, each under its own time limit, the most
# valuable first, so that a run cut short still returns figures (the limits add up to
# 475 s; each step's limit can be changed with PROBE_S, SMOKE_S, TESTS_S, BENCH_S):
#   1. probe (20 s): GPU, driver, CUDA/cuDNN/CuPy/PyTorch versions, CUDA headers,
#      gpu-tconv info                                                  -> probe.json
#   2. smoke (60 s): every kernel variant x float16/32/64 on a handful of shapes
#      against PyTorch (TF32 off), with each kernel's registers         -> smoke.json
#   3. GPU tests (200 s): every test marked `gpu` (pytest -m gpu), a time limit per
#      test and a cap on failures                                      -> gpu-tests.xml
#   4. benchmark (195 s): bench/gpu.py, KernelBench first      -> gpu-<device>-*.json/.svg
# and the whole log in device-check.log: at most 7 files, all in DIR (default
# bench/results). The exit status is 0 when every step succeeded.
#
# --rehearse: on a machine without a GPU, every step end to end at tiny sizes, with the
# emulated backend (g++) standing in for CUDA and PyTorch on the CPU for cuDNN, writing
# the same files. The test suite runs it.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
output="$root/bench/results"
rehearse=()
while [ $# -gt 0 ]; do
    case "$1" in
        --output) output="${2:?--output needs a folder}"; shift ;;
        --output=*) output="${1#--output=}" ;;
        --rehearse) rehearse=(--rehearse) ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "device_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$output" && output="$(cd "$output" && pwd)" || exit 2
cd "$root" || exit 2

# The package from this checkout, never an installed copy; kernels compiled afresh.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")" || exit 2
trap 'rm -rf "$scratch"' EXIT
# (The emulated backend's cache is keyed on the content of every input: a caller's is safe.)
export CUPY_CACHE_DIR="$scratch/cupy" GPU_TCONV_CACHE_DIR="${GPU_TCONV_CACHE_DIR:-$scratch/emulated}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
log="$output/device-check.log"
: > "$log"
failed=0

# step NAME SECONDS COMMAND...: run COMMAND under its limit (SIGINT first, so Python
# writes what it has; SIGKILL 10 s later), its output to the terminal and the log.
step() {
    local name="$1" limit="$2" began status
    shift 2
    began="$(date +%s)"
    echo "=== $name (limit ${limit}s): $*" | tee -a "$log"
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    status="${PIPESTATUS[0]}"
    [ "$status" -eq 124 ] && note=", cut short by its time limit" || note=""
    echo "=== $name: exit $status after $(( $(date +%s) - began ))s$note" | tee -a "$log"
    [ "$status" -eq 0 ] || failed=1
}

echo "device check of $root at $(date -u +%Y-%m-%dT%H:%M:%SZ)${rehearse:+ (rehearsal)}" \
    | tee -a "$log"
step probe "${PROBE_S:-20}" python3 bench/device_probe.py --output "$output"
step smoke "${SMOKE_S:-60}" python3 bench/device_smoke.py --output "$output" "${rehearse[@]}"

per_test=()
python3 -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout=60)
step tests "${TESTS_S:-200}" python3 -m pytest -m gpu -q -rs -p no:cacheprovider \
    "${per_test[@]}" --maxfail=25 --junitxml="$output/gpu-tests.xml" tests

if [ ${#rehearse[@]} -gt 0 ]; then
    bench=(--rehearse --repeats 1)
else
    bench=(--repeats 5)
fi
step benchmark "${BENCH_S:-195}" python3 bench/gpu.py --output "$output" "${bench[@]}"

echo "device check: $([ "$failed" -eq 0 ] && echo "every step succeeded" \
    || echo "a step failed (see above)"); files in $output" | tee -a "$log"
exit "$failed"
