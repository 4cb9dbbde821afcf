"""Gradients of the transposed convolution on the CPU, vectorized with NumPy.

With ``y = conv_transpose(x, w)`` and output ``o = i*stride + k*dilation - padding``:

- ``dx[n, ci, i] = sum_k sum_co w[ci, co, k] * dy[n, co, o(i, k)]`` (a strided forward
  convolution of ``dy``),
- ``dw[ci, co, k] = sum_n sum_i x[n, ci, i] * dy[n, co, o(i, k)]``,
- ``db[co] = sum_n sum_o dy[n, co, o]``.

Each is a loop over the kernel taps of one BLAS contraction over the inputs a tap
reaches (a strided slice of ``dy``), a batch chunk at a time so that temporaries stay
within :data:`gpu_tconv.numpy_backend.TEMP_BUDGET_BYTES`. float16 is computed in
float32. Channels-last arrays are handled through channels-first views.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from . import numpy_backend
from .geometry import Geometry


def _tap_slices(g: Geometry, tap: tuple[int, ...]):
    """Per dimension, the inputs ``i`` that tap reaches and their outputs (a strided slice)."""
    ins, outs = [], []
    for k, n_in, out, s, p, d in zip(tap, g.in_size, g.out_size, g.stride, g.padding,
                                     g.dilation):
        lo = max(0, -(-(p - k * d) // s))            # first i with o >= 0
        hi = min(n_in, (out - 1 + p - k * d) // s + 1)  # one past the last i with o < out
        if hi <= lo:
            return None
        first = lo * s + k * d - p
        ins.append(slice(lo, hi))
        outs.append(slice(first, first + (hi - lo - 1) * s + 1, s))
    return tuple(ins), tuple(outs)


def _channels_first(a: np.ndarray, g: Geometry) -> np.ndarray:
    return np.moveaxis(a, -1, 1) if g.channels_last else a


def conv_transpose_backward(grad_output: np.ndarray, x: np.ndarray, weight: np.ndarray,
                            geometry: Geometry, needs: tuple[str, ...]):
    """``(dx, dw, db)`` for NumPy arrays, ``None`` for what ``needs`` leaves out."""
    g = geometry
    dtype = x.dtype
    compute = numpy_backend.compute_dtype(dtype)
    groups, cin_g, cout_g = g.groups, g.c_in_per_group, g.c_out_per_group
    dy = _channels_first(grad_output, g)
    xs = _channels_first(x, g)
    # (G, C_in/G, C_out/G, *kernel) in the compute type.
    w = weight.astype(compute, copy=False).reshape((groups, cin_g, cout_g) + g.kernel)
    taps = [(tap, _tap_slices(g, tap)) for tap in itertools.product(*map(range, g.kernel))]
    taps = [(tap, found) for tap, found in taps if found is not None]

    per_sample = (g.c_in * math.prod(g.in_size) * 2 + g.c_out * math.prod(g.out_size))
    chunk = min(g.batch, max(1, numpy_backend.TEMP_BUDGET_BYTES
                             // (per_sample * compute.itemsize)))
    dx = np.empty(x.shape, dtype) if "input" in needs else None
    dw = np.zeros((groups, cin_g, cout_g) + g.kernel, compute) if "weight" in needs else None
    every = (slice(None),) * 3
    for n0 in range(0, g.batch, max(chunk, 1)):  # no iteration for an empty batch
        nb = min(chunk, g.batch - n0)
        dy_c = dy[n0:n0 + nb].astype(compute, copy=False).reshape(
            (nb, groups, cout_g) + g.out_size)
        x_c = xs[n0:n0 + nb].astype(compute, copy=False).reshape(
            (nb, groups, cin_g) + g.in_size)
        dx_c = np.zeros((nb, groups, cin_g) + g.in_size, compute) if dx is not None else None
        for tap, (ins, outs) in taps:
            # (nb, G, C_out/G, P): the outputs this tap reaches, made contiguous for BLAS.
            dy_t = np.ascontiguousarray(dy_c[every + outs]).reshape(nb, groups, cout_g, -1)
            w_t = w[every + tap]  # (G, C_in/G, C_out/G)
            if dx_c is not None:
                dx_c[every + ins] += np.matmul(w_t, dy_t).reshape(dx_c[every + ins].shape)
            if dw is not None:
                x_t = np.ascontiguousarray(x_c[every + ins]).reshape(nb, groups, cin_g, -1)
                # sum over samples and pixels: (G, C_in/G, nb*P) @ (G, nb*P, C_out/G)
                dw[every + tap] += np.matmul(
                    x_t.transpose(1, 2, 0, 3).reshape(groups, cin_g, -1),
                    dy_t.transpose(1, 0, 3, 2).reshape(groups, -1, cout_g))
        if dx_c is not None:
            _channels_first(dx, g)[n0:n0 + nb] = dx_c.reshape(
                (nb, g.c_in) + g.in_size)
    db = None
    if "bias" in needs:
        axes = (0,) + tuple(range(2, 2 + g.rank))
        db = dy.astype(compute, copy=False).sum(axis=axes).astype(dtype)
    if dw is not None:
        dw = dw.reshape(weight.shape).astype(dtype)
    return dx, dw, db
