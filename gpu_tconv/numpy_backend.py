"""The ``numpy`` backend: a vectorized CPU transposed convolution.

Method (GEMM + col2im by output phase): along each dimension, tap ``k`` sends input
``i`` to output ``o = i*stride + k*dilation - padding``, so every tap writes to one
residue class ``o mod stride`` (its *phase*), shifted by a whole number of strides.
For each phase, the taps that write to it are contracted with the input in one BLAS
call per group (``taps*C_out/G x C_in/G`` by ``C_in/G x batch*pixels``); their
contributions are added into a contiguous accumulator with plain slice additions, and
the accumulator is written into the strided output positions of the phase once.
Layers with one input channel per group (depthwise) skip BLAS: each tap is a
broadcast multiply-add. There is no zero insertion, no strided scatter and no Python
loop over pixels, samples or channels; Python loops run over phases and taps only.

Memory: temporaries (column block, accumulator, a transposed copy of the input
chunk) are allocated once per call and reused. The batch, then the taps of a phase,
and for very large samples the output itself (in boxes, each computed from the inputs
that reach it) are split so that they stay within :data:`TEMP_BUDGET_BYTES`, plus a
copy of the weights stacked per phase. float16 is computed in float32 and rounded
once, when the result is stored.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from .geometry import Geometry

#: Budget for the temporaries of one call, in bytes. A few MiB keeps them in cache and
#: avoids the page faults of fresh large allocations.
TEMP_BUDGET_BYTES = 8 * 2**20


@dataclass(frozen=True)
class _Tap:
    flat: int                          # index into the flattened kernel taps
    dst: tuple[slice, ...]             # per dimension: where it lands in the phase lattice
    src: tuple[slice, ...]             # per dimension: which inputs it takes


@dataclass(frozen=True)
class _Phase:
    first: tuple[int, ...]             # per dimension: first output coordinate of the phase
    size: tuple[int, ...]              # per dimension: outputs in the phase
    taps: tuple[_Tap, ...]             # the taps that reach at least one output of the phase


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
                if lo < hi:
                    phases[phase][1].append((tap, slice(lo, hi), slice(lo - shift, hi - shift)))
        per_dim.append([(r, size, taps) for r, (size, taps) in phases.items()])
    result = []
    for combo in itertools.product(*per_dim):
        taps = tuple(
            _Tap(flat=int(np.ravel_multi_index([t for t, _, _ in pick], g.kernel)),
                 dst=tuple(dst for _, dst, _ in pick), src=tuple(src for _, _, src in pick))
            for pick in itertools.product(*(taps for _, _, taps in combo)))
        result.append(_Phase(first=tuple(r for r, _, _ in combo),
                             size=tuple(n for _, n, _ in combo), taps=taps))
    return tuple(result)


def _split(count: int, most: int) -> list[slice]:
    return [slice(i, min(i + most, count)) for i in range(0, count, most)]


def choose_method(g: Geometry) -> str:
    """Which formulation moves less memory for this shape (the GEMM flops are equal).

    ``scatter`` multiplies first and then adds each tap's block (C_out values per input
    pixel and tap) into the accumulator; ``gather`` first copies each tap's shifted
    input (C_in values per output pixel and tap) and then multiplies, writing every
    output once. Depthwise layers use broadcast multiply-adds instead of BLAS.
    """
    if g.c_in_per_group == 1:
        return "depthwise"
    phases = _phases(g)
    pixels = math.prod(g.in_size)
    scatter = sum(len(ph.taps) * g.c_out * pixels * 3 for ph in phases)
    gather = sum(len(ph.taps) * g.c_in * math.prod(ph.size) * 2 for ph in phases)
    return "gather" if gather < scatter else "scatter"


def conv_transpose(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   geometry: Geometry, method: str | None = None) -> np.ndarray:
    """NumPy twin of :func:`gpu_tconv.cuda_backend.conv_transpose` (NumPy arrays).

    ``method`` forces a formulation (``"scatter"``, ``"gather"``, ``"depthwise"``, the
    last for one input channel per group only); by default :func:`choose_method` picks.
    """
    g = geometry
    if method is None:
        method = choose_method(g)
        # The gather formulation multiplies the zeros around the input by the weights,
        # which turns an infinite weight into NaN where PyTorch has none.
        if method == "gather" and not np.isfinite(weight).all():
            method = "scatter"
    y = np.empty(g.out_shape, x.dtype)
    whole = (slice(None),) * 2
    compute = np.dtype(np.float32) if x.dtype == np.float16 else x.dtype
    # NaN, infinities and float16 overflow are results here, as in PyTorch, not errors.
    with np.errstate(all="ignore"):
        for in_box, out_box, tile in _tiles(g, method, compute.itemsize):
            if tile is None:  # no input reaches this box: only the bias does
                y[whole + out_box] = 0 if bias is None else \
                    bias.reshape((g.c_out,) + (1,) * g.rank)
            else:
                _compute(x[whole + in_box], weight, bias, tile, method, y[whole + out_box])
    return y


def _sizes(g: Geometry, method: str) -> tuple[int, int, int, int]:
    """Per sample, in elements: the accumulator and transposed input, one tap's block, the
    most taps a phase has, and the fewest taps that must be processed together.

    Gather runs all the taps of a phase in one GEMM, so that how the work is split
    never reassociates a sum; scatter and depthwise add tap by tap in any case.
    """
    phases = _phases(g)
    lattice = max(math.prod(ph.size) for ph in phases)
    pixels = math.prod(g.in_size)
    fixed = g.c_out * lattice + g.c_in * pixels
    tap_size = {"scatter": g.c_out * pixels, "gather": g.c_in * lattice,
                "depthwise": g.c_out * pixels}[method]
    most_taps = max(len(ph.taps) for ph in phases)
    return fixed, tap_size, most_taps, most_taps if method == "gather" else 1


def _per_sample_bytes(g: Geometry, method: str, itemsize: int) -> int:
    fixed, tap_size, _, together = _sizes(g, method)
    return (fixed + together * tap_size) * itemsize


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
    needed = -(-_per_sample_bytes(g, method, itemsize) // TEMP_BUDGET_BYTES)
    while True:
        per_dim, rest = [], needed
        for out in g.out_size:  # split the leading dimensions first
            parts = min(out, rest)
            rest = -(-rest // parts)
            per_dim.append([(out * j // parts, out * (j + 1) // parts) for j in range(parts)])
        boxes = [(box, _box(g, box)) for box in itertools.product(*per_dim)]
        # The inputs a box needs reach beyond its share (the kernel's halo): split
        # further until every box fits, or boxes are single outputs.
        largest = max((_per_sample_bytes(t[1], method, itemsize) for _, t in boxes if t),
                      default=0)
        if largest <= TEMP_BUDGET_BYTES or list(map(len, per_dim)) == list(g.out_size):
            break
        needed *= 2
    for box, found in boxes:
        out_box = tuple(slice(lo, hi) for lo, hi in box)
        yield (None, out_box, None) if found is None else (found[0], out_box, found[1])


def _compute(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, g: Geometry,
             method: str, y: np.ndarray) -> None:
    """Compute the transposed convolution of ``g`` into the (possibly strided) view ``y``."""
    compute = np.dtype(np.float32) if x.dtype == np.float16 else x.dtype
    groups, cin_g, cout_g = g.groups, g.c_in_per_group, g.c_out_per_group
    pixels, rank = math.prod(g.in_size), g.rank
    phases = _phases(g)
    lattice = max(math.prod(ph.size) for ph in phases)

    # Per sample: the accumulator and the transposed input are needed whole; the block
    # of one tap (the scatter GEMM's output, the gather's shifted input, or the
    # depthwise product) can be taken a few taps at a time.
    fixed, tap_size, most_taps, together = _sizes(g, method)
    taps_at_once = 1 if method == "depthwise" else most_taps
    budget = max(1, TEMP_BUDGET_BYTES // compute.itemsize)
    chunk = min(g.batch, max(1, budget // (fixed + taps_at_once * tap_size)))
    tap_block = max(1, together, min(taps_at_once, (budget // chunk - fixed) // tap_size))

    # (G, taps, C_out/G, C_in/G): per tap, the matrix taking input to output channels.
    w = weight.astype(compute, copy=False).reshape(groups, cin_g, cout_g, -1)
    w = w.transpose(0, 3, 2, 1)
    bias_init = None if bias is None else \
        bias.astype(compute).reshape((groups, cout_g, 1) + (1,) * rank)
    # The stacked weights of each block of taps, built once for all chunks.
    blocks = [[ph.taps[b] for b in _split(len(ph.taps), tap_block)] for ph in phases]
    if method == "scatter":  # (G, taps*C_out/G, C_in/G)
        lhs = [[w[:, [t.flat for t in taps]].reshape(groups, -1, cin_g) for taps in bl]
               for bl in blocks]
    elif method == "gather":  # (G, C_out/G, taps*C_in/G)
        lhs = [[np.ascontiguousarray(w[:, [t.flat for t in taps]].transpose(0, 2, 1, 3))
                .reshape(groups, cout_g, -1) for taps in bl] for bl in blocks]

    # Temporaries are allocated once and reused for every phase and chunk: fresh
    # memory costs page faults that rival the arithmetic.
    x_buf = np.empty(chunk * g.c_in * pixels, compute)
    acc_buf = np.empty(chunk * g.c_out * lattice, compute)
    tap_buf = np.empty(chunk * tap_block * tap_size, compute)
    every = (slice(None),) * 3

    for n0 in range(0, g.batch, chunk):
        nb = min(chunk, g.batch - n0)
        # (G, C_in/G, nb, *in): the batch folded into the pixels, so that one GEMM per
        # group covers the whole chunk.
        xt = x_buf[:nb * g.c_in * pixels].reshape((groups, cin_g, nb) + g.in_size)
        np.copyto(xt, x[n0:n0 + nb].reshape((nb, groups, cin_g) + g.in_size)
                  .transpose((1, 2, 0) + tuple(range(3, 3 + rank))))
        for p, ph in enumerate(phases):
            size = math.prod(ph.size)
            acc = acc_buf[:nb * g.c_out * size].reshape((groups, cout_g, nb) + ph.size)
            if method != "gather" or not ph.taps:
                acc.fill(0)
            for b, taps in enumerate(blocks[p]):
                if method == "gather":
                    # (G, taps, C_in/G, nb, *lattice): each tap's input, shifted into place.
                    cols = tap_buf[:len(taps) * nb * g.c_in * size].reshape(
                        (groups, len(taps), cin_g, nb) + ph.size)
                    for j, tap in enumerate(taps):
                        if any(d.stop - d.start < n for d, n in zip(tap.dst, ph.size)):
                            cols[:, j].fill(0)
                        cols[(slice(None), j) + every[:2] + tap.dst] = xt[every + tap.src]
                    flat_acc = acc.reshape(groups, cout_g, nb * size)
                    cols = cols.reshape(groups, -1, nb * size)
                    np.matmul(lhs[p][b], cols, out=flat_acc)  # the phase's only block
                    continue
                if method == "scatter":
                    cols = tap_buf[:len(taps) * nb * g.c_out * pixels].reshape(
                        groups, len(taps) * cout_g, nb * pixels)
                    np.matmul(lhs[p][b], xt.reshape(groups, cin_g, nb * pixels), out=cols)
                    cols = cols.reshape((groups, len(taps), cout_g, nb) + g.in_size)
                for j, tap in enumerate(taps):
                    dst = acc[every + tap.dst]
                    if method == "depthwise":
                        product = tap_buf[:dst.size].reshape(dst.shape)
                        scale = w[:, tap.flat].reshape((groups, cout_g, 1) + (1,) * rank)
                        np.multiply(xt[every + tap.src], scale, out=product)
                        dst += product
                    else:
                        dst += cols[(slice(None), j, slice(None), slice(None)) + tap.src]
            if bias_init is not None:
                acc += bias_init
            out = y[(slice(n0, n0 + nb), slice(None))
                    + tuple(slice(f, None, s) for f, s in zip(ph.first, g.stride))]
            # (C_out, nb, ...) to (nb, C_out, ...); rounds to float16 here when x is float16.
            out[...] = acc.reshape((g.c_out, nb) + ph.size).swapaxes(0, 1)
