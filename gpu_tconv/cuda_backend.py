"""The ``cuda`` backend: the gather kernel compiled by NVRTC through CuPy and launched.

CuPy is imported lazily: ``import gpu_tconv`` neither needs it nor touches a GPU.
Work runs on the device of the operands and on CuPy's current stream there; the
current device is restored afterwards. Before anything is allocated the memory a call
needs is compared with what the device has free: NumPy operands are then moved and
computed a batch chunk at a time if they do not fit whole, and a result that cannot
fit at all is a ``MemoryError`` naming the bytes, never a CUDA error from deep inside.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
from dataclasses import replace

import numpy as np

from . import launch
from .formats import round_to_tf32, uses_tf32
from .geometry import Geometry

# CuPy's own default options (its include paths) are kept; these are added.
COMPILE_OPTIONS = ("--std=c++17",)

# What provides each piece of the run-time compiler, for error messages.
_NVRTC_PACKAGE = "nvidia-cuda-nvrtc==13.*"
_HEADERS_PACKAGE = "nvidia-cuda-runtime==13.*"
_MMA_PACKAGE = "nvidia-cuda-crt==13.*"  # crt/mma.h, behind <mma.h> (tensor cores)


def _import_cupy():
    try:
        import cupy
    except ImportError as error:
        raise RuntimeError("the cuda backend needs CuPy: pip install cupy-cuda13x "
                           f"{_NVRTC_PACKAGE} {_HEADERS_PACKAGE}") from error
    return cupy


@functools.lru_cache(maxsize=None)
def _unavailable() -> RuntimeError | None:
    # Asked once per process: whether CuPy imports and a device answers does not change.
    try:
        cupy = _import_cupy()
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as error:  # CUDARuntimeError: no driver, or a driver too old
            raise RuntimeError(f"the cuda backend cannot reach a GPU: {error}") from error
        if count < 1:
            raise RuntimeError("the cuda backend found no CUDA device")
    except RuntimeError as error:
        return error
    return None


def check_available() -> None:
    """Raise ``RuntimeError`` saying why the GPU cannot be used (cause kept), else nothing."""
    error = _unavailable()
    if error is not None:
        raise RuntimeError(str(error)) from error.__cause__


def unavailable_reason() -> str | None:
    error = _unavailable()
    return None if error is None else str(error)


def cupy_version() -> str | None:
    """CuPy's version if it imports, else ``None`` (whether or not a GPU is usable)."""
    try:
        return _import_cupy().__version__
    except RuntimeError:
        return None


def _cuda_version(number: int) -> str:
    # CUDA encodes 13.0 as 13000 and 12.4 as 12040.
    return f"{number // 1000}.{number % 1000 // 10}"


def describe() -> dict:
    """Versions and devices as CuPy sees them, for a usable backend (see ``check_available``).

    Returns ``{"cupy": str, "runtime": str, "driver": str, "nvrtc": str, "devices": [{"id",
    "name", "compute_capability", "memory_bytes"}, ...]}``; ``nvrtc`` says why when the
    compiler library cannot be loaded.
    """
    check_available()
    cupy = _import_cupy()
    runtime = cupy.cuda.runtime
    try:
        nvrtc = "%d.%d" % cupy.cuda.nvrtc.getVersion()
    except Exception as error:  # a missing libnvrtc surfaces only when first used
        nvrtc = f"unavailable ({error})"
    devices = []
    for device_id in range(runtime.getDeviceCount()):
        props = runtime.getDeviceProperties(device_id)
        name = props["name"]
        devices.append({"id": device_id,
                        "name": name.decode() if isinstance(name, bytes) else str(name),
                        "compute_capability": f"{props['major']}.{props['minor']}",
                        "memory_bytes": int(props["totalGlobalMem"])})
    return {"cupy": cupy.__version__, "runtime": _cuda_version(runtime.runtimeGetVersion()),
            "driver": _cuda_version(runtime.driverGetVersion()), "nvrtc": nvrtc,
            "devices": devices}


def is_device_array(a) -> bool:
    """True for a CuPy array; never imports CuPy to find out."""
    return type(a).__module__.startswith("cupy")


def explain_compile_error(error: BaseException) -> RuntimeError:
    """A compile or load failure turned into an error that says what to do about it."""
    text = str(error)
    if "crt/mma.h" in text:
        hint = f"the tensor-core (WMMA) headers are missing: pip install {_MMA_PACKAGE}"
    elif "cuda_fp16.h" in text or "cuda_bf16.h" in text:
        hint = f"the CUDA headers are missing: pip install {_HEADERS_PACKAGE}"
    elif "nvrtc" in text.lower() and any(w in text.lower() for w in
                                         ("not found", "cannot open", "no such file",
                                          "failed to load", "could not")):
        hint = f"the NVRTC library is missing: pip install {_NVRTC_PACKAGE}"
    else:
        hint = "compiling the transposed-convolution kernel failed"
    return RuntimeError(f"{hint}\n{text}")


def compile_options(source: str = launch.KERNEL_FILE) -> tuple[str, ...]:
    """NVRTC options beyond CuPy's own: :data:`COMPILE_OPTIONS` and the kernel folder
    as an include path (a kernel file may include another)."""
    return COMPILE_OPTIONS + (f"--include-path={launch.kernel_source_path(source).parent}",)


_compile_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _compiled(device_id: int, source: str, kernel: str, defines: launch.Defines):
    cupy = _import_cupy()
    with cupy.cuda.Device(device_id):
        try:
            module = cupy.RawModule(code=launch.kernel_code(source, defines),
                                    options=compile_options(source), name_expressions=[kernel])
            return module.get_function(kernel)
        except Exception as error:  # CompileException (with the NVRTC log), a missing library
            raise explain_compile_error(error) from error


def kernel_function(device_id: int, plan: launch.LaunchPlan):
    """The compiled kernel of ``plan`` on one device.

    Compiled once per (device, source, instantiation, defines), the key being exactly the
    compile-time inputs; the lock makes concurrent first calls wait for that one compile.
    """
    with _compile_lock:
        return _compiled(device_id, plan.source, plan.kernel, plan.defines)


def compile_plan(device_id: int, plan: launch.LaunchPlan) -> None:
    """Compile the kernel of ``plan`` for one device now, outside the compile lock: for
    compiling many different kernels in parallel threads (NVRTC releases the GIL) ahead
    of their launches, which then find them compiled. Errors surface at the launch."""
    try:
        _compiled(device_id, plan.source, plan.kernel, plan.defines)
    except RuntimeError:
        pass


def run_plan(plan: launch.LaunchPlan, arrays: tuple, device) -> None:
    """Launch ``plan`` on ``device`` (CuPy's current stream there) with ``arrays`` (CuPy
    arrays or ``None``) before the scalar arguments."""
    kernel_function(device.id, plan)(plan.grid, plan.block, (*arrays, *plan.scalars),
                                     shared_mem=plan.shared_bytes)


def batch_chunk(batch: int, per_sample: int, fixed: int, free: int) -> int:
    """How many samples to run at once so that ``fixed + chunk*per_sample <= free`` bytes.

    Raises ``MemoryError`` naming the bytes when not even one sample fits.
    """
    if fixed + batch * per_sample <= free:
        return batch
    if fixed + per_sample > free:
        raise MemoryError(f"the cuda backend needs {fixed + per_sample} bytes of device memory "
                          f"for one sample ({fixed + batch * per_sample} for the whole batch), "
                          f"but only {free} bytes are free")
    return (free - fixed) // per_sample


def _torch_cached_bytes(device_id: int) -> int:
    """Device memory that PyTorch's caching allocator holds but does not use, where the
    process already runs PyTorch on the GPU (this module never imports it)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not cuda.is_initialized():
        return 0
    return max(0, cuda.memory_reserved(device_id) - cuda.memory_allocated(device_id))


def _free_bytes(cupy) -> int:
    """Bytes a call may allocate on the current device: the driver's free memory, the
    free blocks of CuPy's pool (CuPy reuses them, and frees them when an allocation
    fails) and the blocks PyTorch has cached but does not use (see :func:`_make_room`)."""
    free, _ = cupy.cuda.runtime.memGetInfo()
    return (free + cupy.get_default_memory_pool().free_bytes()
            + _torch_cached_bytes(cupy.cuda.Device().id))


def _make_room(cupy, wanted: int) -> None:
    """Before allocating ``wanted`` bytes: if the driver and CuPy's pool cannot supply
    them, have PyTorch return its unused cached blocks, which :func:`_free_bytes`
    counted (only then: PyTorch reallocates them at a cost)."""
    free, _ = cupy.cuda.runtime.memGetInfo()
    if (free + cupy.get_default_memory_pool().free_bytes() < wanted
            and _torch_cached_bytes(cupy.cuda.Device().id)):
        sys.modules["torch"].cuda.empty_cache()


def conv_transpose(x, weight, bias, geometry: Geometry, device=None, *, variant: str = "auto",
                   precision: str = "highest"):
    """CUDA twin of :func:`gpu_tconv.numpy_backend.conv_transpose`.

    Operands may be CuPy arrays (on ``device``) or NumPy arrays; the result is a CuPy
    array on ``device`` when ``x`` is one, else a NumPy array. ``variant`` names the
    kernel variant (for tests and benchmarks; see :mod:`gpu_tconv.variants`);
    ``precision="tf32"`` runs float32 with TF32 operands: on TF32 tensor cores (the
    ``wmma`` variant), or rounded to TF32 before a CUDA-core variant.
    """
    cupy = _import_cupy()
    device = device if device is not None else cupy.cuda.Device()
    for operand in (weight, bias):
        if is_device_array(operand) and operand.device != device:
            raise ValueError(f"operands are on different devices ({operand.device} and {device})")
    on_device = is_device_array(x)
    if geometry.batch == 0:
        with device:
            return cupy.empty(geometry.out_shape, x.dtype) if on_device else \
                np.empty(geometry.out_shape, x.dtype)
    itemsize = np.dtype(x.dtype).itemsize
    in_sample = geometry.c_in * math.prod(geometry.in_size) * itemsize
    out_sample = geometry.c_out * math.prod(geometry.out_size) * itemsize
    with device:
        weight = cupy.ascontiguousarray(cupy.asarray(weight))
        bias = None if bias is None else cupy.ascontiguousarray(cupy.asarray(bias))
        if on_device:
            # The whole result must live on the device; a non-contiguous x is copied a
            # chunk at a time.
            free = _free_bytes(cupy)
            if geometry.batch * out_sample > free:
                batch_chunk(geometry.batch, out_sample, 0, free)  # raises MemoryError
            _make_room(cupy, geometry.batch * out_sample)
            y = cupy.empty(geometry.out_shape, x.dtype)
            per_sample = 0 if x.flags.c_contiguous else in_sample
            chunk = batch_chunk(geometry.batch, per_sample, 0, _free_bytes(cupy)) \
                if per_sample else geometry.batch
            _make_room(cupy, chunk * per_sample)
        else:
            chunk = batch_chunk(geometry.batch, in_sample + out_sample, 0, _free_bytes(cupy))
            _make_room(cupy, chunk * (in_sample + out_sample))
            y = np.empty(geometry.out_shape, x.dtype)
        arch = int(device.compute_capability)
        weights = {}  # the weight as each kind of kernel gets it (TF32-rounded or not)
        for n0 in range(0, geometry.batch, chunk):
            part = slice(n0, n0 + chunk)
            xs = cupy.ascontiguousarray(cupy.asarray(x[part]))
            sub = replace(geometry, batch=xs.shape[0])
            # A batch slice of a C-contiguous array is contiguous: the kernel writes into it.
            ys = y[part] if on_device else cupy.empty(sub.out_shape, x.dtype)
            plan = launch.plan(sub, x.dtype, variant=variant, precision=precision, arch=arch)
            rounded = plan.variant != "wmma" and uses_tf32(x.dtype, precision)
            if rounded not in weights:
                weights[rounded] = round_to_tf32(weight, cupy) if rounded else weight
            if rounded:
                xs = round_to_tf32(xs, cupy)
            run_plan(plan, (xs, weights[rounded], bias, ys), device)
            if not on_device:
                ys.get(out=y[part])
    return y
