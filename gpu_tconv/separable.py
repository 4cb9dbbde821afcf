"""2-D upsampling on the CPU, one axis at a time: a 1-D depthwise transposed convolution
along H, then along W, each computed as GEMMs on tiles, in bands of rows.

An interpolation kernel is separable (its 2-D taps are the outer product of one 1-D
kernel), so the transposed convolution with the full kernel equals the 1-D transposed
convolution along each axis in turn, at ``2k`` instead of ``k*k`` multiply-adds per
output. Along one axis, with the input extended by ``edge`` copies of its end elements
(``x_e[j] = x[clamp(j - edge)]``)::

    y[o] = sum_j x_e[j] * w[o + padding - j*stride]        0 <= o < stride*n

Outputs are taken ``stride*TILE`` at a time (a *tile*, ``TILE`` inputs wide). Tile ``t``
reads the ``L`` extended inputs from ``t*TILE + lo``, always at the same offsets, so
every tile is one small matrix ``M`` (``stride*TILE x L``, ``M[q, m] = w[q + padding -
(lo + m)*stride]``) times its window of inputs, and a whole band of tiles is one GEMM:

- along H, the windows are ``L`` whole rows (``W*C`` values each) of the input;
- along W, the windows of one row overlap with a constant step of ``TILE*C`` values,
  a strided view of the row (no copy); channels stay interleaved by multiplying with
  ``M ⊗ I_C``, so each GEMM row is ``stride*TILE`` output pixels as stored.

Each band of output rows is computed from the input rows it reads into a few megabytes
of float scratch, rounded and clipped straight into the output, and the bands run on
the cores (:mod:`gpu_tconv.cpu_threads`): peak memory is the input and the output plus
a few bands. An element's value depends on the image's shape only, never on the number
of cores or threads.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import cpu_threads

#: Inputs per tile along an axis: ``L = TILE + a few`` multiply-adds per output, so small
#: tiles waste little arithmetic, yet the GEMMs stay wide enough to run near BLAS's speed.
TILE = 16

#: Float elements of one band's output scratch (4 MB in float32).
BAND_ELEMENTS = 1 << 20

#: Channels interleaved along W that the ``M ⊗ I_C`` GEMM takes (its work grows with C).
MAX_INNER = 4


@dataclass(frozen=True)
class AxisPlan:
    """How one axis of ``n`` inputs becomes ``stride*n`` outputs, tile by tile."""

    n: int
    tiles: int
    lo: int              # first extended input of tile 0's window
    edge: int
    matrix: np.ndarray   # (stride*TILE, L)


@functools.lru_cache(maxsize=64)
def _matrix(taps: tuple[float, ...], stride: int, padding: int, dtype: str):
    k, outs = len(taps), stride * TILE
    lo = -((k - 1 - padding) // stride)              # ceil((padding - k + 1) / stride)
    hi = (outs - 1 + padding) // stride
    q, m = np.meshgrid(np.arange(outs), np.arange(lo, hi + 1), indexing="ij")
    t = q + padding - m * stride
    w = np.where((t >= 0) & (t < k), np.asarray(taps)[np.clip(t, 0, k - 1)], 0.0)
    return lo, w.astype(dtype)


def axis_plan(n: int, taps: np.ndarray, stride: int, padding: int, edge: int,
              dtype: np.dtype) -> AxisPlan:
    """The tiles of one axis of length ``n`` (see the module's formula)."""
    lo, matrix = _matrix(tuple(float(v) for v in taps), stride, padding, np.dtype(dtype).str)
    return AxisPlan(n, -(-n // TILE), lo, edge, matrix)


def supports(shape: tuple[int, ...], edge: int, lo_ok: bool = True) -> bool:
    """Whether an ``(outer, H, W, inner)`` array takes this path (few interleaved channels)."""
    return len(shape) == 4 and shape[3] <= MAX_INNER and lo_ok


def _h_pass(x: np.ndarray, rows: AxisPlan, tiles: range, band: np.ndarray,
            offset: int) -> None:
    """Tiles ``tiles`` along H of ``x`` (``(H, W*C)``) into ``band[:, offset:offset+W*C]``
    (``band`` is ``(s_rows, Wpad*C)``): one GEMM per tile, ``M (sT, L) @ rows (L, W*C)``."""
    width = rows.matrix.shape[0]
    dtype = rows.matrix.dtype
    for i, t in enumerate(tiles):
        index = np.clip(np.arange(rows.matrix.shape[1]) + t * TILE + rows.lo - rows.edge,
                        0, rows.n - 1)
        lo, hi = index[0], index[-1] + 1
        window = x[lo:hi].astype(dtype) if hi - lo == len(index) else x[index].astype(dtype)
        np.matmul(rows.matrix, window, out=band[i * width:(i + 1) * width,
                                                offset:offset + x.shape[1]])


def _band(x: np.ndarray, out: np.ndarray, plans: tuple[AxisPlan, AxisPlan],
          kron: np.ndarray, tiles: range) -> None:
    """Output rows of H tiles ``tiles``: ``x`` is ``(H, W, C)``, ``out`` ``(s*H, s*W, C)``."""
    rows, cols = plans
    h, w, c = x.shape
    s_rows = rows.matrix.shape[0] * len(tiles)
    length = cols.matrix.shape[1]
    # Pass 1, along H, into columns padded for pass 2's windows: column p of the band
    # holds input column clamp(p + lo - edge), the edge extension along W.
    start = cols.edge - cols.lo
    padded = max(start + w, (cols.tiles - 1) * TILE + length)
    band = np.empty((s_rows, padded, c), kron.dtype)
    _h_pass(x.reshape(h, w * c), rows, tiles, band.reshape(s_rows, padded * c), start * c)
    band[:, :start] = band[:, start:start + 1]
    band[:, start + w:] = band[:, start + w - 1:start + w]
    # Pass 2, along W: overlapping windows of each row, one strided view, one GEMM.
    item = band.itemsize
    windows = as_strided(band, (s_rows, cols.tiles, length * c),
                         (padded * c * item, TILE * c * item, item), writeable=False)
    y = np.matmul(windows, kron)                     # (s_rows, tiles, stride*TILE*C)
    y = y.reshape(s_rows, -1, c)
    first = tiles.start * rows.matrix.shape[0]
    kept = min(s_rows, out.shape[0] - first)
    _store(out[first:first + kept], y[:kept, :out.shape[1]])


def upsample_2d(x: np.ndarray, taps: np.ndarray, stride: int, padding: int, edge: int,
                compute: np.dtype) -> np.ndarray:
    """The separable upsampling of ``x`` (``(outer, H, W, C)``, C <= :data:`MAX_INNER`):
    ``(outer, stride*H, stride*W, C)`` of ``x``'s dtype, integers rounded and clipped."""
    x = np.ascontiguousarray(x)
    outer, h, w, c = x.shape
    out = np.empty((outer, stride * h, stride * w, c), x.dtype)
    plans = (axis_plan(h, taps, stride, padding, edge, compute),
             axis_plan(w, taps, stride, padding, edge, compute))
    if plans[1].edge < plans[1].lo:
        raise ValueError("the kernel's window starts beyond the edge extension")
    # M ⊗ I_C, transposed: row (m, c') of a window to column (q, c) of the output.
    kron = np.ascontiguousarray(np.kron(plans[1].matrix, np.eye(c, dtype=compute)).T)
    per_tile = stride * TILE * stride * w * c
    band = max(1, BAND_ELEMENTS // per_tile)
    pieces = [functools.partial(_band, x[o], out[o], plans, kron,
                                range(b, min(b + band, plans[0].tiles)))
              for o in range(outer) for b in range(0, plans[0].tiles, band)]
    cpu_threads.run_pieces(pieces, len(os.sched_getaffinity(0)))
    return out


def _store(dst: np.ndarray, y: np.ndarray) -> None:
    if dst.dtype.kind in "iu":
        info = np.iinfo(dst.dtype)
        np.rint(y, out=y)
        np.clip(y, info.min, info.max, out=y)
    np.copyto(dst, y, casting="unsafe")
