"""The PyTorch operators ``torch.ops.gpu_tconv.conv_transpose`` and its backward.

``conv_transpose(Tensor x, Tensor weight, Tensor? bias, SymInt[] stride, SymInt[]
padding, SymInt[] output_padding, SymInt groups, SymInt[] dilation) -> Tensor`` is
PyTorch's ``conv_transpose{1,2,3}d`` (rank ``x.dim() - 2``, one list entry per spatial
dimension, symmetric padding): ``y[n, co, o] = bias[co] + sum x[n, ci, i] w[ci, co', k]``
over ``o = i*stride + k*dilation - padding``, within each group.

- fake (meta) kernel: the shape from the package's own arithmetic and the strides of
  :func:`formats.memory_format`, so ``torch.compile``/``torch.export`` never run it;
- CPU kernel: the NumPy backend on views of the tensors (:mod:`.host`); CUDA kernel: the
  gather kernels on PyTorch's stream and allocator (:mod:`.device`);
- autograd: the backward is the operator ``conv_transpose_backward(grad_output, x,
  weight, <the same parameters>, bool[] output_mask) -> (Tensor?, Tensor?, Tensor?)``,
  itself differentiable (its derivatives are the two operators again), so compiled
  training steps and double backward work.
"""

from __future__ import annotations

import torch

from . import device, formats, host

_PARAMETERS = ("SymInt[] stride, SymInt[] padding, SymInt[] output_padding, SymInt groups, "
               "SymInt[] dilation")
SCHEMA = f"(Tensor x, Tensor weight, Tensor? bias, {_PARAMETERS}) -> Tensor"
BACKWARD_SCHEMA = (f"(Tensor grad_output, Tensor x, Tensor weight, {_PARAMETERS}, "
                   "bool[] output_mask) -> (Tensor?, Tensor?, Tensor?)")


@torch.library.custom_op("gpu_tconv::conv_transpose", mutates_args=(), device_types="cpu",
                         schema=SCHEMA)
def conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation):
    return host.forward(x, weight, bias, stride, padding, output_padding, groups, dilation)


@conv_transpose.register_kernel("cuda")
def _conv_transpose_cuda(x, weight, bias, stride, padding, output_padding, groups, dilation):
    return device.forward(x, weight, bias, stride, padding, output_padding, groups, dilation,
                          device.CudaLauncher(x.device))


@conv_transpose.register_fake
def _conv_transpose_fake(x, weight, bias, stride, padding, output_padding, groups, dilation):
    shape = formats.output_shape(x, weight, bias, stride, padding, output_padding, groups,
                                 dilation)
    return torch.empty(shape, dtype=x.dtype, device=x.device,
                       memory_format=formats.memory_format(x, weight))


@torch.library.custom_op("gpu_tconv::conv_transpose_backward", mutates_args=(),
                         device_types="cpu", schema=BACKWARD_SCHEMA)
def conv_transpose_backward(grad_output, x, weight, stride, padding, output_padding, groups,
                            dilation, output_mask):
    return host.backward(grad_output, x, weight, stride, padding, output_padding, groups,
                         dilation, output_mask)


@conv_transpose_backward.register_kernel("cuda")
def _conv_transpose_backward_cuda(grad_output, x, weight, stride, padding, output_padding,
                                  groups, dilation, output_mask):
    return device.backward(grad_output, x, weight, stride, padding, output_padding, groups,
                           dilation, output_mask, device.CudaLauncher(x.device))


@conv_transpose_backward.register_fake
def _conv_transpose_backward_fake(grad_output, x, weight, stride, padding, output_padding,
                                  groups, dilation, output_mask):
    formats.check_operands(x, weight, None)
    fmt = formats.memory_format(x, weight)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt) \
        if output_mask[0] else None
    dw = weight.new_empty(weight.shape) if output_mask[1] else None
    db = x.new_empty((weight.shape[1] * groups,)) if output_mask[2] else None
    return dx, dw, db


# --- autograd ------------------------------------------------------------------------

def _setup_forward(ctx, inputs, output):
    x, weight, bias, *params = inputs
    ctx.save_for_backward(x, weight)
    ctx.params, ctx.has_bias = params, bias is not None


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad
    mask = [needs[0], needs[1], needs[2] and ctx.has_bias]
    dx, dw, db = torch.ops.gpu_tconv.conv_transpose_backward(grad, x, weight, *ctx.params, mask)
    return (dx, dw, db) + (None,) * len(ctx.params)


def _setup_backward(ctx, inputs, output):
    grad_output, x, weight, *params, _ = inputs
    ctx.save_for_backward(grad_output, x, weight)
    ctx.params = params


def _double_backward(ctx, grad_dx, grad_dw, grad_db):
    """Derivatives of ``(dx, dw, db)``, all linear in ``dy`` and in ``x``/``w``:
    ``<gx, dx> = <conv_transpose(gx, w), dy>``, ``<gw, dw> = <conv_transpose(x, gw), dy>
    = <dx(dy; weight=gw), x>``, ``<gx, dx> = <dw(dy; x=gx), w>``, ``<gb, db> = <gb, dy>``."""
    dy, x, weight = ctx.saved_tensors
    params = ctx.params
    needs = ctx.needs_input_grad
    grad_dy = grad_x = grad_weight = None
    if needs[0]:
        parts = []
        if grad_dx is not None:
            parts.append(torch.ops.gpu_tconv.conv_transpose(grad_dx, weight, grad_db, *params))
            grad_db = None
        if grad_dw is not None:
            parts.append(torch.ops.gpu_tconv.conv_transpose(x, grad_dw, None, *params))
        if grad_db is not None:
            parts.append(grad_db.reshape(1, -1, *(1,) * (dy.dim() - 2)).expand(dy.shape))
        grad_dy = sum(parts[1:], parts[0]) if parts else None
    if needs[1] and grad_dw is not None:
        grad_x = torch.ops.gpu_tconv.conv_transpose_backward(
            dy, x, grad_dw, *params, [True, False, False])[0]
    if needs[2] and grad_dx is not None:
        grad_weight = torch.ops.gpu_tconv.conv_transpose_backward(
            dy, grad_dx, weight, *params, [False, True, False])[1]
    return (grad_dy, grad_x, grad_weight) + (None,) * (len(params) + 1)


conv_transpose.register_autograd(_backward, setup_context=_setup_forward)
conv_transpose_backward.register_autograd(_double_backward, setup_context=_setup_backward)
