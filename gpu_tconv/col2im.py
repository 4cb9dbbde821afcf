"""GEMM + col2im, the classic GPU transposed convolution (Caffe, Chainer): a peer in
the GPU benchmark, not a backend.

Per sample and group, one GEMM ``col = W^T x`` (``(C_out/G * K, C_in/G) @ (C_in/G, P)``
with ``K`` taps and ``P`` input pixels) computes every product, and ``col2im``
(``kernels/col2im.cu``) sums, for each output element, the ``col`` entries that land on
it. The same code runs on CuPy arrays (cuBLAS and the CUDA kernel) and on NumPy arrays
(NumPy's matmul and the emulated kernel), which is how it is tested without a GPU.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from . import cuda_backend, emulated_backend, launch, variants
from .geometry import Geometry

SOURCE = "col2im.cu"
BLOCK = 256
#: Largest ``col`` buffer of one batch chunk; a single sample may exceed it.
COL_BUDGET_BYTES = 1 << 30
_INT32_MAX = 2**31 - 1


def plan(g: Geometry, dtype: np.dtype) -> launch.LaunchPlan:
    """The col2im launch for one batch chunk ``g`` (32-bit indices)."""
    total = g.batch * g.c_out * math.prod(g.out_size)
    padded = variants.padded
    values = ((total,) + padded(g.in_size, 1) + padded(g.out_size, 1) + padded(g.kernel, 1)
              + padded(g.stride, 1) + padded(g.padding, 0) + padded(g.dilation, 1))
    return launch.LaunchPlan(
        kernel=f"gpu_tconv::col2im<{launch.C_TYPES[np.dtype(dtype)]}>",
        grid=(max(1, min(launch.MAX_BLOCKS, -(-total // BLOCK))), 1, 1), block=(BLOCK, 1, 1),
        scalars=tuple(np.int32(v) for v in values), index_bits=32, source=SOURCE)


def batch_chunk(g: Geometry, itemsize: int) -> int:
    """Samples per GEMM so that ``col`` stays within :data:`COL_BUDGET_BYTES` (at least
    one); ``ValueError`` when one sample's ``col`` or output passes 32-bit indexing."""
    per_sample = g.c_out * math.prod(g.kernel) * math.prod(g.in_size)
    if max(per_sample, g.c_out * math.prod(g.out_size)) > _INT32_MAX:
        raise ValueError("gemm+col2im: one sample needs more than 2**31 elements")
    largest = _INT32_MAX // max(per_sample, g.c_out * math.prod(g.out_size))
    return max(1, min(g.batch, largest, COL_BUDGET_BYTES // (per_sample * itemsize)))


def _run(plan_: launch.LaunchPlan, col, y) -> None:
    if cuda_backend.is_device_array(col):
        kernel = cuda_backend.kernel_function(col.device.id, plan_)
        kernel(plan_.grid, plan_.block, (col, y, *plan_.scalars))
    else:
        emulated_backend.run_plan(plan_, (col, y))


def conv_transpose(x, weight, g: Geometry):
    """``y = conv_transpose(x, weight)`` (no bias) by GEMM + col2im, for NumPy or CuPy
    ``x`` ``(N, C_in, *in)`` and ``weight`` ``(C_in, C_out/G, *k)``, both C-contiguous."""
    if cuda_backend.is_device_array(x):
        import cupy as xp
    else:
        xp = np
    taps, pixels = math.prod(g.kernel), math.prod(g.in_size)
    # (G, C_out/G * K, C_in/G): the transposed weights of each group.
    w_t = weight.reshape(g.groups, g.c_in_per_group, g.c_out_per_group * taps).transpose(0, 2, 1)
    y = xp.empty(g.out_shape, x.dtype)
    chunk = batch_chunk(g, x.itemsize)
    for n0 in range(0, g.batch, chunk):
        xs = x[n0:n0 + chunk].reshape(-1, g.groups, g.c_in_per_group, pixels)
        col = xp.ascontiguousarray(xp.matmul(w_t, xs))  # (n, G, C_out/G * K, P)
        _run(plan(replace(g, batch=xs.shape[0]), x.dtype), col, y[n0:n0 + chunk])
    return y
