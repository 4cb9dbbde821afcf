"""PyTorch front end: ``conv_transpose{1,2,3}d`` functions and ``ConvTranspose{1,2,3}d``
modules backed by gpu_tconv, with autograd. Needs PyTorch; ``import gpu_tconv`` does not.

The modules subclass ``torch.nn.ConvTranspose{1,2,3}d``, so construction, parameters,
initialization and ``state_dict`` keys are PyTorch's own; only the computation differs.
CUDA tensors run on gpu_tconv's CUDA kernel without copies (through DLPack) on
PyTorch's current stream; CPU tensors run on the NumPy backend, sharing memory with
the tensors. Both the forward and the backward pass are gpu_tconv's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import api
from .formats import bfloat16_dtype, is_bfloat16


def _to_array(t: torch.Tensor):
    """A NumPy (CPU) or CuPy (CUDA) view of ``t``, sharing its memory. bfloat16 goes
    through its bits (an int16 view), which every NumPy and CuPy takes, and comes out
    as ``ml_dtypes.bfloat16``."""
    t = t.detach()
    bits = t.dtype == torch.bfloat16
    if bits:
        t = t.view(torch.int16)
    if t.is_cuda:
        import cupy

        a = cupy.from_dlpack(t)
    else:
        a = t.numpy()
    return a.view(bfloat16_dtype()) if bits else a


def _to_tensor(a) -> torch.Tensor:
    bits = is_bfloat16(a.dtype)
    if bits:
        a = a.view(np.int16)
    t = torch.from_numpy(a) if type(a).__module__.startswith("numpy") else torch.from_dlpack(a)
    return t.view(torch.bfloat16) if bits else t


def _on_torch_stream(t: torch.Tensor, fn):
    """Run ``fn`` with CuPy on PyTorch's current stream of ``t``'s device (CUDA tensors)."""
    if not t.is_cuda:
        return fn("numpy")
    import cupy

    stream = torch.cuda.current_stream(t.device)
    with cupy.cuda.Device(t.device.index), cupy.cuda.ExternalStream(stream.cuda_stream):
        return fn("cuda")


class _ConvTranspose(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, params: dict):
        ctx.save_for_backward(x, weight)
        ctx.params = params
        y = _on_torch_stream(x, lambda backend: api.conv_transpose(
            _to_array(x), _to_array(weight), None if bias is None else _to_array(bias),
            **params, backend=backend))
        return _to_tensor(y)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        wanted = ("input", "weight", "bias")
        needs = tuple(n for n, flag in zip(wanted, ctx.needs_input_grad[:3]) if flag)
        grads = _on_torch_stream(x, lambda backend: api.conv_transpose_backward(
            _to_array(grad_output.contiguous()), _to_array(x), _to_array(weight),
            **ctx.params, needs=needs, backend=backend))
        return tuple(None if g is None else _to_tensor(g) for g in grads) + (None,)


def _function(rank: int):
    def conv_transpose(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       stride=1, padding=0, output_padding=0, groups: int = 1,
                       dilation=1) -> torch.Tensor:
        if input.dim() != rank + 2:
            raise ValueError(f"input must have {rank + 2} dimensions (N, C_in, *spatial), "
                             f"got shape {tuple(input.shape)}")
        params = dict(stride=stride, padding=padding, output_padding=output_padding,
                      groups=groups, dilation=dilation)
        return _ConvTranspose.apply(input, weight, bias, params)

    conv_transpose.__name__ = f"conv_transpose{rank}d"
    conv_transpose.__doc__ = (
        f"Drop-in for ``torch.nn.functional.conv_transpose{rank}d`` (same arguments), "
        "computed by gpu_tconv, differentiable.")
    return conv_transpose


conv_transpose1d = _function(1)
conv_transpose2d = _function(2)
conv_transpose3d = _function(3)


class _Forward:
    """The forward of PyTorch's ConvTranspose modules, computed by gpu_tconv."""

    _rank: int
    _function = None

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError(f"only 'zeros' padding mode is supported, got {self.padding_mode!r}")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, self._rank, self.dilation)
        return type(self)._function(input, self.weight, self.bias, self.stride, self.padding,
                                    output_padding, self.groups, self.dilation)


class ConvTranspose1d(_Forward, nn.ConvTranspose1d):
    """``torch.nn.ConvTranspose1d`` (same constructor and state), computed by gpu_tconv."""

    _rank, _function = 1, staticmethod(conv_transpose1d)


class ConvTranspose2d(_Forward, nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` (same constructor and state), computed by gpu_tconv."""

    _rank, _function = 2, staticmethod(conv_transpose2d)


class ConvTranspose3d(_Forward, nn.ConvTranspose3d):
    """``torch.nn.ConvTranspose3d`` (same constructor and state), computed by gpu_tconv."""

    _rank, _function = 3, staticmethod(conv_transpose3d)
