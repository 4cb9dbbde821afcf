"""The ``emulated`` backend: the unmodified CUDA kernel source, built for the CPU.

The kernel file is compiled by the host C++ compiler with ``emulator/cuda_shim.h``
force-included and ``emulator/launcher.cpp`` running it over every block and thread
of the grid that :mod:`gpu_tconv.launch` describes. It is slow and exists so that a
machine without a GPU can prove the kernel's index arithmetic.

Built libraries are cached on disk (``$GPU_TCONV_CACHE_DIR`` or
``~/.cache/gpu_tconv``) under a hash of everything that goes into the build.
``GPU_TCONV_EMULATOR_SANITIZE=1`` builds with AddressSanitizer and UBSan (the process
must then preload ``libasan``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from . import launch
from .geometry import Geometry

_EMULATOR_DIR = Path(__file__).resolve().parent / "emulator"
_SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                   "-fno-omit-frame-pointer", "-g")


def compiler() -> str | None:
    """The host C++ compiler: ``$CXX`` or ``g++`` on the PATH, else ``None``."""
    return shutil.which(os.environ.get("CXX", "g++"))


def unavailable_reason() -> str | None:
    if compiler() is None:
        return "no host C++ compiler (set CXX or install g++)"
    return None


def cache_dir() -> Path:
    root = os.environ.get("GPU_TCONV_CACHE_DIR") or Path.home() / ".cache" / "gpu_tconv"
    return Path(root) / "emulated"


def _build_command(kernel: str, source: Path, output: Path, sanitize: bool) -> list[str]:
    return [
        compiler(), "-std=c++17", "-O2", "-shared", "-fPIC", "-w",
        *(_SANITIZE_FLAGS if sanitize else ()),
        f"-I{_EMULATOR_DIR / 'include'}", "-include", str(_EMULATOR_DIR / "cuda_shim.h"),
        f'-DGPU_TCONV_KERNEL_SOURCE="{source}"', f"-DGPU_TCONV_KERNEL={kernel}",
        str(_EMULATOR_DIR / "launcher.cpp"), "-o", str(output),
    ]


_build_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _library(kernel: str, sanitize: bool) -> ctypes.CDLL:
    """Build (or find in the disk cache) and load the library for one instantiation."""
    if compiler() is None:
        raise RuntimeError(f"the emulated backend is unavailable: {unavailable_reason()}")
    source = launch.kernel_source_path()
    key = hashlib.sha256()
    for path in (source, _EMULATOR_DIR / "cuda_shim.h", _EMULATOR_DIR / "launcher.cpp",
                 _EMULATOR_DIR / "include" / "cuda_fp16.h"):
        key.update(path.read_bytes())
    key.update(" ".join(_build_command(kernel, source, Path("out"), sanitize)).encode())
    target = cache_dir() / f"{key.hexdigest()[:24]}.so"
    with _build_lock:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Build under a private name and rename: a concurrent process either sees no
            # library or a complete one.
            fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            command = _build_command(kernel, source, Path(partial), sanitize)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                os.unlink(partial)
                raise RuntimeError(f"building the emulated kernel failed:\n{shlex.join(command)}\n"
                                   f"{done.stderr}")
            os.replace(partial, target)
    library = ctypes.CDLL(str(target))
    library.gpu_tconv_launch.restype = None
    library.gpu_tconv_launch.argtypes = ([ctypes.c_uint] * 6
                                         + [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint])
    return library


def run_plan(plan: launch.LaunchPlan, arrays: tuple[np.ndarray | int | None, ...],
             first_block: int = 0) -> None:
    """Run ``plan`` over its grid with ``arrays`` (x, w, bias, y) as the pointers.

    An entry may also be a raw address (an int). ``first_block`` skips the blocks
    before it, for tests that run only the end of a huge grid.
    """
    values = [ctypes.c_void_p(a if a is None or isinstance(a, int) else a.ctypes.data)
              for a in arrays]
    values += [np.ctypeslib.as_ctypes_type(type(s))(s) for s in plan.scalars]
    args = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    sanitize = os.environ.get("GPU_TCONV_EMULATOR_SANITIZE", "") not in ("", "0")
    _library(plan.kernel, sanitize).gpu_tconv_launch(*plan.grid, *plan.block, args, first_block)


def conv_transpose(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   geometry: Geometry, *, index_bits: int | None = None) -> np.ndarray:
    """Emulated twin of :func:`gpu_tconv.cuda_backend.conv_transpose` (NumPy arrays)."""
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    bias = None if bias is None else np.ascontiguousarray(bias)
    y = np.empty(geometry.out_shape, x.dtype)
    run_plan(launch.plan(geometry, x.dtype, index_bits), (x, weight, bias, y))
    return y
