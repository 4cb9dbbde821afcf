"""Parts of a batch on several cores: within the seam tolerance of one after another
(BLAS, run with fewer threads per part, promises no bit pattern across thread counts),
BLAS left as it was."""

import multiprocessing
import threading
from unittest.mock import patch
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import ThreadpoolController, threadpool_limits

from gpu_tconv import cpu_threads, numpy_backend
from gpu_tconv.geometry import geometry_from_shapes
from gpu_tconv.reference import conv_transpose_reference
from oracles import Problem, assert_close, assert_within_seam_tolerance, problems


def _blas_counts() -> list[int]:
    return [lib.num_threads for lib in ThreadpoolController().select(user_api="blas").lib_controllers]


@settings(max_examples=40)
@given(p=problems(max_channels=24), method=st.sampled_from(numpy_backend.METHODS))
def test_parts_on_several_cores_are_within_the_seam_tolerance(p: Problem, method):
    p = p.astype(np.float32)
    g = geometry_from_shapes(p.x.shape, p.weight.shape, None if p.bias is None else p.bias.shape,
                             **p.params)
    with patch.object(numpy_backend, "PARALLEL_MIN_FLOPS", float("inf")):
        if not numpy_backend.applies(g, method, np.float32):
            return
        alone = numpy_backend.conv_transpose(p.x, p.weight, p.bias, g, method=method)
    with patch.object(numpy_backend, "PARALLEL_MIN_FLOPS", 0):
        together = numpy_backend.conv_transpose(p.x, p.weight, p.bias, g, method=method)
        again = numpy_backend.conv_transpose(p.x, p.weight, p.bias, g, method=method)
    assert again.tobytes() == together.tobytes()  # the same call: the same bits
    assert_within_seam_tolerance(together, alone, p, np.float32)
    assert_close(together, conv_transpose_reference(p.x, p.weight, p.bias, **p.params), p,
                 np.float32)


def test_a_large_layer_splits_its_batch_and_restores_blas(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 64, 32, 32)).astype(np.float32)
    w = rng.standard_normal((64, 32, 4, 4)).astype(np.float32)
    g = geometry_from_shapes(x.shape, w.shape, stride=2, padding=1)
    assert numpy_backend._parts(g) == min(8, cpu_threads.blas_threads())
    before = _blas_counts()
    seen = []
    run_pieces = cpu_threads.run_pieces

    def spy(pieces, cores):
        seen.append(len(pieces))
        return run_pieces(pieces, cores)

    monkeypatch.setattr(cpu_threads, "run_pieces", spy)
    y = numpy_backend.conv_transpose(x, w, None, g)
    assert seen == [numpy_backend._parts(g)]
    assert _blas_counts() == before
    np.testing.assert_allclose(y, conv_transpose_reference(x.astype(np.float64),
                                                           w.astype(np.float64), stride=2,
                                                           padding=1), rtol=1e-4, atol=1e-4)


def test_overlapping_calls_and_failures_leave_blas_as_it_was():
    before = _blas_counts()
    inside = []

    def piece():
        if threading.current_thread().name.startswith("gpu_tconv"):  # not run in order
            inside.append(_blas_counts())
        if len(inside) % 7 == 0:
            raise RuntimeError("a piece fails")

    def call(_):
        try:
            cpu_threads.run_pieces([piece] * 4, 2)
        except RuntimeError:
            pass

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(call, range(30)))
    assert _blas_counts() == before
    if max(before) > 1:  # pieces on the pool ran with BLAS's share of the cores
        assert inside and all(max(counts) <= max(1, max(before) // 2) for counts in inside)


def test_a_forked_child_computes_in_parts():
    # The parent's pool has threads; a child made by fork has none of them.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 8, 8, 8)).astype(np.float32)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    g = geometry_from_shapes(x.shape, w.shape, stride=2, padding=1)
    with patch.object(numpy_backend, "PARALLEL_MIN_FLOPS", 0):
        expected = numpy_backend.conv_transpose(x, w, None, g)  # the pool exists now
        context = multiprocessing.get_context("fork")
        with context.Pool(1) as pool:
            result = pool.apply_async(numpy_backend.conv_transpose, (x, w, None, g))
            np.testing.assert_allclose(result.get(timeout=60), expected, rtol=1e-5, atol=1e-5)
