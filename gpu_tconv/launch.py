"""The launch description of the gather kernels, shared by the CUDA and emulated backends.

Everything about a launch except the launch call itself (which source file and kernel
instantiation, its compile-time definitions, the grid, the block, the shared memory and
the scalar arguments) is decided here, in plain Python, so that a CPU-only test of the
emulated backend covers it. Which variant runs is :mod:`gpu_tconv.variants`' choice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from . import launch_limits, variants
from .formats import bfloat16_dtype, is_bfloat16
from .geometry import Geometry
from .variants import padded as _padded  # every rank runs as 3-D

KERNEL_FILE = "conv_transpose.cu"
#: The kernels of KERNEL_FILE: the forward pass and the two gradients it can compute.
KERNEL_NAMES = {"forward": "gpu_tconv::conv_transpose_gather",
                "grad_input": "gpu_tconv::conv_transpose_grad_input",
                "grad_weight": "gpu_tconv::conv_transpose_grad_weight",
                "grad_weight_partial": "gpu_tconv::conv_transpose_grad_weight_partial",
                "grad_weight_combine": "gpu_tconv::conv_transpose_grad_weight_combine"}
FORWARD_KERNEL = KERNEL_NAMES["forward"]
#: Kernels with a third template argument, the layout (bool CHANNELS_LAST).
LAYOUT_TEMPLATED = frozenset(KERNEL_NAMES.values()) - {KERNEL_NAMES["grad_weight_combine"]}

#: Threads the split weight gradient aims for (a few waves of a large GPU): where one
#: thread per weight element gives fewer, the reduction over samples and inputs is cut
#: into chunks (see :func:`grad_weight_split`).
GRAD_WEIGHT_THREADS = 1 << 18
#: Fewest reduced elements (sample x input position) per chunk of the split weight
#: gradient: a shorter chunk would move more partial sums than it saves in time.
GRAD_WEIGHT_MIN_CHUNK = 256


class _CTypes(dict):
    """Kernel template argument for each element type. ``C_TYPES[bfloat16]`` is
    ``"__nv_bfloat16"`` without ``ml_dtypes`` being imported to know it (only ``[]``
    looks it up: iterate over :func:`kernel_dtypes` for every type)."""

    def __missing__(self, dtype):
        if is_bfloat16(dtype):
            return BFLOAT16_C_TYPE
        raise KeyError(dtype)


BFLOAT16_C_TYPE = "__nv_bfloat16"
#: Kernel template argument for each element type.
C_TYPES = _CTypes({np.dtype(np.float16): "__half", np.dtype(np.float32): "float",
                   np.dtype(np.float64): "double"})


def kernel_dtypes() -> list[np.dtype]:
    """Every element type the kernels are instantiated for: bfloat16 too where
    ``ml_dtypes`` is installed (it is imported here)."""
    try:
        return list(C_TYPES) + [bfloat16_dtype()]
    except RuntimeError:
        return list(C_TYPES)


#: Kernel template argument and NumPy scalar type for each index width.
INDEX_TYPES = {32: ("int", np.int32), 64: ("long long", np.int64)}

BLOCK_SIZE = variants.VARIANTS["simple"].block
# A grid-stride loop covers outputs beyond this many blocks; the cap keeps the grid
# far below CUDA's 2**31 - 1 limit on gridDim.x.
MAX_BLOCKS = 1 << 20
_INT32_MAX = 2**31 - 1


def kernel_source_path(name: str = KERNEL_FILE) -> Path:
    """Path of a kernel source file (an absolute path is taken as it is).

    Wheels carry the sources in ``gpu_tconv/kernels/``; a source checkout (editable
    install or ``PYTHONPATH``) has them in the top-level ``kernels/`` folder.
    """
    if Path(name).is_absolute():
        return Path(name)
    packaged = resources.files("gpu_tconv").joinpath("kernels", name)
    if packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / "kernels" / name
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(f"kernel source {name} is missing from the gpu_tconv installation "
                            f"(looked in {packaged} and {checkout})")


def kernel_expression(dtype: np.dtype, index_bits: int, name: str = FORWARD_KERNEL,
                      channels_last: bool = False) -> str:
    """The C++ name of one kernel instantiation, as NVRTC and the host compiler see it."""
    args = [C_TYPES[np.dtype(dtype)], INDEX_TYPES[index_bits][0]]
    if name in LAYOUT_TEMPLATED:
        args.append("true" if channels_last else "false")
    return f"{name}<{', '.join(args)}>"


def all_kernel_expressions(name: str = FORWARD_KERNEL) -> list[str]:
    """Every instantiation of one kernel template (for compile checks)."""
    layouts = (False, True) if name in LAYOUT_TEMPLATED else (False,)
    return [kernel_expression(d, b, name, cl) for d in kernel_dtypes() for b in INDEX_TYPES
            for cl in layouts]


Defines = tuple[tuple[str, int], ...]


_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[^\n]*$', re.MULTILINE)


def _inlined(path: Path, seen: set[Path]) -> str:
    """``path``'s text with each ``#include "file"`` of its folder replaced by that file
    (recursively, each file once), ``#line`` directives keeping messages in place."""
    seen.add(path)
    text, parts, start = path.read_text(), [], 0
    for match in _LOCAL_INCLUDE.finditer(text):
        included = path.parent / match[1]
        if not included.is_file():
            continue  # not one of the project's files: left to the compiler
        parts.append(text[start:match.start()])
        if included not in seen:
            parts.append(f'#line 1 "{included.name}"\n{_inlined(included, seen)}\n')
        line = text.count("\n", 0, match.end()) + 2
        parts.append(f'#line {line} "{path.name}"')
        start = match.end()
    parts.append(text[start:])
    return "".join(parts)


def kernel_code(source: str, defines: Defines = ()) -> str:
    """The text a compiler gets for ``source`` with ``defines``: the ``#define`` lines,
    then the file (numbered from its own first line, so messages point into it), with
    the project's own ``#include "..."`` files inlined. CuPy keys its disk cache of
    compiled kernels on this text, so a change to an included file is a new key, never
    a stale cubin."""
    path = kernel_source_path(source)
    head = "".join(f"#define {name} {value}\n" for name, value in defines)
    return f'{head}#line 1 "{path.name}"\n{_inlined(path, set())}'


@dataclass(frozen=True)
class LaunchPlan:
    """One kernel launch: ``kernel(grid, block, (x, w, bias, y, *scalars), shared_bytes)``.

    ``kernel`` is an instantiation of a template in the file ``source`` compiled with
    ``defines`` (the three are the compile-time inputs, and the key of every compile
    cache). ``shared_bytes`` is the dynamic shared memory of the launch (every variant
    so far sizes its shared memory statically, so it is 0). ``block_sync``: the
    kernel's threads share memory and meet at ``__syncthreads()``, so the emulator runs
    a block's threads concurrently.
    """

    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    scalars: tuple[np.generic, ...]
    index_bits: int
    source: str = KERNEL_FILE
    defines: Defines = ()
    shared_bytes: int = 0
    block_sync: bool = False
    variant: str = "simple"
    #: Shared memory the kernel declares statically (its ``__shared__`` arrays), bytes.
    static_shared_bytes: int = 0


def _tap_inverse(stride: int, dilation: int) -> tuple[int, int]:
    """gcd(stride, dilation) and the inverse of dilation/g modulo stride/g (see the kernel)."""
    g = math.gcd(stride, dilation)
    step = stride // g
    return g, (pow(dilation // g, -1, step) if step > 1 else 0)


def _needs_64_bit(geometry: Geometry, reach: int, work: int = 0) -> bool:
    """Whether some index the kernel computes may pass 2**31 - 1. ``reach`` is the
    largest index the grid-stride loop forms (elements written plus the threads
    launched); ``work`` the largest other work counter (the tiled kernels count blocks
    and threads of the phase grid)."""
    g = geometry
    largest = max(
        reach,
        work,
        g.batch * g.c_in * math.prod(g.in_size),
        g.c_in * g.c_out_per_group * math.prod(g.kernel),
        g.batch * g.c_out * math.prod(g.out_size),
        *(o + p for o, p in zip(g.out_size, g.padding)),
        *(s * d for s, d in zip(g.stride, g.dilation)),
        *(o + k * d for o, k, d in zip(g.out_size, g.kernel, g.dilation)),
    )
    return largest > _INT32_MAX


def grad_weight_split(g: Geometry) -> tuple[int, int]:
    """``(chunks, chunk_size)``: the weight gradient's reduction over samples and input
    positions (``batch * prod(in_size)`` elements, flattened) cut into ``chunks``
    ranges of ``chunk_size``, so that about :data:`GRAD_WEIGHT_THREADS` threads work.
    A function of the geometry only, so the result is the same on every run and device.
    ``chunks == 1``: the one-pass kernel."""
    elements = g.c_in * g.c_out_per_group * math.prod(g.kernel)
    reduced = g.batch * math.prod(g.in_size)
    chunks = max(1, min(GRAD_WEIGHT_THREADS // max(elements, 1),
                        reduced // GRAD_WEIGHT_MIN_CHUNK))
    size = -(-reduced // chunks) if reduced else 1
    return (-(-reduced // size) if reduced else 1), size  # no empty chunk


def plan(geometry: Geometry, dtype: np.dtype, index_bits: int | None = None,
         variant: str = "auto", kind: str = "forward",
         precision: str = "highest", arch: int | None = None) -> LaunchPlan:
    """Describe the launch of one kernel for ``geometry``.

    ``kind`` is ``"forward"`` (arrays x, w, bias, y), ``"grad_input"`` (dy, w, dx),
    ``"grad_weight"`` (x, dy, dw), or the split weight gradient's two passes
    ``"grad_weight_partial"`` (x, dy, partial) and ``"grad_weight_combine"`` (partial,
    dw), ``partial`` being ``(chunks, *weight.shape)`` in the accumulator type (see
    :func:`grad_weight_split`); ``index_bits`` forces 32- or 64-bit indices;
    ``variant`` names a forward kernel variant (see :data:`gpu_tconv.variants.VARIANTS`;
    the gradients have one kernel each, of the ``simple`` kind).
    """
    g = geometry
    weights = g.c_in * g.c_out_per_group * math.prod(g.kernel)
    chunks, chunk_size = grad_weight_split(g)
    total = {"forward": g.batch * g.c_out * math.prod(g.out_size),
             "grad_input": g.batch * g.c_in * math.prod(g.in_size),
             "grad_weight": weights, "grad_weight_partial": weights * chunks,
             "grad_weight_combine": weights}[kind]
    if kind == "forward":
        chosen = variants.resolve(variant, g, dtype, precision=precision, arch=arch)
    else:
        chosen = replace(variants.VARIANTS["simple"], kernel=KERNEL_NAMES[kind])
    work_blocks = chosen.blocks(g) if kind == "forward" else -(-total // chosen.block)
    blocks = max(1, min(MAX_BLOCKS, work_blocks))
    if index_bits is None:
        work = (work_blocks + blocks) * chosen.block if chosen.tiled else 0
        if kind == "grad_weight_partial":  # a chunk's end may pass the reduction's length
            work = g.batch * math.prod(g.in_size) + chunk_size
        index_bits = 64 if _needs_64_bit(g, total + blocks * chosen.block, work) else 32
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
    elif kind == "grad_weight_partial":
        values += (g.batch, chunk_size)
    elif kind == "grad_weight_combine":
        values = (total, chunks)
    result = LaunchPlan(kernel=kernel_expression(dtype, index_bits, chosen.kernel, g.channels_last),
                        grid=(blocks, 1, 1), block=(chosen.block, 1, 1),
                        scalars=tuple(index(v) for v in values), index_bits=index_bits,
                        source=chosen.source, defines=chosen.defines(g),
                        block_sync=chosen.block_sync, variant=chosen.name,
                        static_shared_bytes=chosen.static_shared_bytes(g, dtype, index_bits))
    launch_limits.check(result, arch)
    return result
