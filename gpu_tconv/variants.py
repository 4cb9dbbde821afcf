"""The kernel variants: which source and kernel, which compile-time parameters, how
many blocks, and the heuristic that picks one per shape.

Every variant computes the same thing (see ``kernels/``). ``simple`` is the one
thread per output kernel of ``conv_transpose.cu``; the others are the tiled kernels
of ``conv_transpose_tiled.cu`` (phase decomposition, output-channel and pixel
register tiles, optional shared-memory weights, optional compile-time kernel size,
stride and dilation). ``wmma`` (``conv_transpose_wmma.cu``) runs on tensor cores, an
implicit GEMM per output phase, for float16, bfloat16 and float32 as TF32.

``variant="auto"`` runs the variant that :func:`choose` picks for the shape. The
heuristic rests on estimates from the kernels' instruction mix (``simple`` about 9x
slower than cuDNN on geometric mean over the KernelBench problems, ``phase_smem`` about
1.3x); ``bench/device_check.sh`` measures them on a GPU. Setting
:data:`AUTO_USES_HEURISTIC` to False makes ``auto`` run :data:`DEFAULT` (``simple``),
which is always selectable by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .formats import is_bfloat16
from .geometry import Geometry

#: What ``variant="auto"`` runs when :data:`AUTO_USES_HEURISTIC` is off.
DEFAULT = "simple"
#: Let ``variant="auto"`` follow :func:`choose`.
AUTO_USES_HEURISTIC = True
#: Multiply-adds (outputs x input channels per group x taps of a phase) below which a
#: call is bound by launch latency: ``choose`` then takes ``phase_generic``, whose sizes
#: are run-time arguments, rather than a kernel specialized for this shape, which would
#: cost a compile (about a second of NVRTC, once per shape) to save microseconds.
MIN_SPECIALIZED_WORK = 1 << 20

#: Taps of one phase along the last dimension (the row) up to which the specialized
#: variants unroll their innermost loop; beyond it only ``phase_generic`` applies. It
#: bounds code size and registers (ptxas: 70 to 200 registers at 8 taps, no spills).
MAX_UNROLLED_TAPS = 8
#: Static shared memory a block may declare (CUDA's limit without opt-in).
MAX_STATIC_SHARED_BYTES = 48 * 1024

_SIMPLE_BLOCK = 256


def padded(values: tuple[int, ...], fill: int) -> tuple[int, ...]:
    """``values`` with leading ``fill`` entries up to 3: every rank runs as 3-D."""
    return (fill,) * (3 - len(values)) + tuple(values)


def phase_taps(kernel: int, stride: int, dilation: int) -> int:
    """The most taps that reach one output along a dimension: ``ceil(k / (s / gcd(s, d)))``.

    Taps reaching an output satisfy ``k*d = o + p (mod s)``: they are ``s / gcd(s, d)``
    apart.
    """
    step = stride // math.gcd(stride, dilation)
    return -(-kernel // step)


def row_taps(g: Geometry) -> int:
    """Taps of the largest phase along the last dimension (the unrolled loop's length)."""
    return phase_taps(g.kernel[-1], g.stride[-1], g.dilation[-1])


def all_phase_taps(g: Geometry) -> int:
    """Taps of the largest phase over all dimensions (the shared weight tile's depth)."""
    return math.prod(phase_taps(k, s, d) for k, s, d in zip(g.kernel, g.stride, g.dilation))


@dataclass(frozen=True)
class Variant:
    """One kernel with fixed tile sizes. ``cout_tile`` output channels times ``pixels``
    outputs per thread; ``ci_chunk`` input channels of weights staged in shared memory
    at a time (0: weights read through the read-only cache); ``specialized``: kernel
    size, stride and dilation are compile-time constants."""

    name: str
    source: str
    kernel: str
    block: int
    cout_tile: int = 1
    pixels: int = 1
    ci_chunk: int = 0
    specialized: bool = False
    summary: str = ""
    #: A kernel of ``conv_transpose_tiled.cu``: phase blocks, tile defines.
    tiled: bool = True

    @property
    def block_sync(self) -> bool:
        """The kernel shares memory between a block's threads and waits at barriers."""
        return self.ci_chunk > 0

    def shared_bytes(self, g: Geometry, dtype: np.dtype) -> int:
        """Static shared memory of one block: the staged weight tile
        ``ci_chunk * taps of a phase * cout_tile`` in the accumulator type."""
        if not self.block_sync:
            return 0
        accumulator = 8 if np.dtype(dtype) == np.float64 else 4
        return self.ci_chunk * all_phase_taps(g) * self.cout_tile * accumulator

    def static_shared_bytes(self, g: Geometry, dtype: np.dtype, index_bits: int = 64) -> int:
        """The ``__shared__`` arrays of one block, bytes (the launch plan's figure)."""
        return self.shared_bytes(g, dtype)

    def check(self, g: Geometry, dtype: np.dtype, precision: str = "highest",
              arch: int | None = None) -> None:
        """Raise ``ValueError`` saying why this variant cannot run ``g`` (in ``dtype`` at
        ``precision`` on compute capability ``arch``, which only the tensor-core variant
        cares about)."""
        if self.tiled and g.channels_last:
            raise ValueError(f"variant {self.name!r} takes channels-first arrays only "
                             "(use 'simple' for channels-last)")
        if self.specialized and row_taps(g) > MAX_UNROLLED_TAPS:
            raise ValueError(
                f"variant {self.name!r} unrolls the taps of a phase along the last dimension, "
                f"at most {MAX_UNROLLED_TAPS}; this kernel has {row_taps(g)} there "
                "(use 'phase_generic')")
        if self.shared_bytes(g, dtype) > MAX_STATIC_SHARED_BYTES:
            raise ValueError(f"variant {self.name!r} needs {self.shared_bytes(g, dtype)} bytes "
                             f"of shared memory, more than {MAX_STATIC_SHARED_BYTES}")

    def defines(self, g: Geometry) -> tuple[tuple[str, int], ...]:
        """The compile-time parameters (``#define NAME VALUE``) of this variant for ``g``."""
        if not self.tiled:
            return ()
        values = [("TCONV_BLOCK", self.block), ("TCONV_COUT_TILE", self.cout_tile),
                  ("TCONV_PIXELS", self.pixels)]
        if self.block_sync:
            values.append(("TCONV_CI_CHUNK", self.ci_chunk))
        if self.specialized:
            for letter, sizes in (("K", g.kernel), ("S", g.stride), ("D", g.dilation)):
                values += [(f"TCONV_{letter}{i}", v) for i, v in enumerate(padded(sizes, 1))]
        return tuple(values)

    def blocks(self, g: Geometry) -> int:
        """Blocks that cover the whole output (the kernel's grid-stride loop takes any
        beyond the grid). Tiled: one per sample, group, output-channel tile, tile of the
        phase grid and residue (the same count as ``make_shape`` in the kernel)."""
        total = g.batch * g.c_out * math.prod(g.out_size)
        if not self.tiled:
            return -(-total // self.block)
        out, stride = padded(g.out_size, 1), padded(g.stride, 1)
        phase_grid = [-(-o // s) for o, s in zip(out, stride)]
        phase_grid[2] = -(-phase_grid[2] // self.pixels)
        residues = math.prod(min(s, o) for s, o in zip(stride, out))
        return (g.batch * g.groups * -(-g.c_out_per_group // self.cout_tile)
                * -(-math.prod(phase_grid) // self.block) * residues)


def wmma_dtype_ok(dtype: np.dtype, precision: str = "highest", arch: int | None = None) -> bool:
    """The tensor-core kernel's element types: float16 and bfloat16, and float32 when
    ``precision="tf32"`` lets it multiply in TF32; on a device of compute capability
    ``arch`` (e.g. 75; ``None``: any) below 8.0, float16 only (sm_75 has no bfloat16 or
    TF32 tensor cores)."""
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        return True
    return ((is_bfloat16(dtype) or (dtype == np.float32 and precision == "tf32"))
            and (arch is None or arch >= WMMA_BF16_TF32_ARCH))


#: The first compute capability with bfloat16 and TF32 tensor cores (sm_80).
WMMA_BF16_TF32_ARCH = 80


@dataclass(frozen=True)
class WmmaVariant(Variant):
    """The tensor-core kernel of ``conv_transpose_wmma.cu``: an implicit GEMM per output
    phase and group, ``warps_m x warps_n`` warps per block, each owning ``frags_m x
    frags_n`` 16x16 fragments; a block tile is ``16*warps_m*frags_m`` pixels (samples
    and positions of one phase) by ``16*warps_n*frags_n`` output channels."""

    warps_m: int = 2
    warps_n: int = 2
    frags_m: int = 2
    frags_n: int = 1

    @property
    def tile_m(self) -> int:
        return 16 * self.warps_m * self.frags_m

    @property
    def tile_n(self) -> int:
        return 16 * self.warps_n * self.frags_n

    @property
    def block_sync(self) -> bool:
        return True

    def static_shared_bytes(self, g: Geometry, dtype: np.dtype, index_bits: int = 64) -> int:
        """The kernel's staged tiles (pixels x depth and depth x channels, in the element
        type, rows padded by 16 bytes), the float accumulator tile (columns padded by 4)
        and two pixel tables of indices, exactly as the kernel declares them."""
        item = np.dtype(dtype).itemsize
        depth = 8 if np.dtype(dtype) == np.float32 else 16
        pad = 16 // item
        return (self.tile_m * (depth + pad) * item + depth * (self.tile_n + pad) * item
                + self.tile_n * (self.tile_m + 4) * 4 + 2 * self.tile_m * index_bits // 8)

    def shared_bytes(self, g: Geometry, dtype: np.dtype) -> int:
        return self.static_shared_bytes(g, dtype, 64)

    def check(self, g: Geometry, dtype: np.dtype, precision: str = "highest",
              arch: int | None = None) -> None:
        if g.channels_last:
            raise ValueError(f"variant {self.name!r} takes channels-first arrays only "
                             "(use 'simple' for channels-last)")
        if not wmma_dtype_ok(dtype, precision):
            raise ValueError(f"variant {self.name!r} runs float16, bfloat16, and float32 with "
                             f"precision='tf32' only, not {np.dtype(dtype).name} at "
                             f"precision={precision!r}")
        if not wmma_dtype_ok(dtype, precision, arch):
            raise ValueError(f"variant {self.name!r} runs {np.dtype(dtype).name} on compute "
                             f"capability {WMMA_BF16_TF32_ARCH // 10}.0 and newer only, not "
                             f"{arch // 10}.{arch % 10}")

    def defines(self, g: Geometry) -> tuple[tuple[str, int], ...]:
        return (("TCONV_WMMA_WARPS_M", self.warps_m), ("TCONV_WMMA_WARPS_N", self.warps_n),
                ("TCONV_WMMA_FRAGS_M", self.frags_m), ("TCONV_WMMA_FRAGS_N", self.frags_n))

    def blocks(self, g: Geometry) -> int:
        """One block per tile of pixels, group, tile of output channels and residue (the
        count of ``make_shape`` in the kernel)."""
        out, stride = padded(g.out_size, 1), padded(g.stride, 1)
        pixels = g.batch * math.prod(-(-o // s) for o, s in zip(out, stride))
        residues = math.prod(min(s, o) for s, o in zip(stride, out))
        return (-(-pixels // self.tile_m) * g.groups * -(-g.c_out_per_group // self.tile_n)
                * residues)


#: Channels per group from which ``choose`` runs the tensor-core kernel: a full 16-wide
#: fragment on both sides of the product, below which most of the tensor-core work
#: would be zero padding of the tiles.
WMMA_MIN_CHANNELS = 16


def wmma_worthwhile(g: Geometry, dtype: np.dtype, precision: str = "highest",
                    arch: int | None = None) -> bool:
    """The rule by which :func:`choose` picks ``wmma``: a tensor-core type (float16,
    bfloat16, float32 with ``precision="tf32"``; float16 only below sm_80), channels
    first, and at least :data:`WMMA_MIN_CHANNELS` input and output channels per group."""
    return (not g.channels_last and wmma_dtype_ok(dtype, precision, arch)
            and min(g.c_in_per_group, g.c_out_per_group) >= WMMA_MIN_CHANNELS)


_TILED = "conv_transpose_tiled.cu"
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("simple", "conv_transpose.cu", "gpu_tconv::conv_transpose_gather", _SIMPLE_BLOCK,
            summary="one thread per output, taps found per output", tiled=False),
    Variant("phase_generic", _TILED, "gpu_tconv::conv_transpose_phase", 128, cout_tile=4,
            pixels=2, summary="phase blocks, 4 channels x 2 pixels per thread, run-time sizes"),
    Variant("phase", _TILED, "gpu_tconv::conv_transpose_phase", 128, cout_tile=4, pixels=2,
            specialized=True, summary="phase_generic with compile-time kernel, stride, "
                                      "dilation"),
    Variant("phase_narrow", _TILED, "gpu_tconv::conv_transpose_phase", 128, cout_tile=1,
            pixels=2, specialized=True,
            summary="phase with 1 channel per thread: depthwise, few output channels"),
    Variant("phase_smem", _TILED, "gpu_tconv::conv_transpose_phase_smem", 128, cout_tile=8,
            pixels=2, ci_chunk=8, specialized=True,
            summary="phase, 8 channels x 2 pixels, weights staged in shared memory"),
    WmmaVariant("wmma", "conv_transpose_wmma.cu", "gpu_tconv::conv_transpose_wmma", 128,
                summary="tensor cores (WMMA): an implicit GEMM per phase, 64 pixels x 32 "
                        "channels per block; float16, bfloat16, float32 as TF32"),
)}


def choose(g: Geometry, dtype: np.dtype, precision: str = "highest",
           arch: int | None = None) -> str:
    """The variant expected fastest for ``g`` (from estimates; see the module docstring).

    - channels-last arrays: ``simple`` (the tiled kernels index channels first);
    - float16, bfloat16 or float32 with ``precision="tf32"``, with at least 16 input
      and output channels per group (:func:`wmma_worthwhile`): ``wmma``, on tensor cores;
    - kernels too large to unroll: ``phase_generic``;
    - at least 8 input and output channels per group: ``phase_smem``, whose weight
      tile is reused by 128 threads x 2 pixels and read as vectors;
    - calls too small for a specialized kernel to pay for its compile
      (:data:`MIN_SPECIALIZED_WORK`): ``phase_generic``;
    - fewer than 4 output channels per group (depthwise upsampling, RGB output):
      ``phase_narrow``, memory-bound, no wasted accumulators;
    - otherwise ``phase``.

    Only the choice between ``phase_generic``, ``phase`` and ``phase_narrow`` depends on
    the sizes, and those three add every output's terms in the same order (one
    ``accumulate`` loop): a batch cut into chunks, or an array into Dask blocks, gives
    the same bits as the whole.
    """
    if g.channels_last:
        return "simple"
    if wmma_worthwhile(g, dtype, precision, arch):
        return "wmma"
    if row_taps(g) > MAX_UNROLLED_TAPS:
        return "phase_generic"
    smem = VARIANTS["phase_smem"]
    if (g.c_in_per_group >= 8 and g.c_out_per_group >= 8
            and smem.shared_bytes(g, dtype) <= MAX_STATIC_SHARED_BYTES):
        return "phase_smem"
    work = g.batch * g.c_out * math.prod(g.out_size) * g.c_in_per_group * all_phase_taps(g)
    if work < MIN_SPECIALIZED_WORK:
        return "phase_generic"
    if g.c_out_per_group < 4:
        return "phase_narrow"
    return "phase"


def check_name(variant: str) -> None:
    """A ``TypeError``/``ValueError`` naming ``variant`` unless it is ``"auto"`` or a variant."""
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a string, got {type(variant).__name__}")
    if variant != "auto" and variant not in VARIANTS:
        raise ValueError(f"variant must be 'auto' or one of {', '.join(map(repr, VARIANTS))}, "
                         f"got {variant!r}")


def resolve(variant: str, g: Geometry, dtype: np.dtype, precision: str = "highest",
            arch: int | None = None) -> Variant:
    """The variant to run: ``"auto"`` resolved; an unknown or inapplicable one refused.
    ``arch``: the device's compute capability (e.g. 90), where known."""
    check_name(variant)
    if variant == "auto":
        variant = choose(g, dtype, precision, arch) if AUTO_USES_HEURISTIC else DEFAULT
    chosen = VARIANTS[variant]
    chosen.check(g, dtype, precision, arch)
    return chosen
