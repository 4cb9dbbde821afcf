"""The ``hybrid`` formulation of the NumPy backend, for stride 1 on 2-D and 3-D layers:
gather along the last dimension, col2im along the others.

With stride 1 the output exceeds the input by ``dilation*(kernel-1) - padding`` along
every dimension, and gather's GEMM runs over a frame as large as the output: on small
volumes 1.5 to 4 times the useful arithmetic (a 3x5x5 kernel on 8x8x8: 10x12x12 columns
per sample where 8x8x12 carry the input). Here the input is copied once per tap of the
last dimension, shifted along it into rows as long as the output's (zero where the tap
reaches no input), and the copies are stacked into the GEMM's inner dimension, per group::

    (other taps * C_out/G  x  last taps * C_in/G)  by  (last taps * C_in/G  x  nb*in[:-1]*out[-1])

so the columns span the input, not the output, along the other dimensions. Each block of
C_out/G rows (one combination of the other dimensions' taps, with shifts ``q_a =
k_a*dilation_a - padding_a``) is then added into the output at its shift, restricted to
the inputs that land in it: rows are as long in the block as in the output, so a block's
addition runs over whole planes, not rows of a few pixels (col2im).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from .geometry import Geometry
from .numpy_backward import _tap_slices


@functools.lru_cache(maxsize=512)
def blocks(g: Geometry) -> tuple:
    """Per combination of the other dimensions' taps (row-major), the input slices it
    reads and the output slices it adds into, the last dimension whole, or None where it
    reaches no output (pure shape arithmetic, cached)."""
    found = []
    for combo in itertools.product(*map(range, g.kernel[:-1])):
        slices = _tap_slices(g, combo)  # the other dimensions only: as many as the taps
        found.append(None if slices is None else
                     tuple(s + (slice(None),) for s in slices))
    return tuple(found)


def columns(g: Geometry) -> int:
    """GEMM columns per sample: the input's extent along the other dimensions, the
    output's along the last."""
    return math.prod(g.in_size[:-1]) * g.out_size[-1]


def per_sample(g: Geometry, direct: bool = False) -> int:
    """Elements of temporaries per sample: the shifted copies, the GEMM's result and,
    unless the output is accumulated in place (``direct``), the output's accumulator."""
    return (columns(g) * (g.c_in * g.kernel[-1] + g.c_out * math.prod(g.kernel[:-1]))
            + (0 if direct else g.c_out * math.prod(g.out_size)))


def accumulates_in_place(y: np.ndarray, compute_dtype: np.dtype) -> bool:
    """Whether the blocks are added into ``y`` itself: it holds the compute type and is
    contiguous (a channels-last view, whose rows are not, and a float16 output, rounded
    once from the sums, get an accumulator)."""
    return y.dtype == compute_dtype and y.flags.c_contiguous


def applies(g: Geometry, compute_dtype: np.dtype, budget: int) -> bool:
    """Whether this formulation can compute ``g``: stride 1 on a 2-D or 3-D layer, and
    one sample's temporaries within ``budget`` bytes (else gather, which splits the
    output into boxes, takes it)."""
    return g.rank > 1 and all(s == 1 for s in g.stride) and \
        per_sample(g) * compute_dtype.itemsize <= budget


#: Rows of the shifted copies up to this long are zeroed whole, not at their ends.
FILL_ROW_MAX = 32


#: The weight is copied in the order that copies fastest where its elements, times
#: this, exceed the GEMM result's (see :func:`_rows`): the slower copy costs about this
#: many result elements' worth of the additions' slowdown per weight element.
RESULT_PER_WEIGHT = 8


def _rows(w: np.ndarray, g: Geometry, width: int) -> tuple[np.ndarray, bool]:
    """The GEMM's left-hand side per group, (G, rows, (last tap, C_in/G)), a copy of the
    weight ``w`` (C_in, C_out/G, *kernel), and whether its rows are (C_out/G, other
    taps) rather than (other taps, C_out/G).

    Rows (other taps, C_out/G) make each block of C_out/G rows contiguous, which its
    addition streams; but that copy gathers the weight element by element (1.4 ms for
    a 64x128x5x5x5 weight). Stored inner dimension first (BLAS reads it transposed),
    with rows (C_out/G, other taps), it moves only the last tap, the weight's innermost
    axis, outward: 0.5 ms there, while the additions, which read each block's channels
    apart, ran 2 to 5% slower on the stride-1 KernelBench layers. So the faster copy is
    made where the weight is large beside the GEMM's result (:data:`RESULT_PER_WEIGHT`;
    a 5x5x5 kernel on a 4x4x4 volume, 64 to 128 channels: 7% faster in all)."""
    groups, cin_g, cout_g, outer, taps_last = (g.groups, g.c_in_per_group,
                                               g.c_out_per_group, math.prod(g.kernel[:-1]),
                                               g.kernel[-1])
    w5 = w.reshape((groups, cin_g, cout_g, outer, taps_last))
    if w.size * RESULT_PER_WEIGHT > outer * g.c_out * width:
        return np.ascontiguousarray(w5.transpose(0, 4, 1, 2, 3)).reshape(
            groups, taps_last * cin_g, cout_g * outer).swapaxes(1, 2), True
    return np.ascontiguousarray(w5.transpose(0, 3, 2, 4, 1)).reshape(
        groups, outer * cout_g, taps_last * cin_g), False


def compute(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, g: Geometry,
            y: np.ndarray, budget: int) -> None:
    """``y`` (nb, C_out, *out), a possibly strided view, = the transposed convolution of
    ``x`` (nb, C_in, *in); ``w`` the weight (C_in, C_out/G, *kernel), contiguous, in the
    compute type; temporaries within ``budget`` bytes (see :func:`applies`)."""
    from .numpy_backend import _reach, _scratch  # the backend imports this module

    groups, cin_g, cout_g, rank = g.groups, g.c_in_per_group, g.c_out_per_group, g.rank
    compute_dtype, taps_last = w.dtype, g.kernel[-1]
    outer, cols_per_sample = math.prod(g.kernel[:-1]), columns(g)
    direct = accumulates_in_place(y, compute_dtype)
    chunk = min(g.batch, max(1, budget // compute_dtype.itemsize // per_sample(g, direct)))
    lhs, channels_outer = _rows(w, g, chunk * cols_per_sample)
    row_shape = g.in_size[:-1] + (g.out_size[-1],)
    scratch = _scratch(per_sample(g, direct) * chunk * compute_dtype.itemsize).view(
        compute_dtype)
    found = blocks(g)
    w_in, w_out = g.in_size[-1], g.out_size[-1]
    axes = (1, 2, 0) + tuple(range(3, 3 + rank))  # (nb, G, C, ...) -> (G, C, nb, ...)
    for n0 in range(0, g.batch, chunk):
        nb = min(chunk, g.batch - n0)
        width = nb * cols_per_sample
        sizes = (taps_last * g.c_in * width, outer * g.c_out * width)
        copies = scratch[:sizes[0]].reshape((groups, taps_last, cin_g, nb) + row_shape)
        cols = scratch[sizes[0]:sum(sizes)].reshape(groups, outer * cout_g, width)
        # (G, C_out/G, nb, *out): a view of y, or scratch copied into y at the end
        acc = y[n0:n0 + nb].reshape((nb, groups, cout_g) + g.out_size).transpose(axes) \
            if direct else \
            scratch[sum(sizes):sum(sizes) + g.c_out * nb * math.prod(g.out_size)].reshape(
                (groups, cout_g, nb) + g.out_size)
        src = x[n0:n0 + nb].reshape((nb, groups, cin_g) + g.in_size).transpose(axes)
        for t in range(taps_last):
            q = t * g.dilation[-1] - g.padding[-1]  # output minus input index (stride 1)
            dst, reach = copies[:, t], _reach(q, w_in, w_out)
            if reach is None:  # the tap moves every input out of the output
                dst[...] = 0
                continue
            if w_out <= FILL_ROW_MAX and reach.stop - reach.start < w_out:
                # Zeroing the ends writes a run of one or two elements per row: on short
                # rows one contiguous fill of the whole copy costs less.
                dst[...] = 0
            else:
                dst[..., :reach.start] = 0
                dst[..., reach.stop:] = 0
            dst[..., reach] = src[..., reach.start - q:reach.stop - q]
        if cin_g * taps_last == 1:  # an outer product: no GEMM per group
            np.multiply(lhs, copies.reshape(groups, 1, width), out=cols)
        else:
            np.matmul(lhs, copies.reshape(groups, taps_last * cin_g, width), out=cols)
        acc[...] = 0 if bias is None else \
            bias.astype(compute_dtype).reshape((groups, cout_g, 1) + (1,) * rank)
        # (G, other taps, C_out/G, nb, *rows), as a view
        blocks_view = cols.reshape((groups, cout_g, outer, nb) + row_shape).swapaxes(1, 2) \
            if channels_outer else cols.reshape((groups, outer, cout_g, nb) + row_shape)
        lead = (slice(None),) * 3
        for j, slices in enumerate(found):
            if slices is not None:
                acc[lead + slices[1]] += blocks_view[(slice(None), j) + lead[1:] + slices[0]]
        if not direct:  # (C_out, nb, *out) -> (nb, C_out, *out); rounds to float16 here
            np.copyto(y[n0:n0 + nb], acc.reshape((g.c_out, nb) + g.out_size).swapaxes(0, 1),
                      casting="unsafe")
