"""The operator's CPU implementations: the NumPy backend on NumPy views of the tensors.

Operands are handed over as views sharing the tensors' memory (channels-last tensors
as ``(N, *spatial, C)`` views, the backend's ``layout="channels_last"``), whatever
their strides; the result is the backend's own array, wrapped without a copy.
float16 runs as the backend runs it (in float32, rounded once when stored); bfloat16,
which NumPy lacks, is widened to float32 here and the result rounded once.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import api
from . import formats

_BACKEND = "numpy"


def _view(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().numpy()


def _widen(*tensors):
    """bfloat16 operands as float32 (copies), others as they are."""
    return tuple(t.float() if t is not None and t.dtype == torch.bfloat16 else t
                 for t in tensors)


def _tensor(a: np.ndarray | None, channels_last: bool, dtype: torch.dtype):
    return None if a is None else formats.from_layout(torch.from_numpy(a), channels_last).to(dtype)


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list,
            padding: list, output_padding: list, groups: int, dilation: list) -> torch.Tensor:
    """``y = conv_transpose(x, weight, bias)`` for CPU tensors; see the operator."""
    formats.check_operands(x, weight, bias)
    channels_last = formats.is_channels_last(formats.memory_format(x, weight))
    dtype = x.dtype
    x, weight, bias = _widen(x, weight, bias)
    y = api.conv_transpose(_view(formats.to_layout(x, channels_last)), _view(weight),
                           _view(bias), list(stride), list(padding), list(output_padding),
                           groups, list(dilation), layout=formats.layout_name(channels_last),
                           backend=_BACKEND)
    return _tensor(y, channels_last, dtype)


def backward(grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: list,
             padding: list, output_padding: list, groups: int, dilation: list,
             output_mask: list) -> tuple:
    """``(dx, dw, db)`` for CPU tensors, ``None`` where ``output_mask`` is False."""
    formats.check_operands(x, weight, None)
    channels_last = formats.is_channels_last(formats.memory_format(x, weight))
    dtype = x.dtype
    grad_output, x, weight = _widen(grad_output, x, weight)
    needs = tuple(name for name, wanted in zip(("input", "weight", "bias"), output_mask)
                  if wanted)
    dx, dw, db = api.conv_transpose_backward(
        _view(formats.to_layout(grad_output, channels_last)),
        _view(formats.to_layout(x, channels_last)), _view(weight), stride=list(stride),
        padding=list(padding), output_padding=list(output_padding), groups=groups,
        dilation=list(dilation), layout=formats.layout_name(channels_last), needs=needs,
        backend=_BACKEND)
    return _tensor(dx, channels_last, dtype), _tensor(dw, False, dtype), _tensor(db, False, dtype)
