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

- along H, the windows are ``L`` whole rows of one channel's plane of the input (the
  band's rows are copied out of the interleaved pixels once, as floats);
- along W, the windows of one row overlap with a constant step of ``TILE`` values, a
  strided view of the row (no copy), and the rows of the band are one batched GEMM.

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

#: Values per pixel (channels) this path takes: it loops over them in Python, which
#: pays for images (1 to 4) but not for feature maps (the whole-kernel path does those).
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


def _band(x: np.ndarray, out: np.ndarray, plans: tuple[AxisPlan, AxisPlan],
          tiles: range) -> None:
    """Output rows of H tiles ``tiles``: ``x`` is ``(H, W, C)``, ``out`` ``(s*H, s*W, C)``."""
    rows, cols = plans
    h, w, c = x.shape
    dtype = rows.matrix.dtype
    width = rows.matrix.shape[0]
    s_rows, length = width * len(tiles), cols.matrix.shape[1]
    # Pass 1, along H, one channel plane at a time, into columns padded for pass 2's
    # windows: column p of the band holds input column clamp(p + lo - edge).
    start = cols.edge - cols.lo
    padded = max(start + w, (cols.tiles - 1) * TILE + length)
    band = np.empty((c, s_rows, padded), dtype)
    for i, t in enumerate(tiles):
        index = np.clip(np.arange(rows.matrix.shape[1]) + t * TILE + rows.lo - rows.edge,
                        0, h - 1)
        window = x[index].transpose(2, 0, 1).astype(dtype)      # (C, L, W): planes
        for ch in range(c):
            np.matmul(rows.matrix, window[ch],
                      out=band[ch, i * width:(i + 1) * width, start:start + w])
    band[:, :, :start] = band[:, :, start:start + 1]
    band[:, :, start + w:] = band[:, :, start + w - 1:start + w]
    # Pass 2, along W: the overlapping windows of each row are one strided view.
    first = tiles.start * width
    kept = min(s_rows, out.shape[0] - first)
    item = band.itemsize
    for ch in range(c):
        windows = as_strided(band[ch], (kept, cols.tiles, length),
                             (padded * item, TILE * item, item), writeable=False)
        y = np.matmul(windows, cols.matrix.T).reshape(kept, -1)   # (rows, tiles*s*T)
        _store(out[first:first + kept, :, ch], y[:, :out.shape[1]])


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
    per_tile = stride * TILE * stride * w * c
    band = max(1, BAND_ELEMENTS // per_tile)
    pieces = [functools.partial(_band, x[o], out[o], plans,
                                range(b, min(b + band, plans[0].tiles)))
              for o in range(outer) for b in range(0, plans[0].tiles, band)]
    cpu_threads.run_pieces(pieces, _cores())
    return out


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _store(dst: np.ndarray, y: np.ndarray) -> None:
    if dst.dtype.kind in "iu":
        info = np.iinfo(dst.dtype)
        np.rint(y, out=y)
        np.clip(y, info.min, info.max, out=y)
    np.copyto(dst, y, casting="unsafe")
