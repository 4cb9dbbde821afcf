"""The ``emulated`` backend: the unmodified CUDA kernel source, built for the CPU.

The kernel file is compiled by the host C++ compiler with ``emulator/cuda_shim.h``
force-included and ``emulator/launcher.cpp`` running it over every block and thread
of the grid that :mod:`gpu_tconv.launch` describes. It is slow and exists so that a
machine without a GPU can prove the kernel's index arithmetic. Kernels that share
memory between threads and wait at ``__syncthreads()`` (``plan.block_sync``) run with
one host thread per CUDA thread of a block and a real barrier; the others run their
threads one after another.

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

from . import launch, variants
from .formats import round_to_tf32, uses_tf32
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


def _kernel_command(kernel: str, source: Path, defines: launch.Defines, output: Path,
                    sanitize: bool) -> list[str]:
    # No strict aliasing: the kernels load pairs of elements through vector types, the
    # way CUDA code does.
    # -fdata-sections and the linker script gather the __shared__ arrays into one range
    # that the launcher fills with garbage before each block (see cuda_shim.h).
    return [
        compiler(), "-std=c++17", "-fno-strict-aliasing", "-O2", "-shared", "-fPIC", "-w",
        "-fdata-sections", f"-Wl,-T,{_EMULATOR_DIR / 'shared_memory.ld'}",
        *(_SANITIZE_FLAGS if sanitize else ()),
        f"-I{_EMULATOR_DIR / 'include'}", "-include", str(_EMULATOR_DIR / "cuda_shim.h"),
        *(f"-D{name}={value}" for name, value in defines),
        f'-DGPU_TCONV_KERNEL_SOURCE="{source}"', f"-DGPU_TCONV_KERNEL={kernel}",
        str(_EMULATOR_DIR / "launcher.cpp"), "-o", str(output),
    ]


def _runtime_command(output: Path, sanitize: bool) -> list[str]:
    # C++20 for std::barrier.
    return [compiler(), "-std=c++20", "-pthread", "-O2", "-shared", "-fPIC", "-w",
            *(_SANITIZE_FLAGS if sanitize else ()), str(_EMULATOR_DIR / "runtime.cpp"),
            "-o", str(output)]


_build_lock = threading.Lock()


def _built(command, inputs: list[Path]) -> ctypes.CDLL:
    """Build ``command(output)`` (or find it in the disk cache) and load it.

    The cache key hashes every input file and the command itself, so it is exactly the
    compile-time inputs.
    """
    if compiler() is None:
        raise RuntimeError(f"the emulated backend is unavailable: {unavailable_reason()}")
    key = hashlib.sha256()
    for path in inputs:
        key.update(path.name.encode() + b"\0" + path.read_bytes())
    key.update(" ".join(command(Path("out"))).encode())
    target = cache_dir() / f"{key.hexdigest()[:24]}.so"
    with _build_lock:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Build under a private name and rename: a concurrent process either sees no
            # library or a complete one.
            fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            done = subprocess.run(command(Path(partial)), capture_output=True, text=True)
            if done.returncode != 0:
                os.unlink(partial)
                raise RuntimeError(f"building the emulated kernel failed:\n"
                                   f"{shlex.join(command(Path(partial)))}\n{done.stderr}")
            os.replace(partial, target)
    return ctypes.CDLL(str(target))


_EMULATOR_FILES = [_EMULATOR_DIR / "cuda_shim.h", _EMULATOR_DIR / "launcher.cpp",
                   _EMULATOR_DIR / "shared_memory.ld",
                   *sorted((_EMULATOR_DIR / "include").glob("*.h"))]


@functools.lru_cache(maxsize=None)
def _library(source_name: str, kernel: str, defines: launch.Defines,
             sanitize: bool) -> ctypes.CDLL:
    """The library for one instantiation: the kernel ``kernel`` of the file
    ``source_name`` compiled with ``defines``."""
    source = launch.kernel_source_path(source_name)
    # Every source of the kernel's folder: a kernel file may include another.
    kernel_files = sorted(p for p in source.parent.iterdir() if p.suffix in (".cu", ".cuh"))
    library = _built(lambda out: _kernel_command(kernel, source, defines, out, sanitize),
                     kernel_files + _EMULATOR_FILES)
    library.gpu_tconv_launch.restype = ctypes.c_int
    library.gpu_tconv_launch.argtypes = ([ctypes.c_uint] * 6
                                         + [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint,
                                            ctypes.c_void_p])
    library.gpu_tconv_static_shared_bytes.restype = ctypes.c_ulong
    library.gpu_tconv_static_shared_bytes.argtypes = []
    return library


def static_shared_bytes(plan: launch.LaunchPlan) -> int:
    """The static shared memory that ``plan``'s kernel declares, as built for the CPU
    (its ``__shared__`` arrays with their alignment padding)."""
    return int(_library(plan.source, plan.kernel, plan.defines, False)
               .gpu_tconv_static_shared_bytes())


@functools.lru_cache(maxsize=None)
def _block_threads_runner(sanitize: bool) -> int:
    """Address of the concurrent block runner (``emulator/runtime.cpp``), built once."""
    runtime = _built(lambda out: _runtime_command(out, sanitize),
                     [_EMULATOR_DIR / "runtime.cpp"])
    return ctypes.cast(runtime.gpu_tconv_run_block_threads, ctypes.c_void_p).value


def run_plan(plan: launch.LaunchPlan, arrays: tuple[np.ndarray | int | None, ...],
             first_block: int = 0) -> None:
    """Run ``plan`` over its grid with ``arrays`` (x, w, bias, y) as the pointers.

    An entry may also be a raw address (an int). ``first_block`` skips the blocks
    before it, for tests that run only the end of a huge grid.
    """
    if plan.shared_bytes:
        raise ValueError("the emulator runs static __shared__ arrays only, not dynamic "
                         f"shared memory ({plan.shared_bytes} bytes requested)")
    values = [ctypes.c_void_p(a if a is None or isinstance(a, int) else a.ctypes.data)
              for a in arrays]
    values += [np.ctypeslib.as_ctypes_type(type(s))(s) for s in plan.scalars]
    args = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    sanitize = os.environ.get("GPU_TCONV_EMULATOR_SANITIZE", "") not in ("", "0")
    library = _library(plan.source, plan.kernel, plan.defines, sanitize)
    runner = _block_threads_runner(sanitize) if plan.block_sync else None
    if not sanitize and library.gpu_tconv_static_shared_bytes() > variants.MAX_STATIC_SHARED_BYTES:
        raise ValueError(f"{plan.kernel} declares {library.gpu_tconv_static_shared_bytes()} "
                         f"bytes of static shared memory, more than a GPU allows "
                         f"({variants.MAX_STATIC_SHARED_BYTES})")
    status = library.gpu_tconv_launch(*plan.grid, *plan.block, args, first_block, runner)
    if status == 2:
        raise RuntimeError(f"{plan.kernel} broke a WMMA rule (a fragment pointer not 256-bit "
                           "aligned or a leading dimension not a multiple of 16 bytes): "
                           "a GPU would compute garbage or fault")
    if status != 0:
        raise RuntimeError(f"{plan.kernel} called __syncthreads() under the sequential "
                           "runner, so its result is meaningless: its plan must set block_sync")


def conv_transpose(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   geometry: Geometry, *, index_bits: int | None = None,
                   variant: str = "auto", precision: str = "highest") -> np.ndarray:
    """Emulated twin of :func:`gpu_tconv.cuda_backend.conv_transpose` (NumPy arrays).

    ``variant`` names the kernel variant (for tests; see :mod:`gpu_tconv.variants`);
    ``precision="tf32"`` lets float32 run on the (emulated) TF32 tensor cores.
    """
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    bias = None if bias is None else np.ascontiguousarray(bias)
    y = np.empty(geometry.out_shape, x.dtype)
    plan = launch.plan(geometry, x.dtype, index_bits, variant, precision=precision)
    x, weight = tf32_operands(plan, precision, x, weight)
    run_plan(plan, (x, weight, bias, y))
    return y


def tf32_operands(plan: launch.LaunchPlan, precision: str, *operands, xp=np):
    """The operands of the products as ``plan``'s kernel must get them: rounded to TF32
    for float32 at ``precision="tf32"`` when the kernel is not the tensor-core one (which
    rounds its fragments itself), else as they are."""
    if plan.variant == "wmma" or not operands or not uses_tf32(operands[0].dtype, precision):
        return operands
    return tuple(round_to_tf32(a, xp) for a in operands)
