"""Failure cases made deliberate: huge sizes, memory, concurrency, faults and numerics."""

import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gpu_tconv
from gpu_tconv import cuda_backend, dispatch, emulated_backend, launch, numpy_backend
from gpu_tconv.geometry import geometry_from_shapes
from gpu_tconv.reference import conv_transpose_reference
from conftest import BACKENDS, requires_gpu
from oracles import (Problem, assert_close, assert_within_seam_tolerance, problems,
                     torch_conv_transpose)


# --- numerics ------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problems(), data=st.data())
def test_nan_and_inf_propagate_as_in_pytorch(backend, p: Problem, data):
    for a in (p.x, p.weight):
        flat = a.reshape(-1)
        spots = data.draw(st.lists(st.integers(0, flat.size - 1), max_size=3))
        flat[spots] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    y = gpu_tconv.conv_transpose(p.x, p.weight, p.bias, **p.params, backend=backend)
    expected = torch_conv_transpose(p)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("values, expected", [
    ([60000, 60000, -60000], 60000),       # the partial sum overflows float16, the total does not
    ([40000, 40000, 0], np.inf),           # the total overflows: rounds to inf, as PyTorch's
    ([-40000, -40000, 0], -np.inf),
])
def test_float16_overflow_as_pytorch(backend, values, expected):
    x = np.array(values, np.float16).reshape(1, 3, 1)
    w = np.ones((3, 1, 1), np.float16)
    y = gpu_tconv.conv_transpose1d(x, w, backend=backend)
    torch_y = torch.nn.functional.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w))
    assert y[0, 0, 0] == expected == torch_y.numpy()[0, 0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_do_not_depend_on_batch_splitting(backend, monkeypatch):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((7, 6, 9, 8)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2)
    whole = gpu_tconv.conv_transpose2d(x, w, **kw, backend=backend)
    parts = np.concatenate([gpu_tconv.conv_transpose2d(x[i:i + 3], w, **kw, backend=backend)
                            for i in range(0, 7, 3)])
    if backend != "numpy":  # one thread's fixed-order sum per output: bit for bit
        assert parts.tobytes() == whole.tobytes()
        return
    # NumPy: BLAS rounds by the GEMM's shape (and the formulation may differ with the
    # size), so what is promised is the seam tolerance, on any BLAS.
    p = Problem(x, w, None, kw)
    assert_within_seam_tolerance(parts, whole, p, np.float32)
    monkeypatch.setattr(numpy_backend, "TEMP_BUDGET_BYTES", 4096)  # small chunks and boxes
    chunked = gpu_tconv.conv_transpose2d(x, w, **kw, backend=backend)
    assert_within_seam_tolerance(chunked, whole, p, np.float32)


# --- 64-bit sizes ----------------------------------------------------------------------

def test_emulated_kernel_past_2_to_the_31(monkeypatch):
    """The last sample of an output of more than 2**31 elements, computed by the tail of
    the grid, with pointers offset so only that sample's memory exists."""
    monkeypatch.setattr(launch, "MAX_BLOCKS", 2**31 - 1)  # one thread per output
    batch, length = 2**12 + 1, 2**18
    params = dict(stride=2, padding=1, output_padding=1)
    g = geometry_from_shapes((batch, 2, length), (2, 1, 3), **params)
    total = batch * g.c_out * g.out_size[0]
    assert total > 2**31
    plan = launch.plan(g, np.float64, variant="simple")  # one thread per output
    assert plan.index_bits == 64 and plan.grid[0] * launch.BLOCK_SIZE >= total

    rng = np.random.default_rng(12)
    x_last = rng.standard_normal((1, 2, length))
    w = rng.standard_normal((2, 1, 3))
    y_last = np.full((1, 1, g.out_size[0]), np.nan)
    x_offset = (batch - 1) * x_last.size * 8  # bytes before the last sample
    y_offset = (batch - 1) * y_last.size * 8
    first_block = (batch - 1) * y_last.size // launch.BLOCK_SIZE
    emulated_backend.run_plan(plan, (x_last.ctypes.data - x_offset, w, None,
                                     y_last.ctypes.data - y_offset), first_block=first_block)
    expected = numpy_backend.conv_transpose(x_last, w, None,
                                            geometry_from_shapes(x_last.shape, w.shape, **params))
    np.testing.assert_allclose(y_last, expected, rtol=1e-12, atol=1e-12)


def test_numpy_backend_past_2_to_the_31():
    """An input of more than 2**31 elements (a broadcast view: large but no memory), in
    bounded temporaries, against the closed form of the result."""
    channels, length = 2**11 + 1, 2**20
    x = np.broadcast_to(np.float32(0.5), (1, channels, length))
    assert x.size > 2**31
    w = np.ones((channels, 1, 2), np.float32)
    y = gpu_tconv.conv_transpose1d(x, w, stride=2, backend="numpy")
    assert y.shape == (1, 1, 2 * length)
    np.testing.assert_array_equal(y, np.float32(0.5 * channels))


# --- the NumPy fallback's memory -----------------------------------------------------------

def test_numpy_temporaries_bounded_whatever_the_size(monkeypatch):
    import tracemalloc

    budget = 1 << 20
    monkeypatch.setattr(numpy_backend, "TEMP_BUDGET_BYTES", budget)
    rng = np.random.default_rng(13)
    # One sample alone: 16 x 4 taps x 256 x 256 floats = 16 MiB of columns.
    x = rng.standard_normal((1, 8, 256, 256)).astype(np.float32)
    w = rng.standard_normal((8, 16, 4, 4)).astype(np.float32)
    # A first call fills the plan caches (the formulations' costs, the output boxes: kept
    # for the process, not temporaries), whatever ran before in this process.
    gpu_tconv.conv_transpose2d(x, w, stride=2, padding=1, backend="numpy")
    numpy_backend.release_scratch()  # the call maps its scratch memory afresh, and counts it
    tracemalloc.start()
    try:
        y = gpu_tconv.conv_transpose2d(x, w, stride=2, padding=1, backend="numpy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The budget, plus the documented extras: the stacked weights and NumPy's ufunc buffers.
    padding = 3 * np.getbufsize() * 4
    assert peak - y.nbytes <= budget + padding + 2 * w.nbytes, peak - y.nbytes
    np.testing.assert_allclose(y[:, :, 100:110, 50:60], torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1).numpy()[:, :, 100:110, 50:60],
        rtol=1e-4, atol=1e-4)


# --- no silent fallback ------------------------------------------------------------------------

def test_auto_falls_back_only_when_cuda_is_unavailable_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(cuda_backend, "_unavailable", lambda: RuntimeError("no CUDA device"))
    dispatch._log_fallback_once.cache_clear()
    x, w = np.ones((1, 1, 3)), np.ones((1, 1, 2))
    with caplog.at_level(logging.INFO, logger="gpu_tconv"):
        for _ in range(3):
            gpu_tconv.conv_transpose1d(x, w)
    messages = [r.getMessage() for r in caplog.records if "numpy" in r.getMessage()]
    assert len(messages) == 1 and "no CUDA device" in messages[0]


def test_a_cuda_error_is_raised_not_hidden(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_unavailable", lambda: None)

    def failing(*args, **kwargs):
        raise RuntimeError("CUDA_ERROR_LAUNCH_FAILED")

    monkeypatch.setattr(cuda_backend, "conv_transpose", failing)
    with pytest.raises(RuntimeError, match="LAUNCH_FAILED"):
        gpu_tconv.conv_transpose1d(np.ones((1, 1, 3)), np.ones((1, 1, 2)))


@pytest.mark.parametrize("message, package", [
    ('conv_transpose.cu(25): catastrophic error: cannot open source file "cuda_fp16.h"',
     "nvidia-cuda-runtime"),
    ("CuPy failed to load libnvrtc.so.13: OSError: libnvrtc.so.13: cannot open shared object "
     "file: No such file or directory", "nvidia-cuda-nvrtc"),
])
def test_compile_errors_name_the_missing_package(message, package):
    error = cuda_backend.explain_compile_error(RuntimeError(message))
    assert package in str(error) and message in str(error)


def test_batch_chunk_fits_free_memory_or_names_the_bytes():
    assert cuda_backend.batch_chunk(10, per_sample=100, fixed=50, free=2000) == 10
    assert cuda_backend.batch_chunk(10, per_sample=100, fixed=50, free=560) == 5
    with pytest.raises(MemoryError, match="150 bytes"):
        cuda_backend.batch_chunk(10, per_sample=100, fixed=50, free=120)


# --- concurrency --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_many_threads_at_once(backend, emulator_builds):
    rng = np.random.default_rng(14)
    jobs = []
    for i in range(24):
        dtype = (np.float64, np.float32, np.float16)[i % 3]
        rank = 1 + i % 3
        x = rng.standard_normal((2, 4) + (5,) * rank).astype(dtype)
        w = rng.standard_normal((4, 3) + (3,) * rank).astype(dtype)
        jobs.append((x, w, dict(stride=1 + i % 2, padding=i % 2, groups=1 + (i // 3) % 2)))
    barrier = threading.Barrier(8)

    def run(job):
        x, w, kw = job
        if barrier.n_waiting < 8 and not barrier.broken:
            try:
                barrier.wait(timeout=5)  # start the first eight together
            except threading.BrokenBarrierError:
                pass
        return gpu_tconv.conv_transpose(x, w, **kw, backend=backend)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, jobs))
    for (x, w, kw), y in zip(jobs, results):
        assert_close(y, conv_transpose_reference(x, w, **kw), Problem(x, w, None, kw), x.dtype)
    if backend == "emulated":  # three dtypes, one index width: each built exactly once
        assert len(emulator_builds) == 3, emulator_builds


def test_two_processes_building_the_same_library(tmp_path):
    script = ("import numpy as np, gpu_tconv\n"
              "y = gpu_tconv.conv_transpose1d(np.ones((1, 1, 4)), np.ones((1, 1, 2)), stride=2,"
              " backend='emulated')\n"
              "assert (y == 1).all()\n")
    env = dict(os.environ, GPU_TCONV_CACHE_DIR=str(tmp_path),
               PYTHONPATH=str(Path(gpu_tconv.__file__).resolve().parent.parent))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert [p.suffix for p in (tmp_path / "emulated").iterdir()] == [".so"]  # no leftovers


# --- public API fuzzing ------------------------------------------------------------------------

_values = st.one_of(st.integers(-3, 6), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.none(), st.text(max_size=2), st.booleans(),
                    st.tuples(st.integers(-2, 5)), st.tuples(st.integers(-2, 5), st.integers(-2, 5)),
                    st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)))


@st.composite
def _arrays(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.complex64,
                                  bool]))
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=6))
    a = np.ones(shape, dtype)
    if a.ndim and draw(st.booleans()):
        a = a[(slice(None, None, -1),) * a.ndim]  # negative strides
    return a


@given(x=_arrays(), w=_arrays(), b=st.one_of(st.none(), _arrays()), stride=_values,
       padding=_values, output_padding=_values, dilation=_values, groups=_values,
       backend=st.sampled_from(["numpy", "emulated"]))
def test_fuzzed_arguments_give_an_error_or_a_right_result(x, w, b, stride, padding,
                                                         output_padding, dilation, groups,
                                                         backend):
    kw = dict(stride=stride, padding=padding, output_padding=output_padding,
              dilation=dilation, groups=groups)
    try:
        y = gpu_tconv.conv_transpose(x, w, b, **kw, backend=backend)
    except (ValueError, TypeError) as error:
        assert str(error)
        return
    assert y.shape == gpu_tconv.output_shape(x.shape, w.shape, **kw)
    if y.size and y.size < 10**5:
        assert_close(y, conv_transpose_reference(x, w, b, **kw), Problem(x, w, b, kw), y.dtype)


# --- devices (GPU only) --------------------------------------------------------------------------

@requires_gpu
def test_numpy_inputs_too_large_for_the_device_run_in_chunks(monkeypatch):
    free = 3 * (2 * 4 * 8 * 8 + 2 * 2 * 16 * 16) * 4  # about three samples
    monkeypatch.setattr(cuda_backend, "_free_bytes", lambda cupy: free)
    rng = np.random.default_rng(15)
    x = rng.standard_normal((10, 4, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 2, 4, 4)).astype(np.float32)
    y = gpu_tconv.conv_transpose2d(x, w, stride=2, padding=1, backend="cuda")
    np.testing.assert_allclose(y, conv_transpose_reference(x, w, stride=2, padding=1),
                               rtol=1e-5, atol=1e-5)


@requires_gpu
def test_an_output_larger_than_the_device_is_a_memory_error(monkeypatch):
    import cupy

    monkeypatch.setattr(cuda_backend, "_free_bytes", lambda cupy: 1000)
    x = cupy.ones((4, 4, 16, 16), np.float32)
    with pytest.raises(MemoryError, match="bytes"):
        gpu_tconv.conv_transpose2d(x, cupy.ones((4, 4, 4, 4), np.float32), stride=2)


@requires_gpu
def test_arrays_on_device_1_run_there():
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    with cupy.cuda.Device(1):
        x = cupy.ones((1, 2, 4), np.float32)
        w = cupy.ones((2, 1, 2), np.float32)
    before = cupy.cuda.Device().id
    y = gpu_tconv.conv_transpose1d(x, w, stride=2)
    assert y.device.id == 1 and cupy.cuda.Device().id == before
    with cupy.cuda.Device(0):
        w0 = cupy.ones((2, 1, 2), np.float32)
    with pytest.raises(ValueError, match="different devices"):
        gpu_tconv.conv_transpose1d(x, w0)
