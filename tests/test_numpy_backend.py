"""The NumPy fallback: every formulation right, at every chunking, within its memory budget;
the same bits run after run, and chunks and boxes within the seam tolerance of the whole."""

import math
import threading
import tracemalloc
from dataclasses import replace
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gpu_tconv import (cpu_threads, numpy_backend, numpy_col2im, numpy_hybrid, numpy_sublattice,
                       numpy_windows)
from gpu_tconv.geometry import geometry_from_shapes
from gpu_tconv.reference import conv_transpose_reference
from oracles import Problem, assert_close, assert_within_seam_tolerance, problems


def _peak_temporaries(x, w, g, method) -> tuple[int, np.ndarray]:
    numpy_backend.release_scratch()  # the call maps its scratch memory afresh, and counts it
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        y = numpy_backend.conv_transpose(x, w, None, g, method=method)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - y.nbytes, y


@pytest.mark.parametrize("method", numpy_backend.METHODS)
def test_temporaries_stay_within_budget(monkeypatch, method):
    budget = 256 * 1024
    monkeypatch.setattr(numpy_backend, "TEMP_BUDGET_BYTES", budget)
    rng = np.random.default_rng(5)
    # The whole batch's column buffer would be 64 x 8 x 4 x 16 x 16 x 8 bytes = 8 MiB.
    x = rng.standard_normal((64, 4, 16, 16))
    w = rng.standard_normal((4, 8, 4, 4))
    stride = 1 if method == "hybrid" else 2  # the hybrid computes stride 1 only
    groups = 2 if method == "windows" else 1  # windows, as it was built for: grouped
    w = w[:, :8 // groups]
    g = geometry_from_shapes(x.shape, w.shape, stride=stride, padding=1, groups=groups)
    assert numpy_backend.applies(g, method, x.dtype)
    extra, y = _peak_temporaries(x, w, g, method)
    # The budget, plus what the backend documents beyond it: copies of the weights, and
    # NumPy's own buffers for ufuncs on strided operands (up to 3 of np.getbufsize()
    # elements).
    assert extra <= budget + 2 * w.nbytes + 3 * np.getbufsize() * x.itemsize, extra
    np.testing.assert_allclose(y[:2], conv_transpose_reference(x[:2], w, stride=stride,
                                                               padding=1, groups=groups),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["scatter", "gather"])
def test_chunked_result_is_within_the_seam_tolerance_of_unchunked(monkeypatch, method):
    rng = np.random.default_rng(6)
    params = dict(stride=(2, 1), padding=1, dilation=(1, 2))
    p = Problem(rng.standard_normal((9, 24, 7, 5)).astype(np.float32),
                rng.standard_normal((24, 16, 3, 3)).astype(np.float32), None, params)
    g = geometry_from_shapes(p.x.shape, p.weight.shape, **params)
    whole = numpy_backend.conv_transpose(p.x, p.weight, None, g, method=method)
    monkeypatch.setattr(numpy_backend, "TEMP_BUDGET_BYTES", 1)  # one sample, one box at a time
    chunked = numpy_backend.conv_transpose(p.x, p.weight, None, g, method=method)
    assert_within_seam_tolerance(chunked, whole, p, np.float32)


@given(p=problems(), method=st.sampled_from(numpy_backend.METHODS),
       budget=st.sampled_from([1, 4096, 8 * 2**20]),
       dtype=st.sampled_from([np.float64, np.float32, np.float16]))
def test_every_formulation_and_chunking_is_right(p: Problem, method, budget, dtype):
    p = p.astype(dtype)
    g = geometry_from_shapes(p.x.shape, p.weight.shape, None if p.bias is None else p.bias.shape,
                             **p.params)
    with patch.object(numpy_backend, "TEMP_BUDGET_BYTES", budget):
        if not numpy_backend.applies(g, method, dtype):
            with pytest.raises(ValueError, match="method"):
                numpy_backend.conv_transpose(p.x, p.weight, p.bias, g, method=method)
            return
        y = numpy_backend.conv_transpose(p.x, p.weight, p.bias, g, method=method)
    assert y.dtype == dtype
    assert_close(y, conv_transpose_reference(p.x, p.weight, p.bias, **p.params), p, dtype)


@pytest.mark.parametrize("x_shape, w_shape, params", [
    # Taps whose shift moves the whole input out of the frame: their copies are all zero.
    ((2, 1, 1), (1, 1, 2), dict(padding=2, output_padding=2, dilation=3)),
    ((1, 1, 1), (1, 1, 3), dict(padding=2, dilation=3)),
    ((1, 1, 2, 1), (1, 1, 1, 3), dict(padding=(0, 2), output_padding=(0, 1), dilation=(1, 2))),
    # The frame wider than the input along the last dimension, several residue classes
    # of shifts (dilation 3, stride 2).
    ((2, 3, 5, 4), (3, 2, 3, 4), dict(stride=(1, 2), padding=(1, 3), dilation=(2, 3))),
])
def test_gather_copies_with_shifts_beyond_the_input(x_shape, w_shape, params):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    g = geometry_from_shapes(x.shape, w.shape, **params)
    expected = conv_transpose_reference(x, w, None, **params)
    for method in ("scatter", "gather"):
        y = numpy_backend.conv_transpose(x, w, None, g, method=method)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@given(p=problems(max_channels=24), method=st.sampled_from(numpy_backend.METHODS),
       data=st.data())
def test_any_output_box_from_its_input_slice_is_within_the_seam_tolerance(p: Problem, method,
                                                                        data):
    # What blockwise callers (output boxes here, Dask chunks) rely on: a box of the output,
    # computed from just the inputs that reach it, is the whole result's box to within the
    # seam tolerance (wide channel counts make BLAS round by the GEMM's shape).
    p = p.astype(np.float32)
    g = geometry_from_shapes(p.x.shape, p.weight.shape, None if p.bias is None else p.bias.shape,
                             **p.params)
    if not numpy_backend.applies(g, method, np.float32):
        return
    whole = numpy_backend.conv_transpose(p.x, p.weight, p.bias, g, method=method)
    box = tuple(sorted(data.draw(st.lists(st.integers(0, n), min_size=2, max_size=2,
                                          unique=True))) for n in g.out_size)
    found = numpy_backend._box(g, box)
    out = (slice(None),) * 2 + tuple(slice(lo, hi) for lo, hi in box)
    if found is None:
        return
    in_box, tile = found
    x_box = p.x[(slice(None),) * 2 + in_box]
    part = numpy_backend.conv_transpose(x_box, p.weight, p.bias, tile, method=method)
    assert_within_seam_tolerance(part, whole[out], p, np.float32, crop=out)


@given(p=problems(), method=st.sampled_from(numpy_backend.METHODS))
def test_stale_scratch_memory_changes_nothing(p: Problem, method):
    # The scratch memory is reused between calls without clearing: whatever a previous
    # call left there (here: NaN in every byte) must not reach a result. And the same
    # call gives the same bits, run after run.
    p = p.astype(np.float32)
    g = geometry_from_shapes(p.x.shape, p.weight.shape, None if p.bias is None else p.bias.shape,
                             **p.params)
    if not numpy_backend.applies(g, method, np.float32):
        return
    numpy_backend.release_scratch()
    fresh = numpy_backend.conv_transpose(p.x, p.weight, p.bias, g, method=method)
    for held in list(numpy_backend._SCRATCH.values()):  # none if nothing was computed
        held.fill(0xFF)
    again = numpy_backend.conv_transpose(p.x, p.weight, p.bias, g, method=method)
    assert again.tobytes() == fresh.tobytes()


def _record_failure(failures: list, fn):
    def run():
        try:
            fn()
        except Exception as error:  # noqa: BLE001 - reported by the test
            failures.append(error)
    return run


def test_scratch_memory_is_kept_per_thread_and_bounded(monkeypatch):
    budget = 1 << 20
    monkeypatch.setattr(numpy_backend, "TEMP_BUDGET_BYTES", budget)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 8, 32, 32)).astype(np.float32)
    w = rng.standard_normal((8, 4, 4, 4)).astype(np.float32)
    g = geometry_from_shapes(x.shape, w.shape, stride=2, padding=1)
    padding = 2 * w.nbytes  # copies of the weights
    for parts in (1, 2):  # on this thread; on as many pool threads as there are cores
        monkeypatch.setattr(numpy_backend, "PARALLEL_MIN_FLOPS", 0 if parts > 1 else 1e30)
        numpy_backend.release_scratch()
        # Until every thread that computes parts holds its scratch: the pool hands a part
        # to whichever thread is free, so a few calls may all run on one of them.
        threads = 1 if parts == 1 else numpy_backend._parts(g)
        for _ in range(500):
            numpy_backend.conv_transpose(x, w, None, g)
            if len(numpy_backend._SCRATCH) >= threads:
                break
        assert len(numpy_backend._SCRATCH) >= threads
        held = numpy_backend.scratch_bytes()
        # Split between cores, every part keeps within its share of the budget.
        assert 0 < held <= (budget + padding) * (1 if parts == 1 else cpu_threads.blas_threads())
        tracemalloc.start()
        try:
            y = numpy_backend.conv_transpose(x, w, None, g)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The second call maps no new scratch; NumPy's ufuncs may still buffer operands
        # with short rows (up to 3 of np.getbufsize() elements each, per thread).
        ufunc_buffers = 3 * np.getbufsize() * x.itemsize * parts
        assert peak - y.nbytes < held // 4 + ufunc_buffers
    # Another thread computes with scratch memory of its own, which release_scratch
    # returns too.
    monkeypatch.setattr(numpy_backend, "PARALLEL_MIN_FLOPS", 1e30)
    one = geometry_from_shapes(x[:1].shape, w.shape, stride=2, padding=1)
    failed = []
    thread = threading.Thread(target=_record_failure(
        failed, lambda: numpy_backend.conv_transpose(x[:1], w, None, one)))
    thread.start()
    thread.join()
    assert not failed and numpy_backend.scratch_bytes() > held
    numpy_backend.release_scratch()
    assert numpy_backend.scratch_bytes() == 0


@given(p=problems(max_channels=24), method=st.sampled_from(numpy_backend.METHODS),
       dtype=st.sampled_from([np.float64, np.float32, np.float16]))
def test_every_formulation_is_right_on_channels_last_arrays(p: Problem, method, dtype):
    # Channels-last input and output: col2im_cl accumulates straight into the output
    # there (a view whose channels are innermost), the others write through strided views.
    p = p.astype(dtype)
    g = geometry_from_shapes(np.moveaxis(p.x, 1, -1).shape, p.weight.shape,
                             None if p.bias is None else p.bias.shape, **p.params,
                             layout="channels_last")
    if not numpy_backend.applies(g, method, dtype):
        return
    x_last = np.ascontiguousarray(np.moveaxis(p.x, 1, -1))
    y = numpy_backend.conv_transpose(x_last, p.weight, p.bias, g, method=method)
    assert g.channels_last and y.dtype == dtype and y.shape == g.out_shape
    expected = conv_transpose_reference(p.x, p.weight, p.bias, **p.params)
    assert_close(np.moveaxis(y, -1, 1), expected, p, dtype)


@given(p=problems(max_channels=24), block=st.sampled_from([1, 64, 2**20]),
       dtype=st.sampled_from([np.float64, np.float32, np.float16]),
       layout=st.sampled_from(["channels_first", "channels_last"]))
def test_col2im_cl_tap_by_tap_is_right(p: Problem, block, dtype, layout):
    # col2im_cl multiplies tap by tap, a few taps per batched GEMM, on many pixels: here
    # on every problem, with blocks of one tap (1 byte), a few, or all; its result is
    # the one-GEMM result's within the seam tolerance, and right.
    p = p.astype(dtype)
    last = layout == "channels_last"
    x = np.ascontiguousarray(np.moveaxis(p.x, 1, -1)) if last else p.x
    g = geometry_from_shapes(x.shape, p.weight.shape, None if p.bias is None else p.bias.shape,
                             **p.params, layout=layout)
    if not numpy_backend.applies(g, "col2im_cl", dtype):
        return
    one_gemm = numpy_backend.conv_transpose(x, p.weight, p.bias, g, method="col2im_cl")
    with patch.object(numpy_col2im, "TAP_GEMM_MIN_ROWS", 1), \
            patch.object(numpy_col2im, "TAP_BLOCK_BYTES", block):
        y = numpy_backend.conv_transpose(x, p.weight, p.bias, g, method="col2im_cl")
    if last:
        y, one_gemm = np.moveaxis(y, -1, 1), np.moveaxis(one_gemm, -1, 1)
    assert y.dtype == dtype
    assert_close(y, conv_transpose_reference(p.x, p.weight, p.bias, **p.params), p, dtype)
    assert_within_seam_tolerance(y, one_gemm, p, dtype)


@given(p=problems(ranks=(2, 3), max_channels=8), dtype=st.sampled_from([np.float64, np.float32,
                                                                        np.float16]),
       layout=st.sampled_from(["channels_first", "channels_last"]),
       result_per_weight=st.sampled_from([0, 10**9]))
def test_hybrid_is_right_on_stride_1(p: Problem, dtype, layout, result_per_weight):
    # The hybrid (gather along the last dimension, col2im along the others) computes
    # stride 1 only: the drawn problem with stride 1, against the textbook loops and
    # within the seam tolerance of gather; with its weight's rows in either order.
    params = dict(p.params, stride=1, output_padding=0)
    last = layout == "channels_last"
    x = np.ascontiguousarray(np.moveaxis(p.x, 1, -1)) if last else p.x
    try:
        g = geometry_from_shapes(x.shape, p.weight.shape,
                                 None if p.bias is None else p.bias.shape, **params,
                                 layout=layout)
    except ValueError:  # padding beyond what stride 1 reaches
        assume(False)
    p = Problem(p.x, p.weight, p.bias, params).astype(dtype)
    x = x.astype(dtype)
    assert numpy_backend.applies(g, "hybrid", dtype)
    strided = replace(g, stride=(2,) + g.stride[1:])
    if numpy_sublattice.reduce(strided) is None:  # else its sublattice's stride is 1
        assert not numpy_backend.applies(strided, "hybrid", dtype)
    with patch.object(numpy_hybrid, "RESULT_PER_WEIGHT", result_per_weight):
        y = numpy_backend.conv_transpose(x, p.weight, p.bias, g, method="hybrid")
    gather = numpy_backend.conv_transpose(x, p.weight, p.bias, g, method="gather")
    if last:
        y, gather = np.moveaxis(y, -1, 1), np.moveaxis(gather, -1, 1)
    assert y.dtype == dtype
    assert_close(y, conv_transpose_reference(p.x, p.weight, p.bias, **params), p, dtype)
    if dtype != np.float16:  # each is rounded to float16 once, from different sums
        assert_within_seam_tolerance(y, gather, p, dtype)


@given(p=problems(max_channels=3), dtype=st.sampled_from([np.float64, np.float32, np.float16]),
       layout=st.sampled_from(["channels_first", "channels_last"]),
       budget=st.sampled_from([1, 4096, 8 * 2**20]), groups=st.integers(2, 5),
       split=st.booleans(), row_columns=st.sampled_from([1, 16, 256]))
def test_windows_is_right_on_grouped_layers(p: Problem, dtype, layout, budget, groups, split,
                                            row_columns):
    # The windows formulation (one GEMM per group over the blocks of the output, its
    # window's zeros padded in; in 1-D over rows of L blocks, L from 1 up to 16 here),
    # on the drawn problem made grouped (depthwise when it has one input channel per
    # group), in steps of samples, groups and block rows, its groups in one part or split
    # between the cores: against the textbook loops and within the seam tolerance of
    # scatter.
    cin_g, cout_g = p.x.shape[1] // p.params["groups"], p.weight.shape[1]
    rng = np.random.default_rng(groups)
    x = rng.standard_normal(p.x.shape[:1] + (groups * cin_g,) + p.x.shape[2:])
    w = rng.standard_normal((groups * cin_g,) + p.weight.shape[1:])
    b = None if p.bias is None else rng.standard_normal(groups * cout_g)
    p = Problem(x, w, b, dict(p.params, groups=groups)).astype(dtype)
    last = layout == "channels_last"
    xl = np.ascontiguousarray(np.moveaxis(p.x, 1, -1)) if last else p.x
    g = geometry_from_shapes(xl.shape, p.weight.shape, None if b is None else b.shape,
                             **p.params, layout=layout)
    if all(s == 1 for s in numpy_backend._reduced(g).stride):  # im2col: stacked's
        assert not numpy_backend.applies(replace(g, groups=1), "windows", dtype)
    with patch.object(numpy_backend, "TEMP_BUDGET_BYTES", budget), \
            patch.object(numpy_windows, "PARALLEL_MIN_OUTPUTS", 0 if split else 2**62), \
            patch.object(numpy_windows, "ROW_COLUMNS", row_columns):
        gr = numpy_backend._reduced(g)  # what windows computes (see numpy_sublattice)
        if g.rank == 1:
            # rows of more than one block where one block has fewer columns than asked
            assert (numpy_windows.row_blocks(gr) > 1) == (
                gr.c_out_per_group * gr.stride[0] < row_columns)
        assert (numpy_windows.parts(gr) > 1) == (split and cpu_threads.blas_threads() > 1)
        itemsize = numpy_backend.compute_dtype(dtype).itemsize
        assert numpy_backend.applies(g, "windows", dtype) == (
            budget // numpy_windows.parts(gr)
            >= numpy_windows.temp_elements(gr, 1, 1, 1) * itemsize)
        if not numpy_backend.applies(g, "windows", dtype):
            return
        y = numpy_backend.conv_transpose(xl, p.weight, p.bias, g, method="windows")
    scatter = numpy_backend.conv_transpose(xl, p.weight, p.bias, g, method="scatter")
    if last:
        y, scatter = np.moveaxis(y, -1, 1), np.moveaxis(scatter, -1, 1)
    assert y.dtype == dtype
    assert_close(y, conv_transpose_reference(p.x, p.weight, p.bias, **p.params), p, dtype)
    if dtype != np.float16:  # each is rounded to float16 once, from different sums
        assert_within_seam_tolerance(y, scatter, p, dtype)


def test_windows_is_chosen_for_depthwise_1d_and_keeps_infinities_where_they_reach():
    # The windows formulation multiplies the input by the zeros its window holds between
    # taps, so an infinite input would spread NaN to outputs it never reaches; where one
    # is present the choice falls back to scatter, and the result is PyTorch's.
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 256, 1024)).astype(np.float32)  # the CPU benchmark's layer
    w = rng.standard_normal((256, 1, 8)).astype(np.float32)
    g = geometry_from_shapes(x.shape, w.shape, stride=4, padding=2, groups=256)
    assert numpy_backend.choose_method(g, x.dtype) == "windows"
    x[0, 3, 10] = np.inf
    y = numpy_backend.conv_transpose(x, w, None, g)
    expected = conv_transpose_reference(x, w, None, stride=4, padding=2, groups=256)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-5, atol=1e-5)


def test_the_memoized_choice_follows_the_model_constants():
    # choose_method is memoized; its key holds the cost model's constants, so that a
    # refit (or a test) that sets one is followed, never answered from a stale memo.
    g = geometry_from_shapes((4, 242, 152), (242, 4, 2), stride=3, padding=1, dilation=2)
    costs = numpy_backend.method_costs(g, np.float32)
    first = numpy_backend.choose_method(g, np.float32)
    assert first == min(costs, key=costs.get)
    with patch.object(numpy_backend, "COL2IM_STRIDED_PENALTY", 1e6):
        costs = numpy_backend.method_costs(g, np.float32)
        assert numpy_backend.choose_method(g, np.float32) == min(costs, key=costs.get)
        changed = min(costs, key=costs.get)
    assert changed != first  # the patch moved the choice, so the memo was tested
    assert numpy_backend.choose_method(g, np.float32) == first


@pytest.mark.parametrize("method", ["scatter", "gather", "stacked"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_phases_no_tap_reaches_are_the_bias(method, dtype, rank):
    # Stride 3 with two taps leaves one phase of three along each dimension to no tap:
    # it is written as the bias itself, with no accumulator (which would hold stale
    # scratch memory: it is filled with NaN here first).
    rng = np.random.default_rng(rank)
    p = Problem(rng.standard_normal((2, 3) + (5, 4, 3)[:rank]),
                rng.standard_normal((3, 4) + (2,) * rank), rng.standard_normal(4),
                dict(stride=3, padding=1)).astype(dtype)
    g = geometry_from_shapes(p.x.shape, p.weight.shape, p.bias.shape, **p.params)
    assert any(not plan.blocks for plan in numpy_backend._plans(g, method))
    numpy_backend.release_scratch()
    numpy_backend._scratch(2**22).view(np.float32).fill(np.nan)
    y = numpy_backend.conv_transpose(p.x, p.weight, p.bias, g, method=method)
    assert y.dtype == dtype
    assert_close(y, conv_transpose_reference(p.x, p.weight, p.bias, **p.params), p, dtype)
    unreached = y[(slice(None), slice(None)) + (slice(1, None, 3),) * rank]
    np.testing.assert_array_equal(unreached, np.broadcast_to(
        p.bias.astype(numpy_backend.compute_dtype(dtype)).astype(dtype)
        .reshape((-1,) + (1,) * rank), unreached.shape))


@given(p=problems(max_batch=4, max_channels=8),
       dtype=st.sampled_from([np.float64, np.float32, np.float16]))
def test_col2im_in_blocks_of_samples_is_the_same(p: Problem, dtype):
    # col2im adds every tap into a few samples' outputs at a time where the output
    # exceeds a core's cache; the random problems are too small for that, so blocks of
    # one sample are forced: each output still takes its taps in the same order, so the
    # result is the same to the bit, and right.
    p = p.astype(dtype)
    g = geometry_from_shapes(p.x.shape, p.weight.shape, None if p.bias is None else p.bias.shape,
                             **p.params)
    if not numpy_backend.applies(g, "col2im", dtype):
        return
    whole = numpy_backend.conv_transpose(p.x, p.weight, p.bias, g, method="col2im")
    with patch.object(numpy_col2im, "COL2IM_BLOCK_BYTES", 1), \
            patch.object(numpy_col2im, "COL2IM_BLOCK_MIN_ADDS", 1):
        assert numpy_col2im._samples_per_block(g.batch, g.c_out, g, 4) == 1
        y = numpy_backend.conv_transpose(p.x, p.weight, p.bias, g, method="col2im")
    np.testing.assert_array_equal(y, whole)
    assert_close(y, conv_transpose_reference(p.x, p.weight, p.bias, **p.params), p, dtype)


@given(p=problems(max_channels=4), method=st.sampled_from(numpy_backend.METHODS),
       layout=st.sampled_from(["channels_first", "channels_last"]),
       dtype=st.sampled_from([np.float64, np.float32]))
def test_layers_whose_stride_and_dilation_share_a_factor_are_right(p: Problem, method, layout,
                                                                   dtype):
    # Where gcd(stride, dilation) = c > 1, only every c-th output is reached: the
    # formulations compute the smaller layer on that sublattice, and every other output
    # must be the bias itself (or zero), whether it is written alone (c = 2 along the
    # last dimension) or by a fill of the whole output first (c > 2).
    stride, dilation = (np.broadcast_to(p.params[key], (p.x.ndim - 2,))
                        for key in ("stride", "dilation"))
    factors = [math.gcd(int(s), int(d)) for s, d in zip(stride, dilation)]
    assume(max(factors) > 1)
    p = p.astype(dtype)
    last = layout == "channels_last"
    x = np.ascontiguousarray(np.moveaxis(p.x, 1, -1)) if last else p.x
    g = geometry_from_shapes(x.shape, p.weight.shape, None if p.bias is None else p.bias.shape,
                             **p.params, layout=layout)
    g2, keep = numpy_sublattice.reduce(g)
    assert all(math.gcd(s, d) == 1 for s, d in zip(g2.stride, g2.dilation))
    if not numpy_backend.applies(g, method, dtype):
        return
    y = numpy_backend.conv_transpose(x, p.weight, p.bias, g, method=method)
    y = np.moveaxis(y, -1, 1) if last else y
    expected = conv_transpose_reference(p.x, p.weight, p.bias, **p.params)
    assert_close(y, expected, p, dtype)
    off = np.ones(y.shape, bool)
    off[(slice(None), slice(None)) + keep] = False
    bias = np.zeros(g.c_out, dtype) if p.bias is None else p.bias
    np.testing.assert_array_equal(y[off], np.broadcast_to(
        bias.reshape((-1,) + (1,) * g.rank), y.shape)[off])
