"""The operator on the gather kernels, with every buffer allocated by PyTorch.

The output, the gradients and every temporary are ``torch.empty`` tensors on the
operands' device, handed to the kernels as array views of the tensors' memory. For
CUDA tensors (:class:`CudaLauncher`) the views are CuPy arrays over the tensors'
pointers and the kernels are queued on PyTorch's current stream, so a call allocates
nothing from CuPy's pool, never synchronizes with the host and never asks the device
for its free memory: it is accounted in PyTorch's caching allocator and can be
captured in a CUDA graph. (A kernel is compiled on its first call, which must
therefore come before a capture.)

The same code runs on the CPU with :class:`EmulatedLauncher`, the kernels' source
compiled for the host, which is how this path is tested without a GPU.

Channels-last tensors are viewed as ``(N, *spatial, C)``, the kernels'
``channels_last`` layout; operands are made contiguous in their layout (a copy only
when they are not). bfloat16, where the kernels have no instantiation for it, is
computed in float32 and rounded once.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .. import cuda_backend, dispatch, emulated_backend, launch
from ..geometry import Geometry, geometry_from_shapes
from . import formats


class CudaLauncher:
    """Kernels on one CUDA device, on PyTorch's current stream there (a context manager)."""

    def __init__(self, device: torch.device):
        import cupy

        self._cupy = cupy
        self.index = torch.cuda.current_device() if device.index is None else device.index
        self.device = cupy.cuda.Device(self.index)
        self._contexts = []

    @property
    def xp(self):
        return self._cupy

    def __enter__(self):
        stream = torch.cuda.current_stream(self.index).cuda_stream
        with warnings.catch_warnings():
            # CuPy 14 deprecates ExternalStream (for Stream.from_external); it still
            # wraps the raw pointer PyTorch gives, on the device named.
            warnings.simplefilter("ignore", DeprecationWarning)
            external = self._cupy.cuda.ExternalStream(stream, self.index)
        self._contexts = [self.device, external]
        for context in self._contexts:
            context.__enter__()
        return self

    def __exit__(self, *exc):
        for context in reversed(self._contexts):
            context.__exit__(*exc)

    def view(self, t: torch.Tensor | None, dtype: np.dtype):
        """A CuPy array over ``t``'s memory (which it keeps alive), as ``dtype``."""
        if t is None:
            return None
        cupy = self._cupy
        nbytes = t.numel() * t.element_size()
        memory = cupy.cuda.UnownedMemory(t.data_ptr(), nbytes, t, self.index)
        return cupy.ndarray(tuple(t.shape), dtype, cupy.cuda.MemoryPointer(memory, 0),
                            strides=tuple(s * t.element_size() for s in t.stride()))

    def run(self, plan: launch.LaunchPlan, arrays: tuple) -> None:
        cuda_backend.run_plan(plan, arrays, self.device)


class EmulatedLauncher:
    """Kernels on the CPU through the emulated backend, for CPU tensors (tests)."""

    xp = np

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def view(self, t: torch.Tensor | None, dtype: np.dtype):
        if t is None:
            return None
        # NumPy has no bfloat16: its bits are viewed through a 16-bit integer type.
        t = t.detach().view(torch.int16) if t.dtype == torch.bfloat16 else t.detach()
        return t.numpy().view(dtype)

    def run(self, plan: launch.LaunchPlan, arrays: tuple) -> None:
        emulated_backend.run_plan(plan, arrays)


def _torch_dtype(dtype) -> torch.dtype:
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":  # ml_dtypes' type, unknown to torch.from_numpy
        return torch.bfloat16
    return torch.from_numpy(np.empty(0, dtype)).dtype


class _Allocations:
    """``empty(shape, dtype)`` for the gradient kernels: ``torch.empty`` on the device,
    returned as a launcher view; remembers which tensor backs each array."""

    def __init__(self, launcher, device: torch.device):
        self._launcher, self._device = launcher, device
        self._tensors = []

    def __call__(self, shape, dtype):
        t = torch.empty(tuple(shape), dtype=_torch_dtype(dtype), device=self._device)
        self._tensors.append(t)
        return self._launcher.view(t, np.dtype(dtype))

    def tensor(self, array) -> torch.Tensor:
        """The tensor whose memory ``array`` is (an allocation of this object)."""
        # Not array.data for NumPy: a buffer of ml_dtypes' bfloat16 cannot be exported.
        pointer = array.ctypes.data if isinstance(array, np.ndarray) else array.data.ptr
        for t in self._tensors:
            if t.data_ptr() == pointer and tuple(t.shape) == tuple(array.shape):
                return t
        raise RuntimeError("a gradient kernel returned memory not allocated through PyTorch")


class _Namespace:
    """The array module handed to the gradient kernels, allocating through ``empty``."""

    def __init__(self, xp, empty):
        self._xp, self.empty = xp, empty

    def __getattr__(self, name):
        return getattr(self._xp, name)


def _kernel_gradients(launcher, empty: _Allocations, dy, x, weight, geometry: Geometry, needs):
    # The allocator covers the gradients and their workspaces; the namespace makes any
    # other ``xp.empty`` PyTorch's too.
    xp = _Namespace(launcher.xp, empty)
    return dispatch._kernel_gradients(xp, launcher.run, dy, x, weight, geometry, needs,
                                      empty=empty)


def _prepared(tensors, compute: torch.dtype, channels_last: bool):
    """Operands in the kernels' dtype and layout, contiguous there (copies only if needed)."""
    return tuple(None if t is None else formats.to_layout(t.to(compute), channels_last)
                 .contiguous() for t in tensors)


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list,
            padding: list, output_padding: list, groups: int, dilation: list,
            launcher) -> torch.Tensor:
    """``y = conv_transpose(x, weight, bias)`` on the forward gather kernel, ``y`` from
    ``torch.empty`` in :func:`formats.memory_format`."""
    formats.check_operands(x, weight, bias)
    fmt = formats.memory_format(x, weight)
    channels_last = formats.is_channels_last(fmt)
    compute, element = formats.kernel_dtype(x.dtype)
    xs, = _prepared((x,), compute, channels_last)
    w, b = _prepared((weight, bias), compute, False)
    g = geometry_from_shapes(xs.shape, w.shape, None if b is None else b.shape, list(stride),
                             list(padding), list(output_padding), groups, list(dilation),
                             layout=formats.layout_name(channels_last))
    y = torch.empty((g.batch, g.c_out, *g.out_size), dtype=compute, device=x.device,
                    memory_format=fmt)
    if g.batch:
        with launcher:
            arrays = tuple(launcher.view(a, element)
                           for a in (xs, w, b, formats.to_layout(y, channels_last)))
            launcher.run(launch.plan(g, element), arrays)
    return y.to(x.dtype)


def _bias_gradient(grad_output: torch.Tensor) -> torch.Tensor:
    # Half types are summed in float32, as PyTorch and the package accumulate them.
    wide = torch.float32 if grad_output.dtype in (torch.float16, torch.bfloat16) else None
    dims = (0, *range(2, grad_output.dim()))
    return grad_output.sum(dims, dtype=wide).to(grad_output.dtype)


def backward(grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: list,
             padding: list, output_padding: list, groups: int, dilation: list,
             output_mask: list, launcher) -> tuple:
    """``(dx, dw, db)`` on the gradient gather kernels (the bias gradient is a sum),
    ``None`` where ``output_mask`` is False."""
    formats.check_operands(x, weight, None)
    channels_last = formats.is_channels_last(formats.memory_format(x, weight))
    compute, element = formats.kernel_dtype(x.dtype)
    needs = tuple(name for name, wanted in zip(("input", "weight"), output_mask) if wanted)
    dx = dw = None
    if needs:
        dy, xs = _prepared((grad_output, x), compute, channels_last)
        w, = _prepared((weight,), compute, False)
        g = geometry_from_shapes(xs.shape, w.shape, None, list(stride), list(padding),
                                 list(output_padding), groups, list(dilation),
                                 layout=formats.layout_name(channels_last))
        if tuple(dy.shape) != g.out_shape:
            raise ValueError(f"grad_output must have the output's shape, got "
                             f"{tuple(grad_output.shape)}")
        if g.batch == 0:
            grads = (torch.empty_like(xs), torch.zeros_like(w))
        else:
            empty = _Allocations(launcher, x.device)
            with launcher:
                arrays = [launcher.view(a, element) for a in (dy, xs, w)]
                found = _kernel_gradients(launcher, empty, *arrays, g, needs)[:2]
            grads = tuple(None if a is None else empty.tensor(a) for a in found)
        dx = None if grads[0] is None or "input" not in needs else \
            formats.from_layout(grads[0], channels_last).to(x.dtype)
        dw = None if grads[1] is None or "weight" not in needs else grads[1].to(x.dtype)
    db = _bias_gradient(grad_output) if output_mask[2] else None
    return dx, dw, db
