"""The ``stacked`` formulation of the NumPy backend: per output phase, one GEMM whose
inner dimension is every tap of the phase times C_in/G, written straight into the
phase's accumulator.

It is the gather formulation (:mod:`gpu_tconv.numpy_backend`) with the taps of every
dimension stacked, not only the last one's: for each phase, the input is copied once per
tap of the phase, shifted by that tap's (multi-dimensional) shift in the layout shared
with the accumulators (a flat offset; what wraps around a row is zeroed), and the
phase's ``C_out/G x taps*C_in/G`` weights multiply the copies' ``taps*C_in/G x
batch*pixels``. Each output is written once by a GEMM, never added: with few input
channels and many taps (``taps*C_in`` much less than ``C_out``) this replaces the
scatter formulation's K blocks of C_out rows per pixel by K copies of C_in rows, and
the gather formulation's blocks per tap of the other dimensions by none. The copies
live one phase at a time. With stride 1 it is the correlation with the flipped kernel
(im2col of the input).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .geometry import Geometry


def taps_per_phase(g: Geometry) -> int:
    """The most taps any phase has (the copies held at once, per input channel)."""
    from .numpy_backend import _phases

    return max((math.prod(map(len, ph.taps)) for ph in _phases(g)), default=0)


def buffers(g: Geometry) -> tuple[int, ...]:
    """Channels of each temporary per frame pixel, as ``numpy_backend._buffers`` counts
    them: the input, one phase's copies, every phase's accumulator."""
    from .numpy_backend import _phases

    return (g.c_in, taps_per_phase(g) * g.c_in, 0, len(_phases(g)) * g.c_out, 0)


def _zero_outside(a: np.ndarray, keep: tuple[slice, ...], frame: tuple[int, ...], nb: int):
    """Zero the frame positions of ``a`` (G, C, nb*frame) outside ``keep``."""
    view = a.reshape(a.shape[:2] + (nb,) + frame)
    for axis, (r, n) in enumerate(zip(keep, frame)):
        lead = (slice(None),) * (3 + axis)
        if r.start > 0:
            view[lead + (slice(0, r.start),)] = 0
        if r.stop < n:
            view[lead + (slice(r.stop, None),)] = 0


def compute(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, g: Geometry,
            y: np.ndarray, budget: int) -> None:
    """``y`` (nb, C_out, *out), a possibly strided view, = the transposed convolution of
    ``x`` (nb, C_in, *in); ``w`` the weight (G, C_in/G, C_out/G, *kernel), contiguous, in
    the compute type; temporaries within ``budget`` bytes where one sample fits."""
    from .numpy_backend import _frame, _phases, _scratch, _write

    groups, cin_g, cout_g, rank = g.groups, g.c_in_per_group, g.c_out_per_group, g.rank
    phases, frame = _phases(g), _frame(g)
    pixels = math.prod(frame)
    steps = [math.prod(frame[a + 1:]) for a in range(rank)]
    compute_dtype = w.dtype
    per_sample = pixels * sum(buffers(g))
    chunk = min(g.batch, max(1, budget // compute_dtype.itemsize // per_sample))
    scratch = _scratch(chunk * per_sample * compute_dtype.itemsize).view(compute_dtype)
    width_max = chunk * pixels
    x_buf = scratch[:g.c_in * width_max]
    copies_buf = scratch[g.c_in * width_max:(g.c_in + taps_per_phase(g) * g.c_in) * width_max]
    acc_buf = scratch[(g.c_in + taps_per_phase(g) * g.c_in) * width_max:]
    bias_cols = None if bias is None else bias.astype(compute_dtype).reshape(groups, cout_g, 1)
    inside = (slice(None),) * 3 + tuple(slice(0, n) for n in g.in_size)
    for n0 in range(0, g.batch, chunk):
        nb = min(chunk, g.batch - n0)
        width = nb * pixels
        x_cols = x_buf[:g.c_in * width].reshape(groups, cin_g, width)
        # (G, C_in/G, nb, *frame) <- (nb, G, C_in/G, *in), zero where the frame exceeds x.
        framed = x_cols.reshape((groups, cin_g, nb) + frame)
        if frame != g.in_size:
            x_cols.fill(0)
        np.copyto(framed[inside], x[n0:n0 + nb].reshape((nb, groups, cin_g) + g.in_size)
                  .transpose((1, 2, 0) + tuple(range(3, 3 + rank))))
        accs = [acc_buf[p * g.c_out * width:(p + 1) * g.c_out * width].reshape(
            groups, cout_g, width) for p in range(len(phases))]
        for p, ph in enumerate(phases):
            combos = [c for c in itertools.product(*ph.taps)
                      if all(t.reach is not None for t in c)]
            if not combos:  # no tap writes to this phase: _write writes the bias there
                accs[p] = None
                continue
            _phase(x_cols, w, ph, combos, accs[p], copies_buf, frame, steps, nb)
            if bias_cols is not None:
                accs[p] += bias_cols
        _write(y[n0:n0 + nb], accs, phases, g, frame, bias)


def _phase(x_cols, w, ph, combos, acc, copies_buf, frame, steps, nb) -> None:
    """One phase's copies of the input and its GEMM, into ``acc`` (G, C_out/G, width)."""
    groups, cin_g, width = x_cols.shape
    copies = copies_buf[:len(combos) * groups * cin_g * width].reshape(
        groups, len(combos), cin_g, width)
    for j, combo in enumerate(combos):
        # Lattice j takes input j - q along each dimension: a flat shift by off.
        off = sum(t.shift * step for t, step in zip(combo, steps))
        dst, lo, hi = copies[:, j], max(0, off), width + min(0, off)
        dst[..., :lo] = 0
        dst[..., max(hi, lo):] = 0
        if lo < hi:
            dst[..., lo:hi] = x_cols[..., lo - off:hi - off]
        # What wrapped around a row (or a sample) comes from the wrong place: zero it.
        _zero_outside(dst, tuple(slice(max(0, t.shift), min(n, n + t.shift))
                                 for t, n in zip(combo, frame)), frame, nb)
    # (G, C_out/G, taps*C_in/G), the taps in the copies' order.
    lhs = np.stack([w[(slice(None),) * 3 + tuple(t.k for t in combo)] for combo in combos],
                   axis=1)  # (G, taps, C_in/G, C_out/G)
    lhs = lhs.reshape(groups, -1, lhs.shape[-1]).swapaxes(1, 2)
    np.matmul(lhs, copies.reshape(groups, -1, width), out=acc)
