"""The ``numpy`` backend: a vectorized CPU transposed convolution.

Method (GEMM + col2im by output phase): along each dimension, tap ``k`` sends input
``i`` to output ``o = i*stride + k*dilation - padding``, so every tap writes to one
residue class ``o mod stride`` (its *phase*), shifted by a whole number of strides.
For each phase, the taps that write to it are contracted with the input in one BLAS
call per group (``taps*C_out/G x C_in/G`` by ``C_in/G x batch*pixels``); their
contributions are added into a contiguous accumulator with plain slice additions, and
the accumulator is written into the strided output positions of the phase once.
There is no zero insertion, no strided scatter and no Python
loop over pixels, samples or channels; Python loops run over phases and taps only.

Memory: temporaries (the columns of all of a phase's taps, the accumulator, a
transposed copy of the input chunk) are allocated once per call and reused. The batch,
and for very large samples the output itself (in boxes, each computed from the inputs
that reach it), are split so that they stay within :data:`TEMP_BUDGET_BYTES`, plus the
zero padding of the last GEMM tile (fewer than :data:`GEMM_TILE` columns per buffer)
and a copy of the weights stacked per phase. float16 is computed in float32 and
rounded once, when the result is stored.

Results are bit for bit the same however the batch is chunked and the output boxed,
and for any slice of the input (each output's sum has a fixed shape and order: see
:data:`GEMM_TILE`).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from .geometry import Geometry

#: Budget for the temporaries of one call, in bytes: large enough that typical layers
#: need no output boxes (each box re-reads a halo and pads a GEMM tile), small enough
#: to stay well below the output's own size on large problems.
TEMP_BUDGET_BYTES = 32 * 2**20

#: Columns of every GEMM. BLAS rounds an element differently depending on where its
#: column falls (edge micro-kernels, GEMV for a single column, how threads split the
#: columns), so the pixels are cut into tiles of this many columns, the last one
#: zero-padded, and every tile is a GEMM of the same shape: an output's value then does
#: not depend on where it lies, on the batch chunking or on the input's extent. A
#: multiple of every micro-kernel width, and wide enough that BLAS runs near its peak
#: even with few input channels (short dot products).
GEMM_TILE = 2048


@dataclass(frozen=True)
class _Tap:
    flat: int                          # index into the flattened kernel taps
    dst: tuple[slice, ...] | None      # per dimension: where it lands in the phase lattice
    src: tuple[slice, ...] | None      # per dimension: which inputs it takes (None: none)
    shift: tuple[int, ...]             # per dimension: lattice index - input index


@dataclass(frozen=True)
class _Phase:
    first: tuple[int, ...]             # per dimension: first output coordinate of the phase
    size: tuple[int, ...]              # per dimension: outputs in the phase
    # Every tap of the phase's residue class, even one that reaches no output here: the
    # GEMMs then have the same shape for any extent of the input, so do their roundings.
    taps: tuple[_Tap, ...]


@functools.lru_cache(maxsize=64)
def _phases(g: Geometry) -> tuple[_Phase, ...]:
    """Group the taps by the output phase they write to (pure shape arithmetic, cached)."""
    per_dim = []
    for n_in, out, k, s, p, d in zip(g.in_size, g.out_size, g.kernel, g.stride, g.padding,
                                     g.dilation):
        phases = {r: (-(-(out - r) // s), []) for r in range(min(s, out))}
        for tap in range(k):
            offset = tap * d - p
            phase, shift = offset % s, offset // s  # o = s*(i + shift) + phase
            if phase in phases:
                size = phases[phase][0]
                lo, hi = max(0, shift), min(size, n_in + shift)
                reach = (slice(lo, hi), slice(lo - shift, hi - shift)) if lo < hi else None
                phases[phase][1].append((tap, reach, shift))
        per_dim.append([(r, size, taps) for r, (size, taps) in phases.items()])
    result = []
    for combo in itertools.product(*per_dim):
        taps = []
        for pick in itertools.product(*(taps for _, _, taps in combo)):
            flat = int(np.ravel_multi_index([t for t, _, _ in pick], g.kernel))
            shift = tuple(q for _, _, q in pick)
            if all(reach is not None for _, reach, _ in pick):
                taps.append(_Tap(flat, tuple(r[0] for _, r, _ in pick),
                                 tuple(r[1] for _, r, _ in pick), shift))
            else:
                taps.append(_Tap(flat, None, None, shift))
        result.append(_Phase(first=tuple(r for r, _, _ in combo),
                             size=tuple(n for _, n, _ in combo), taps=tuple(taps)))
    return tuple(result)


def choose_method(g: Geometry) -> str:
    """Which formulation moves less memory (the GEMM flops are equal).

    ``scatter`` multiplies first and then adds each tap's block (C_out values per input
    pixel and tap) into the accumulator: about 3 C_out memory passes per pixel and tap;
    ``gather`` first copies each tap's shifted input (C_in values per output pixel of a
    phase, about one per input pixel) and then multiplies, writing every output once:
    about 2 C_in (depthwise layers included: their GEMMs are short, but few). The
    choice depends on channels only, never on sizes, so that any slice of a problem is
    computed the same way as the whole (see :data:`GEMM_TILE`).
    """
    return "gather" if 2 * g.c_in < 3 * g.c_out else "scatter"


def conv_transpose(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   geometry: Geometry, method: str | None = None) -> np.ndarray:
    """NumPy twin of :func:`gpu_tconv.cuda_backend.conv_transpose` (NumPy arrays).

    ``method`` forces a formulation (``"scatter"`` or ``"gather"``); by default
    :func:`choose_method` picks.
    """
    g = geometry
    if method is None:
        method = choose_method(g)
        # The gather formulation multiplies the zeros around the input by the weights,
        # which turns an infinite weight into NaN where PyTorch has none.
        if method == "gather" and not np.isfinite(weight).all():
            method = "scatter"
    y = np.empty(g.out_shape, x.dtype)
    if g.channels_last:
        # Channels-first views of x and y: the computation copies its input a chunk at a
        # time anyway and writes the output through strided views, so no transposed copy
        # of either array is made.
        x, y_view = np.moveaxis(x, -1, 1), np.moveaxis(y, -1, 1)
        g = replace(g, channels_last=False)
    else:
        y_view = y
    whole = (slice(None),) * 2
    compute = compute_dtype(x.dtype)
    # (G, taps, C_out/G, C_in/G): per tap, the matrix taking input to output channels;
    # made contiguous once, so that every phase takes its taps as whole slabs.
    w = np.ascontiguousarray(
        weight.astype(compute, copy=False).reshape(g.groups, g.c_in_per_group,
                                                   g.c_out_per_group, -1).transpose(0, 3, 2, 1))
    # NaN, infinities and float16 overflow are results here, as in PyTorch, not errors.
    with np.errstate(all="ignore"):
        for in_box, out_box, tile in _tiles(g, method, compute.itemsize):
            if tile is None:  # no input reaches this box: only the bias does
                y_view[whole + out_box] = 0 if bias is None else \
                    bias.reshape((g.c_out,) + (1,) * g.rank)
            else:
                _compute(x[whole + in_box], w, bias, tile, method, y_view[whole + out_box])
    return y


def compute_dtype(dtype) -> np.dtype:
    """The type arithmetic runs in: float32 for float16 (as PyTorch accumulates), else
    the dtype itself."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def _padded(n: int) -> int:
    return -(-n // GEMM_TILE) * GEMM_TILE


def _per_sample(g: Geometry, method: str) -> int:
    """Elements of temporaries per sample of a batch chunk: the accumulator, the
    transposed input, and the block of all of a phase's taps."""
    phases = _phases(g)
    lattice = max(math.prod(ph.size) for ph in phases)
    pixels = math.prod(g.in_size)
    most_taps = max(len(ph.taps) for ph in phases)
    taps = {"scatter": most_taps * g.c_out * pixels, "gather": most_taps * g.c_in * lattice}[method]
    return g.c_out * lattice + g.c_in * pixels + taps


def _box(g: Geometry, box: tuple[tuple[int, int], ...]):
    """Input slices and geometry for the outputs ``box`` (per dimension ``[lo, hi)``).

    Output ``[lo, hi)`` takes inputs ``i`` with ``lo <= i*s + k*d - p < hi`` for some
    tap ``k``; relative to the box, padding becomes ``p + lo - s*i_lo`` (possibly
    negative, which the phase arithmetic handles as it is). ``None`` when no input
    reaches the box.
    """
    ins, pads = [], []
    for (lo, hi), n_in, k, s, p, d in zip(box, g.in_size, g.kernel, g.stride, g.padding,
                                          g.dilation):
        i_lo = max(0, -(-(lo + p - d * (k - 1)) // s))
        i_hi = min(n_in, (hi - 1 + p) // s + 1)
        if i_lo >= i_hi:
            return None
        ins.append((i_lo, i_hi))
        pads.append(p + lo - s * i_lo)
    tile = replace(g, in_size=tuple(hi - lo for lo, hi in ins), padding=tuple(pads),
                   out_size=tuple(hi - lo for lo, hi in box))
    return tuple(slice(lo, hi) for lo, hi in ins), tile


def _tiles(g: Geometry, method: str, itemsize: int):
    """Split the output into boxes whose one-sample temporaries fit the budget.

    Yields ``(input slices, output slices, geometry of the box)``; the geometry is
    ``None`` where no input reaches the box.
    """
    needed = -(-_per_sample(g, method) * itemsize // TEMP_BUDGET_BYTES)
    while True:
        per_dim, rest = [], needed
        for out in g.out_size:  # split the leading dimensions first
            parts = min(out, rest)
            rest = -(-rest // parts)
            per_dim.append([(out * j // parts, out * (j + 1) // parts) for j in range(parts)])
        boxes = [(box, _box(g, box)) for box in itertools.product(*per_dim)]
        # The inputs a box needs reach beyond its share (the kernel's halo): split
        # further until every box fits, or boxes are single outputs.
        largest = max((_per_sample(t[1], method) * itemsize for _, t in boxes if t),
                      default=0)
        if largest <= TEMP_BUDGET_BYTES or list(map(len, per_dim)) == list(g.out_size):
            break
        needed *= 2
    for box, found in boxes:
        out_box = tuple(slice(lo, hi) for lo, hi in box)
        yield (None, out_box, None) if found is None else (found[0], out_box, found[1])


def _compute(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, g: Geometry,
             method: str, y: np.ndarray) -> None:
    """Compute the transposed convolution of ``g`` into the (possibly strided) view ``y``;
    ``w`` is the weight as (G, taps, C_out/G, C_in/G), contiguous, in the compute type."""
    compute = w.dtype
    groups, cin_g, cout_g = g.groups, g.c_in_per_group, g.c_out_per_group
    pixels, rank = math.prod(g.in_size), g.rank
    phases = _phases(g)
    lattice = max(math.prod(ph.size) for ph in phases)
    most_taps = max(len(ph.taps) for ph in phases)
    chunk = min(g.batch, max(1, TEMP_BUDGET_BYTES // compute.itemsize // _per_sample(g, method)))

    bias_init = None if bias is None else \
        bias.astype(compute).reshape((groups, cout_g, 1) + (1,) * rank)
    # Per phase, all its taps stacked for one GEMM per group and column tile.
    if method == "scatter":  # (G, 1, taps*C_out/G, C_in/G)
        lhs = [w[:, [t.flat for t in ph.taps]].reshape(groups, 1, -1, cin_g) for ph in phases]
    elif method == "gather":  # (G, 1, C_out/G, taps*C_in/G)
        lhs = [np.ascontiguousarray(w[:, [t.flat for t in ph.taps]].transpose(0, 2, 1, 3))
               .reshape(groups, 1, cout_g, -1) for ph in phases]

    # Temporaries are allocated once and reused for every phase and chunk (fresh memory
    # costs page faults that rival the arithmetic), with the columns padded to whole tiles.
    if method == "scatter":  # (G, C_in/G, columns): the GEMM's right-hand side
        x_buf = np.zeros((groups, cin_g, _padded(chunk * pixels)), compute)
    else:
        # (G, C_in/G, nb, *in with borders): zero borders wide enough that every tap's
        # shifted input is one plain slice of it, zeros where the tap reaches nothing.
        low = [max([0] + [t.shift[a] for ph in phases for t in ph.taps]) for a in range(rank)]
        high = [max([0] + [ph.size[a] - t.shift[a] - g.in_size[a]
                           for ph in phases for t in ph.taps]) for a in range(rank)]
        x_buf = np.zeros((groups, cin_g, chunk) + tuple(
            lo + n + hi for lo, n, hi in zip(low, g.in_size, high)), compute)
        interior = tuple(slice(lo, lo + n) for lo, n in zip(low, g.in_size))
    acc_buf = np.empty(g.c_out * _padded(chunk * lattice), compute)
    taps_buf = np.empty(most_taps * (g.c_out * _padded(chunk * pixels) if method == "scatter"
                                     else g.c_in * _padded(chunk * lattice)), compute)
    every = (slice(None),) * 3

    def tiled(a: np.ndarray) -> np.ndarray:
        """(G, rows, tiles*GEMM_TILE) as (G, tiles, rows, GEMM_TILE) views: one GEMM each."""
        return a.reshape(a.shape[0], a.shape[1], -1, GEMM_TILE).swapaxes(1, 2)

    for n0 in range(0, g.batch, chunk):
        nb = min(chunk, g.batch - n0)
        if method == "scatter":
            # (G, C_in/G, nb, *in): the batch folded into the pixels, zero-padded to whole
            # tiles.
            x_cols = x_buf[:, :, :_padded(nb * pixels)]
            x_cols[:, :, nb * pixels:] = 0
            xt = x_cols[:, :, :nb * pixels].reshape((groups, cin_g, nb) + g.in_size)
        else:
            x_pad = x_buf[:, :, :nb]
            xt = x_pad[every + interior]
        np.copyto(xt, x[n0:n0 + nb].reshape((nb, groups, cin_g) + g.in_size)
                  .transpose((1, 2, 0) + tuple(range(3, 3 + rank))))
        for p, ph in enumerate(phases):
            size = math.prod(ph.size)
            width = _padded(nb * size)
            acc_cols = acc_buf[:g.c_out * width].reshape(groups, cout_g, width)
            acc = acc_cols[:, :, :nb * size].reshape((groups, cout_g, nb) + ph.size)
            if method == "gather" and ph.taps:
                # (G, taps, C_in/G, nb, *lattice): each tap's input shifted into place, zero
                # where it reaches nothing; then one GEMM per column tile sums all taps.
                cols = taps_buf[:len(ph.taps) * g.c_in * width].reshape(
                    groups, len(ph.taps) * cin_g, width)
                shifted = cols[:, :, :nb * size].reshape(
                    (groups, len(ph.taps), cin_g, nb) + ph.size)
                cols[:, :, nb * size:] = 0
                for j, tap in enumerate(ph.taps):
                    # lattice index = input index + shift: a slice of the bordered input.
                    np.copyto(shifted[:, j], x_pad[every + tuple(
                        slice(lo - q, lo - q + n) for lo, q, n in zip(low, tap.shift, ph.size))])
                np.matmul(lhs[p], tiled(cols), out=tiled(acc_cols))
            else:
                acc.fill(0)
            if method == "scatter" and ph.taps:
                cols = taps_buf[:len(ph.taps) * g.c_out * x_cols.shape[2]].reshape(
                    groups, len(ph.taps) * cout_g, x_cols.shape[2])
                np.matmul(lhs[p], tiled(x_cols), out=tiled(cols))
                cols = cols[:, :, :nb * pixels].reshape(
                    (groups, len(ph.taps), cout_g, nb) + g.in_size)
                for j, tap in enumerate(ph.taps):
                    if tap.dst is not None:
                        acc[every + tap.dst] += \
                            cols[(slice(None), j, slice(None), slice(None)) + tap.src]
            if bias_init is not None:
                acc += bias_init
            out = y[(slice(n0, n0 + nb), slice(None))
                    + tuple(slice(f, None, s) for f, s in zip(ph.first, g.stride))]
            # (C_out, nb, ...) to (nb, C_out, ...); rounds to float16 here when x is float16.
            out[...] = acc.reshape((g.c_out, nb) + ph.size).swapaxes(0, 1)
