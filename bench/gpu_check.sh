#!/usr/bin/env bash
# The GPU check, in one run on a machine with a CUDA GPU: the GPU tests, then the GPU
# benchmark, each with a time limit. Everything lands in bench/results/: the test log
# and JUnit XML, and the benchmark's table, JSON and SVG plot (rewritten after every
# row, so a run stopped by its time limit keeps what it measured).
#
# From the repository root, in an environment with the test and cuda extras and a CUDA
# build of PyTorch (the cuDNN peer):
#   pip install -e ".[test,cuda]" && bash bench/gpu_check.sh
# TEST_TIMEOUT and BENCH_TIMEOUT (seconds) change the limits; extra arguments go to the
# benchmark (e.g. --only KernelBench --dtypes float32).
set -uo pipefail
cd "$(dirname "$0")/.."
results=bench/results
mkdir -p "$results"
stamp=$(date +%Y%m%d-%H%M%S)
log="$results/gpu-check-$stamp.log"

python -m gpu_tconv info 2>&1 | tee "$log"
if ! python -c "import sys; from gpu_tconv import cuda_backend as c; sys.exit(c.unavailable_reason())" \
        2>&1 | tee -a "$log"; then
    echo "no usable GPU: nothing to check here (see above)" | tee -a "$log"
    exit 1
fi

# `-k cuda` selects the cuda backend's case of every parametrized test and the whole of
# tests/test_cuda.py (the GPU-only tests: CuPy arrays, streams, every kernel variant).
timeout "${TEST_TIMEOUT:-1200}" python -m pytest -q -rs -p no:cacheprovider \
    --junitxml="$results/gpu-tests-$stamp.xml" -k cuda tests/ 2>&1 | tee -a "$log"
tests=${PIPESTATUS[0]}

timeout --signal=INT "${BENCH_TIMEOUT:-2700}" python bench/gpu.py --output "$results" "$@" \
    2>&1 | tee -a "$log"
bench=${PIPESTATUS[0]}

echo "tests: exit $tests, benchmark: exit $bench (124: time limit); log: $log" | tee -a "$log"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
