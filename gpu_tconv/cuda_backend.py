"""The ``cuda`` backend: the gather kernel compiled by NVRTC through CuPy and launched.

CuPy is imported lazily: ``import gpu_tconv`` neither needs it nor touches a GPU.
"""

from __future__ import annotations

import functools

from . import launch
from .geometry import Geometry

# CuPy's own default options (C++17, its include paths) are kept; these are added.
COMPILE_OPTIONS = ("--std=c++17",)


def _import_cupy():
    try:
        import cupy
    except ImportError as error:
        raise RuntimeError("the cuda backend needs CuPy: pip install cupy-cuda13x "
                           "nvidia-cuda-nvrtc nvidia-cuda-runtime") from error
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


@functools.lru_cache(maxsize=None)
def _function(device_id: int, kernel: str):
    """The compiled kernel for one instantiation on one device (compiled once each)."""
    cupy = _import_cupy()
    with cupy.cuda.Device(device_id):
        module = cupy.RawModule(code=launch.kernel_source_path().read_text(),
                                options=COMPILE_OPTIONS, name_expressions=[kernel])
        return module.get_function(kernel)


def conv_transpose(x, weight, bias, geometry: Geometry):
    """CUDA twin of :func:`gpu_tconv.emulated_backend.conv_transpose` (CuPy arrays).

    Runs on the device of ``x`` and on CuPy's current stream there.
    """
    cupy = _import_cupy()
    with x.device:
        x = cupy.ascontiguousarray(x)
        weight = cupy.ascontiguousarray(weight)
        bias = None if bias is None else cupy.ascontiguousarray(bias)
        y = cupy.empty(geometry.out_shape, x.dtype)
        plan = launch.plan(geometry, x.dtype)
        _function(x.device.id, plan.kernel)(plan.grid, plan.block,
                                            (x, weight, bias, y, *plan.scalars))
    return y
