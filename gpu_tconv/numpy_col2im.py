"""The ``col2im`` formulation of the NumPy backend: one GEMM over the input pixels, then
each tap's block added (or, where taps never overlap, copied) straight into the output.

With ``K`` taps, the GEMM is ``(T*C_out/G x C_in/G)`` by ``(C_in/G x nb*pixels)`` per
group, for ``T <= K`` taps at a time (all of them when they fit the budget): the
columns are the input's pixels only, however large the kernel, the stride or the
output, with the batch folded in, so a small image with many channels is one GEMM over
the whole batch with no padding at all, and a layer with many taps and few channels
holds only ``T`` taps' results. Tap ``k`` then sends input ``i`` to output
``o = i*stride + k*dilation - padding``: its block, restricted to the inputs that land
in the output, is added into the output's strided slice (``y[o(i, k)] += cols[k, i]``),
taps in a fixed order.

Where no two taps reach the same output (``kernel <= stride / gcd(stride, dilation)``
along every dimension; ``kernel == stride`` without padding is the pixel shuffle of
sub-pixel convolution) each block is copied into place instead, and the output is
initialized only if some of it is reached by no tap.

The layouts differ from the phase formulations' (no shared frame, N-D strided slices),
so the additions cost more per element on large images; the cost model in
:func:`gpu_tconv.numpy_backend.choose_method` weighs that.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .geometry import Geometry
from .numpy_backward import _tap_slices


def disjoint(g: Geometry) -> bool:
    """Whether no two taps reach the same output: along every dimension the taps'
    offsets ``k*dilation`` fall in distinct residues modulo the stride."""
    return all(k <= s // math.gcd(s, d) for k, s, d in zip(g.kernel, g.stride, g.dilation))


def covers(g: Geometry) -> bool:
    """Whether the taps, together, reach every output (counted with multiplicity, so this
    says it only for :func:`disjoint` taps)."""
    found = (_tap_slices(g, tap) for tap in itertools.product(*map(range, g.kernel)))
    reached = sum(math.prod(len(range(n)[o]) for o, n in zip(slices[1], g.out_size))
                  for slices in found if slices is not None)
    return reached >= math.prod(g.out_size)


def per_sample(g: Geometry, taps: int) -> int:
    """Elements of temporaries per sample for ``taps`` taps per GEMM: the input's copy
    and the GEMM's result."""
    return math.prod(g.in_size) * (g.c_in + taps * g.c_out)


def applies(g: Geometry, dtype: np.dtype, compute_dtype: np.dtype, budget: int) -> bool:
    """Whether this formulation can compute ``g``: one sample and one tap fit ``budget``
    bytes (else the phase formulations, which can split the output into boxes, take the
    layer), and, where the output is rounded from the compute type (float16), every
    output is one tap's (the sums of overlapping taps are added in the output itself)."""
    return per_sample(g, 1) * compute_dtype.itemsize <= budget and (
        dtype == compute_dtype or disjoint(g))


#: Bytes of GEMM results held at once beyond the output's own size: a tiny image's taps
#: all go in one GEMM, a large image with many taps and few channels holds only a few
#: taps' blocks (not K copies of the output) at a time.
SMALL_COLS_BYTES = 2**20


def _taps_per_gemm(g: Geometry, itemsize: int, budget: int) -> int:
    """Taps per GEMM: all that fit the budget with one sample, and at most enough to
    hold about the output's size (or :data:`SMALL_COLS_BYTES`) in results."""
    pixels, taps = math.prod(g.in_size), math.prod(g.kernel)
    fit = (budget // itemsize // pixels - g.c_in) // g.c_out
    output = max(g.batch * g.c_out * math.prod(g.out_size), SMALL_COLS_BYTES // itemsize)
    return max(1, min(taps, fit, -(-output // (g.batch * g.c_out * pixels))))


def compute(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, g: Geometry,
            y: np.ndarray, budget: int) -> None:
    """``y`` (nb, C_out, *out), a possibly strided view, = the transposed convolution of
    ``x`` (nb, C_in, *in); ``w`` the weight (C_in, C_out/G, *kernel), contiguous, in the
    compute type; temporaries within ``budget`` bytes (see :func:`applies`)."""
    from .numpy_backend import _scratch  # the backend imports this module

    groups, cin_g, cout_g = g.groups, g.c_in_per_group, g.c_out_per_group
    taps = math.prod(g.kernel)
    reach = [_tap_slices(g, tap) for tap in itertools.product(*map(range, g.kernel))]
    compute_dtype, pixels = w.dtype, math.prod(g.in_size)
    per_gemm = _taps_per_gemm(g, compute_dtype.itemsize, budget)
    chunk = min(g.batch, max(1, budget // compute_dtype.itemsize // per_sample(g, per_gemm)))
    w4 = w.reshape(groups, cin_g, cout_g, taps)
    y5 = y.reshape((g.batch, groups, cout_g) + g.out_size)
    copy = disjoint(g)
    if not copy or not covers(g):
        y[...] = 0 if bias is None else bias.reshape((g.c_out,) + (1,) * g.rank)
    # Copied blocks carry the bias themselves (one rounding to y's type, and the
    # outputs no tap reaches keep the bias written above).
    bias_rows = None if bias is None or not copy else \
        bias.astype(compute_dtype).reshape(groups, cout_g, 1, 1)
    if not any(reach):
        return
    scratch = _scratch(per_sample(g, per_gemm) * chunk * compute_dtype.itemsize).view(
        compute_dtype)
    every = (slice(None),) * 3
    for n0 in range(0, g.batch, chunk):
        nb = min(chunk, g.batch - n0)
        width = nb * pixels
        x_cols = scratch[:g.c_in * width].reshape(groups, cin_g, width)
        # (G, C_in/G, nb, *in) <- (nb, G, C_in/G, *in): the batch folded into the columns.
        np.copyto(x_cols.reshape((groups, cin_g, nb) + g.in_size),
                  x[n0:n0 + nb].reshape((nb, groups, cin_g) + g.in_size)
                  .transpose((1, 2, 0) + tuple(range(3, 3 + g.rank))))
        for t0 in range(0, taps, per_gemm):
            t1 = min(taps, t0 + per_gemm)
            if not any(reach[t0:t1]):
                continue
            # (G, C_out/G * T, C_in/G), rows (channel, tap): the weight read transposed
            # by BLAS as it lies when the GEMM takes every tap (a small copy otherwise).
            part = w4 if t1 - t0 == taps else np.ascontiguousarray(w4[..., t0:t1])
            rows = part.reshape(groups, cin_g, -1).swapaxes(1, 2)
            cols = scratch[g.c_in * width:(g.c_in + (t1 - t0) * g.c_out) * width].reshape(
                groups, cout_g * (t1 - t0), width)
            if cin_g == 1:  # an outer product: no GEMM per group
                np.multiply(rows, x_cols, out=cols)
            else:
                np.matmul(rows, x_cols, out=cols)
            if bias_rows is not None:
                cols.reshape(groups, cout_g, t1 - t0, width)[...] += bias_rows
            blocks = cols.reshape((groups, cout_g, t1 - t0, nb) + g.in_size)
            out = y5[n0:n0 + nb]
            for j, found in enumerate(reach[t0:t1]):
                if found is None:
                    continue
                ins, outs = found
                # (G, C_out/G, nb, *in) -> (nb, G, C_out/G, *in)
                src = np.moveaxis(blocks[(slice(None), slice(None), j, slice(None)) + ins], 2, 0)
                if copy:
                    out[every + outs] = src
                else:
                    out[every + outs] += src
