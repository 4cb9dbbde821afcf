"""The launch description of the gather kernel, shared by the CUDA and emulated backends.

Everything about a launch except the launch call itself (which kernel instantiation,
the grid, the block and the scalar arguments) is decided here, in plain Python, so
that a CPU-only test of the emulated backend covers it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .geometry import Geometry

KERNEL_FILE = "conv_transpose.cu"
#: The kernels of KERNEL_FILE: the forward pass and the two gradients it can compute.
KERNEL_NAMES = {"forward": "gpu_tconv::conv_transpose_gather",
                "grad_input": "gpu_tconv::conv_transpose_grad_input",
                "grad_weight": "gpu_tconv::conv_transpose_grad_weight"}

#: Kernel template argument for each element type.
C_TYPES = {np.dtype(np.float16): "__half", np.dtype(np.float32): "float",
           np.dtype(np.float64): "double"}
#: Kernel template argument and NumPy scalar type for each index width.
INDEX_TYPES = {32: ("int", np.int32), 64: ("long long", np.int64)}

BLOCK_SIZE = 256
# A grid-stride loop covers outputs beyond this many blocks; the cap keeps the grid
# far below CUDA's 2**31 - 1 limit on gridDim.x.
MAX_BLOCKS = 1 << 20
_INT32_MAX = 2**31 - 1


def kernel_source_path(name: str = KERNEL_FILE) -> Path:
    """Path of a kernel source file.

    Wheels carry the sources in ``gpu_tconv/kernels/``; a source checkout (editable
    install or ``PYTHONPATH``) has them in the top-level ``kernels/`` folder.
    """
    packaged = resources.files("gpu_tconv").joinpath("kernels", name)
    if packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / "kernels" / name
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(f"kernel source {name} is missing from the gpu_tconv installation "
                            f"(looked in {packaged} and {checkout})")


def kernel_expression(dtype: np.dtype, index_bits: int, channels_last: bool = False,
                      kind: str = "forward") -> str:
    """The C++ name of one kernel instantiation, as NVRTC and the host compiler see it."""
    return (f"{KERNEL_NAMES[kind]}<{C_TYPES[np.dtype(dtype)]}, {INDEX_TYPES[index_bits][0]}, "
            f"{'true' if channels_last else 'false'}>")


def all_kernel_expressions() -> list[str]:
    """Every instantiation the package may launch (for compile checks)."""
    return [kernel_expression(d, b, cl, kind) for kind in KERNEL_NAMES for d in C_TYPES
            for b in INDEX_TYPES for cl in (False, True)]


@dataclass(frozen=True)
class LaunchPlan:
    """One kernel launch: ``kernel(grid, block, (x, w, bias, y, *scalars))``."""

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    scalars: tuple[np.generic, ...]
    index_bits: int


def _padded(values: tuple[int, ...], fill: int) -> tuple[int, ...]:
    # Every rank runs as 3-D: missing leading dimensions are trivial ones.
    return (fill,) * (3 - len(values)) + tuple(values)


def _tap_inverse(stride: int, dilation: int) -> tuple[int, int]:
    """gcd(stride, dilation) and the inverse of dilation/g modulo stride/g (see the kernel)."""
    g = math.gcd(stride, dilation)
    step = stride // g
    return g, (pow(dilation // g, -1, step) if step > 1 else 0)


def _needs_64_bit(geometry: Geometry, reach: int) -> bool:
    """Whether some index could pass 2**31 - 1; ``reach`` is the largest index the
    grid-stride loop forms (elements written plus the threads launched)."""
    g = geometry
    largest = max(
        reach,
        g.batch * g.c_in * math.prod(g.in_size),
        g.c_in * g.c_out_per_group * math.prod(g.kernel),
        g.batch * g.c_out * math.prod(g.out_size),
        *(o + p for o, p in zip(g.out_size, g.padding)),
        *(s * d for s, d in zip(g.stride, g.dilation)),
        *(o + k * d for o, k, d in zip(g.out_size, g.kernel, g.dilation)),
    )
    return largest > _INT32_MAX


def plan(geometry: Geometry, dtype: np.dtype, index_bits: int | None = None,
         kind: str = "forward") -> LaunchPlan:
    """Describe the launch of one kernel for ``geometry``.

    ``kind`` is ``"forward"`` (arrays x, w, bias, y), ``"grad_input"`` (dy, w, dx) or
    ``"grad_weight"`` (x, dy, dw); ``index_bits`` forces 32- or 64-bit indices. One
    thread per element written, in a grid-stride loop.
    """
    g = geometry
    total = {"forward": g.batch * g.c_out * math.prod(g.out_size),
             "grad_input": g.batch * g.c_in * math.prod(g.in_size),
             "grad_weight": g.c_in * g.c_out_per_group * math.prod(g.kernel)}[kind]
    blocks = max(1, min(MAX_BLOCKS, -(-total // BLOCK_SIZE)))
    if index_bits is None:
        index_bits = 64 if _needs_64_bit(g, total + blocks * BLOCK_SIZE) else 32
    index = INDEX_TYPES[index_bits][1]

    values = (
        (total, g.groups, g.c_in_per_group, g.c_out_per_group)
        + _padded(g.in_size, 1) + _padded(g.out_size, 1) + _padded(g.kernel, 1)
        + _padded(g.stride, 1) + _padded(g.padding, 0) + _padded(g.dilation, 1)
    )
    if kind == "forward":
        inverses = [_tap_inverse(s, d) for s, d in zip(g.stride, g.dilation)]
        values += (_padded(tuple(gcd for gcd, _ in inverses), 1)
                   + _padded(tuple(inv for _, inv in inverses), 0))
    elif kind == "grad_weight":
        values += (g.batch,)
    return LaunchPlan(kernel=kernel_expression(dtype, index_bits, g.channels_last, kind),
                      grid=(blocks, 1, 1), block=(BLOCK_SIZE, 1, 1),
                      scalars=tuple(index(v) for v in values), index_bits=index_bits)
