"""The kernel variants: which source and kernel, which compile-time parameters, how
many blocks, and the heuristic that picks one per shape.

Every variant computes the same thing (see ``kernels/``). ``simple`` is the one
thread per output kernel of ``conv_transpose.cu``; the others are the tiled kernels
of ``conv_transpose_tiled.cu`` (phase decomposition, output-channel and pixel
register tiles, optional shared-memory weights, optional compile-time kernel size,
stride and dilation).

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

    def check(self, g: Geometry, dtype: np.dtype) -> None:
        """Raise ``ValueError`` saying why this variant cannot run ``g``."""
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
)}


def choose(g: Geometry, dtype: np.dtype) -> str:
    """The variant expected fastest for ``g`` (from estimates; see the module docstring).

    - channels-last arrays: ``simple`` (the tiled kernels index channels first);
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


def resolve(variant: str, g: Geometry, dtype: np.dtype) -> Variant:
    """The variant to run: ``"auto"`` resolved; an unknown or inapplicable one refused."""
    check_name(variant)
    if variant == "auto":
        variant = choose(g, dtype) if AUTO_USES_HEURISTIC else DEFAULT
    chosen = VARIANTS[variant]
    chosen.check(g, dtype)
    return chosen
