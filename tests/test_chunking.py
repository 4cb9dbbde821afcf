"""The chunk arithmetic of gpu_tconv.chunking, on its own and against whole results."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import gpu_tconv
from gpu_tconv.chunking import output_chunks, plan_axis
from gpu_tconv.geometry import output_length as output_size
from oracles import Problem, assert_within_seam_tolerance, chunkings, problems


@st.composite
def axes(draw):
    """One spatial axis: (input chunks, kernel, stride, padding, output_padding, dilation)."""
    s, d, k = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    n_in, pad = draw(st.integers(1, 40)), draw(st.integers(0, 12))
    op = draw(st.integers(0, max(s, d) - 1))
    assume(output_size(n_in, k, s, pad, op, d) >= 1)
    return draw(chunkings(n_in)), k, s, pad, op, d


def _reaching(o, n_in, k, s, p, d):
    """Brute force: the inputs that tap some weight into output o."""
    return {i for i in range(n_in) for t in range(k) if i * s + t * d - p == o}


@given(axes())
def test_output_chunks_follow_the_input(axis):
    chunks, k, s, p, op, d = axis
    out = output_chunks(chunks, k, s, p, op, d)
    assert len(out) == len(chunks) and min(out) >= 0
    assert sum(out) == output_size(sum(chunks), k, s, p, op, d)
    # Away from the clamped ends, input boundary b is output boundary b*s - p.
    bounds_in = np.cumsum((0,) + chunks)
    bounds_out = np.cumsum((0,) + out)
    for b_in, b_out in zip(bounds_in[1:-1], bounds_out[1:-1]):
        assert b_out == min(max(b_in * s - p, 0), sum(out))


@given(axes())
def test_plans_cover_each_block_from_the_inputs_that_reach_it(axis):
    chunks, k, s, p, op, d = axis
    n_in = sum(chunks)
    plans = plan_axis(chunks, k, s, p, op, d)
    assert len(plans) == len(chunks)
    assert [q.out_stop - q.out_start for q in plans] == list(output_chunks(chunks, k, s, p, op,
                                                                             d))
    for q in plans:
        assert q.extended_start <= q.in_start <= q.in_stop <= n_in
        if q.out_start == q.out_stop:
            assert q.in_start == q.in_stop == q.own_start
            continue
        reach = set().union(*(_reaching(o, n_in, k, s, p, d)
                              for o in range(q.out_start, q.out_stop)))
        assert reach <= set(range(q.in_start, q.in_stop))
        # The sub-problem (padding 0) is valid and long enough for the crop.
        assert 0 <= q.output_padding < max(s, d)
        sub_out = output_size(q.in_stop - q.in_start, k, s, 0, q.output_padding, d)
        assert q.crop.start >= 0 and q.crop.stop <= sub_out
        # Halo: nothing after the block's own input chunk, at most ceil(D/s) before it
        # (at least one for a block whose own chunk is empty).
        assert q.in_stop <= q.own_stop
        halo = math.ceil(d * (k - 1) / s)
        assert q.extended_start >= q.own_start - max(halo, q.own_stop == q.own_start)


def _blocks_of_whole(p: Problem, chunks, backend, with_where=False):
    """Every block computed from its input slice, paired with the same block of the whole
    (and, ``with_where``, that block's slices of the output)."""
    whole = gpu_tconv.conv_transpose(p.x, p.weight, p.bias, **p.params, backend=backend)
    per_dim = lambda v: v if isinstance(v, tuple) else (v,) * p.rank
    k = p.weight.shape[2:]
    s, pad, op, d = (per_dim(p.params[n]) for n in ("stride", "padding", "output_padding",
                                                    "dilation"))
    plans = [plan_axis(*a) for a in zip(chunks, k, s, pad, op, d)]
    both = (slice(None),) * 2
    for block in itertools.product(*plans):
        if any(q.out_start == q.out_stop for q in block):
            continue
        x_in = p.x[both + tuple(slice(q.in_start, q.in_stop) for q in block)]
        sub = gpu_tconv.conv_transpose(x_in, p.weight, p.bias, stride=s, padding=0,
                                       output_padding=tuple(q.output_padding for q in block),
                                       groups=p.params["groups"], dilation=d, backend=backend)
        where = both + tuple(slice(q.out_start, q.out_stop) for q in block)
        pair = (sub[both + tuple(q.crop for q in block)], whole[where])
        yield pair + (where,) if with_where else pair


@st.composite
def chunked_problems(draw, max_channels=3):
    p = draw(problems(max_channels=max_channels))
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16]))
    return p.astype(dtype), tuple(draw(chunkings(n)) for n in p.x.shape[2:])


@given(chunked_problems(max_channels=24))
def test_numpy_blocks_equal_the_whole_result_within_the_seam_tolerance(case):
    # Wide channel counts make BLAS's GEMM round differently by its shape, so a block
    # may differ from the whole by a few ulps of the sum of its terms, never more.
    p, chunks = case
    for block, expected, where in _blocks_of_whole(p, chunks, "numpy", with_where=True):
        assert block.shape == expected.shape
        assert_within_seam_tolerance(block, expected, p, p.x.dtype, crop=where)


@settings(max_examples=10)
@given(chunked_problems())
def test_emulated_kernel_blocks_equal_the_whole_result_bit_for_bit(case):
    p, chunks = case
    for block, expected in _blocks_of_whole(p, chunks, "emulated"):
        assert block.tobytes() == expected.tobytes()


def test_output_chunks_examples():
    # Stride 2, kernel 4, padding 1 (the usual 2x upsampling): chunk [a, b) -> [2a-1, 2b-1),
    # the first block losing the padding and the last one gaining the d(k-1)+1-s tail.
    assert output_chunks((3, 5, 2), 4, 2, 1, 0, 1) == (5, 10, 5)
    # Padding larger than what the first chunks own: they get empty output blocks.
    assert output_chunks((1, 1, 6), 9, 1, 4, 0, 1) == (0, 0, 8)
    assert sum(output_chunks((1, 1, 6), 9, 1, 4, 0, 1)) == output_size(8, 9, 1, 4, 0, 1)


@pytest.mark.parametrize("chunks", [(4,), (1, 3), (2, 0, 2)])
def test_single_and_empty_chunks(chunks):
    plans = plan_axis(chunks, 3, 2, 1, 1, 1)
    assert plans[0].out_start == 0 and plans[-1].out_stop == output_size(4, 3, 2, 1, 1, 1)
