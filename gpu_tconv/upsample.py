"""Upsampling by an integer factor as a depthwise transposed convolution.

Each channel is convolved on its own (``groups = channels``) with a fixed interpolation
kernel, stride ``scale``, the same 1-D kernel along every spatial axis (its outer
product in 2-D and 3-D: every kernel here is separable):

- ``"bilinear"`` (``linear`` in 1-D, ``trilinear`` in 3-D): the FCN initialization,
  per dimension ``k = 2*scale - scale % 2`` taps ``w[t] = 1 - |t - c| / f`` with
  ``f = ceil(k / 2)`` and ``c = f - 1`` for odd ``k``, ``f - 1/2`` for even ``k``;
- ``"bicubic"``: Keys' cubic convolution with a = -0.75 (PyTorch's and OpenCV's),
  radius 2 input pixels, ``4*scale - scale % 2`` taps;
- ``"lanczos"``: ``sinc(d) sinc(d/3)``, radius 3, ``6*scale - scale % 2`` taps, each
  output phase's taps divided by their sum (as Pillow's ``Image.LANCZOS``);
- ``"nearest"``: ``scale`` taps of 1, no padding: every input element is repeated.

Output ``o`` samples input position ``(o + 1/2)/scale - 1/2`` (``align_corners=False``):
tap ``t`` of a ``k``-tap kernel of radius ``R`` is ``K((t + 1/2 - k/2) / scale)``.

A transposed convolution sees zeros beyond the input, which would darken the first and
last outputs. So the input is first extended by ``R`` copies of its edge on each side
(a kernel of radius ``R`` reaches ``R`` input elements across a border, no further),
and the outputs that extension produces are cropped off again; the crop is the
convolution's own padding ``((2R - 1)*scale + k) / 2`` (a transposed convolution's
padding removes outputs from both ends), so no extra copy is made. The result then
equals PyTorch's ``interpolate(mode="linear"/"bilinear"/"trilinear"/"bicubic",
align_corners=False)`` everywhere, borders included, and ``mode="nearest"``. Lanczos
equals Pillow's resize of a float image wherever the kernel lies inside the image;
within 3 pixels of a border Pillow drops the taps that fall outside and renormalizes
the rest, where this replicates the edge pixel (a difference of a few percent of the
local contrast, at the outermost 3*scale output rows and columns).

On the numpy backend, 2-D data whose spatial axes are adjacent (images as ``HW`` or
``HWC``, arrays as ``NCHW``) is computed one axis at a time, in bands of rows
(:mod:`gpu_tconv.separable`); other data, and the cuda and emulated backends, run one
transposed convolution with the whole kernel.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import numpy as np

from . import api, cuda_backend, dispatch, memory, separable
from .layout import (SPATIAL_LETTERS, Layout, from_batch_channels_space, parse_layout,
                     to_batch_channels_space)

KERNELS = ("bilinear", "nearest", "bicubic", "lanczos")

#: Half-width, in input pixels, of each interpolating kernel's support.
RADIUS = {"bilinear": 1, "bicubic": 2, "lanczos": 3}
KEYS_A = -0.75      # Keys' cubic parameter of PyTorch and OpenCV
LANCZOS_A = 3       # Pillow's Image.LANCZOS


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


def keys_cubic(d: np.ndarray, a: float = KEYS_A) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``d`` (input pixels): support (-2, 2)."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def lanczos_window(d: np.ndarray, a: int = LANCZOS_A) -> np.ndarray:
    """``sinc(d) * sinc(d / a)`` for ``|d| < a``, else 0 (Pillow's ``lanczos_filter``)."""
    return np.where(np.abs(d) < a, np.sinc(d) * np.sinc(d / a), 0.0)


def resampling_taps(kernel: str, scale: int) -> np.ndarray:
    """The ``2*R*scale - scale % 2`` taps of a radius-``R`` kernel, float64.

    Output ``o`` sits at input position ``u = (o + 1/2)/scale - 1/2`` (PyTorch's
    ``align_corners=False``); with the transposed convolution's padding below, tap ``t``
    meets input ``i`` at distance ``u - i = (t + 1/2 - k/2) / scale``, so
    ``w[t] = K((t + 1/2 - k/2) / scale)``, symmetric. The taps of one output phase
    (every ``scale``-th tap) are the weights of one output: Lanczos's are divided by
    their sum, as Pillow does; bilinear's and Keys' already sum to 1.
    """
    size = 2 * RADIUS[kernel] * scale - scale % 2
    d = (np.arange(size) + 0.5 - size / 2) / scale
    if kernel == "bilinear":
        return np.maximum(0.0, 1 - np.abs(d))
    if kernel == "bicubic":
        return keys_cubic(d)
    taps = lanczos_window(d)
    # Tap t serves outputs of phase (t - padding) mod scale; the padding only relabels
    # the phases, so normalizing every residue class of t is the same thing.
    for phase in range(scale):
        taps[phase::scale] /= taps[phase::scale].sum()
    return taps


def tap_count(kernel: str, scale: int) -> int:
    """Taps per axis of ``kernel`` at ``scale`` (``ValueError``/``TypeError`` for bad ones)."""
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, np.integer)):
        raise TypeError(f"scale must be an integer, got {scale!r}")
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    if kernel == "nearest":
        return int(scale)
    if kernel not in RADIUS:
        raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}, "
                         f"got {kernel!r}")
    return 2 * RADIUS[kernel] * int(scale) - int(scale) % 2


def interpolation_kernel(kernel: str, scale: int) -> InterpolationKernel:
    """The kernel, stride, padding and edge extension for one spatial dimension.

    Input ``n`` becomes output ``scale * n``: ``(n + 2*edge - 1)*scale - 2*padding + k``,
    so ``padding = ((2*edge - 1)*scale + k) / 2``. A kernel of radius ``R`` (input pixels)
    reads ``R`` pixels across a border at most, so the edge is replicated ``R`` times.
    """
    tap_count(kernel, scale)
    scale = int(scale)
    if kernel == "nearest":
        return InterpolationKernel(np.ones(scale), scale, 0, edge=0)
    edge = RADIUS[kernel]
    taps = bilinear_taps(scale) if kernel == "bilinear" else resampling_taps(kernel, scale)
    return InterpolationKernel(taps, scale, ((2 * edge - 1) * scale + len(taps)) // 2, edge)


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
        kernel: ``"bilinear"`` (linear/bilinear/trilinear by rank), ``"nearest"``,
            ``"bicubic"`` (Keys, a = -0.75, as PyTorch) or ``"lanczos"`` (a = 3, as
            Pillow); in 1-D and 3-D the same kernel along each axis.
        layout: one letter per axis of ``x``; ``None`` means ``(N, C, *spatial)``.
        backend: as for :func:`gpu_tconv.conv_transpose`.

    Returns:
        An array of the kind, dtype and layout of ``x``, each spatial size times
        ``scale``. Integer data is computed in float32 (float64 above 16 bits), then
        rounded and clipped to its dtype's range (8-bit images stay 8-bit, the
        overshoot of bicubic and Lanczos at hard edges clipped).

    Raises:
        ValueError, TypeError: for a bad scale, kernel, layout or dtype, or a result
            that cannot fit in memory (checked before anything is allocated).
    """
    device = cuda_backend.is_device_array(x)
    if not device:
        x = np.asarray(x)
    if layout is None:
        if x.ndim - 2 not in SPATIAL_LETTERS:
            raise ValueError(f"x must have shape (N, C, *spatial) with 1 to 3 spatial axes, "
                             f"got shape {x.shape}; pass layout= for other arrangements")
        layout = "NC" + SPATIAL_LETTERS[x.ndim - 2]
    layout_ = parse_layout(layout, x.ndim)
    dtype = np.dtype(x.dtype)
    compute = _compute_dtype(dtype)
    taps = tap_count(kernel, scale)     # checks both, before a huge kernel is built
    dispatch.check_backend_name(backend)
    flat = None if device or dispatch.resolve(backend) != "numpy" else _as_2d(x, layout_)
    memory.check_upsample(x.shape, layout_.letters, dtype, compute, taps, scale,
                          separable=flat is not None, device=device)
    spec = interpolation_kernel(kernel, scale)
    if flat is not None:
        y = separable.upsample_2d(flat, spec.taps, spec.stride, spec.padding, spec.edge, compute)
        return y.reshape(tuple(n * spec.stride if c not in "NC" else n
                               for n, c in zip(x.shape, layout_.letters)))
    return _full_kernel(x, layout_, spec, dtype, compute, backend)


def _as_2d(x: np.ndarray, layout: Layout) -> np.ndarray | None:
    """``x`` as ``(outer, H, W, inner)`` when its two spatial axes are adjacent and few
    values lie within a pixel (the layouts of images and of NCHW arrays), else None."""
    spatial = [i for i, c in enumerate(layout.letters) if c not in "NC"]
    if len(spatial) != 2 or spatial[1] != spatial[0] + 1:
        return None
    first = spatial[0]
    inner = math.prod(x.shape[first + 2:])
    if inner > separable.MAX_INNER or 0 in x.shape:
        return None
    return np.ascontiguousarray(x).reshape(math.prod(x.shape[:first]), x.shape[first],
                                           x.shape[first + 1], inner)


def _full_kernel(x, layout: Layout, spec: InterpolationKernel, dtype: np.dtype,
                 compute: np.dtype, backend: str):
    """One depthwise transposed convolution with the whole (outer product) kernel."""
    xp = importlib.import_module("cupy") if cuda_backend.is_device_array(x) else np
    v = to_batch_channels_space(x, layout).astype(compute)
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
    return from_batch_channels_space(y.astype(dtype, copy=False), layout)
