"""From a public call to a backend: array conversion, validation, backend choice.

The backends share one signature, ``conv_transpose(x, weight, bias, geometry)``, and
each works on its own kind of array (CuPy for ``cuda``, NumPy for the others); this
module moves operands to where the chosen backend runs and the result back to where
``x`` came from (NumPy in, NumPy out; CuPy in, CuPy out on the same device).
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from . import (cuda_backend, emulated_backend, launch, numpy_backend, numpy_backward,
               numpy_formats, variants)
from .formats import bfloat16_dtype, check_precision, is_bfloat16, round_to_tf32, uses_tf32
from .geometry import IntOrTuple, Padding, check_dtypes, geometry_from_shapes

logger = logging.getLogger("gpu_tconv")

BACKENDS = ("auto", "cuda", "numpy", "emulated")
# Each takes (x, weight, bias, geometry, precision=...); bfloat16 and TF32 reach the
# NumPy backend through numpy_formats' conversions.
_HOST_BACKENDS = {"numpy": numpy_formats.conv_transpose,
                  "emulated": emulated_backend.conv_transpose}


def available_backends() -> list[str]:
    """The backends usable on this machine (``"auto"`` always is, and is not listed)."""
    names = ["cuda"] if cuda_backend.unavailable_reason() is None else []
    names.append("numpy")
    if emulated_backend.unavailable_reason() is None:
        names.append("emulated")
    return names


@functools.lru_cache(maxsize=1)
def _log_fallback_once(reason: str) -> None:
    # Only a CUDA backend that is unavailable as a whole leads here; an error during a
    # CUDA call is raised to the caller, never hidden by a rerun on the CPU.
    logger.info("gpu_tconv: backend 'auto' uses numpy because %s", reason)


def check_backend_name(backend: str) -> None:
    """A ``ValueError`` for a name that is not a backend (usable here or not)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {backend!r}")


def resolve(backend: str) -> str:
    """The backend that will run: ``auto`` resolved, an unusable one refused with the reason."""
    check_backend_name(backend)
    if backend == "auto":
        if cuda_backend.unavailable_reason() is None:
            return "cuda"
        _log_fallback_once(cuda_backend.unavailable_reason())
        return "numpy"
    if backend == "cuda":
        cuda_backend.check_available()
    elif backend == "emulated" and emulated_backend.unavailable_reason() is not None:
        raise RuntimeError(f"the emulated backend is unavailable: "
                           f"{emulated_backend.unavailable_reason()}")
    return backend


_DLPACK_CPU, _DLPACK_CUDA_DEVICES = 1, (2, 3, 13)  # kDLCPU; kDLCUDA, host, managed


def _as_array(a):
    """NumPy or CuPy view of an operand: CuPy and NumPy arrays as they are; objects with
    ``__dlpack__`` (PyTorch, JAX: DLPack also hands over the producer's stream) or
    ``__cuda_array_interface__`` without a copy; anything else through ``np.asarray``.

    A PyTorch tensor that requires grad is read through ``detach()`` (PyTorch refuses
    to export it otherwise): the result is an array, outside autograd either way, and
    ``gpu_tconv.torch`` has the differentiable functions.
    """
    if getattr(a, "requires_grad", False) is True and callable(getattr(a, "detach", None)):
        a = a.detach()
    if a is None or cuda_backend.is_device_array(a) or isinstance(a, np.ndarray):
        return a
    if (type(a).__module__.startswith("torch")
            and str(getattr(a, "dtype", "")) == "torch.bfloat16"):
        return _torch_bfloat16(a)
    if hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__"):
        device_type = int(a.__dlpack_device__()[0])
        if device_type == _DLPACK_CPU:
            return np.from_dlpack(a)
        if device_type in _DLPACK_CUDA_DEVICES:
            import cupy

            return cupy.from_dlpack(a)
    if hasattr(a, "__cuda_array_interface__"):
        import cupy

        return cupy.asarray(a)
    return np.asarray(a)


def _operand(a, name: str, optional: bool = False):
    """``_as_array(a)``, or a ``TypeError`` naming the parameter when ``a`` is ``None``
    (unless ``optional``) or not an array of numbers."""
    if a is None:
        if optional:
            return None
        raise TypeError(f"{name} must be an array, got None")
    try:
        array = _as_array(a)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name} must be an array, got {type(a).__name__} ({error})") from error
    # ml_dtypes' bfloat16 is of kind "V" (a user-defined type) to NumPy.
    if array.dtype == object or (array.dtype.kind in "USVM" and not is_bfloat16(array.dtype)):
        raise TypeError(f"{name} must be an array of numbers, got {type(a).__name__}")
    return array


def _torch_bfloat16(t):
    """A PyTorch bfloat16 tensor as an ``ml_dtypes.bfloat16`` view (NumPy for CPU, CuPy
    for CUDA), through its bits: neither NumPy nor every CuPy takes bfloat16 by DLPack."""
    import sys

    bits = t.detach().view(sys.modules["torch"].int16)
    if bits.is_cuda:
        import cupy

        return cupy.from_dlpack(bits).view(bfloat16_dtype())
    return bits.numpy().view(bfloat16_dtype())


def _to_host(a):
    return a.get() if cuda_backend.is_device_array(a) else a


def _to_device(a, device):
    """A host result back on the device its input came from."""
    import cupy

    with device:
        return cupy.asarray(a)


def conv_transpose(rank: int | None, x, weight, bias, stride: IntOrTuple, padding: Padding,
                   output_padding: IntOrTuple, groups: int, dilation: IntOrTuple,
                   backend: str, output_size=None, layout: str = "channels_first",
                   variant: str = "auto", precision: str = "highest"):
    """Validate, choose the backend and run; ``rank=None`` takes it from ``weight``.

    ``variant`` picks the kernel of the ``cuda`` and ``emulated`` backends (see
    :mod:`gpu_tconv.variants`); the ``numpy`` backend has no kernels and ignores it
    (an unknown name is refused everywhere).
    """
    check_backend_name(backend)
    check_precision(precision)
    variants.check_name(variant)
    x, weight, bias = _operand(x, "x"), _operand(weight, "weight"), _operand(bias, "bias", True)
    dtype = check_dtypes(x, weight, bias)
    geometry = geometry_from_shapes(x.shape, weight.shape, None if bias is None else bias.shape,
                                    stride, padding, output_padding, groups, dilation, rank,
                                    output_size=output_size, layout=layout)
    name = resolve(backend)
    x_on_device = cuda_backend.is_device_array(x)
    device = x.device if x_on_device else None
    if name in ("cuda", "emulated"):
        # An inapplicable variant is refused before any work.
        variants.resolve(variant, geometry, dtype, precision=precision)

    if name == "cuda":
        return cuda_backend.conv_transpose(x, weight, bias, geometry, device, variant=variant,
                                           precision=precision)

    x, weight, bias = _to_host(x), _to_host(weight), _to_host(bias)
    if geometry.batch == 0:
        y = np.empty(geometry.out_shape, dtype)
    elif name == "emulated":
        y = emulated_backend.conv_transpose(x, weight, bias, geometry, variant=variant,
                                            precision=precision)
    else:
        y = _HOST_BACKENDS[name](x, weight, bias, geometry, precision=precision)
    return _to_device(y, device) if x_on_device else y


NEEDS = ("input", "weight", "bias")


def _kernel_gradients(xp, run, dy, x, weight, geometry, needs, precision="highest",
                      empty=None):
    """Gradients from the gather kernels: ``run(plan, arrays)`` launches on the backend.

    ``empty(shape, dtype) -> array`` allocates the gradients and every temporary (the
    split weight gradient's partial sums), e.g. from a caller's own memory pool;
    default ``xp.empty``. The weight gradient runs in one pass, or, where that leaves
    too few threads, as partial sums over chunks of the batch and image combined in
    chunk order by a second kernel (:func:`gpu_tconv.launch.grad_weight_split`): no
    atomics either way, so every gradient is the same bit for bit on every run.
    """
    empty = xp.empty if empty is None else empty
    dtype = x.dtype
    dx = dw = db = None
    dy_sum = dy
    if uses_tf32(dtype, precision):
        dy, x, weight = (round_to_tf32(a, xp) for a in (dy, x, weight))
    if "input" in needs:
        dx = empty(x.shape, dtype)
        run(launch.plan(geometry, dtype, kind="grad_input"), (dy, weight, dx))
    if "weight" in needs:
        dw = empty(weight.shape, dtype)
        chunks, _ = launch.grad_weight_split(geometry)
        if chunks == 1:
            run(launch.plan(geometry, dtype, kind="grad_weight"), (x, dy, dw))
        else:
            partial = empty((chunks, *weight.shape), numpy_backend.compute_dtype(dtype))
            run(launch.plan(geometry, dtype, kind="grad_weight_partial"), (x, dy, partial))
            run(launch.plan(geometry, dtype, kind="grad_weight_combine"), (partial, dw))
            del partial
    if "bias" in needs:
        axes = (0,) + tuple(range(1, 1 + geometry.rank) if geometry.channels_last
                            else range(2, 2 + geometry.rank))
        db = empty((geometry.c_out,), dtype)
        db[...] = dy_sum.sum(axis=axes, dtype=numpy_backend.compute_dtype(dtype))
    return dx, dw, db


def conv_transpose_backward(grad_output, x, weight, stride: IntOrTuple, padding: Padding,
                            output_padding: IntOrTuple, groups: int, dilation: IntOrTuple,
                            backend: str, output_size=None, layout: str = "channels_first",
                            needs=NEEDS, precision: str = "highest"):
    """Validate, choose the backend and compute the requested gradients; at
    ``precision="tf32"`` every backend rounds the operands of the products (``dy``,
    ``x``, ``weight``) of float32 to TF32 (the bias gradient, a plain sum, keeps ``dy``)."""
    check_backend_name(backend)
    check_precision(precision)
    needs = tuple(needs)
    if not set(needs) <= set(NEEDS):
        raise ValueError(f"needs must be a subset of {NEEDS}, got {needs}")
    grad_output, x, weight = (_operand(grad_output, "grad_output"), _operand(x, "x"),
                              _operand(weight, "weight"))
    dtype = check_dtypes(x, weight, None)
    if np.dtype(grad_output.dtype) != dtype:
        raise TypeError(f"grad_output must have the dtype of x ({dtype}), "
                        f"got {np.dtype(grad_output.dtype)}")
    geometry = geometry_from_shapes(x.shape, weight.shape, None, stride, padding,
                                    output_padding, groups, dilation,
                                    output_size=output_size, layout=layout)
    if tuple(grad_output.shape) != geometry.out_shape:
        raise ValueError(f"grad_output must have the output's shape {geometry.out_shape}, "
                         f"got {tuple(grad_output.shape)}")
    name = resolve(backend)
    on_device = cuda_backend.is_device_array(x)
    if name == "cuda":
        import cupy

        device = x.device if on_device else cupy.cuda.Device()
        with device:
            moved = [cupy.ascontiguousarray(cupy.asarray(a)) for a in (grad_output, x, weight)]
            result = _kernel_gradients(
                cupy, lambda plan, arrays: cuda_backend.run_plan(plan, arrays, device),
                *moved, geometry, needs, precision)
        return tuple(r if r is None or on_device else r.get() for r in result)

    host = [np.ascontiguousarray(_to_host(a)) if name == "emulated" else _to_host(a)
            for a in (grad_output, x, weight)]
    if name == "emulated":
        result = _kernel_gradients(np, emulated_backend.run_plan, *host, geometry, needs,
                                   precision)
    else:
        result = numpy_formats.conv_transpose_backward(*host, geometry, needs, precision)
    if on_device:
        return tuple(None if r is None else _to_device(r, x.device) for r in result)
    return result
