"""Tensor-level rules shared by every implementation of the operator: operand checks,
the memory format of the result, layout views and the output shape.

One memory-format rule serves the real kernels and the fake (meta) ones, so that
``torch.compile`` and ``torch.export`` see exactly the strides a real call returns. It
is the memory format PyTorch's own ``conv_transpose2d``/``3d`` returns (torch 2.13): a
2-D (3-D) call whose input or weight is ``torch.channels_last`` (``channels_last_3d``)
returns a channels-last result, except where PyTorch's kernel for the call has no
channels-last path and returns a contiguous one: float64 on CUDA (cuDNN disables NHWC
for it) and, on the CPU, 3-D calls that oneDNN does not take (float64, and bfloat16 or
float16 where this CPU's oneDNN lacks them). Otherwise the result is contiguous.
"""

from __future__ import annotations

import numpy as np
import torch
from torch._prims_common import suggest_memory_format

from .. import launch
from ..geometry import geometry_from_shapes, output_length

#: Tensor dtypes the operator takes.
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NUMPY = {torch.float16: np.dtype(np.float16), torch.float32: np.dtype(np.float32),
          torch.float64: np.dtype(np.float64)}
_CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


def check_operands(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``ValueError``/``TypeError`` naming the operand for ranks, dtypes and devices the
    operator cannot take (shapes and parameters are checked by the geometry)."""
    if x.dim() not in (3, 4, 5):
        raise ValueError(f"x must have 3, 4 or 5 dimensions (N, C_in, *spatial) for a 1-, 2- "
                         f"or 3-D transposed convolution, got shape {tuple(x.shape)}")
    if weight.dim() != x.dim():
        raise ValueError(f"weight must have {x.dim()} dimensions (C_in, C_out/groups, *kernel) "
                         f"like x, got shape {tuple(weight.shape)}")
    if x.dtype not in DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")


def _onednn_dtypes() -> dict:
    # Asked once: the half types depend on this CPU's instruction set only.
    ops = torch.ops.mkldnn
    return {torch.float64: False, torch.float32: True,
            torch.bfloat16: bool(ops._is_mkldnn_bf16_supported()),
            torch.float16: bool(ops._is_mkldnn_fp16_supported())}


_ONEDNN_DTYPES = _onednn_dtypes()


def _pytorch_has_channels_last(x: torch.Tensor) -> bool:
    """Whether PyTorch's own transposed convolution of ``x``'s rank, dtype and device
    returns channels-last results for channels-last operands (see the module)."""
    if x.device.type == "cuda":
        return x.dtype != torch.float64
    if x.dim() == 4:  # oneDNN and PyTorch's own 2-D kernel both do
        return True
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return False
    return _ONEDNN_DTYPES[x.dtype]


def memory_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The memory format of the result and of the kernels' layout: channels-last when
    ``x`` or ``weight`` is (2-D and 3-D) and PyTorch returns channels-last there too."""
    channels_last = _CHANNELS_LAST.get(x.dim() - 2)
    if channels_last is not None and channels_last in (suggest_memory_format(x),
                                                       suggest_memory_format(weight)) \
            and _pytorch_has_channels_last(x):
        return channels_last
    return torch.contiguous_format


def is_channels_last(fmt: torch.memory_format) -> bool:
    return fmt in (torch.channels_last, torch.channels_last_3d)


def layout_name(channels_last: bool) -> str:
    """The package's ``layout=`` value."""
    return "channels_last" if channels_last else "channels_first"


def to_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``(N, C, *spatial)`` as the kernels' layout: a ``(N, *spatial, C)`` view (no copy)
    for channels last, ``t`` itself otherwise."""
    return t.permute(0, *range(2, t.dim()), 1) if channels_last else t


def from_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Inverse of :func:`to_layout`: ``(N, *spatial, C)`` back to an ``(N, C, *spatial)``
    view; a contiguous channels-last array becomes a ``channels_last`` tensor."""
    return t.permute(0, t.dim() - 1, *range(1, t.dim() - 1)) if channels_last else t


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return _NUMPY[dtype]


def kernel_dtype(dtype: torch.dtype) -> tuple[torch.dtype, np.dtype]:
    """``(tensor dtype, element type)`` the CUDA kernel runs in for ``dtype``: the dtype
    itself where the kernels have an instantiation for it; bfloat16 without one is
    computed in float32 and rounded once."""
    if dtype == torch.bfloat16:
        native = next((d for d in launch.kernel_dtypes() if d.name == "bfloat16"), None)
        return (dtype, native) if native is not None else (torch.float32, _NUMPY[torch.float32])
    return dtype, _NUMPY[dtype]


def _static(*values) -> bool:
    return all(type(v) is int for v in values)


def output_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 stride, padding, output_padding, groups, dilation) -> list:
    """``(N, C_out, *out)`` of the operator, from the package's shape arithmetic.

    Concrete shapes are validated by :func:`gpu_tconv.geometry.geometry_from_shapes`
    (the batch, which does not affect validity, may be symbolic); symbolic spatial or
    channel sizes get the same formula, :func:`gpu_tconv.geometry.output_length`, and
    are validated when the kernel runs.
    """
    check_operands(x, weight, bias)
    batch, c_in, *size = x.shape
    params = (*stride, *padding, *output_padding, groups, *dilation)
    bias_shape = None if bias is None else tuple(bias.shape)
    if _static(c_in, *size, *weight.shape, *(bias_shape or ()), *params):
        g = geometry_from_shapes((1, c_in, *size), tuple(weight.shape), bias_shape, list(stride),
                                 list(padding), list(output_padding), groups, list(dilation))
        return [batch, g.c_out, *g.out_size]
    out = [output_length(*a) for a in zip(size, weight.shape[2:], stride, padding,
                                          output_padding, dilation)]
    return [batch, weight.shape[1] * groups, *out]
