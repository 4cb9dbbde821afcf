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
addition. In 1-D it is the output's own layout, ``(C_out/G, J, S)``, and the GEMMs write
the output itself; in 2-D and 3-D the GEMM is computed as ``(C_out/G * S, J)`` and each
phase copied into the output with runs as long as the blocks' rows. This suits layers
whose GEMMs are small and many (depthwise, grouped), where the other formulations'
NumPy calls, additions and phase interleaving dominate. It multiplies the zeros of the
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


def sizes(g: Geometry) -> tuple[int, int, int, int]:
    """Per sample: the padded input's pixels, the blocks (the GEMMs' rows), the window's
    positions and the blocks along the last dimension (the runs its copies make)."""
    dims = _dims(g)
    return (math.prod(j + q - 1 for _, q, j, _ in dims), math.prod(j for _, _, j, _ in dims),
            math.prod(q for _, q, _, _ in dims), dims[-1][2])


def temp_elements(g: Geometry, samples: int, groups: int, rows: int) -> int:
    """Elements of the temporaries for ``samples`` samples, ``groups`` groups and
    ``rows`` blocks along the first dimension: the padded input, its windows and the
    GEMM's result."""
    dims = _dims(g)
    blocks = rows * math.prod(j for _, _, j, _ in dims[1:])
    padded = (rows + dims[0][1] - 1) * math.prod(j + q - 1 for _, q, j, _ in dims[1:])
    window = math.prod(q for _, q, _, _ in dims)
    per = g.c_in_per_group * (padded + blocks * window) \
        + g.c_out_per_group * blocks * math.prod(g.stride)
    return samples * groups * per


def applies(g: Geometry, itemsize: int, budget: int) -> bool:
    """Grouped layers (its GEMMs are per group, and it was built and fitted for them),
    whose temporaries for one block row of one group of one sample fit a part's share of
    ``budget``."""
    return g.groups > 1 and temp_elements(g, 1, 1, 1) * itemsize <= budget // parts(g)


def _chunks(g: Geometry, itemsize: int, budget: int) -> tuple[int, int, int]:
    """Samples, groups and first-dimension blocks per step, within ``budget`` bytes."""
    rows = _dims(g)[0][2]
    limit = max(1, budget // itemsize)
    if temp_elements(g, 1, 1, rows) > limit:
        per_row = temp_elements(g, 1, 1, 2) - temp_elements(g, 1, 1, 1)
        return 1, 1, max(1, (limit - temp_elements(g, 1, 1, 1)) // max(per_row, 1) + 1)
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
    n = parts(g)
    ranges = [slice(g.groups * k // n, g.groups * (k + 1) // n) for k in range(n)]
    cpu_threads.run_pieces([functools.partial(
        _part, xg[:, gs], wm[gs], None if b is None else b[gs], g, yg[:, gs], budget // n)
        for gs in ranges], n)


def _part(xg, wm, b, g: Geometry, yg, budget: int) -> None:
    """Groups ``xg`` (N, G', C_in/G, *in) into ``yg`` (N, G', C_out/G, *out), in steps."""
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
                _step(xg[n0:n0 + samples, gs], wm[gs], None if b is None else b[gs], g,
                      yg[n0:n0 + samples, gs], dims, spans, scratch)


def _windows(xs: np.ndarray, g: Geometry, dims, spans,
             scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The input's windows over the blocks ``spans``, (n, G, C_in/G * Q.., J..), in
    ``scratch``: one contiguous row of blocks per channel and window position, which
    BLAS reads transposed as it lies (copied the other way round, Q innermost, the copy
    runs 2 to 5 elements at a time); and the rest of ``scratch``, free."""
    r = g.rank
    blocks = tuple(hi - lo for lo, hi in spans)
    q = tuple(q for _, q, _, _ in dims)
    padded = scratch[:math.prod(xs.shape[:3]) * math.prod(n + k - 1 for n, k in zip(blocks, q))]
    padded = padded.reshape(xs.shape[:3] + tuple(n + k - 1 for n, k in zip(blocks, q)))
    padded.fill(0)
    dst, src = [], []
    for (lo, hi), (_, k, _, base), n_in in zip(spans, dims, g.in_size):
        start = lo + base  # the input index of the padded array's first position
        first, last = max(start, 0), min(start + hi - lo + k - 1, n_in)
        dst.append(slice(first - start, max(last - start, first - start)))
        src.append(slice(first, max(last, first)))
    padded[(Ellipsis,) + tuple(dst)] = xs[(Ellipsis,) + tuple(src)]
    view = sliding_window_view(padded, q, axis=tuple(range(3, 3 + r))).transpose(
        (0, 1, 2) + tuple(range(3 + r, 3 + 2 * r)) + tuple(range(3, 3 + r)))
    windows = scratch[padded.size:padded.size + view.size].reshape(view.shape)
    np.copyto(windows, view)
    return (windows.reshape(xs.shape[:2] + (-1, math.prod(blocks))),
            scratch[padded.size + view.size:])


def _step(xs, wm, b, g: Geometry, ys, dims, spans, scratch) -> None:
    """The blocks ``spans`` of samples ``xs`` (n, G, C_in/G, *in) into ``ys`` (n, G,
    C_out/G, *out), ``wm`` and ``b`` those groups' weight and bias."""
    nb, gb, m = xs.shape[0], xs.shape[1], g.c_out_per_group
    at, free = _windows(xs, g, dims, spans, scratch)  # at: (n, G, C_in/G * Q, J)
    if g.rank == 1:
        # 1-D: on whole blocks, every output channel's GEMM writes its blocks and
        # phases straight into the output, (J, S) being the output's own layout; a block
        # cut by either end of the output goes the general way
        lo, s = spans[0][0], g.stride[0]
        rhs = wm.reshape(gb, -1, m, s).swapaxes(1, 2)  # (G, m, C_in/G * Q, S)
        for out, blocks, phases in _pieces(spans[0], s, dims[0][0], g.out_size[0]):
            at_piece = at[..., blocks.start - lo:blocks.stop - lo]
            if phases.stop - phases.start < s:
                _gemm_store(at_piece, wm, b, g, ys, dims, [(blocks.start, blocks.stop)], free)
                continue
            lhs = at_piece.swapaxes(-1, -2)[:, :, None]  # (n, G, 1, J, C_in/G * Q)
            y_out = _split(ys[..., out], (nb, gb, m, blocks.stop - blocks.start, s))
            if y_out.dtype == wm.dtype and b is None:
                np.matmul(lhs, rhs, out=y_out)
            else:
                res = free[:y_out.size].reshape(y_out.shape)
                np.matmul(lhs, rhs, out=res)
                _add(res, b, y_out)
        return
    _gemm_store(at, wm, b, g, ys, dims, spans, free)


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
