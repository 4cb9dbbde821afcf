"""Argument normalization and shape arithmetic: the one place where inputs are validated.

Everything a backend needs to know about a call is a :class:`Geometry`; building one
either succeeds or raises a ``ValueError``/``TypeError`` that names the offending
parameter, before any work is done.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

IntOrTuple = Union[int, Sequence[int]]

#: Element types the kernels are instantiated for.
SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

# Sizes are computed with 64-bit integers on every backend; anything near that range is
# refused rather than allowed to wrap around.
_MAX_ELEMENTS = 2**62
_MAX_PARAMETER = 2**31


def output_size(in_size: int, kernel: int, stride: int, padding: int, output_padding: int,
                dilation: int) -> int:
    """PyTorch's rule for one spatial dimension of a transposed convolution."""
    return (in_size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


@dataclass(frozen=True)
class Geometry:
    """A validated transposed convolution: shapes and per-dimension parameters."""

    batch: int
    c_in: int
    c_out: int
    groups: int
    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    out_size: tuple[int, ...]
    has_bias: bool = False

    @property
    def rank(self) -> int:
        return len(self.in_size)

    @property
    def c_in_per_group(self) -> int:
        return self.c_in // self.groups

    @property
    def c_out_per_group(self) -> int:
        return self.c_out // self.groups

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.batch, self.c_out) + self.out_size

    @property
    def flops(self) -> int:
        """Multiply-adds times two, counting every (input pixel, tap, channel pair)."""
        return (2 * self.batch * self.c_in * self.c_out_per_group
                * math.prod(self.in_size) * math.prod(self.kernel))


def _int(value, name: str) -> int:
    # bool is an Integral but never a sensible size; numpy integers are welcome.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _per_dim(value: IntOrTuple, name: str, rank: int) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(f"{name} must be an int or a tuple of {rank} ints "
                             f"(one per spatial dimension), got {tuple(value)!r}")
        return tuple(_int(v, name) for v in value)
    return (_int(value, name),) * rank


def _shape(shape, name: str) -> tuple[int, ...]:
    try:
        return tuple(_int(s, f"{name} shape") for s in shape)
    except TypeError:
        raise TypeError(f"{name} shape must be a sequence of integers, got {shape!r}") from None


def geometry_from_shapes(x_shape: Sequence[int], weight_shape: Sequence[int],
                         bias_shape: Sequence[int] | None = None, stride: IntOrTuple = 1,
                         padding: IntOrTuple = 0, output_padding: IntOrTuple = 0,
                         groups: int = 1, dilation: IntOrTuple = 1,
                         rank: int | None = None) -> Geometry:
    """Validate shapes and parameters and compute the output size.

    ``rank`` is the number of spatial dimensions; ``None`` takes it from the weight.
    """
    x_shape = _shape(x_shape, "x")
    weight_shape = _shape(weight_shape, "weight")
    if rank is None:
        rank = len(weight_shape) - 2
        if not 1 <= rank <= 3:
            raise ValueError("weight must have 3, 4 or 5 dimensions (C_in, C_out/groups, *kernel) "
                             f"for a 1-, 2- or 3-D transposed convolution, got shape {weight_shape}")
    if len(x_shape) != rank + 2:
        raise ValueError(f"x must have {rank + 2} dimensions (N, C_in, *spatial) for a {rank}-D "
                         f"transposed convolution, got shape {x_shape}")
    if len(weight_shape) != rank + 2:
        raise ValueError(f"weight must have {rank + 2} dimensions (C_in, C_out/groups, *kernel) "
                         f"for a {rank}-D transposed convolution, got shape {weight_shape}")
    for name, shape in (("x", x_shape), ("weight", weight_shape)):
        if any(s < 0 for s in shape):
            raise ValueError(f"{name} shape must not be negative, got {shape}")

    batch, c_in, *in_size = x_shape
    w_c_in, c_out_per_group, *kernel = weight_shape
    groups = _int(groups, "groups")
    stride = _per_dim(stride, "stride", rank)
    padding = _per_dim(padding, "padding", rank)
    output_padding = _per_dim(output_padding, "output_padding", rank)
    dilation = _per_dim(dilation, "dilation", rank)

    if groups < 1:
        raise ValueError(f"groups must be at least 1, got {groups}")
    if c_in == 0:
        raise ValueError(f"x has no input channels: shape {x_shape}")
    if any(s == 0 for s in in_size):
        raise ValueError(f"x has an empty spatial dimension: shape {x_shape}")
    if w_c_in != c_in:
        raise ValueError(f"weight.shape[0] must equal the input channels of x ({c_in}), "
                         f"got weight shape {weight_shape}")
    if c_in % groups:
        raise ValueError(f"groups ({groups}) must divide the input channels ({c_in})")
    if c_out_per_group == 0 or any(k == 0 for k in kernel):
        raise ValueError(f"weight must not have empty dimensions, got shape {weight_shape}")
    for name, values, low in (("stride", stride, 1), ("dilation", dilation, 1),
                              ("padding", padding, 0), ("output_padding", output_padding, 0)):
        if any(v < low for v in values):
            raise ValueError(f"{name} must be at least {low}, got {values}")
    # The kernel multiplies stride by dilation (and by a modular inverse below the
    # stride) in 64 bits: keeping each factor below 2**31 keeps those products exact.
    for name, values in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        if any(v >= _MAX_PARAMETER for v in values):
            raise ValueError(f"{name} must be smaller than 2**31, got {values}")

    for s, d, op in zip(stride, dilation, output_padding):
        if op >= max(s, d):
            raise ValueError(f"output_padding must be smaller than either stride or dilation, "
                             f"got output_padding={output_padding}, stride={stride}, "
                             f"dilation={dilation}")

    c_out = c_out_per_group * groups
    if bias_shape is not None:
        bias_shape = _shape(bias_shape, "bias")
        if bias_shape != (c_out,):
            raise ValueError(f"bias must have shape ({c_out},) (the output channels), "
                             f"got {bias_shape}")

    out_size = tuple(output_size(*a) for a in zip(in_size, kernel, stride, padding,
                                                  output_padding, dilation))
    if any(o < 1 for o in out_size):
        raise ValueError(
            f"padding {padding} is too large: the output size would be {out_size} "
            "= (in-1)*stride - 2*padding + dilation*(kernel-1) + output_padding + 1 "
            f"with in={tuple(in_size)}, kernel={tuple(kernel)}, stride={stride}, "
            f"dilation={dilation}, output_padding={output_padding}")

    for name, count in (("x", math.prod(x_shape)), ("weight", math.prod(weight_shape)),
                        ("output", batch * c_out * math.prod(out_size))):
        if count >= _MAX_ELEMENTS:
            raise ValueError(f"{name} would have {count} elements, more than this package "
                             f"supports (2**62)")
    return Geometry(batch=batch, c_in=c_in, c_out=c_out, groups=groups, in_size=tuple(in_size),
                    kernel=tuple(kernel), stride=stride, padding=padding,
                    output_padding=output_padding, dilation=dilation, out_size=out_size,
                    has_bias=bias_shape is not None)


def check_dtypes(x, weight, bias) -> np.dtype:
    """The common floating dtype of the operands, or a ``TypeError`` naming the culprit."""
    dtype = np.dtype(x.dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x must be float16, float32 or float64, got {dtype}")
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None and np.dtype(a.dtype) != dtype:
            raise TypeError(f"{name} must have the dtype of x ({dtype}), got {np.dtype(a.dtype)}")
    return dtype
