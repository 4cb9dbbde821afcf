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

from .formats import is_bfloat16

IntOrTuple = Union[int, Sequence[int]]
#: An int, one int per dimension, one ``(low, high)`` pair per dimension, or a mode.
Padding = Union[int, str, Sequence[Union[int, Sequence[int]]]]
PADDING_MODES = ("same", "valid")
LAYOUTS = ("channels_first", "channels_last")

#: Element types the kernels are instantiated for; bfloat16 (``ml_dtypes.bfloat16``,
#: recognized by :func:`gpu_tconv.formats.is_bfloat16`) too.
SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

# Sizes are computed with 64-bit integers on every backend; anything near that range is
# refused rather than allowed to wrap around.
_MAX_ELEMENTS = 2**62
_MAX_PARAMETER = 2**31


def output_length(in_size: int, kernel: int, stride: int, padding: int, output_padding: int,
                dilation: int, padding_high: int | None = None) -> int:
    """PyTorch's rule for one spatial dimension of a transposed convolution.

    ``out = (in-1)*stride - padding - padding_high + dilation*(kernel-1) + output_padding + 1``
    with ``padding_high = padding`` unless given.
    """
    high = padding if padding_high is None else padding_high
    return (in_size - 1) * stride - padding - high + dilation * (kernel - 1) + output_padding + 1


def mode_padding(mode: str, in_size: int, kernel: int, stride: int,
                 dilation: int) -> tuple[int, int, int]:
    """``(low, high, output_padding)`` of Keras/TensorFlow's ``"same"`` and ``"valid"``.

    With ``dk = dilation*(kernel-1) + 1``: ``same`` gives ``out = in*stride``, trimming
    ``max(dk - stride, 0)`` outputs, the smaller half at the low end (TensorFlow's
    split); ``valid`` gives ``out = (in-1)*stride + max(dk, stride)``, trimming nothing.
    Where ``dk < stride`` both end in ``stride - dk`` outputs no tap reaches (zeros).
    """
    dk = dilation * (kernel - 1) + 1
    trim = max(dk - stride, 0) if mode == "same" else 0
    return trim // 2, trim - trim // 2, max(stride - dk, 0)


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
    #: Padding removed at the high end of each dimension; ``padding`` is the low end's.
    #: Negative where a mode asks for more output than the kernel reaches (zeros there).
    padding_high: tuple[int, ...] | None = None
    channels_last: bool = False

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
        if self.channels_last:
            return (self.batch,) + self.out_size + (self.c_out,)
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


def _padding_pairs(padding, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(low, high)`` per dimension from an int, ints per dimension, or pairs."""
    if isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list)) for p in padding):
        if len(padding) != rank or not all(isinstance(p, (tuple, list)) and len(p) == 2
                                           for p in padding):
            raise ValueError(f"padding as pairs must have one (low, high) pair per spatial "
                             f"dimension ({rank}), got {padding!r}")
        pairs = [(_int(lo, "padding"), _int(hi, "padding")) for lo, hi in padding]
        return tuple(lo for lo, _ in pairs), tuple(hi for _, hi in pairs)
    symmetric = _per_dim(padding, "padding", rank)
    return symmetric, symmetric


def _describe_padding(low: tuple[int, ...], high: tuple[int, ...]) -> str:
    return str(low) if low == high else str(tuple(zip(low, high)))


def _output_size_padding(requested, in_size, kernel, stride, padding, padding_high,
                         dilation) -> tuple[int, ...]:
    """The output padding that yields ``output_size``, or a ``ValueError`` with the range."""
    rank = len(in_size)
    try:
        wanted = tuple(_int(v, "output_size") for v in requested)
    except TypeError:
        raise TypeError(f"output_size must be a sequence of integers, got {requested!r}") \
            from None
    if len(wanted) < rank:
        raise ValueError(f"output_size must give {rank} spatial sizes, got {wanted}")
    wanted = wanted[-rank:]  # a whole shape (N, C, *spatial) is accepted too
    smallest = [output_length(*a, 0, d, hi) for a, d, hi in
                zip(zip(in_size, kernel, stride, padding), dilation, padding_high)]
    for w, lo, s in zip(wanted, smallest, stride):
        if not lo <= w <= lo + s - 1:
            ranges = ", ".join(f"{m}..{m + st - 1}" for m, st in zip(smallest, stride))
            raise ValueError(f"output_size {wanted} is not reachable: each size must lie "
                             f"between the minimum and minimum + stride - 1 ({ranges})")
    return tuple(w - lo for w, lo in zip(wanted, smallest))


def geometry_from_shapes(x_shape: Sequence[int], weight_shape: Sequence[int],
                         bias_shape: Sequence[int] | None = None, stride: IntOrTuple = 1,
                         padding: Padding = 0, output_padding: IntOrTuple = 0,
                         groups: int = 1, dilation: IntOrTuple = 1,
                         rank: int | None = None, *, output_size: Sequence[int] | None = None,
                         layout: str = "channels_first") -> Geometry:
    """Validate shapes and parameters and compute the output size.

    ``rank`` is the number of spatial dimensions; ``None`` takes it from the weight.
    ``padding`` is an int, one int per dimension, one ``(low, high)`` pair per dimension,
    or ``"same"``/``"valid"`` (see :func:`mode_padding`). ``output_size`` (the spatial
    sizes wanted, or a whole shape whose trailing entries are taken) becomes output
    padding, as PyTorch's modules do.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    channels_last = layout == "channels_last"
    x_shape = _shape(x_shape, "x")
    weight_shape = _shape(weight_shape, "weight")
    if rank is None:
        rank = len(weight_shape) - 2
        if not 1 <= rank <= 3:
            raise ValueError("weight must have 3, 4 or 5 dimensions (C_in, C_out/groups, *kernel) "
                             f"for a 1-, 2- or 3-D transposed convolution, got shape {weight_shape}")
    x_axes = "(N, *spatial, C_in)" if channels_last else "(N, C_in, *spatial)"
    if len(x_shape) != rank + 2:
        raise ValueError(f"x must have {rank + 2} dimensions {x_axes} for a {rank}-D "
                         f"transposed convolution, got shape {x_shape}")
    if len(weight_shape) != rank + 2:
        raise ValueError(f"weight must have {rank + 2} dimensions (C_in, C_out/groups, *kernel) "
                         f"for a {rank}-D transposed convolution, got shape {weight_shape}")
    for name, shape in (("x", x_shape), ("weight", weight_shape)):
        if any(s < 0 for s in shape):
            raise ValueError(f"{name} shape must not be negative, got {shape}")

    if channels_last:
        batch, *in_size, c_in = x_shape
    else:
        batch, c_in, *in_size = x_shape
    w_c_in, c_out_per_group, *kernel = weight_shape
    groups = _int(groups, "groups")
    stride = _per_dim(stride, "stride", rank)
    mode = padding if isinstance(padding, str) else None
    if mode is not None and mode not in PADDING_MODES:
        raise ValueError(f"padding must be an int, a tuple, or one of {PADDING_MODES}, "
                         f"got {padding!r}")
    padding, padding_high = _padding_pairs(0 if mode else padding, rank)
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
                              ("padding", padding + padding_high, 0),
                              ("output_padding", output_padding, 0)):
        if any(v < low for v in values):
            raise ValueError(f"{name} must be at least {low}, got {values}")
    # The kernel multiplies stride by dilation (and by a modular inverse below the
    # stride) in 64 bits: keeping each factor below 2**31 keeps those products exact.
    for name, values in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        if any(v >= _MAX_PARAMETER for v in values):
            raise ValueError(f"{name} must be smaller than 2**31, got {values}")

    if (mode or output_size is not None) and any(output_padding):
        raise ValueError("output_padding cannot be combined with "
                         + ("output_size" if output_size is not None else f"padding={mode!r}")
                         + f", got output_padding={output_padding}")
    if mode is not None:
        if output_size is not None:
            raise ValueError(f"output_size cannot be combined with padding={mode!r}: "
                             "the mode fixes the output size")
        padding, padding_high, output_padding = (tuple(v) for v in zip(*(
            mode_padding(mode, *a) for a in zip(in_size, kernel, stride, dilation))))
    elif output_size is not None:
        output_padding = _output_size_padding(output_size, in_size, kernel, stride, padding,
                                              padding_high, dilation)
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

    out_size = tuple(output_length(*a) for a in zip(in_size, kernel, stride, padding,
                                                  output_padding, dilation, padding_high))
    if any(o < 1 for o in out_size):
        raise ValueError(
            f"padding {_describe_padding(padding, padding_high)} is too large: the output "
            f"size would be {out_size} = (in-1)*stride - padding_low - padding_high "
            "+ dilation*(kernel-1) + output_padding + 1 "
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
                    has_bias=bias_shape is not None, padding_high=padding_high,
                    channels_last=channels_last)


def check_dtypes(x, weight, bias) -> np.dtype:
    """The common floating dtype of the operands, or a ``TypeError`` naming the culprit."""
    dtype = np.dtype(x.dtype)
    if dtype not in SUPPORTED_DTYPES and not is_bfloat16(dtype):
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {dtype}")
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None and np.dtype(a.dtype) != dtype:
            raise TypeError(f"{name} must have the dtype of x ({dtype}), got {np.dtype(a.dtype)}")
    return dtype
