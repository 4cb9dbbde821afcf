"""The ``col2im`` formulations of the NumPy backend: one GEMM over the input pixels, then
each tap's block added (or, where taps never overlap, copied) straight into the output.

With ``K`` taps, the GEMM is ``(C*K x C_in/G)`` by ``(C_in/G x nb*pixels)`` per group,
for ``C <= C_out/G`` output channels at a time (all of them when they fit the budget;
their weight rows lie contiguous, so BLAS reads the weight as it is, and only where one
channel's taps do not fit does a GEMM take a range of taps): the columns are the input's
pixels only, however large the kernel, the stride or the output, with the batch folded
in, so a small image with many channels is one GEMM over the whole batch with no padding
at all, and a layer with many taps and few channels holds only a few channels' results.
Tap ``k`` then sends input ``i`` to output ``o = i*stride + k*dilation - padding``: its
block, restricted to the inputs that land in the output, is added into the output's
strided slice (``y[o(i, k)] += cols[k, i]``), taps in a fixed order.
:func:`compute_channels_last` (``col2im_cl``) is the transposed GEMM, channels
innermost, for images whose rows are too short for efficient strided additions.

Where no two taps reach the same output (``kernel <= stride / gcd(stride, dilation)``
along every dimension; ``kernel == stride`` without padding is the pixel shuffle of
sub-pixel convolution) each block is copied into place instead, and the output is
initialized only if some of it is reached by no tap.

The layouts differ from the phase formulations' (no shared frame, N-D strided slices),
so the additions cost more per element on large images; the cost model in
:func:`gpu_tconv.numpy_backend.choose_method` weighs that.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from .geometry import Geometry
from .numpy_backward import _tap_slices


@functools.lru_cache(maxsize=512)
def _reach(g: Geometry) -> tuple:
    """Per tap (row-major), the inputs it reaches and their outputs (see
    ``numpy_backward._tap_slices``), or None; pure shape arithmetic, cached (a 7x7x7
    kernel has 343 taps, whose slices take a millisecond to build)."""
    return tuple(_tap_slices(g, tap) for tap in itertools.product(*map(range, g.kernel)))


def disjoint(g: Geometry) -> bool:
    """Whether no two taps reach the same output: along every dimension the taps'
    offsets ``k*dilation`` fall in distinct residues modulo the stride."""
    return all(k <= s // math.gcd(s, d) for k, s, d in zip(g.kernel, g.stride, g.dilation))


@functools.lru_cache(maxsize=512)
def covers(g: Geometry) -> bool:
    """Whether the taps, together, reach every output (counted with multiplicity, so this
    says it only for :func:`disjoint` taps)."""
    reached = sum(math.prod(len(range(n)[o]) for o, n in zip(slices[1], g.out_size))
                  for slices in _reach(g) if slices is not None)
    return reached >= math.prod(g.out_size)


def per_sample(g: Geometry, columns: int) -> int:
    """Elements of temporaries per sample with ``columns`` (channel, tap) pairs of every
    group per GEMM: the input's copy and the GEMM's result."""
    return math.prod(g.in_size) * (g.c_in + columns * g.groups)


def per_sample_channels_last(g: Geometry, columns: int) -> int:
    """Elements of temporaries per sample of :func:`compute_channels_last`: those of
    :func:`per_sample` and the output's accumulator."""
    return per_sample(g, columns) + g.c_out * math.prod(g.out_size)


def applies(g: Geometry, dtype: np.dtype, compute_dtype: np.dtype, budget: int) -> bool:
    """Whether this formulation can compute ``g``: one sample and one tap of one channel
    fit ``budget`` bytes (else the phase formulations, which can split the output into
    boxes, take the layer), and, where the output is rounded from the compute type
    (float16), every output is one tap's (the sums of overlapping taps are added in the
    output itself)."""
    return per_sample(g, 1) * compute_dtype.itemsize <= budget and (
        dtype == compute_dtype or disjoint(g))


def applies_channels_last(g: Geometry, compute_dtype: np.dtype, budget: int) -> bool:
    """Whether :func:`compute_channels_last` can compute ``g``: one sample, one tap of
    one channel and the output's accumulator fit ``budget`` bytes (it accumulates in the
    compute type and rounds once, so float16 sums of overlapping taps are fine)."""
    return per_sample_channels_last(g, 1) * compute_dtype.itemsize <= budget


#: Bytes of GEMM results held at once beyond the output's own size (within the budget):
#: a tiny image's taps all go in one GEMM, a large image with many taps and few
#: channels holds only a few channels' blocks (not K copies of the output) at a time.
#: Large, because col2im_cl's additions run over a GEMM's channels: KernelBench 68's
#: 64 channels in 3 GEMMs of 21 took 12 to 19 ms, in one GEMM 8 ms.
SMALL_COLS_BYTES = 24 * 2**20


@functools.lru_cache(maxsize=512)
def gemm_chunks(g: Geometry, itemsize: int, budget: int, extra: int = 0) -> tuple:
    """The GEMMs of a batch chunk as ``(channels, taps)`` ranges per group, and the
    samples per batch chunk. Each GEMM's result holds about the output's size (or
    :data:`SMALL_COLS_BYTES`) at most, and one sample of it, with the input's copy and
    ``extra`` elements per sample, fits ``budget``. A GEMM takes every tap of a range of
    output channels, whose weight columns lie contiguous (no copy of the weight); only
    where one channel's taps do not fit does it take a range of taps of one channel."""
    pixels, taps, cout_g = math.prod(g.in_size), math.prod(g.kernel), g.c_out_per_group
    fit = (budget // itemsize - extra) // pixels - g.c_in  # (channel, tap) pairs, all groups
    output = max(g.batch * g.c_out * math.prod(g.out_size), SMALL_COLS_BYTES // itemsize)
    columns = max(1, min(fit, -(-output // (g.batch * pixels)) // g.groups))
    if columns >= taps:
        step = min(cout_g, columns // taps)
        chunks = tuple((range(c, min(cout_g, c + step)), range(taps))
                       for c in range(0, cout_g, step))
    else:
        chunks = tuple((range(c, c + 1), range(t, min(taps, t + columns)))
                       for c in range(cout_g) for t in range(0, taps, columns))
    width = max(len(c) * len(t) for c, t in chunks)
    samples = budget // itemsize // (per_sample(g, width) + extra)
    return chunks, min(g.batch, max(1, samples))


def _weight_columns(w4: np.ndarray, channels: range, taps: range) -> np.ndarray:
    """(G, C_in/G, channels*taps), columns (channel, tap): a view when every tap is
    taken (the weight's own layout), else a copy of one channel's range of taps."""
    if len(taps) == w4.shape[-1]:
        return w4[:, :, channels.start:channels.stop].reshape(w4.shape[0], w4.shape[1], -1)
    return np.ascontiguousarray(w4[:, :, channels.start, taps.start:taps.stop])


def compute(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, g: Geometry,
            y: np.ndarray, budget: int) -> None:
    """``y`` (nb, C_out, *out), a possibly strided view, = the transposed convolution of
    ``x`` (nb, C_in, *in); ``w`` the weight (C_in, C_out/G, *kernel), contiguous, in the
    compute type; temporaries within ``budget`` bytes (see :func:`applies`).

    Per group, ``(channels*taps x C_in/G)`` (the weight read transposed by BLAS as it
    lies) by ``(C_in/G x nb*pixels)``: each tap's block is a (channels, nb, *in) slab,
    pixels innermost, added a few samples at a time where the output exceeds a core's
    cache (:data:`COL2IM_BLOCK_BYTES`)."""
    from .numpy_backend import _scratch  # the backend imports this module

    groups, cin_g, cout_g, rank = g.groups, g.c_in_per_group, g.c_out_per_group, g.rank
    reach, compute_dtype, pixels = _reach(g), w.dtype, math.prod(g.in_size)
    chunks, chunk = gemm_chunks(g, compute_dtype.itemsize, budget)
    w4 = w.reshape(groups, cin_g, cout_g, -1)
    y5 = y.reshape((g.batch, groups, cout_g) + g.out_size)
    copy = disjoint(g)
    if not copy or not covers(g):
        y[...] = 0 if bias is None else bias.reshape((g.c_out,) + (1,) * rank)
    # Copied blocks carry the bias themselves (one rounding to y's type, and the
    # outputs no tap reaches keep the bias written above).
    bias_rows = None if bias is None or not copy else \
        bias.astype(compute_dtype).reshape(groups, cout_g, 1, 1)
    if not any(reach):
        return
    width_max = max(len(c) * len(t) for c, t in chunks)
    scratch = _scratch(per_sample(g, width_max) * chunk * compute_dtype.itemsize).view(
        compute_dtype)
    axes = (2, 0, 1) + tuple(range(3, 3 + rank))  # np.moveaxis(., 2, 0), without its cost
    for n0 in range(0, g.batch, chunk):
        nb = min(chunk, g.batch - n0)
        width = nb * pixels
        x_cols = scratch[:g.c_in * width].reshape(groups, cin_g, width)
        # (G, C_in/G, nb, *in) <- (nb, G, C_in/G, *in): the batch folded into the columns.
        np.copyto(x_cols.reshape((groups, cin_g, nb) + g.in_size),
                  x[n0:n0 + nb].reshape((nb, groups, cin_g) + g.in_size)
                  .transpose((1, 2, 0) + tuple(range(3, 3 + rank))))
        for channels, taps in chunks:
            if not any(reach[taps.start:taps.stop]):
                continue
            rows = _weight_columns(w4, channels, taps).swapaxes(1, 2)
            n_rows = len(channels) * len(taps)
            cols = scratch[g.c_in * width:(g.c_in + groups * n_rows) * width].reshape(
                groups, n_rows, width)
            if cin_g == 1:  # an outer product: no GEMM per group
                np.multiply(rows, x_cols, out=cols)
            else:
                np.matmul(rows, x_cols, out=cols)
            if bias_rows is not None:
                cols.reshape(groups, len(channels), len(taps), width)[...] += \
                    bias_rows[:, channels.start:channels.stop]
            blocks = cols.reshape((groups, len(channels), len(taps), nb) + g.in_size)
            step = _samples_per_block(nb, groups * len(channels), g, y.itemsize)
            for s0 in range(0, nb, step):
                samples = slice(s0, min(nb, s0 + step))
                out = y5[n0 + samples.start:n0 + samples.stop, :, channels.start:channels.stop]
                for j, found in enumerate(reach[taps.start:taps.stop]):
                    if found is not None:
                        # (G, channels, nb, *in) -> (nb, G, channels, *in)
                        _place(out, (slice(None),) * 3 + found[1],
                               blocks[(slice(None), slice(None), j, samples) + found[0]]
                               .transpose(axes), copy)


#: Bytes of output :func:`compute` adds every tap into before it moves on to the next
#: samples: about a core's L2 cache, so that each tap's strided additions find the
#: output's lines there, not in memory (sweep 18, 5 x 4 x 280 x 655 outputs: 4.7 to
#: 3.1 ms; sweep 28, 923 depthwise channels: 4.6 to 4.0), unless that makes additions of
#: fewer than :data:`COL2IM_BLOCK_MIN_ADDS` elements, whose calls' overhead would cost
#: more than the cache saves (a 4x4x4 kernel on 15x2x9 inputs, 17 channels: 10% slower
#: with 16 Ki).
COL2IM_BLOCK_BYTES = 2**20
COL2IM_BLOCK_MIN_ADDS = 2**15


def _samples_per_block(nb: int, channels: int, g: Geometry, itemsize: int) -> int:
    """Samples of a batch chunk of ``nb`` whose outputs (``channels`` of every group)
    every tap is added into before the next samples' (see :data:`COL2IM_BLOCK_BYTES`),
    spread evenly over the blocks."""
    step = max(1, COL2IM_BLOCK_BYTES // (channels * math.prod(g.out_size) * itemsize),
               -(-COL2IM_BLOCK_MIN_ADDS // (channels * math.prod(g.in_size))))
    return -(-nb // -(-nb // step))


def reorders_weight(g: Geometry) -> bool:
    """Whether :func:`compute_channels_last` copies the weight transposed. Its GEMM
    leaves a tap's channels either with the taps' stride (the weight's own order: no
    copy of it, but the additions read one element per cache line) or contiguous
    (columns (tap, channel), or on many pixels a batched GEMM per few taps, see
    :func:`_add_tap_blocks`: a transposing copy of the weight, which costs about what
    strided reading costs per element). It reorders when the additions outnumber the
    weight's elements, i.e. the GEMM has more columns (batch x pixels) than rows."""
    return g.batch * math.prod(g.in_size) >= g.c_in_per_group


def compute_channels_last(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                          g: Geometry, y: np.ndarray, budget: int) -> None:
    """:func:`compute` with the channels innermost: per group, ``(nb*pixels x C_in/G)``
    by ``(C_in/G x channels*taps)`` (or per tap, see :func:`reorders_weight`), so each
    tap's block is added into a channels-last accumulator in runs of channels instead
    of runs of one input row. On tiny images
    with many channels (a 4x4x4 volume, an 8x8 image) the rows are a few elements long
    and the per-run cost of NumPy's strided loops is what decides; channel runs are
    hundreds long. The accumulator
    is ``y`` itself when ``y`` is a channels-last view of the compute type, else scratch
    copied into ``y`` once at the end (one rounding for float16)."""
    from .numpy_backend import _scratch  # the backend imports this module

    groups, cin_g, cout_g, rank = g.groups, g.c_in_per_group, g.c_out_per_group, g.rank
    reach, compute_dtype = _reach(g), w.dtype
    pixels, outputs = math.prod(g.in_size), math.prod(g.out_size)
    y_cl = np.moveaxis(y, 1, -1)  # (nb, *out, C_out)
    direct = y_cl.strides[-1] == y.itemsize and y.dtype == compute_dtype
    acc_size = 0 if direct else g.c_out * outputs
    chunks, chunk = gemm_chunks(g, compute_dtype.itemsize, budget, acc_size)
    w4 = w.reshape(groups, cin_g, cout_g, -1)
    copy = disjoint(g)
    fill = not copy or not covers(g)
    bias_row = None if bias is None else bias.astype(compute_dtype).reshape(groups, 1, cout_g, 1)
    width_max = max(len(c) * len(t) for c, t in chunks)
    scratch = _scratch((per_sample(g, width_max) + acc_size) * chunk
                       * compute_dtype.itemsize).view(compute_dtype)
    axes = tuple(range(1, 2 + rank)) + (0, 2 + rank)  # np.moveaxis(., 0, -2), without its cost
    reorder = reorders_weight(g)
    for n0 in range(0, g.batch, chunk):
        nb = min(chunk, g.batch - n0)
        width = nb * pixels
        x_rows = scratch[:g.c_in * width].reshape(groups, width, cin_g)
        # (G, nb, *in, C_in/G) <- (nb, G, C_in/G, *in)
        np.copyto(x_rows.reshape((groups, nb) + g.in_size + (cin_g,)),
                  x[n0:n0 + nb].reshape((nb, groups, cin_g) + g.in_size)
                  .transpose((1, 0) + tuple(range(3, 3 + rank)) + (2,)))
        cols_end = g.c_in * width + groups * width_max * width
        acc = y_cl[n0:n0 + nb] if direct else \
            scratch[cols_end:cols_end + nb * g.c_out * outputs].reshape(
                (nb,) + g.out_size + (g.c_out,))
        if fill:
            acc[...] = 0 if bias is None else bias
        acc5 = acc.reshape((nb,) + g.out_size + (groups, cout_g))
        for channels, taps in chunks:
            if not any(reach[taps.start:taps.stop]):
                continue
            rhs = _weight_columns(w4, channels, taps)
            if reorder and width >= TAP_GEMM_MIN_ROWS:
                _add_tap_blocks(x_rows, rhs, scratch[g.c_in * width:], reach, taps,
                                acc5[..., channels.start:channels.stop], g, nb, copy,
                                None if bias_row is None or not copy else
                                bias_row[:, :, channels.start:channels.stop])
                continue
            n_cols = len(channels) * len(taps)
            cols = scratch[g.c_in * width:g.c_in * width + groups * n_cols * width]\
                .reshape(groups, width, n_cols)
            if reorder:  # columns (tap, channel): a transposing copy of the weight's range
                rhs = np.ascontiguousarray(rhs.reshape(groups, cin_g, len(channels), -1)
                                           .swapaxes(2, 3)).reshape(groups, cin_g, -1)
            if cin_g == 1:  # an outer product: no GEMM per group
                np.multiply(x_rows, rhs, out=cols)
            else:
                np.matmul(x_rows, rhs, out=cols)
            shape = (len(taps), len(channels)) if reorder else (len(channels), len(taps))
            blocks = cols.reshape((groups, nb) + g.in_size + shape)
            if reorder:
                blocks = blocks.swapaxes(-1, -2)  # (..., channels, taps) as a view
            if copy and bias_row is not None:
                blocks += bias_row[:, :, channels.start:channels.stop].reshape(
                    (groups,) + (1,) * (rank + 1) + (len(channels), 1))
            out = acc5[..., channels.start:channels.stop]
            for j, found in enumerate(reach[taps.start:taps.stop]):
                if found is not None:
                    # (G, nb, *in, channels) -> (nb, *in, G, channels)
                    _place(out, (slice(None),) + found[1],
                           blocks[(slice(None),) * 2 + found[0] + (slice(None), j)]
                           .transpose(axes), copy)
        if not direct:
            np.copyto(y_cl[n0:n0 + nb], acc, casting="unsafe")


#: Bytes of one batched GEMM's result in :func:`_add_tap_blocks` (a few taps' blocks):
#: its additions read it back while it is still in a core's L2 cache, instead of from
#: memory after a GEMM over every tap.
TAP_BLOCK_BYTES = 2**20

#: Rows (batch x pixels) from which col2im_cl multiplies tap by tap
#: (:func:`_add_tap_blocks`): fewer make GEMMs too small for BLAS (the 125 taps of a
#: 5x5x5 kernel on two 4x4x4 volumes took 12 ms that way, 7 ms in one GEMM).
TAP_GEMM_MIN_ROWS = 512


def _place(out: np.ndarray, where: tuple, src: np.ndarray, copy: bool) -> None:
    """Add a tap's block ``src`` into ``out[where]``, or copy it there where taps never
    overlap (every output is one tap's)."""
    if copy:
        out[where] = src
    else:
        out[where] += src


def _add_tap_blocks(x_rows: np.ndarray, rhs: np.ndarray, scratch: np.ndarray, reach: tuple,
                    taps: range, out: np.ndarray, g: Geometry, nb: int, copy: bool,
                    bias: np.ndarray | None) -> None:
    """col2im_cl's GEMMs as one batched GEMM per few taps: ``x_rows`` (G, nb*pixels,
    C_in/G) by each tap's (C_in/G x channels) weight, into (G, taps, nb*pixels,
    channels), so that each tap's block is contiguous, runs of channels merged along
    the input's last dimension, and still in cache when it is added into ``out`` (nb,
    *out, G, channels). ``rhs`` is the weight's columns (G, C_in/G, channels*taps),
    (channel, tap); ``bias`` (G, 1, channels, 1) is added to copied blocks."""
    groups, width, cin_g = x_rows.shape
    n_ch = rhs.shape[-1] // len(taps)
    # (G, taps, C_in/G, channels): one transposing copy of the weight's range
    per_tap = np.ascontiguousarray(rhs.reshape(groups, cin_g, n_ch, len(taps))
                                   .transpose(0, 3, 1, 2))
    step = max(1, min(len(taps), TAP_BLOCK_BYTES // (groups * width * n_ch * x_rows.itemsize)))
    axes = tuple(range(1, 2 + g.rank)) + (0, 2 + g.rank)  # (G, nb, *in, ch) -> (nb, *in, G, ch)
    lhs = x_rows[:, None]
    for t0 in range(0, len(taps), step):
        found = reach[taps.start + t0:taps.start + min(len(taps), t0 + step)]
        if not any(found):
            continue
        cols = scratch[:groups * len(found) * width * n_ch].reshape(
            groups, len(found), width, n_ch)
        if cin_g == 1:  # an outer product: no GEMM per group and tap
            np.multiply(lhs, per_tap[:, t0:t0 + len(found)], out=cols)
        else:
            np.matmul(lhs, per_tap[:, t0:t0 + len(found)], out=cols)
        if bias is not None:
            cols += bias.reshape(groups, 1, 1, n_ch)
        blocks = cols.reshape((groups, len(found), nb) + g.in_size + (n_ch,))
        for j, slices in enumerate(found):
            if slices is not None:
                _place(out, (slice(None),) + slices[1],
                       blocks[(slice(None), j, slice(None)) + slices[0]].transpose(axes), copy)
