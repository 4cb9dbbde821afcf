"""The ``windows`` formulation of the NumPy backend: grouped and depthwise layers.

Along each dimension, with ``s`` the stride and ``p`` the padding, output ``o`` lies in
block ``j = (o + p % s) // s`` at phase ``r = (o + p % s) % s``. Tap ``t`` sends input
``i`` to ``o = i*s + t*dilation - p``, so with the kernel's effective offsets
``e = t*dilation`` zero-padded to ``Q`` whole strides, ``e = q*s + r``, block ``j`` is
reached by inputs ``j - q + p // s`` for ``q`` in ``0..Q-1`` only:

    y[n, g, m, j*s + r - p % s] = sum_{c, q} x[n, g, c, j - q + p // s] * W[g, c, m, q*s + r]

(every dimension at once: ``q`` and ``r`` range over all of them). Per group, that is
one GEMM whose rows are the blocks (``J`` of them), whose inner dimension is the input
channels times the window (``C_in/G * Q``, read from one copy of the input laid out as
windows) and whose columns are the output channels times the phases (``C_out/G * S``).

Its result is the output with its block and phase axes apart: no accumulator, no
addition. In 1-D it is the output's own layout, ``(C_out/G, J, S)``; there each output
channel's GEMM takes rows of ``L`` blocks (:func:`row_blocks`; a row's window is
``Q + L - 1`` inputs, its columns ``L*S`` phases), so that a GEMM of few columns
(depthwise: ``S``) is made wider, and the result is copied into the output in one run
per channel, the blocks cut by either end of it included. In 2-D and 3-D the GEMM is
computed as ``(C_out/G * S, J)`` and each phase copied into the output with runs as
long as the blocks' rows. This suits layers
whose GEMMs are small and many (depthwise, grouped), where the other formulations'
NumPy calls, additions and phase interleaving dominate, and strided layers of one group
with few input channels and many taps, whose one GEMM it makes tall instead of a GEMM
of a few output channels' rows per phase (sweep 16 of the CPU benchmark, 3-D k3x6x5 s2
with 2 > 21 channels: 2.2 ms against gather's 4.2). It multiplies the zeros of the
padded window (``Q*S`` positions for ``prod(kernel)`` taps); its temporaries (the
padded input, its windows, the GEMM's result) live in the backend's scratch memory.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import cpu_threads
from .geometry import Geometry


def _dims(g: Geometry) -> list[tuple[int, int, int, int]]:
    """Per dimension: ``(off, Q, J, base)``: the outputs block 0 has before output 0
    (``p % s``: the blocks start where the padding ends, so that the window is as short
    as the kernel allows), the window in strides, the blocks (enough to cover the
    output) and the input index of block 0's window start, ``p // s - (Q-1)``."""
    out = []
    for k, s, d, p, n_out in zip(g.kernel, g.stride, g.dilation, g.padding, g.out_size):
        window = -(-((k - 1) * d + 1) // s)
        out.append((p % s, window, -(-(n_out + p % s) // s), p // s - (window - 1)))
    return out


def window_weight(w: np.ndarray, g: Geometry) -> np.ndarray:
    """The GEMMs' right-hand side, ``(G, C_in/G * Q.., C_out/G * S..)``, from the weight
    ``(G, C_in/G, C_out/G, *kernel)``: the window's position ``Q-1-q`` (the windows run
    along the input, ``q`` against it) and phase ``r`` hold tap ``t`` where
    ``t*dilation = q*s + r``, zeros elsewhere."""
    dims = _dims(g)
    shape = tuple(q * s for (_, q, _, _), s in zip(dims, g.stride))
    full = np.zeros(w.shape[:3] + shape, w.dtype)
    full[(Ellipsis,) + tuple(slice(0, (k - 1) * d + 1, d)
                             for k, d in zip(g.kernel, g.dilation))] = w
    split = full.reshape(w.shape[:3] + tuple(x for (_, q, _, _), s in zip(dims, g.stride)
                                             for x in (q, s)))
    split = split[(Ellipsis,) + tuple(x for _ in dims for x in (slice(None, None, -1),
                                                                 slice(None)))]
    r = g.rank
    axes = (0, 1) + tuple(3 + 2 * i for i in range(r)) + (2,) \
        + tuple(4 + 2 * i for i in range(r))
    return np.ascontiguousarray(split.transpose(axes)).reshape(
        g.groups, g.c_in_per_group * math.prod(q for _, q, _, _ in dims),
        g.c_out_per_group * math.prod(g.stride))


#: Columns (output channels x phases) a 1-D GEMM of windows should have at least: rows
#: of ``L`` blocks each (:func:`row_blocks`) make GEMMs of few columns wider. Depthwise
#: k8 s4 (1024 x 2 x 4 per channel) took 1.75 ms in OpenBLAS, with rows of 4 blocks
#: (256 x 5 x 16) 0.86 ms, of 2 or 8 blocks about 1.0 ms, of 32 2.6 ms.
ROW_COLUMNS = 16


def row_blocks(g: Geometry) -> int:
    """Blocks per row of the 1-D GEMMs, ``L``: the smallest power of 2 that gives the
    GEMM :data:`ROW_COLUMNS` columns, while the window it reads (``Q + L - 1``
    positions, against ``Q`` for one block) stays within 2.5 times ``Q``, or 8
    elements."""
    q, cols = _dims(g)[0][1], g.c_out_per_group * g.stride[0]
    blocks = 1
    while cols * blocks < ROW_COLUMNS and (q + 2 * blocks - 1 <= 2.5 * q
                                          or g.c_in_per_group * (q + 2 * blocks - 1) <= 8):
        blocks *= 2
    return blocks


def _unit(g: Geometry) -> int:
    """Blocks the first dimension's steps take a multiple of: 1-D rows' blocks."""
    return row_blocks(g) if g.rank == 1 else 1


def row_weight(wm: np.ndarray, g: Geometry, blocks: int) -> np.ndarray:
    """The 1-D GEMMs' right-hand side for rows of ``blocks`` blocks, (G, C_out/G,
    C_in/G * (Q + L - 1), L * S), from :func:`window_weight`'s ``wm``: block ``l`` of a
    row reads window positions ``l .. l + Q - 1`` of the row's window."""
    gb, (ci, m, s), q = wm.shape[0], (g.c_in_per_group, g.c_out_per_group, g.stride[0]), \
        _dims(g)[0][1]
    w5 = wm.reshape(gb, ci, q, m, s).transpose(0, 3, 1, 2, 4)  # (G, m, C_in/G, Q, S)
    full = np.zeros((gb, m, ci, q + blocks - 1, blocks, s), wm.dtype)
    for l in range(blocks):
        full[:, :, :, l:l + q, l] = w5
    return full.reshape(gb, m, ci * (q + blocks - 1), blocks * s)


def sizes(g: Geometry) -> tuple[int, int, float, int]:
    """Per sample: the padded input's pixels, the blocks, the window's positions per
    block (the GEMMs' inner dimension per input channel, ``(Q + L - 1) / L`` in 1-D with
    rows of ``L`` blocks) and the runs along the last dimension its copies make (the
    blocks, or in 1-D the rows)."""
    dims = _dims(g)
    blocks = math.prod(j for _, _, j, _ in dims)
    if g.rank == 1:
        size, (_, q, j, _) = row_blocks(g), dims[0]
        return j + q - 1, blocks, (q + size - 1) / size, -(-j // size)
    return (math.prod(j + q - 1 for _, q, j, _ in dims), blocks,
            math.prod(q for _, q, _, _ in dims), dims[-1][2])


def temp_elements(g: Geometry, samples: int, groups: int, rows: int) -> int:
    """Elements of the temporaries for ``samples`` samples, ``groups`` groups and
    ``rows`` blocks along the first dimension: the padded input, its windows and the
    GEMM's result."""
    dims = _dims(g)
    rows = -(-rows // _unit(g)) * _unit(g)
    blocks = rows * math.prod(j for _, _, j, _ in dims[1:])
    padded = (rows + dims[0][1] - 1) * math.prod(j + q - 1 for _, q, j, _ in dims[1:])
    window = math.prod(q for _, q, _, _ in dims)
    per = g.c_in_per_group * (padded + blocks * window) \
        + g.c_out_per_group * blocks * math.prod(g.stride)
    return samples * groups * per


def applies(g: Geometry, itemsize: int, budget: int) -> bool:
    """Grouped layers, and layers of one group with a stride above 1 somewhere (with
    stride 1 everywhere the window is the whole kernel, im2col, which stacked computes
    with less padding), whose temporaries for one block row of one group of one sample
    fit a part's share of ``budget``."""
    return (g.groups > 1 or any(s > 1 for s in g.stride)) and \
        temp_elements(g, 1, 1, 1) * itemsize <= budget // parts(g)


def _chunks(g: Geometry, itemsize: int, budget: int) -> tuple[int, int, int]:
    """Samples, groups and first-dimension blocks per step, within ``budget`` bytes."""
    rows, unit = _dims(g)[0][2], _unit(g)
    limit = max(1, budget // itemsize)
    if temp_elements(g, 1, 1, rows) > limit:
        first = temp_elements(g, 1, 1, unit)
        per_unit = temp_elements(g, 1, 1, 2 * unit) - first
        return 1, 1, unit * max(1, (limit - first) // max(per_unit, 1) + 1)
    if temp_elements(g, 1, g.groups, rows) > limit:
        return 1, max(1, limit // temp_elements(g, 1, 1, rows)), rows
    return min(g.batch, max(1, limit // temp_elements(g, 1, g.groups, rows))), g.groups, rows


def steps(g: Geometry, itemsize: int, budget: int) -> int:
    """The steps :func:`compute` takes within ``budget``."""
    samples, groups, rows = _chunks(g, itemsize, budget)
    return (-(-g.batch // samples)) * (-(-g.groups // groups)) * (-(-_dims(g)[0][2] // rows))


#: Outputs of a call from which its groups are split between the cores (each part with
#: BLAS on one core): its GEMMs are too small for BLAS to share them, and its copies run
#: on one core. On the grouped benchmark layers two parts took 0.46 to 0.94 of the time
#: of one (median 0.65) from 1 Mi outputs, and up to twice the time below.
PARALLEL_MIN_OUTPUTS = 2**20

#: What two parts cost of the time in one, in the cost model (the median above).
PARALLEL_TIME = 0.65


def parts(g: Geometry) -> int:
    """Parts of the groups computed at once, one per core."""
    if g.batch * g.c_out * math.prod(g.out_size) < PARALLEL_MIN_OUTPUTS:
        return 1
    return max(1, min(g.groups, cpu_threads.blas_threads()))


def compute(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, g: Geometry,
            y: np.ndarray, budget: int) -> None:
    """``y`` (N, C_out, *out) from ``x`` (N, C_in, *in) and ``w`` (G, C_in/G, C_out/G,
    *kernel), in steps of samples, groups and blocks of the first dimension, whose
    temporaries live in the backend's scratch memory; large calls split their groups
    between the cores (:func:`parts`)."""
    wm = window_weight(w, g)
    ci, m, r = g.c_in_per_group, g.c_out_per_group, g.rank
    xg = x.reshape((x.shape[0], g.groups, ci) + x.shape[2:])
    yg = _split(y, (y.shape[0], g.groups, m) + y.shape[2:])
    b = None if bias is None else bias.reshape((g.groups, m) + (1,) * (2 * r))
    # 1-D: the GEMMs' right-hand side for rows of L blocks
    w_rows = None if r > 1 else row_weight(wm, g, row_blocks(g))
    n = parts(g)
    ranges = [slice(g.groups * k // n, g.groups * (k + 1) // n) for k in range(n)]
    cpu_threads.run_pieces([functools.partial(
        _part, xg[:, gs], wm[gs], None if w_rows is None else w_rows[gs],
        None if b is None else b[gs], g, yg[:, gs], budget // n)
        for gs in ranges], n)


def _part(xg, wm, w_rows, b, g: Geometry, yg, budget: int) -> None:
    """Groups ``xg`` (N, G', C_in/G, *in) into ``yg`` (N, G', C_out/G, *out), in steps;
    ``w_rows``: in 1-D, :func:`row_weight`'s right-hand side, else None."""
    from .numpy_backend import _scratch  # the backend imports this module
    g = replace(g, groups=xg.shape[1], c_in=xg.shape[1] * g.c_in_per_group,
                c_out=xg.shape[1] * g.c_out_per_group)
    dims = _dims(g)
    samples, groups, rows = _chunks(g, wm.itemsize, budget)
    scratch = _scratch(temp_elements(g, samples, groups, rows) * wm.itemsize).view(wm.dtype)
    for n0 in range(0, xg.shape[0], samples):
        for g0 in range(0, g.groups, groups):
            gs = slice(g0, g0 + groups)
            for a0 in range(0, dims[0][2], rows):
                spans = [(a0, min(a0 + rows, dims[0][2]))] + [(0, j) for _, _, j, _ in dims[1:]]
                _step(xg[n0:n0 + samples, gs], wm[gs],
                      None if w_rows is None else w_rows[gs],
                      None if b is None else b[gs], g, yg[n0:n0 + samples, gs], dims, spans,
                      scratch)


def _padded(xs: np.ndarray, g: Geometry, dims, spans,
            scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The input the blocks ``spans`` read, zero-padded, (n, G, C_in/G, J.. + Q.. - 1),
    in ``scratch``; and the rest of ``scratch``, free."""
    blocks = tuple(hi - lo for lo, hi in spans)
    q = tuple(q for _, q, _, _ in dims)
    shape = xs.shape[:3] + tuple(n + k - 1 for n, k in zip(blocks, q))
    padded = scratch[:math.prod(shape)].reshape(shape)
    padded.fill(0)
    dst, src = [], []
    for (lo, hi), (_, k, _, base), n_in in zip(spans, dims, g.in_size):
        start = lo + base  # the input index of the padded array's first position
        first, last = max(start, 0), min(start + hi - lo + k - 1, n_in)
        dst.append(slice(first - start, max(last - start, first - start)))
        src.append(slice(first, max(last, first)))
    padded[(Ellipsis,) + tuple(dst)] = xs[(Ellipsis,) + tuple(src)]
    return padded, scratch[padded.size:]


def _windows(padded: np.ndarray, q: tuple[int, ...],
             scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The windows of ``q`` positions of ``padded`` (n, G, C_in/G, *blocks + q - 1),
    (n, G, C_in/G * Q.., J..), in ``scratch``: one contiguous row of blocks per channel
    and window position, which BLAS reads transposed as it lies (copied the other way
    round, Q innermost, the copy runs 2 to 5 elements at a time); and the rest of
    ``scratch``, free."""
    r = len(q)
    view = sliding_window_view(padded, q, axis=tuple(range(3, 3 + r))).transpose(
        (0, 1, 2) + tuple(range(3 + r, 3 + 2 * r)) + tuple(range(3, 3 + r)))
    windows = scratch[:view.size].reshape(view.shape)
    np.copyto(windows, view)
    return windows.reshape(padded.shape[:2] + (-1, math.prod(view.shape[-r:]))), \
        scratch[view.size:]


def _step(xs, wm, w_rows, b, g: Geometry, ys, dims, spans, scratch) -> None:
    """The blocks ``spans`` of samples ``xs`` (n, G, C_in/G, *in) into ``ys`` (n, G,
    C_out/G, *out), ``wm``, ``w_rows`` and ``b`` those groups' weights and bias."""
    if g.rank > 1:
        padded, free = _padded(xs, g, dims, spans, scratch)
        # at: (n, G, C_in/G * Q, J)
        at, free = _windows(padded, tuple(q for _, q, _, _ in dims), free)
        _gemm_store(at, wm, b, g, ys, dims, spans, free)
        return
    # 1-D: per output channel one GEMM over rows of L blocks each, whose result, (rows,
    # L*S), is the output's own layout: the outputs of the blocks are copied in one run
    # (the blocks cut by either end of the output are in it, as a row's part)
    (lo, hi), s, off = spans[0], g.stride[0], dims[0][0]
    size = w_rows.shape[-1] // s
    n_rows = -(-(hi - lo) // size)
    padded, free = _padded(xs, g, dims, [(lo, lo + n_rows * size)], scratch)
    res = _rows(padded, n_rows, size, w_rows, free)
    first, last = max(lo * s - off, 0), min(hi * s - off, g.out_size[0])
    _add(res[..., first + off - lo * s:last + off - lo * s],
         None if b is None else b[..., 0], ys[..., first:last])


def _rows(padded, n_rows: int, size: int, rhs, free) -> np.ndarray:
    """1-D: the GEMMs of ``n_rows`` rows of ``size`` blocks, the first at ``padded``'s
    start, per output channel the rows' windows, (n_rows x C_in/G * (Q + L - 1)), by
    ``rhs`` (G, m, C_in/G * (Q + L - 1), L*S); their result (n, G, m, n_rows*L*S), in
    ``free``."""
    nb, gb, ci = padded.shape[:3]
    width = rhs.shape[2] // ci
    # (n, G, C_in/G, width, rows): every size-th window of the padded input
    view = sliding_window_view(padded, width, axis=3)[..., ::size, :].swapaxes(-1, -2)
    windows = free[:view.size].reshape(view.shape)
    np.copyto(windows, view)  # runs of rows, which BLAS reads transposed
    lhs = windows.reshape(nb, gb, 1, ci * width, n_rows).swapaxes(-1, -2)
    res = free[view.size:view.size + nb * gb * rhs.shape[1] * n_rows * rhs.shape[3]]
    res = res.reshape(nb, gb, rhs.shape[1], n_rows, rhs.shape[3])
    np.matmul(lhs, rhs, out=res)
    return res.reshape(nb, gb, rhs.shape[1], -1)


def _gemm_store(at, wm, b, g: Geometry, ys, dims, spans, free) -> None:
    """The GEMM of the windows ``at`` (n, G, C_in/G * Q, J) of blocks ``spans``, and its
    result stored into ``ys``; its result in ``free``.

    The result is (n, G, C_out/G * S, J): each output channel's phases as rows of blocks,
    so that each phase is then copied into the output in runs as long as the blocks'
    rows (copying (J, S) as it lies runs S elements at a time: 8 times slower)."""
    nb, gb = at.shape[:2]
    blocks = tuple(hi - lo for lo, hi in spans)
    res = free[:nb * gb * wm.shape[-1] * math.prod(blocks)].reshape(
        nb, gb, wm.shape[-1], math.prod(blocks))
    np.matmul(wm.swapaxes(-1, -2), at, out=res)
    _store(res.reshape((nb, gb, g.c_out_per_group) + g.stride + blocks), ys, b, g, dims,
           spans)


def _pieces(span: tuple[int, int], s: int, off: int, n_out: int) -> list:
    """The blocks ``span`` along one dimension as ``(outputs, blocks, phases)`` slices:
    the whole blocks together, and apart each block cut by the output's start (block 0,
    whose first ``off`` phases lie before output 0) or end."""
    lo, hi = span
    first, last = (1 if off else 0), (n_out + off) // s  # the whole blocks: first..last-1
    pieces = []
    if off and lo == 0:
        pieces.append((slice(0, min(s - off, n_out)), slice(0, 1),
                       slice(off, off + min(s - off, n_out))))
    if max(lo, first) < min(hi, last):
        j0, j1 = max(lo, first), min(hi, last)
        pieces.append((slice(j0 * s - off, j1 * s - off), slice(j0, j1), slice(0, s)))
    if (n_out + off) % s and lo <= last < hi and not (off and last == 0):
        pieces.append((slice(last * s - off, n_out), slice(last, last + 1),
                       slice(0, n_out + off - last * s)))
    return pieces


def _add(res: np.ndarray, b, out: np.ndarray) -> None:
    """``out = res + b`` (or a rounding copy where ``b`` is None), into the output's
    type."""
    if b is None:
        out[...] = res
    else:
        np.add(res, b, out=out, casting="unsafe")


def _store(v: np.ndarray, y: np.ndarray, b, g: Geometry, dims, spans) -> None:
    """Write ``v`` (n, G, m, S1.., J1..) of the blocks ``spans`` into the output, a phase
    at a time, through views of ``y`` split into blocks and phases (:func:`_pieces`)."""
    r = g.rank
    per_dim = [_pieces(span, s, off, n_out) for span, s, (off, _, _, _), n_out
               in zip(spans, g.stride, dims, g.out_size)]
    for combo in itertools.product(*per_dim):
        out = y[(slice(None),) * 3 + tuple(c[0] for c in combo)]
        out = _split(out, out.shape[:3] + tuple(
            x for c in combo for x in (c[1].stop - c[1].start, c[2].stop - c[2].start)))
        src = v[(Ellipsis,) + tuple(slice(c[1].start - lo, c[1].stop - lo)
                                    for c, (lo, _) in zip(combo, spans))]
        for phase in itertools.product(*(range(c[2].start, c[2].stop) for c in combo)):
            dst = out[(slice(None),) * 3 + tuple(
                x for p, c in zip(phase, combo) for x in (slice(None), p - c[2].start))]
            _add(src[(slice(None),) * 3 + phase], None if b is None else b[(Ellipsis,) + (0,) * r],
                 dst)


def _split(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` with axes split into ``shape``, as a view (splitting an axis never needs a
    copy, whatever the strides; the results are written through it)."""
    view = a.reshape(shape)
    assert np.may_share_memory(view, a)
    return view
