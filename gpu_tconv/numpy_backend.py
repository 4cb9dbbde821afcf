"""The ``numpy`` backend: a vectorized CPU transposed convolution.

Method (GEMM + col2im by output phase): along each dimension, tap ``k`` sends input
``i`` to output ``o = i*stride + k*dilation - padding``, so every tap writes to one
residue class ``o mod stride`` (its *phase*), shifted by a whole number of strides.
For each phase the taps that write to it are contracted with the input in one BLAS
call (channels x taps by channels, batched over groups, samples and pixel tiles), their
contributions are added into a contiguous accumulator with plain slice additions,
and the accumulator is written into the strided output positions of that phase
once. Strided scatters, zero insertion and Python loops over pixels, samples or
channels are all avoided; the only Python loops run over phases and taps.

Every output element is the same computation wherever it lies: a BLAS GEMM rounds
an element differently depending on its column's place in the matrix (edge columns
go through other micro-kernels, and a single column through GEMV), so the pixels are
cut into tiles of :data:`GEMM_TILE` columns (the last one zero-padded) and every tile
is one GEMM of the same shape. The sum of each output element therefore does not
depend on the input's extent or on where the element lies in it, and a block of the
output computed from a slice of the input (as ``gpu_tconv.dask`` does) is bit for bit
the same block of the whole result.

Memory: the batch is processed in chunks so that the temporaries of one phase (the
tiled input, its column block and accumulator) stay within :data:`TEMP_BUDGET_BYTES`; a single sample
whose phase block alone is larger is processed on its own. float16 is computed in
float32 and rounded once at the end.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .geometry import Geometry

#: Budget for the temporaries of one batch chunk, in bytes.
TEMP_BUDGET_BYTES = 32 * 2**20

#: Pixels per GEMM. A multiple of the BLAS micro-kernel widths in use (small powers of
#: two), so that every column goes through a full-width micro-kernel.
GEMM_TILE = 256


@dataclass(frozen=True)
class _Tap:
    flat: int                          # index into the flattened kernel taps
    shift: tuple[int, ...]             # per dimension: output lattice index = input index + shift


@dataclass(frozen=True)
class _Phase:
    first: tuple[int, ...]             # per dimension: first output coordinate of the phase
    size: tuple[int, ...]              # per dimension: outputs in the phase
    taps: tuple[_Tap, ...]


def _phases(g: Geometry) -> list[_Phase]:
    per_dim = []
    for out, k, s, p, d in zip(g.out_size, g.kernel, g.stride, g.padding, g.dilation):
        by_phase: dict[int, list[tuple[int, int]]] = {r: [] for r in range(min(s, out))}
        for tap in range(k):
            offset = tap * d - p
            phase, shift = offset % s, offset // s
            if phase in by_phase:
                by_phase[phase].append((tap, shift))
        per_dim.append([(r, -(-(out - r) // s), taps) for r, taps in by_phase.items()])
    phases = []
    for combo in itertools.product(*per_dim):
        taps = tuple(
            _Tap(flat=int(np.ravel_multi_index([t for t, _ in pick], g.kernel)),
                 shift=tuple(sh for _, sh in pick))
            for pick in itertools.product(*(dim_taps for _, _, dim_taps in combo)))
        phases.append(_Phase(first=tuple(r for r, _, _ in combo),
                             size=tuple(n for _, n, _ in combo), taps=taps))
    return phases


def _overlap(size: int, in_size: int, shift: int) -> tuple[slice, slice]:
    """Slices of (phase lattice, input) where lattice index j = input index i + shift."""
    lo, hi = max(0, shift), min(size, in_size + shift)
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    return slice(lo, hi), slice(lo - shift, hi - shift)


def conv_transpose(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   geometry: Geometry) -> np.ndarray:
    """NumPy twin of :func:`gpu_tconv.cuda_backend.conv_transpose` (NumPy arrays)."""
    g = geometry
    compute = np.dtype(np.float32) if x.dtype == np.float16 else x.dtype
    groups, cin_g, cout_g = g.groups, g.c_in_per_group, g.c_out_per_group
    spatial = (slice(None),) * 2
    taps_total = math.prod(g.kernel)
    in_pixels = math.prod(g.in_size)

    # (G, taps, C_out/G, C_in/G): per tap, the matrix that maps input to output channels.
    w = weight.astype(compute, copy=False).reshape(groups, cin_g, cout_g, taps_total)
    w = w.transpose(0, 3, 2, 1)
    b = None if bias is None else bias.astype(compute).reshape((1, g.c_out) + (1,) * g.rank)

    phases = _phases(g)
    tiles = -(-in_pixels // GEMM_TILE)
    padded = tiles * GEMM_TILE
    per_sample = g.c_in * padded + max(
        g.c_out * (len(ph.taps) * padded + math.prod(ph.size)) for ph in phases)
    chunk = max(1, TEMP_BUDGET_BYTES // (per_sample * compute.itemsize))

    y = np.empty(g.out_shape, x.dtype)
    for n0 in range(0, g.batch, chunk):
        xs = x[n0:n0 + chunk]
        nb = xs.shape[0]
        # The pixels, zero-padded to whole tiles: (N, G, tiles, C_in/G, GEMM_TILE) views.
        x_tiles = np.empty((nb, groups, cin_g, padded), compute)
        x_tiles[..., :in_pixels] = xs.reshape(nb, groups, cin_g, in_pixels)
        x_tiles[..., in_pixels:] = 0
        x_tiles = x_tiles.reshape(nb, groups, cin_g, tiles, GEMM_TILE).swapaxes(2, 3)
        ys = y[n0:n0 + nb]
        for ph in phases:
            out_slices = spatial + tuple(slice(f, None, s) for f, s in zip(ph.first, g.stride))
            acc = np.zeros((nb, groups, cout_g) + ph.size, compute)
            if ph.taps:
                flat = [t.flat for t in ph.taps]
                w_ph = w[:, flat].reshape(groups, len(flat) * cout_g, cin_g)
                cols = np.empty((nb, groups, len(flat) * cout_g, padded), compute)
                # One GEMM per tile, written in place into the rows of ``cols``.
                np.matmul(w_ph[:, None], x_tiles, out=cols.reshape(
                    nb, groups, len(flat) * cout_g, tiles, GEMM_TILE).swapaxes(2, 3))
                cols = cols[..., :in_pixels].reshape((nb, groups, len(flat), cout_g) + g.in_size)
                for j, tap in enumerate(ph.taps):
                    pairs = [_overlap(n, i, sh) for n, i, sh in zip(ph.size, g.in_size, tap.shift)]
                    acc[spatial + (slice(None),) + tuple(a for a, _ in pairs)] += \
                        cols[spatial + (j, slice(None)) + tuple(c for _, c in pairs)]
            acc = acc.reshape((nb, g.c_out) + ph.size)
            if b is not None:
                acc += b
            ys[out_slices] = acc  # rounds to float16 here when x is float16
    return y
