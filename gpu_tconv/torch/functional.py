"""``conv_transpose{1,2,3}d``: ``torch.nn.functional``'s signatures on the operator.

The operator's schema has PyTorch's symmetric padding. The package's other padding
forms are resolved here, from the kernel size, stride and dilation alone (never the
input's size, so a compiled graph stays shape-generic): Keras/TensorFlow's ``"same"``
and ``"valid"`` and ``(low, high)`` pairs become ``padding = min(low, high)`` per
dimension, the mode's output padding, and a crop of the remaining ``low - padding`` and
``high - padding`` outputs at the two ends, a view of the operator's result (which
computes those few extra rows).
"""

from __future__ import annotations

import torch

from ..geometry import (IntOrTuple, Padding, PADDING_MODES, _int, _padding_pairs, _per_dim,
                        mode_padding)
from . import ops  # noqa: F401  (registers torch.ops.gpu_tconv)


def resolve_padding(padding: Padding, kernel, stride: tuple[int, ...],
                    dilation: tuple[int, ...], output_padding: tuple[int, ...]):
    """``(padding, output_padding, crops)`` for the operator: per dimension the symmetric
    padding, the output padding and the ``(start, end)`` outputs to remove afterwards."""
    rank = len(kernel)
    if isinstance(padding, str):
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be an int, a tuple, or one of {PADDING_MODES}, "
                             f"got {padding!r}")
        if any(output_padding):
            raise ValueError(f"output_padding cannot be combined with padding={padding!r}, "
                             f"got output_padding={output_padding}")
        low, high, output_padding = zip(*(mode_padding(padding, 1, int(k), s, d)
                                          for k, s, d in zip(kernel, stride, dilation)))
    else:
        low, high = _padding_pairs(padding, rank)
    symmetric = tuple(min(lo, hi) for lo, hi in zip(low, high))
    crops = tuple((lo - p, hi - p) for lo, hi, p in zip(low, high, symmetric))
    return symmetric, tuple(output_padding), crops


def _crop(y: torch.Tensor, crops) -> torch.Tensor:
    for axis, (start, end) in enumerate(crops, start=2):
        if start or end:
            y = y.narrow(axis, start, y.shape[axis] - start - end)
    return y


def conv_transpose(rank: int, input: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None = None, stride: IntOrTuple = 1,
                   padding: Padding = 0, output_padding: IntOrTuple = 0, groups: int = 1,
                   dilation: IntOrTuple = 1) -> torch.Tensor:
    """A ``rank``-D transposed convolution through ``torch.ops.gpu_tconv.conv_transpose``;
    ``input`` is ``(N, C_in, *spatial)`` or unbatched ``(C_in, *spatial)``."""
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("input and weight must be tensors")
    if input.dim() not in (rank + 1, rank + 2):
        raise ValueError(f"input must have {rank + 2} dimensions (N, C_in, *spatial) or "
                         f"{rank + 1} (C_in, *spatial), got shape {tuple(input.shape)}")
    if weight.dim() != rank + 2:
        raise ValueError(f"weight must have {rank + 2} dimensions (C_in, C_out/groups, "
                         f"*kernel), got shape {tuple(weight.shape)}")
    batched = input.dim() == rank + 2
    stride = _per_dim(stride, "stride", rank)
    dilation = _per_dim(dilation, "dilation", rank)
    output_padding = _per_dim(output_padding, "output_padding", rank)
    padding, output_padding, crops = resolve_padding(padding, weight.shape[2:], stride,
                                                     dilation, output_padding)
    y = torch.ops.gpu_tconv.conv_transpose(
        input if batched else input.unsqueeze(0), weight, bias, list(stride), list(padding),
        list(output_padding), _int(groups, "groups"), list(dilation))
    y = _crop(y, crops)
    return y if batched else y.squeeze(0)


def _function(rank: int):
    def conv_transpose_nd(input: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None = None, stride: IntOrTuple = 1,
                          padding: Padding = 0, output_padding: IntOrTuple = 0, groups: int = 1,
                          dilation: IntOrTuple = 1) -> torch.Tensor:
        return conv_transpose(rank, input, weight, bias, stride, padding, output_padding,
                              groups, dilation)

    conv_transpose_nd.__name__ = conv_transpose_nd.__qualname__ = f"conv_transpose{rank}d"
    conv_transpose_nd.__doc__ = (
        f"Drop-in for ``torch.nn.functional.conv_transpose{rank}d`` (same arguments), on the "
        "operator ``torch.ops.gpu_tconv.conv_transpose``: differentiable, compiles and exports.\n\n"
        f"    ``input`` is ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``, ``weight`` "
        "``(C_in, C_out/groups, *kernel)``, ``bias`` ``(C_out,)``; per dimension ``out = "
        "(in-1)*stride - 2*padding + dilation*(kernel-1) + output_padding + 1``. ``padding`` "
        "may also be ``\"same\"``, ``\"valid\"`` or ``(low, high)`` pairs, as in "
        "``gpu_tconv.conv_transpose``.")
    return conv_transpose_nd


conv_transpose1d = _function(1)
conv_transpose2d = _function(2)
conv_transpose3d = _function(3)
