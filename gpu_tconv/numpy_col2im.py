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


def taps_reaching(g: Geometry) -> list[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]]:
    """``(tap, input slices, output slices)`` of every tap that reaches an output."""
    found = [(tap, _tap_slices(g, tap)) for tap in itertools.product(*map(range, g.kernel))]
    return [(tap, *slices) for tap, slices in found if slices is not None]


def disjoint(g: Geometry) -> bool:
    """Whether no two taps reach the same output: along every dimension the taps'
    offsets ``k*dilation`` fall in distinct residues modulo the stride."""
    return all(k <= s // math.gcd(s, d) for k, s, d in zip(g.kernel, g.stride, g.dilation))


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


def compute(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, g: Geometry,
            y: np.ndarray, budget: int) -> None:
    """``y`` (nb, C_out, *out), a possibly strided view, = the transposed convolution of
    ``x`` (nb, C_in, *in); ``w`` the weight (C_in, C_out/G, *kernel) in the compute type;
    temporaries within ``budget`` bytes (see :func:`fits`)."""
    from .numpy_backend import _scratch  # the backend imports this module

    groups, cin_g, cout_g = g.groups, g.c_in_per_group, g.c_out_per_group
    reaching = taps_reaching(g)
    compute_dtype, pixels = w.dtype, math.prod(g.in_size)
    cells = budget // compute_dtype.itemsize
    per_tap = max(1, min(len(reaching), (cells // pixels - g.c_in) // g.c_out))
    chunk = min(g.batch, max(1, cells // per_sample(g, per_tap)))
    # (G, taps*C_out/G, C_in/G): every reaching tap's rows, in tap order.
    lhs = np.ascontiguousarray(np.stack(
        [w.reshape((groups, cin_g, cout_g) + g.kernel)[(slice(None),) * 3 + tap]
         for tap, _, _ in reaching], axis=1).transpose(0, 1, 3, 2)
        .reshape(groups, -1, cin_g)) if reaching else None
    y5 = y.reshape((g.batch, groups, cout_g) + g.out_size)
    copy = disjoint(g)
    reached = sum(math.prod(len(range(n)[o]) for o, n in zip(outs, g.out_size))
                  for _, _, outs in reaching)
    if not copy or reached < math.prod(g.out_size):
        y[...] = 0 if bias is None else bias.reshape((g.c_out,) + (1,) * g.rank)
    # Copied blocks carry the bias themselves (one rounding to y's type, and the
    # outputs no tap reaches keep the bias written above).
    bias_rows = None if bias is None or not copy else \
        bias.astype(compute_dtype).reshape(groups, 1, cout_g, 1)
    if not reaching:
        return
    scratch = _scratch(per_sample(g, per_tap) * chunk * compute_dtype.itemsize).view(
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
        for t0 in range(0, len(reaching), per_tap):
            these = reaching[t0:t0 + per_tap]
            rows = lhs[:, t0 * cout_g:(t0 + len(these)) * cout_g]
            cols = scratch[g.c_in * width:(g.c_in + len(these) * g.c_out) * width].reshape(
                groups, len(these) * cout_g, width)
            if cin_g == 1:  # an outer product: no GEMM per group
                np.multiply(rows, x_cols, out=cols)
            else:
                np.matmul(rows, x_cols, out=cols)
            if bias_rows is not None:
                cols.reshape(groups, len(these), cout_g, width)[...] += bias_rows
            blocks = cols.reshape((groups, len(these), cout_g, nb) + g.in_size)
            out = y5[n0:n0 + nb]
            for j, (_, ins, outs) in enumerate(these):
                # (G, C_out/G, nb, *in) -> (nb, G, C_out/G, *in)
                src = np.moveaxis(blocks[(slice(None), j, slice(None), slice(None)) + ins], 2, 0)
                if copy:
                    out[every + outs] = src
                else:
                    out[every + outs] += src
