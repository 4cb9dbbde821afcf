"""Upsampling by an integer factor as a depthwise transposed convolution.

Each channel is convolved on its own (``groups = channels``) with a fixed interpolation
kernel, stride ``scale``:

- ``"bilinear"`` (``linear`` in 1-D, ``trilinear`` in 3-D): the FCN initialization,
  per dimension ``k = 2*scale - scale % 2`` taps ``w[t] = 1 - |t - c| / f`` with
  ``f = ceil(k / 2)`` and ``c = f - 1`` for odd ``k``, ``f - 1/2`` for even ``k``;
  padding ``scale // 2`` makes the output exactly ``scale`` times the input;
- ``"nearest"``: ``scale`` taps of 1, no padding: every input element is repeated.

A transposed convolution sees zeros beyond the input, which would darken the first and
last ``scale`` outputs of the bilinear kernel. So the input is first extended by one
copy of its edge on each side (the bilinear kernel reaches one input element across a
border, no further), and the outputs that extension produces are cropped off again;
the crop is the convolution's own padding (a transposed convolution's padding removes
outputs from both ends), so no extra copy is made. The result then equals PyTorch's
``interpolate(mode="linear"/"bilinear"/"trilinear", align_corners=False)`` everywhere,
and ``mode="nearest"`` as well.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from . import api, cuda_backend
from .layout import (SPATIAL_LETTERS, from_batch_channels_space, parse_layout,
                     to_batch_channels_space)

KERNELS = ("bilinear", "nearest")


@dataclass(frozen=True)
class InterpolationKernel:
    """One dimension of an interpolation as a transposed convolution."""

    taps: np.ndarray   # (k,) float64 weights
    stride: int
    padding: int       # of the transposed convolution, the crop of the edge extension included
    edge: int          # copies of the edge element added on each side before the convolution


def bilinear_taps(scale: int) -> np.ndarray:
    """The FCN bilinear kernel for ``scale``: ``2*scale - scale % 2`` taps, float64."""
    size = 2 * scale - scale % 2
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 else factor - 0.5
    return 1 - np.abs(np.arange(size) - center) / factor


def interpolation_kernel(kernel: str, scale: int) -> InterpolationKernel:
    """The kernel, stride, padding and edge extension for one spatial dimension.

    Input ``n`` becomes output ``scale * n``: ``(n + 2*edge - 1)*scale - 2*padding + k``.
    """
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, np.integer)):
        raise TypeError(f"scale must be an integer, got {scale!r}")
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    scale = int(scale)
    if kernel == "bilinear":
        return InterpolationKernel(bilinear_taps(scale), scale, scale // 2 + scale, edge=1)
    if kernel == "nearest":
        return InterpolationKernel(np.ones(scale), scale, 0, edge=0)
    raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}, got {kernel!r}")


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    # float16 and small integers go through float32, whose 24-bit significand holds
    # 16-bit values and the weights exactly enough that rounding gives the right integer.
    if dtype.kind == "f" and dtype.itemsize <= 8:
        return np.dtype(np.float64 if dtype.itemsize == 8 else np.float32)
    if dtype.kind in "iu":
        return np.dtype(np.float32 if dtype.itemsize <= 2 else np.float64)
    raise TypeError(f"cannot upsample {dtype} data: integers and float16/32/64 are supported")


def upsample(x, scale: int, kernel: str = "bilinear", *, layout: str | None = None,
             backend: str = "auto"):
    """Upsample ``x`` by the integer ``scale`` along each spatial axis.

    Args:
        x: NumPy or CuPy array, shape ``(N, C, *spatial)`` with 1 to 3 spatial axes, or
            any arrangement that ``layout`` names (e.g. ``"HWC"``; see
            :mod:`gpu_tconv.layout`). Integer or float16/32/64.
        scale: the factor, at least 1; every spatial size is multiplied by it.
        kernel: ``"bilinear"`` (linear/bilinear/trilinear by rank) or ``"nearest"``.
        layout: one letter per axis of ``x``; ``None`` means ``(N, C, *spatial)``.
        backend: as for :func:`gpu_tconv.conv_transpose`.

    Returns:
        An array of the kind, dtype and layout of ``x``, each spatial size times
        ``scale``. Integer data is computed in floating point, then rounded and clipped
        to its dtype's range (8-bit images stay 8-bit).

    Raises:
        ValueError, TypeError: for a bad scale, kernel, layout or dtype.
    """
    if not cuda_backend.is_device_array(x):
        x = np.asarray(x)
    if layout is None:
        if x.ndim - 2 not in SPATIAL_LETTERS:
            raise ValueError(f"x must have shape (N, C, *spatial) with 1 to 3 spatial axes, "
                             f"got shape {x.shape}; pass layout= for other arrangements")
        layout = "NC" + SPATIAL_LETTERS[x.ndim - 2]
    layout_ = parse_layout(layout, x.ndim)
    dtype = np.dtype(x.dtype)
    compute = _compute_dtype(dtype)
    spec = interpolation_kernel(kernel, scale)
    xp = importlib.import_module("cupy") if cuda_backend.is_device_array(x) else np

    v = to_batch_channels_space(x, layout_).astype(compute)
    rank, channels = v.ndim - 2, v.shape[1]
    if spec.edge:
        v = xp.pad(v, ((0, 0), (0, 0)) + ((spec.edge, spec.edge),) * rank, mode="edge")
    taps = spec.taps
    for _ in range(rank - 1):
        taps = np.multiply.outer(taps, spec.taps)
    # Depthwise: weight (C, 1, *k) with groups = C, so channel c only sees channel c.
    weight = np.ascontiguousarray(np.broadcast_to(taps, (channels, 1) + taps.shape), compute)
    y = api.conv_transpose(v, weight, stride=spec.stride, padding=spec.padding,
                           groups=channels, backend=backend)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        y = xp.clip(xp.rint(y), info.min, info.max)
    return from_batch_channels_space(y.astype(dtype, copy=False), layout_)
