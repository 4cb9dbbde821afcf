"""The emulator's concurrent runner: kernels that share memory between a block's threads
and wait at __syncthreads() compute right only when those threads really run at once."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gpu_tconv import emulated_backend
from gpu_tconv.launch import LaunchPlan

PROBE = Path(__file__).resolve().parent / "kernels" / "block_sync_probe.cu"
BLOCKS, THREADS = 3, 64


def _probe(kernel: str, block_sync: bool = True) -> LaunchPlan:
    return LaunchPlan(kernel=f"probe::{kernel}", grid=(BLOCKS, 1, 1), block=(THREADS, 1, 1),
                      scalars=(), index_bits=32, source=str(PROBE), block_sync=block_sync)


def _rotate(values: np.ndarray, block_sync: bool = True) -> np.ndarray:
    out = np.full_like(values, -1)
    emulated_backend.run_plan(_probe("rotate", block_sync), (values, out))
    return out


def _expected_rotation(values: np.ndarray) -> np.ndarray:
    return np.roll(values.reshape(BLOCKS, THREADS), -1, axis=1).ravel()


def test_threads_of_a_block_meet_at_the_barrier():
    values = np.arange(BLOCKS * THREADS, dtype=np.int32) * 7 + 3
    np.testing.assert_array_equal(_rotate(values), _expected_rotation(values))


def test_a_reduction_over_several_barriers():
    values = np.random.default_rng(30).integers(-1000, 1000, BLOCKS * THREADS).astype(np.int32)
    sums = np.zeros(BLOCKS, np.int32)
    emulated_backend.run_plan(_probe("block_sum"), (values, sums))
    np.testing.assert_array_equal(sums, values.reshape(BLOCKS, THREADS).sum(axis=1))


def test_the_sequential_runner_cannot_run_it_and_says_so():
    # Proof that the checks above can fail: threads run one after another read their
    # neighbour's shared value before it is written. The launch reports it.
    values = np.arange(BLOCKS * THREADS, dtype=np.int32) + 1
    out = np.full_like(values, -1)
    with pytest.raises(RuntimeError, match="__syncthreads"):
        emulated_backend.run_plan(_probe("rotate", block_sync=False), (values, out))
    assert not np.array_equal(out, _expected_rotation(values))


def test_concurrent_launches_from_several_host_threads():
    # A block's shared arrays are one per process: launches take turns, none corrupts
    # another's.
    inputs = [np.arange(BLOCKS * THREADS, dtype=np.int32) * (i + 2) for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        outputs = list(pool.map(_rotate, inputs))
    for values, out in zip(inputs, outputs):
        np.testing.assert_array_equal(out, _expected_rotation(values))
