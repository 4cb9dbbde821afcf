"""gpu_tconv.dask: lazy block-wise transposed convolution, on a cluster of processes.

Oracles: the in-memory result of gpu_tconv (bit for bit on the emulated backend, within
the seam tolerance on the numpy one, whose BLAS rounds by the GEMM's shape) and PyTorch
(to tolerance).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dask
import dask.array as da
from distributed import Client, LocalCluster

import gpu_tconv
import gpu_tconv.dask as gd
from gpu_tconv import numpy_backend
from gpu_tconv.chunking import output_chunks
from conftest import requires_gpu
from oracles import (Problem, assert_close, assert_within_seam_tolerance, chunkings, problems,
                     torch_conv_transpose)

EAGER = {None: gpu_tconv.conv_transpose, 1: gpu_tconv.conv_transpose1d,
         2: gpu_tconv.conv_transpose2d, 3: gpu_tconv.conv_transpose3d}
LAZY = {None: gd.conv_transpose, 1: gd.conv_transpose1d, 2: gd.conv_transpose2d,
        3: gd.conv_transpose3d}


@pytest.fixture(scope="module")
def client():
    # Separate processes, so blocks and halos really travel between workers. Not the
    # default scheduler: the other tests here choose theirs.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as c:
        yield c


@st.composite
def chunked(draw, ranks=(1, 2, 3)):
    """A problem, a dtype and a chunking of every axis but the channels."""
    p = draw(problems(ranks=ranks, max_batch=3, max_channels=6))
    p = p.astype(draw(st.sampled_from([np.float64, np.float32, np.float16])))
    chunks = tuple(draw(chunkings(n)) for n in (p.x.shape[0],) + p.x.shape[2:])
    return p, (chunks[0], -1) + chunks[1:]


def _expected_chunks(p: Problem, x_chunks, y_shape):
    per_dim = lambda v: v if isinstance(v, tuple) else (v,) * p.rank
    params = [per_dim(p.params[n]) for n in ("stride", "padding", "output_padding",
                                             "dilation")]
    spatial = tuple(output_chunks(c, k, s, pad, op, d) for c, k, s, pad, op, d in
                    zip(x_chunks[2:], p.weight.shape[2:], *params))
    return (x_chunks[0], (y_shape[1],)) + spatial


@settings(max_examples=25)
@given(case=chunked(), variant=st.sampled_from(["rank", "generic"]))
def test_cluster_result_equals_in_memory_within_the_seam_tolerance(client, case, variant):
    p, chunks = case
    rank = p.rank if variant == "rank" else None
    x = da.from_array(p.x, chunks=chunks)
    y = LAZY[rank](x, p.weight, p.bias, **p.params, backend="numpy")
    expected = EAGER[rank](p.x, p.weight, p.bias, **p.params, backend="numpy")
    assert isinstance(y, da.Array) and y.dtype == p.x.dtype
    assert y.shape == expected.shape
    assert y.chunks == _expected_chunks(p, x.chunks, y.shape)
    got = client.compute(y).result()
    assert isinstance(got, np.ndarray) and got.dtype == expected.dtype
    assert_within_seam_tolerance(got, expected, p, p.x.dtype)
    if p.x.dtype != np.float16:
        assert_close(got, torch_conv_transpose(p), p, p.x.dtype)


@pytest.mark.parametrize("rank, in_chunks", [
    (1, ((2, 1), 5, (7, 1, 12, 0, 9))),
    (2, ((1, 2), 5, (3, 11, 2), (1, 6, 6))),
    (3, ((3,), 5, (4, 1, 5), (2, 7), (6, 0, 3))),
])
def test_uneven_chunks_every_rank_on_cluster(client, rank, in_chunks):
    rng = np.random.default_rng(rank)
    shape = tuple(sum(c) if isinstance(c, tuple) else c for c in in_chunks)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((5, 3) + (3, 4, 2)[:rank]).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    kw = dict(stride=(2, 3, 1)[:rank], padding=(1, 2, 0)[:rank], output_padding=(1, 0, 0)[:rank],
              dilation=(2, 1, 3)[:rank])
    y = LAZY[rank](da.from_array(x, chunks=in_chunks), w, b, **kw, backend="numpy")
    expected = EAGER[rank](x, w, b, **kw, backend="numpy")
    assert_within_seam_tolerance(client.compute(y).result(), expected, Problem(x, w, b, kw),
                                 np.float32)
    assert y.numblocks == tuple(len(c) for c in da.from_array(x, chunks=in_chunks).chunks)


@settings(max_examples=8)
@given(case=chunked(ranks=(1, 2)))
def test_emulated_kernel_blocks_equal_in_memory_bit_for_bit(case):
    p, chunks = case
    y = gd.conv_transpose(da.from_array(p.x, chunks=chunks), p.weight, p.bias, **p.params,
                          backend="emulated")
    expected = gpu_tconv.conv_transpose(p.x, p.weight, p.bias, **p.params, backend="emulated")
    assert y.compute(scheduler="sync").tobytes() == expected.tobytes()


def test_channel_chunks_are_joined_with_a_warning():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 9))
    w = rng.standard_normal((6, 2, 3))
    with pytest.warns(da.PerformanceWarning, match="channels"):
        y = gd.conv_transpose1d(da.from_array(x, chunks=(1, 2, 4)), w, stride=2, groups=2)
    assert y.chunks[1] == (4,)
    expected = gpu_tconv.conv_transpose1d(x, w, stride=2, groups=2, backend="numpy")
    assert_within_seam_tolerance(y.compute(scheduler="sync"), expected,
                                 Problem(x, w, None, dict(stride=2, groups=2)), np.float64)


def test_weight_and_bias_may_be_dask_arrays():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7, 8))
    w, b = rng.standard_normal((3, 4, 3, 3)), rng.standard_normal(4)
    y = gd.conv_transpose2d(da.from_array(x, chunks=(1, 3, 3, 5)),
                            da.from_array(w, chunks=(1, 2, 3, 3)), da.from_array(b, chunks=2),
                            stride=2, padding=1, backend="numpy")
    expected = gpu_tconv.conv_transpose2d(x, w, b, stride=2, padding=1, backend="numpy")
    assert_within_seam_tolerance(y.compute(scheduler="sync"), expected,
                                 Problem(x, w, b, dict(stride=2, padding=1)), np.float64)


def test_empty_batch():
    x = da.zeros((0, 2, 5), chunks=(1, 2, 2))
    y = gd.conv_transpose1d(x, np.ones((2, 3, 3)), stride=2)
    assert y.shape == (0, 3, 11) and y.compute(scheduler="sync").shape == (0, 3, 11)


def test_nothing_is_computed_until_asked():
    def fail():
        raise AssertionError("the input was computed")

    x = da.from_delayed(dask.delayed(fail)(), shape=(1, 2, 6, 6), dtype=np.float64)
    y = gd.conv_transpose2d(x, np.ones((2, 1, 3, 3)), stride=2)  # builds the graph only
    assert y.shape == (1, 1, 13, 13)


@pytest.mark.parametrize("call, error, match", [
    (lambda: gd.conv_transpose1d(np.ones((1, 2, 4)), np.ones((2, 1, 3))), TypeError,
     "dask.array"),
    (lambda: gd.conv_transpose1d(da.ones((1, 2, 4)), np.ones((2, 1, 3)), backend="gpu"),
     ValueError, "backend"),
    (lambda: gd.conv_transpose1d(da.ones((1, 2, 4)), np.ones((2, 1, 3)), padding=9),
     ValueError, "padding"),
    (lambda: gd.conv_transpose2d(da.ones((1, 2, 4)), np.ones((2, 1, 3))), ValueError,
     "dimensions"),
    (lambda: gd.conv_transpose1d(da.ones((1, 2, 4), dtype=np.float32), np.ones((2, 1, 3))),
     TypeError, "weight"),
    (lambda: gd.conv_transpose1d(da.ones((4, 2, 4))[da.arange(4) > 1], np.ones((2, 1, 3))),
     ValueError, "unknown chunk sizes"),
])
def test_invalid_calls_fail_before_any_work(call, error, match):
    with pytest.raises(error, match=match):
        call()


@requires_gpu
def test_cupy_chunks_stay_on_the_device():
    import cupy

    rng = np.random.default_rng(6)
    x = cupy.asarray(rng.standard_normal((2, 4, 10, 9)).astype(np.float32))
    w = cupy.asarray(rng.standard_normal((4, 3, 4, 4)).astype(np.float32))
    y = gd.conv_transpose2d(da.from_array(x, chunks=(1, 4, (3, 7), (5, 4)), asarray=False), w,
                            stride=2, padding=1)
    assert isinstance(y._meta, cupy.ndarray)
    got = y.compute(scheduler="sync")
    assert isinstance(got, cupy.ndarray)
    expected = gpu_tconv.conv_transpose2d(x, w, stride=2, padding=1)
    assert got.get().tobytes() == expected.get().tobytes()


@pytest.mark.parametrize("padding", ["same", "valid", ((2, 0),), ((0, 3),)])
def test_padding_modes_and_pairs_match_in_memory(padding):
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 3, 17))
    w = rng.standard_normal((3, 2, 4))
    xd = da.from_array(x, chunks=(1, 3, (5, 0, 7, 5)))
    kw = dict(stride=3, padding=padding, dilation=2)
    lazy = gd.conv_transpose1d(xd, w, **kw, backend="numpy")
    expected = gpu_tconv.conv_transpose1d(x, w, **kw, backend="numpy")
    assert lazy.shape == expected.shape
    # The seam tolerance, with the sum of |terms| computed by the same call on |x|, |w|.
    scale = gpu_tconv.conv_transpose1d(np.abs(x), np.abs(w), **kw, backend="numpy")
    bound = numpy_backend.SEAM_TOLERANCE_ULPS * np.finfo(x.dtype).eps * scale
    assert np.all(np.abs(lazy.compute(scheduler="synchronous") - expected) <= bound)
