"""The ``numpy`` backend: a vectorized CPU transposed convolution.

Seven formulations, chosen per layer by a cost model (:func:`choose_method`, fitted on
the CPU benchmark: see :mod:`gpu_tconv.bench_cpu_layers`); every GEMM is shaped by the
problem (its columns are the batch chunk's pixels, as many as there are).

Phase formulations (GEMM + col2im by output phase): along each dimension, tap ``k``
sends input ``i`` to output ``o = i*stride + k*dilation - padding``, so every tap writes
to one residue class ``o mod stride`` (its *phase*), shifted by a whole number of
strides. For each phase, the taps that write to it are contracted with the input in
one BLAS call per group (phases that read the same copies share it, their rows
stacked), and the result's blocks of C_out/G rows added into the phase's accumulator,
each at its tap's shift:

- scatter: ``taps*C_out/G x C_in/G`` by the input, ``C_in/G x batch*pixels``; one block
  per tap;
- gather: ``other taps*C_out/G x last taps*C_in/G`` by copies of the input shifted along
  the last dimension (made once per distinct shift, shared by the phases); one block
  per combination of the other dimensions' taps, or none to add when that is a single
  block in place (1-D layers, where stride 1 is the correlation with the flipped kernel:
  the shifted copies stacked, one GEMM, written in place).

The input, its copies and the accumulators share one flattened layout, so a shift is a
single offset and a block's addition one contiguous slice operation. Once every
phase is accumulated, the output is written a cache-sized block of samples and
channels at a time, all phases of the block together. There is no zero insertion and
no Python loop over pixels; Python loops run over phases, taps and output blocks.

``stacked`` (:mod:`gpu_tconv.numpy_stacked`) is gather with every dimension's taps
stacked into the GEMM, one phase at a time, each output written once (few input
channels, many taps). ``col2im`` (:mod:`gpu_tconv.numpy_col2im`) multiplies over the input
pixels only and adds each tap's block straight into the output (or copies it where taps
never overlap: the pixel shuffle of ``kernel == stride``): small images with large
kernels or strides, and many channels on tiny images, as one GEMM over the whole batch;
``col2im_cl`` is col2im with the channels innermost (its additions run over channels,
not over input rows a few pixels long). ``hybrid`` (:mod:`gpu_tconv.numpy_hybrid`), for
stride 1 on 2-D and 3-D layers, is gather along the last dimension and col2im along the
others: its GEMM's columns span the input, not the output, there. ``windows``
(:mod:`gpu_tconv.numpy_windows`), for grouped and depthwise layers, makes one GEMM per
group whose rows are the output's blocks of ``stride`` outputs and whose columns are the
output channels times the phases, so its result is the output with block and phase axes
apart (in 1-D, the output itself): no accumulator, no additions. A phase formulation
whose temporaries for one sample exceed the budget computes the output in boxes, and
the cost model counts them.

Cores: a large call (:data:`PARALLEL_MIN_FLOPS`; for col2im, whose additions take
most of its time, :data:`COL2IM_PARALLEL_SHARE` of it) splits its batch into one part per
core, each computed with BLAS limited to that core (:mod:`gpu_tconv.cpu_threads`), so
that one part's additions and copies overlap another's GEMMs.

Memory: temporaries (the input chunk and its shifted copies, every phase's
accumulator, one phase's GEMM result; see :func:`_buffers`) live in scratch memory kept
between calls, per thread, because mapping fresh memory costs a page fault per page,
which rivals the arithmetic of small layers.
The batch, and for very large samples the output itself (in boxes, each computed from
the inputs that reach it), are split so that a call's scratch stays within
:data:`TEMP_BUDGET_BYTES` (shared between its parts), plus a copy of the weights and
the per-phase stacks of it (and NumPy's own ufunc buffers, a few pages).
:func:`release_scratch` returns the scratch memory of every thread. float16 is computed
in float32 and rounded once, when the result is stored.

Determinism (:data:`SEAM_TOLERANCE_ULPS`): the same call on the same machine gives the
same bits, run after run; batch chunks, output boxes, Dask blocks and the parts on
several cores agree with the whole result within a few ulps of the sum of |terms|, not
bit for bit (BLAS promises no bit pattern across GEMM shapes, thread counts or CPUs).
Bit-for-bit independence is the promise of the ``cuda`` and ``emulated`` backends.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import os
import sys
import threading
import weakref
from dataclasses import dataclass, replace

import numpy as np

from . import (cpu_threads, numpy_col2im, numpy_hybrid, numpy_stacked, numpy_sublattice,
               numpy_windows)
from .formats import is_bfloat16
from .geometry import Geometry

#: What the results promise across batch chunks, output boxes, Dask blocks and cores:
#: each output within this many ulps (of its dtype) of the sum of its terms' magnitudes
#: (``sum |x*w| + |b|``) of the result computed whole. BLAS rounds an element of a GEMM
#: differently by the GEMM's shape, its thread count and the CPU (its kernels), and the
#: GEMMs here are shaped by the problem. The same call on the same machine, with the
#: same BLAS threads, gives the same bits run after run.
SEAM_TOLERANCE_ULPS = 4

#: Budget for the temporaries of one call, in bytes: large enough that typical layers
#: need no output boxes (each box re-reads a halo), small enough
#: to stay well below the output's own size on large problems.
TEMP_BUDGET_BYTES = 32 * 2**20

@dataclass(frozen=True)
class _DimTap:
    k: int                             # kernel index along the dimension
    shift: int                         # lattice index - input index
    reach: slice | None                # lattice range it reaches (None: none)


@dataclass(frozen=True)
class _Phase:
    first: tuple[int, ...]             # per dimension: first output coordinate of the phase
    size: tuple[int, ...]              # per dimension: outputs in the phase
    # Per dimension, every tap of the phase's residue class, even one that reaches no
    # output here (a box of the output then stacks the same rows as the whole). The
    # phase's taps are all combinations of one tap per dimension.
    taps: tuple[tuple[_DimTap, ...], ...]


def _reach(q: int, n_in: int, size: int) -> slice | None:
    """The lattice range ``[lo, hi)`` a tap of shift ``q`` reaches along one dimension:
    lattice ``j`` takes input ``j - q``, with ``j`` in ``[0, size)`` and ``j - q`` in
    ``[0, n_in)``; None when it reaches nothing."""
    lo, hi = max(0, q), min(size, n_in + q)
    return slice(lo, hi) if lo < hi else None


@functools.lru_cache(maxsize=512)
def _phases(g: Geometry) -> tuple[_Phase, ...]:
    """Group the taps by the output phase they write to (pure shape arithmetic, cached)."""
    per_dim = []
    for n_in, out, k, s, p, d in zip(g.in_size, g.out_size, g.kernel, g.stride, g.padding,
                                     g.dilation):
        phases = {r: (-(-(out - r) // s), []) for r in range(min(s, out))}
        for tap in range(k):
            offset = tap * d - p
            phase, shift = offset % s, offset // s  # o = s*(i + shift) + phase
            if phase in phases:
                size, taps = phases[phase]
                taps.append(_DimTap(tap, shift, _reach(shift, n_in, size)))
        per_dim.append([(r, size, tuple(taps)) for r, (size, taps) in phases.items()])
    return tuple(_Phase(first=tuple(r for r, _, _ in combo),
                        size=tuple(n for _, n, _ in combo),
                        taps=tuple(taps for _, _, taps in combo))
                 for combo in itertools.product(*per_dim))


@dataclass(frozen=True)
class _Plan:
    """How one phase is computed: its rows of a GEMM per group (see
    :func:`_gemms`), blocks of C_out/G (one block per tap, or, when the last dimension's
    taps are stacked into the GEMM's inner dimension, one per combination of the other
    dimensions' taps), each block then added into the phase's accumulator at its flat
    offset."""
    # Kernel indices of the phase's taps, the last dimension's then each other's: a
    # residue class, so a slice (which makes the weights' rows a view, not a copy).
    index: tuple[slice, ...]
    # Stacked (gather): the range of shifted copies of the input (see _slot_shifts) that
    # the GEMM reads, one per tap of the last dimension, in tap order. None: scatter.
    slots: slice | None
    # Per block of rows, in GEMM order: its flat offset in the frame, and per dimension
    # the range of the block kept (the inputs that reach the lattice; None: none do).
    blocks: tuple[tuple[int, tuple[slice, ...] | None], ...]


def _as_slice(ks: list[int]) -> slice:
    """Evenly spaced kernel indices (a residue class) as a slice."""
    if len(ks) < 2:
        return slice(ks[0], ks[0] + 1) if ks else slice(0, 0)
    step = ks[1] - ks[0]
    assert ks == list(range(ks[0], ks[-1] + 1, step))
    return slice(ks[0], ks[-1] + 1, step)


@functools.lru_cache(maxsize=512)
def _slot_shifts(g: Geometry) -> tuple[int, ...]:
    """The gather formulation's copies of the input, as their shifts along the last
    dimension: every shift of a tap there, in any phase, once. A phase's taps have
    shifts ``q0, q0 + D, q0 + 2D, ...`` with ``D = dilation / gcd(stride, dilation)``;
    ordered by ``(q mod D, q)``, each phase's copies are consecutive, so that its GEMM
    reads them as one matrix."""
    s, d = g.stride[-1], g.dilation[-1]
    step = d // math.gcd(s, d)
    shifts = {t.shift for ph in _phases(g) for t in ph.taps[-1]}
    return tuple(sorted(shifts, key=lambda q: (q % step, q)))


@functools.lru_cache(maxsize=64)
def _plans(g: Geometry, method: str) -> tuple[_Plan, ...]:
    """Per phase, its :class:`_Plan` for ``method`` (pure shape arithmetic, cached)."""
    frame = _frame(g)
    steps = [math.prod(frame[a + 1:]) for a in range(g.rank)]  # one step along each axis
    stacked = method == "gather"
    position = {q: j for j, q in enumerate(_slot_shifts(g))}
    plans = []
    for ph in _phases(g):
        last, outer = ph.taps[-1], ph.taps[:-1]
        # Rows: (tap of the last dimension unless stacked, taps of the other dimensions).
        row_dims = list(outer) if stacked else [last] + list(outer)
        axes = list(range(g.rank - 1)) if stacked else [g.rank - 1] + list(range(g.rank - 1))
        blocks = []
        for combo in itertools.product(*row_dims):
            off = sum(t.shift * steps[a] for t, a in zip(combo, axes))
            keep = [slice(0, n) for n in frame]  # stacked: the copies mask the last dimension
            for t, a in zip(combo, axes):
                keep[a] = None if t.reach is None else \
                    slice(t.reach.start - t.shift, t.reach.stop - t.shift)
            blocks.append((off, None if None in keep else tuple(keep)))
        slots = None
        if stacked:
            slots = _as_slice([position[t.shift] for t in last])
            assert slots.step in (None, 1)
        plans.append(_Plan(
            index=tuple(_as_slice([t.k for t in taps]) for taps in [last] + list(outer)),
            slots=slots, blocks=tuple(blocks) if all(ph.taps) else ()))
    return tuple(plans)


#: The cost model's constants (:func:`method_costs`) were fitted by
#: ``bench/cpu_methods.py --fit``: a grid search for the least time lost against the
#: best formulation, on the CPU benchmark's layers but the sweep's held-out ones
#: (``bench/results/cpu-methods-20261202-amd-3.json``: a 2-core AMD EPYC VM with
#: AVX-512; near-ties broken by the worst layer's loss).
#:
#: How many GEMM flops take the time of one element of memory traffic.
FLOPS_PER_PASS = 30

#: How much slower the gather formulations' GEMMs run than scatter's (fewer rows, more
#: columns, read from several copies of the input).
GATHER_GEMM_PENALTY = 0.15


#: How much slower col2im's additions and copies run per element than the phase
#: formulations' (N-D strided slices of the output instead of contiguous flat ones).
COL2IM_STRIDED_PENALTY = 2.0

#: What one NumPy call costs beyond its elements, in element passes (a few
#: microseconds): it decides small layers, where the formulations' call counts differ.
PASSES_PER_CALL = 60000

#: What each element of the stacked formulation's copies costs, in passes (the copy,
#: zeroing what wraps around, the GEMM reading it back from a tall inner dimension):
#: set from a few layers timed every way, where it won only with few input channels.
STACKED_COPY_PASSES = 6

#: How much slower col2im_cl's additions run per element than col2im's contiguous
#: ones (each tap's block is a slab of runs of channels, one run per input pixel).
COL2IM_CL_ADD_PENALTY = 1.0

#: What each element of a transposing copy costs, in passes (col2im_cl's input, output
#: and weight).
TRANSPOSE_PASSES = 5

#: What reading an element with a stride of a cache line or more costs beyond a
#: contiguous read, in passes (col2im_cl's additions when the weight is not reordered).
STRIDED_READ_PASSES = 0.5

#: What each element the windows formulation's GEMMs read or write costs beyond their
#: flops, in passes: its GEMMs are small (per group, a few channels times the window by a
#: few channels times the phases), so memory, not arithmetic, bounds them.
WINDOWS_GEMM_PASSES = 5

#: What one more BLAS call costs, in passes: NumPy's matmul over a stack of groups (and
#: in the windows formulation, of samples too) calls BLAS once per matrix; depthwise
#: layers make hundreds of small GEMMs per NumPy call.
BLAS_CALL_PASSES = 10000

#: What one contiguous run of a strided copy or addition costs beyond its elements, in
#: element passes: it decides col2im on small images, whose rows are short.
PASSES_PER_RUN = 3


#: What one contiguous run of col2im's and col2im_cl's additions costs beyond its
#: elements, in passes: their runs are an input row or a group's channels, strided in
#: the output, often a few elements long (sweep 02: rows of 3, 2 channels per group,
#: 2.2 to 2.4 times the best formulation's time at the phase writes' 3). Fitted on the
#: stored call-by-call rows of three machines with the other constants as they are:
#: from 8 to 15 the rule loses 6.7% against the best per layer, at worst 2.05x, against
#: 7.3% and 2.42x at 3; the held-out rows are unchanged.
COL2IM_PASSES_PER_RUN = 10


def _untiled_costs(g: Geometry, dtype=np.float32) -> dict[str, float]:
    """The modelled time of every formulation that can compute ``g`` whole (no output
    boxes: see :func:`method_costs`), in element passes
    of memory traffic (a GEMM flop costs ``1 / FLOPS_PER_PASS``; a NumPy call
    :data:`PASSES_PER_CALL`).

    With ``K`` taps, ``F`` frame pixels (the input's extent or a phase lattice's,
    whichever is larger, per dimension; times the batch), ``I`` input and ``O`` output
    pixels:

    - ``scatter`` multiplies every tap's C_out rows over the frame, writes each tap's
      block and reads it back to add it into its phase's accumulator (``3 C_out K F``),
      then writes the output (``2 C_out O``);
    - ``gather`` first copies the input once per shift ``U`` along the last dimension
      (``2 C_in U F``) and stacks those copies into the GEMM's inner dimension, so that
      it writes and adds one block per phase of the last dimension and tap of the others
      (``3 C_out K' stride F``; a 1-D phase's result is written in place, ``1``), and
      its GEMMs run slower (:data:`GATHER_GEMM_PENALTY`);
    - ``stacked`` copies the input once per tap (:data:`STACKED_COPY_PASSES`
      ``C_in K F``) and writes every
      phase's result once, in place (``C_out P F`` for ``P`` phases);
    - ``hybrid`` (stride 1) is gather whose columns span the input, not the frame,
      along every dimension but the last (:mod:`gpu_tconv.numpy_hybrid`), and which
      initializes the output and, for float16 or channels-last outputs, copies it out of
      an accumulator (``3 C_out O`` either way: counting one pass where it adds in place
      picked it on three stride-1 layers where gather was 5 to 10% faster); its copies
      and additions run along rows of the output's last dimension, one run each
      (sweep 31's sublattice, rows of 6: 4.8 ms against col2im's 1.4);
    - ``col2im`` multiplies over the input pixels only (``I``, not ``F``: what decides
      small images with large kernels or strides), copies the input once (``2 C_in I``)
      and adds each tap's block into the output, or copies it there where taps never
      overlap (``3`` or ``2 C_out K I``, times :data:`COL2IM_STRIDED_PENALTY`),
      initializing the output first unless every output is one tap's (``C_out O``);
      split between cores, it takes :data:`COL2IM_PARALLEL_TIME` of that;
    - ``col2im_cl`` is col2im with the channels innermost: the input and, unless the
      arrays are channels-last, the output are copied transposed
      (:data:`TRANSPOSE_PASSES` per element), and the additions run over channels, not
      input rows (one run per input pixel, tap, group and GEMM: a GEMM takes a range
      of the channels); either the weight is copied transposed or every added element
      is read with the taps' stride (:data:`STRIDED_READ_PASSES`).

    - ``windows`` (grouped layers) pads the input (``3 C_in``), copies it once per
      window position over the ``J`` blocks (``2 C_in Q J``), multiplies by the window's
      taps, zeros included, each GEMM element read or written costing
      :data:`WINDOWS_GEMM_PASSES` beyond its flops, and copies its result into the
      output (``2 C_out S J``: phase by phase, or in 1-D in one run per channel), one
      BLAS call per sample and group (:data:`BLAS_CALL_PASSES`; in 1-D per output
      channel too), and first copies the weight, zero-padded to whole strides,
      transposed (:data:`TRANSPOSE_PASSES` per element: sweep 44's 21 x 714 x 6 x 6
      weight took 3.5 ms of its 5.4). In 1-D its GEMMs take rows of ``L`` blocks, whose
      window is ``Q + L - 1`` positions.

    Beyond the first group, each group's GEMM costs the other formulations one more BLAS
    call. Strided copies and additions pay per contiguous run: the phases' writes into
    the output (runs of one output row's phase) :data:`PASSES_PER_RUN`, col2im's blocks
    (runs of one input row) and col2im_cl's (of one group's channels)
    :data:`COL2IM_PASSES_PER_RUN`.
    """
    frame, inputs = g.batch * math.prod(_frame(g)), g.batch * math.prod(g.in_size)
    outputs, taps = g.batch * math.prod(g.out_size), math.prod(g.kernel)
    gemm = 2 * g.c_in * g.c_out_per_group * taps / FLOPS_PER_PASS  # per column
    shifts, phases = len(_slot_shifts(g)), len(_phases(g))
    other = math.prod(g.kernel[:-1]) * g.stride[-1]
    # The phases are written into the output with the stride along the last dimension.
    write = 2 * g.c_out * outputs + PASSES_PER_RUN * g.c_out * outputs // g.out_size[-1] \
        * g.stride[-1]
    rows = inputs // g.in_size[-1]  # runs of one channel's input rows
    costs = {
        "scatter": frame * (3 * g.c_out * taps + gemm) + write
        + PASSES_PER_CALL * (3 * taps + 2 * phases),
        "gather": frame * (2 * g.c_in * shifts + (3 if g.rank > 1 else 1) * g.c_out * other
                           + gemm * (1 + GATHER_GEMM_PENALTY)) + write
        + PASSES_PER_CALL * (2 * shifts + 3 * other + 2 * phases),
        "stacked": frame * (g.c_in * (1 + STACKED_COPY_PASSES * taps) + g.c_out * phases
                            + gemm * (1 + GATHER_GEMM_PENALTY)) + write
        + PASSES_PER_CALL * (4 * taps + 3 * phases),
    }
    # Beyond the first group, each group's GEMM is one more BLAS call (col2im's are outer
    # products, one NumPy call, with one input channel per group).
    per_group = BLAS_CALL_PASSES * (g.groups - 1)
    if per_group:
        costs["scatter"] += per_group * phases
        costs["gather"] += per_group * len(_gemms(g, "gather"))
        costs["stacked"] += per_group * phases
    if applies(g, "hybrid", dtype):
        # gather's terms over the hybrid's columns, plus the output's initialization
        columns, outer = g.batch * numpy_hybrid.columns(g), math.prod(g.kernel[:-1])
        costs["hybrid"] = (
            columns * (2 * g.c_in * g.kernel[-1] + 3 * g.c_out * outer
                       + gemm * (1 + GATHER_GEMM_PENALTY))
            + 3 * g.c_out * outputs + PASSES_PER_CALL * (2 * g.kernel[-1] + 3 * outer)
            + PASSES_PER_RUN * columns // g.out_size[-1]
            * (g.c_in * g.kernel[-1] + g.c_out * outer)
            + per_group)
    if applies(g, "windows", dtype):
        padded, blocks, window, row = numpy_windows.sizes(g)
        phases_out = g.c_out * math.prod(g.stride) * blocks  # the GEMMs' results, per sample
        # (in 1-D the result is copied into the output in one run per channel, which
        # streams: one pass, where the phase-by-phase copies of 2-D and 3-D take two)
        copied = g.c_in * window * blocks + (phases_out / 2 if g.rank == 1 else phases_out)
        # the GEMMs' inner dimension: in 1-D a row's window, Q + L - 1 positions
        inner = g.c_in_per_group * window * (numpy_windows.row_blocks(g) if g.rank == 1 else 1)
        costs["windows"] = g.batch * (
            3 * g.c_in * padded + 2 * copied + PASSES_PER_RUN * copied // row
            + 2 * inner * phases_out / FLOPS_PER_PASS
            + WINDOWS_GEMM_PASSES * (g.c_in * window * blocks + phases_out)
            + BLAS_CALL_PASSES * g.groups * (g.c_out_per_group if g.rank == 1 else 1)) \
            + PASSES_PER_CALL * (6 + (0 if g.rank == 1 else math.prod(g.stride))) \
            * numpy_windows.steps(g, compute_dtype(dtype).itemsize, TEMP_BUDGET_BYTES) \
            + TRANSPOSE_PASSES * g.c_in * g.c_out_per_group * window * math.prod(g.stride)
        if numpy_windows.parts(g) > 1:
            costs["windows"] *= numpy_windows.PARALLEL_TIME
    if applies(g, "col2im", dtype):
        disjoint = numpy_col2im.disjoint(g)
        costs["col2im"] = (
            inputs * (2 * g.c_in + gemm
                      + (2 if disjoint else 3) * g.c_out * taps * COL2IM_STRIDED_PENALTY)
            + COL2IM_PASSES_PER_RUN * rows * (g.c_in + g.c_out * taps)
            + (g.c_out * outputs if not disjoint or not numpy_col2im.covers(g) else 0)
            + PASSES_PER_CALL * 2 * taps) * (
                COL2IM_PARALLEL_TIME if _parts(g, "col2im") > 1 else 1)
    if applies(g, "col2im_cl", dtype):
        disjoint = numpy_col2im.disjoint(g)
        added = inputs * g.c_out * taps
        reorder = numpy_col2im.reorders_weight(g)
        costs["col2im_cl"] = (
            inputs * (TRANSPOSE_PASSES * g.c_in + gemm)
            + (2 if disjoint else 3) * COL2IM_CL_ADD_PENALTY * added
            + (TRANSPOSE_PASSES * g.c_in_per_group * g.c_out * taps if reorder
               else STRIDED_READ_PASSES * added)
            + COL2IM_PASSES_PER_RUN * inputs * taps * g.groups * len(numpy_col2im.gemm_chunks(
                g, compute_dtype(dtype).itemsize, TEMP_BUDGET_BYTES // _parts(g))[0])
            + (g.c_out * outputs if not disjoint or not numpy_col2im.covers(g) else 0)
            + (0 if g.channels_last else TRANSPOSE_PASSES * g.c_out * outputs)
            + PASSES_PER_CALL * 2 * taps)
    return costs


@functools.lru_cache(maxsize=1024)
def _boxes(g: Geometry, method: str, itemsize: int, budget: int) -> tuple[int, Geometry]:
    """How many output boxes :func:`_tiles` makes, and the geometry of a typical one
    (each dimension's middle range: the cost model's estimate, not a bound)."""
    per_dim = _splits(g, method, itemsize, budget)
    found = _box(g, tuple(ranges[len(ranges) // 2] for ranges in per_dim))
    return math.prod(map(len, per_dim)), g if found is None else found[1]


def method_costs(g: Geometry, dtype=np.float32) -> dict[str, float]:
    """The modelled time of every formulation that can compute ``g`` (see
    :func:`_untiled_costs`). A phase formulation whose temporaries for one sample exceed
    the budget computes the output in boxes, each from the inputs that reach it; with
    a large kernel each box re-reads a wide halo and pays its own calls, so its cost is
    that of its boxes, modelled as their number times the cost of a typical one
    (a 7x7x7 kernel with dilation 3 on a 13x11x7 volume: 32 boxes to 1344, from 10 to 80
    times col2im's time)."""
    g = _reduced(g)
    costs = _untiled_costs(g, dtype)
    parts = _parts(g)
    part = replace(g, batch=-(-g.batch // parts))
    itemsize, budget = compute_dtype(dtype).itemsize, TEMP_BUDGET_BYTES // parts
    for method in ("scatter", "gather", "stacked"):
        n, box = _boxes(part, method, itemsize, budget)
        if n > 1:
            costs[method] = parts * n * _untiled_costs(box, dtype)[method]
    return costs


def choose_method(g: Geometry, dtype=np.float32) -> str:
    """The formulation of least modelled time (:func:`method_costs`). The choice depends
    on the sizes, so parts of a problem (batch chunks, Dask blocks) may be computed by
    different formulations: they agree within :data:`SEAM_TOLERANCE_ULPS`.

    Memoized: evaluating the model takes 50 to 120 us, a third of the time of the
    smallest layers, which a network calls with the same shapes again and again. The
    key holds everything the model reads besides the geometry: the modules' constants
    (which the fit and the tests set) and BLAS's thread count."""
    g = _reduced(g)
    return _choice(g, np.dtype(dtype), tuple(read(module) for module, read in _MODEL_CONSTANTS),
                   cpu_threads.blas_threads())


@functools.lru_cache(maxsize=1024)
def _choice(g: Geometry, dtype: np.dtype, constants: tuple, threads: int) -> str:
    costs = method_costs(g, dtype)
    return min(costs, key=costs.get)


def conv_transpose(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   geometry: Geometry, method: str | None = None) -> np.ndarray:
    """NumPy twin of :func:`gpu_tconv.cuda_backend.conv_transpose` (NumPy arrays).

    ``method`` forces a formulation (one of :data:`METHODS`; a ``ValueError`` where it
    cannot compute the layer, see :func:`applies`); by default :func:`choose_method`
    picks.
    """
    y = np.empty(geometry.out_shape, x.dtype)
    _into(x, weight, bias, geometry, method, y)
    return y


def _into(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, g: Geometry,
          method: str | None, y: np.ndarray) -> None:
    """:func:`conv_transpose` into ``y`` (``g.out_shape``, possibly a strided view)."""
    lattice = numpy_sublattice.reduce(g)
    if lattice is not None:
        g2, keep = lattice
        if method is not None:
            _check(g, method, x.dtype)  # (also where no output is on the sublattice)
        # The spatial axes of y: after batch and channels, or between batch and channels.
        lead, tail = ((slice(None),), (slice(None),)) if g.channels_last \
            else ((slice(None), slice(None)), ())
        # Outputs off the sublattice are reached by no tap: the bias, as everywhere.
        constant = 0 if bias is None else \
            bias if g.channels_last else bias.reshape((g.c_out,) + (1,) * g.rank)
        empty = not math.prod(g2.out_size)
        if empty or keep[-1].step > 2:
            # (off the sublattice along the last dimension, every c-th element is
            # written apart, each its own run: with c > 2 one contiguous fill of the
            # whole output costs less; sweep 04, k1 s5 there: 1.3 ms against 2.4)
            y[...] = constant
        else:
            for dims in numpy_sublattice.unreached(g, keep):
                y[lead + dims + tail] = constant
        if not empty:
            _into(x, weight, bias, g2, method, y[lead + keep + tail])
        return
    if method is None:
        method = choose_method(g, x.dtype)
        # The gather formulations multiply the zeros around the input by the weights,
        # which turns an infinite weight into NaN where PyTorch has none; windows also
        # multiplies the input by the zeros its window holds between taps.
        if method in ("gather", "stacked", "hybrid", "windows") and not np.isfinite(weight).all() \
                or method == "windows" and not np.isfinite(x).all():
            method = "scatter"
    if g.channels_last:
        # Channels-first views of x and y: the computation copies its input a chunk at a
        # time anyway and writes the output through strided views, so no transposed copy
        # of either array is made.
        x, y_view = np.moveaxis(x, -1, 1), np.moveaxis(y, -1, 1)
        g = replace(g, channels_last=False)
    else:
        y_view = y
    compute = compute_dtype(x.dtype)
    # Each phase gathers its taps from the weight as whole rows of output channels, in
    # the order its GEMM wants them (see _compute), and BLAS reads the result transposed
    # as it is: no transposing copy of the whole weight per phase, which costs as much
    # as a small layer.
    last, other = (2 + g.rank,), tuple(range(3, 2 + g.rank))  # axes of the taps
    order = ((0, 1) + last + other if method == "scatter" else (0,) + last + (1,) + other) + (2,)
    if method in ("col2im", "col2im_cl", "stacked", "hybrid", "windows"):
        order = tuple(range(3 + g.rank))  # they gather their taps' rows themselves
    w = np.ascontiguousarray(weight.astype(compute, copy=False).reshape(
        (g.groups, g.c_in_per_group, g.c_out_per_group) + g.kernel).transpose(order))
    # Large calls split their batch between cores (see gpu_tconv.cpu_threads), each part
    # within its share of the temporaries' budget.
    parts = _parts(g, method)
    budget = TEMP_BUDGET_BYTES // parts
    _check(g, method, x.dtype)

    def part(k: int) -> None:
        samples = slice(g.batch * k // parts, g.batch * (k + 1) // parts)
        gk = replace(g, batch=samples.stop - samples.start)
        # NaN, infinities and float16 overflow are results here, as in PyTorch, not errors.
        with np.errstate(all="ignore"):
            if method == "col2im":
                numpy_col2im.compute(x[samples], w, bias, gk, y_view[samples], budget)
                return
            if method == "col2im_cl":
                numpy_col2im.compute_channels_last(x[samples], w, bias, gk, y_view[samples],
                                                   budget)
                return
            if method == "hybrid":
                numpy_hybrid.compute(x[samples], w, bias, gk, y_view[samples], budget)
                return
            if method == "windows":
                numpy_windows.compute(x[samples], w, bias, gk, y_view[samples], budget)
                return
            for in_box, out_box, tile in _tiles(gk, method, compute.itemsize, budget):
                where = (samples, slice(None)) + out_box
                if tile is None:  # no input reaches this box: only the bias does
                    y_view[where] = 0 if bias is None else \
                        bias.reshape((g.c_out,) + (1,) * g.rank)
                elif method == "stacked":
                    numpy_stacked.compute(x[(samples, slice(None)) + in_box], w, bias, tile,
                                          y_view[where], budget)
                else:
                    _compute(x[(samples, slice(None)) + in_box], w, bias, tile, method,
                             y_view[where], budget)

    cpu_threads.run_pieces([functools.partial(part, k) for k in range(parts)], parts)


def _check(g: Geometry, method: str, dtype) -> None:
    """A ``ValueError`` unless ``method`` is a formulation that can compute ``g``."""
    if method not in METHODS or not applies(g, method, dtype):
        raise ValueError(f"method {method!r} cannot compute this layer")


def compute_dtype(dtype) -> np.dtype:
    """The type arithmetic runs in: float32 for float16 and bfloat16 (as PyTorch
    accumulates), else the dtype itself."""
    if np.dtype(dtype) == np.float16 or is_bfloat16(dtype):
        return np.dtype(np.float32)
    return np.dtype(dtype)


@functools.lru_cache(maxsize=512)
def _frame(g: Geometry) -> tuple[int, ...]:
    """Per dimension, the extent of the layout shared by the input and every phase's
    accumulator: the larger of the input and the largest phase lattice."""
    phases = _phases(g)
    return tuple(max([n] + [ph.size[a] for ph in phases]) for a, n in enumerate(g.in_size))


#: Flops of a call from which its batch is split between cores: below it, handing work
#: to threads costs more than it saves.
PARALLEL_MIN_FLOPS = 500e6

#: col2im splits its batch from this share of :data:`PARALLEL_MIN_FLOPS`: its
#: additions into the output, which run on one core, take most of its time (KernelBench
#: 81, 151 Mflop: 12 ms in one part, 8 ms in two; below 100 Mflop two parts were slower).
COL2IM_PARALLEL_SHARE = 0.2

#: What two parts cost of col2im's time in one, in the cost model (measured on the
#: layers above 100 Mflop: 0.6 to 0.8).
COL2IM_PARALLEL_TIME = 0.8


def _parts(g: Geometry, method: str | None = None) -> int:
    """Parts of the batch computed at once, one per core (see :mod:`gpu_tconv.cpu_threads`)."""
    share = COL2IM_PARALLEL_SHARE if method == "col2im" else 1
    if g.batch < 2 or g.flops < PARALLEL_MIN_FLOPS * share:
        return 1
    return max(1, min(g.batch, cpu_threads.blas_threads()))


@functools.lru_cache(maxsize=64)
def _gemms(g: Geometry, method: str) -> tuple[tuple[int, ...], ...]:
    """The phases computed together, by one GEMM per group: in the gather
    formulation, the phases that read the same copies (the same residue along the last
    dimension), their rows stacked, which makes fewer and larger GEMMs; in scatter, each
    phase alone (its GEMM is large already). Phases without taps are in none. Each
    GEMM's phases are ordered by their taps, so that a box of the output stacks the same
    rows in the same order as the whole."""
    plans = _plans(g, method)
    by_operand: dict = {}
    for p, plan in enumerate(plans):
        if plan.blocks:
            key = p if plan.slots is None else (plan.slots.start, plan.slots.stop)
            by_operand.setdefault(key, []).append(p)
    return tuple(tuple(sorted(members, key=lambda p: [(i.start, i.stop, i.step)
                                                       for i in plans[p].index]))
                 for members in by_operand.values())


def _direct(plans: tuple[_Plan, ...], members: tuple[int, ...]) -> bool:
    """Whether a GEMM's result is its phase's accumulator: one phase, a single block
    in place."""
    blocks = plans[members[0]].blocks
    return len(members) == 1 and len(blocks) == 1 and blocks[0][0] == 0


@functools.lru_cache(maxsize=64)
def _buffers(g: Geometry, method: str) -> tuple[int, ...]:
    """Channels of each temporary, per column (a pixel of the frame, per sample): the
    input; its shifted copies (gather; the one of shift 0 is the input itself) and the
    mask they are copied through; every phase's accumulator; and the result of one GEMM
    (unless it is the accumulator), a block of C_out per row block of its phases."""
    if method == "stacked":
        return numpy_stacked.buffers(g)
    plans = _plans(g, method)
    gather = method == "gather"
    own_input = not gather or 0 not in _slot_shifts(g)
    blocks = max([sum(len(plans[p].blocks) for p in members)
                  for members in _gemms(g, method) if not _direct(plans, members)], default=0)
    return (g.c_in if own_input else 0, len(_slot_shifts(g)) * g.c_in if gather else 0,
            1 if gather else 0, len(plans) * g.c_out, blocks * g.c_out)


def _per_sample(g: Geometry, method: str) -> int:
    """Elements of temporaries per sample of a batch chunk (see :func:`_buffers`)."""
    return math.prod(_frame(g)) * sum(_buffers(g, method))


def _box(g: Geometry, box: tuple[tuple[int, int], ...]):
    """Input slices and geometry for the outputs ``box`` (per dimension ``[lo, hi)``).

    Output ``[lo, hi)`` takes inputs ``i`` with ``lo <= i*s + k*d - p < hi`` for some
    tap ``k``; relative to the box, padding becomes ``p + lo - s*i_lo`` (possibly
    negative, which the phase arithmetic handles as it is). ``None`` when no input
    reaches the box.
    """
    ins, pads = [], []
    for (lo, hi), n_in, k, s, p, d in zip(box, g.in_size, g.kernel, g.stride, g.padding,
                                          g.dilation):
        i_lo = max(0, -(-(lo + p - d * (k - 1)) // s))
        i_hi = min(n_in, (hi - 1 + p) // s + 1)
        if i_lo >= i_hi:
            return None
        ins.append((i_lo, i_hi))
        pads.append(p + lo - s * i_lo)
    tile = replace(g, in_size=tuple(hi - lo for lo, hi in ins), padding=tuple(pads),
                   out_size=tuple(hi - lo for lo, hi in box))
    return tuple(slice(lo, hi) for lo, hi in ins), tile


def _fits(g: Geometry, per_dim, method: str, itemsize: int, budget: int) -> bool:
    """Whether one sample's temporaries fit ``budget`` bytes for every box that is a
    product of ``per_dim``'s ranges, checked exactly without visiting every box: a box's
    geometry is made of its per-dimension input extent, padding and output extent, so
    only the boxes made of one range per distinct such triple, per dimension, are
    visited, and the first that does not fit ends the search."""
    distinct = []
    for a, ranges in enumerate(per_dim):
        line = replace(g, in_size=(g.in_size[a],), out_size=(g.out_size[a],),
                       kernel=(g.kernel[a],), stride=(g.stride[a],),
                       padding=(g.padding[a],), dilation=(g.dilation[a],))
        kinds = {}
        for r in ranges:
            found = _box(line, (r,))
            kinds.setdefault(None if found is None else
                             (found[1].in_size, found[1].padding, r[1] - r[0]), r)
        distinct.append(list(kinds.values()))
    for box in itertools.product(*distinct):
        found = _box(g, box)
        if found is not None and _per_sample(found[1], method) * itemsize > budget:
            return False
    return True


@functools.lru_cache(maxsize=1024)
def _splits(g: Geometry, method: str, itemsize: int, budget: int) -> tuple:
    """Per dimension, the output ranges :func:`_tiles` splits the output into so that
    one sample's temporaries for every box fit ``budget`` bytes (the leading dimensions
    split first; pure shape arithmetic, cached)."""
    needed = -(-_per_sample(g, method) * itemsize // budget)
    while True:
        per_dim, rest = [], needed
        for out in g.out_size:  # split the leading dimensions first
            parts = min(out, rest)
            rest = -(-rest // parts)
            per_dim.append(tuple((out * j // parts, out * (j + 1) // parts) for j in range(parts)))
        # The inputs a box needs reach beyond its share (the kernel's halo): split
        # further until every box fits, or boxes are single outputs.
        if list(map(len, per_dim)) == list(g.out_size) or \
                _fits(g, per_dim, method, itemsize, budget):
            return tuple(per_dim)
        needed *= 2


@functools.lru_cache(maxsize=64)
def _tiles(g: Geometry, method: str, itemsize: int, budget: int) -> tuple:
    """Split the output into boxes whose one-sample temporaries fit ``budget`` bytes
    (see :func:`_splits`; pure shape arithmetic, cached).

    Returns ``(input slices, output slices, geometry of the box)`` per box; the geometry
    is ``None`` where no input reaches the box.
    """
    boxes = [(box, _box(g, box)) for box in itertools.product(*_splits(g, method, itemsize,
                                                                      budget))]
    return tuple((None, out_box, None) if found is None else (found[0], out_box, found[1])
                 for box, found in boxes
                 for out_box in [tuple(slice(lo, hi) for lo, hi in box)])


def _compute(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, g: Geometry,
             method: str, y: np.ndarray, budget: int) -> None:
    """Compute the transposed convolution of ``g`` into the (possibly strided) view ``y``;
    ``w`` is the weight, contiguous, in the compute type, as (G, C_in/G, k_last,
    *k_other, C_out/G) for scatter and (G, k_last, C_in/G, *k_other, C_out/G) for
    gather; temporaries within ``budget`` bytes.

    The input and every phase's accumulator share one layout, (nb, *frame) flattened, so
    that a tap's shift is one flat offset: moving a block into place is a single
    contiguous slice operation over whole rows, not a slice per dimension. What wraps
    around a row's end lands in the wrong place; those elements are exactly the ones the
    block does not reach, and are zeroed first (a few thin slabs per block).
    """
    compute = w.dtype
    groups, cin_g, cout_g, rank = g.groups, g.c_in_per_group, g.c_out_per_group, g.rank
    phases, plans = _phases(g), _plans(g, method)
    shifts = _slot_shifts(g) if method == "gather" else ()
    frame = _frame(g)
    pixels = math.prod(frame)
    chunk = min(g.batch, max(1, budget // compute.itemsize // _per_sample(g, method)))

    def weights(plan: _Plan) -> np.ndarray:
        """The phase's GEMM rows by columns, per group, as a (G, 1, rows, columns) view
        (BLAS reads it transposed as it is): rows (tap of the last dimension, taps of
        the others, C_out/G), columns C_in/G (scatter); or rows (taps of the other
        dimensions, C_out/G), columns (tap of the last dimension, C_in/G) (gather)."""
        if plan.slots is None:
            taps = w[(slice(None),) * 2 + plan.index]  # (G, C_in/G, taps..., C_out/G)
            inner = cin_g
        else:  # (G, taps of the last dimension, C_in/G, other taps..., C_out/G)
            taps = w[(slice(None), plan.index[0], slice(None)) + plan.index[1:]]
            inner = cin_g * (plan.slots.stop - plan.slots.start)
        return taps.reshape(groups, inner, -1).swapaxes(1, 2)[:, None]

    gemms = _gemms(g, method)
    lhs = [weights(plans[members[0]]) if len(members) == 1 else
           np.concatenate([weights(plans[p]) for p in members], axis=2) for members in gemms]
    bias_cols = None if bias is None else bias.astype(compute).reshape(groups, cout_g, 1)

    # Temporaries come from the thread's scratch memory, reused for every phase, chunk
    # and call:
    # - the input, (G, C_in/G, nb*frame): the GEMMs' right-hand side (scatter), or what
    #   the shifted copies are taken from; where the frame exceeds x it holds stale
    #   values, which reach nothing (every block's unreached positions are zeroed);
    # - gather: the input shifted along the last dimension, (G, shifts, C_in/G,
    #   columns), zero where the shift moves no input;
    # - every phase's accumulator, kept so that the output is written a block of samples
    #   and channels at a time, all phases together, while the block is in cache;
    # - one GEMM's result, (G, blocks of its phases, C_out/G, columns).
    width_max = chunk * pixels
    sizes = [channels * width_max for channels in _buffers(g, method)]
    scratch = _scratch(sum(sizes) * compute.itemsize).view(compute)
    x_buf, copies_buf, mask_buf, acc_buf, cols_buf = (
        scratch[sum(sizes[:k]):sum(sizes[:k + 1])] for k in range(len(sizes)))
    inside = (slice(None),) * 3 + tuple(slice(0, n) for n in g.in_size)
    bits = np.dtype(f"i{compute.itemsize}")  # to copy floats masked, bit for bit

    def tiled(a: np.ndarray) -> np.ndarray:
        """(G, rows, columns) as (G, 1, rows, columns): one GEMM per group, as wide as
        the chunk (BLAS blocks it as it sees fit)."""
        return a[:, None]

    def unreached(block: np.ndarray, keep: tuple[slice, ...], nb: int) -> None:
        """Zero the frame positions of ``block`` (G, C, nb*frame) outside ``keep``."""
        view = block.reshape(block.shape[:2] + (nb,) + frame)
        for a, (r, n) in enumerate(zip(keep, frame)):
            lead = (slice(None),) * (3 + a)
            if r.start > 0:
                view[lead + (slice(0, r.start),)] = 0
            if r.stop < n:
                view[lead + (slice(r.stop, None),)] = 0

    def shift(dst: np.ndarray, src: np.ndarray, q: int, nb: int) -> None:
        """``dst`` (G, C_in/G, width) = ``src`` shifted by ``q`` along the last dimension
        (lattice ``j`` takes input ``j - q``), zero where that input lies outside x and
        in the padding columns."""
        used = nb * pixels
        lo = min(max(0, q), used)
        hi = max(used + min(0, q), lo)  # lo == hi: the shift moves everything out
        dst[..., :lo] = 0
        dst[..., hi:] = 0
        start = min(max(0, q), frame[-1])  # the columns whose input lies in x
        keep = slice(start, max(start, min(frame[-1], g.in_size[-1] + q)))
        if keep == slice(0, frame[-1]):  # all of the last dimension is input: a plain copy
            dst[..., lo:hi] = src[..., lo - q:hi - q]
        else:  # one pass: the copy AND'ed with a mask (all bits or none) per column
            row = np.zeros(frame[-1], bits)
            row[keep] = -1
            mask = mask_buf[:used].view(bits)
            mask.reshape(-1, frame[-1])[:] = row
            np.bitwise_and(src[..., lo - q:hi - q].view(bits), mask[lo:hi],
                           out=dst[..., lo:hi].view(bits))

    def gemm(k: int, nb: int, x_cols: np.ndarray, copies: np.ndarray,
             accs: list[np.ndarray]) -> None:
        """GEMM ``k`` of a chunk of ``nb`` samples, then each of its phases' blocks zeroed
        where it reaches nothing and added into the phase's accumulator at its flat
        offset, in block order. A single block in place is the GEMM's result itself."""
        members = gemms[k]
        width = nb * pixels
        slots = plans[members[0]].slots
        rhs = x_cols if slots is None else copies[:, slots].reshape(groups, -1, width)
        if _direct(plans, members):
            acc = accs[members[0]]
            np.matmul(lhs[k], tiled(rhs), out=tiled(acc))
            keep = plans[members[0]].blocks[0][1]
            if keep is None:
                acc.fill(0)
            else:
                unreached(acc[:, :, :nb * pixels], keep, nb)
            return
        rows = sum(len(plans[p].blocks) for p in members)
        cols = cols_buf[:groups * rows * cout_g * width].reshape(groups, rows, cout_g, width)
        np.matmul(lhs[k], tiled(rhs), out=tiled(cols.reshape(groups, -1, width)))
        first = 0
        for p in members:  # (G, blocks, C_out/G, columns), the phase's rows
            blocks = plans[p].blocks
            place(cols[:, first:first + len(blocks)], blocks, accs[p], nb)
            first += len(blocks)

    def place(cols: np.ndarray, blocks, acc_cols: np.ndarray, nb: int) -> None:
        """Add ``blocks`` of ``cols`` into ``acc_cols``, each at its offset (see gemm)."""
        used = nb * pixels
        acc = acc_cols[:, :, :used]
        reaching = []
        for j, (off, keep) in enumerate(blocks):
            if keep is not None:
                block = cols[:, j, :, :used]
                unreached(block, keep, nb)
                reaching.append((block, off))
        _sum_first_two(acc, reaching[:2])
        for block, off in reaching[2:]:
            lo, hi = max(0, off), used + min(0, off)
            acc[..., lo:hi] += block[..., lo - off:hi - off]

    for n0 in range(0, g.batch, chunk):
        nb = min(chunk, g.batch - n0)
        used, width = nb * pixels, nb * pixels
        copies = copies_buf[:len(shifts) * groups * cin_g * width].reshape(
            groups, len(shifts), cin_g, width)
        if x_buf.size:
            x_cols = x_buf[:groups * cin_g * width].reshape(groups, cin_g, width)
        else:  # the copy of shift 0, zeroed below where the frame exceeds x
            x_cols = copies[:, shifts.index(0)]
        # (G, C_in/G, nb, *frame) <- (nb, G, C_in/G, *in): the batch folded into the pixels.
        np.copyto(x_cols[:, :, :used].reshape((groups, cin_g, nb) + frame)[inside],
                  x[n0:n0 + nb].reshape((nb, groups, cin_g) + g.in_size)
                  .transpose((1, 2, 0) + tuple(range(3, 3 + rank))))
        for j, q in enumerate(shifts):
            if q == 0 and not x_buf.size:
                unreached(x_cols[:, :, :used], tuple(slice(0, n) for n in frame[:-1])
                          + (slice(0, g.in_size[-1]),), nb)
            else:
                shift(copies[:, j], x_cols, q, nb)
        # A phase no tap writes to has no accumulator: _write writes the bias there.
        accs = [acc_buf[p * g.c_out * width:(p + 1) * g.c_out * width].reshape(
            groups, cout_g, width) if plan.blocks else None for p, plan in enumerate(plans)]
        for k in range(len(gemms)):
            gemm(k, nb, x_cols, copies, accs)
        if bias is not None:
            for acc in accs:
                if acc is not None:
                    acc += bias_cols
        _write(y[n0:n0 + nb], [None if acc is None else acc[:, :, :used] for acc in accs],
               phases, g, frame, bias)


def _sum_first_two(acc: np.ndarray, blocks: list[tuple[np.ndarray, int]]) -> None:
    """``acc`` = the sum of up to two (block, flat shift) pairs, each block placed at its
    shift, zero where neither reaches: one pass over ``acc`` instead of a copy and an
    addition. (An element one block misses gets the other's value exactly, as if its
    zero had been added.)"""
    used = acc.shape[-1]
    reach = [(max(0, off), used + min(0, off)) for _, off in blocks]
    bounds = sorted({0, used}.union(*reach))
    for a, b in zip(bounds, bounds[1:]):
        parts = [block[..., a - off:b - off]
                 for (block, off), (lo, hi) in zip(blocks, reach) if lo <= a and b <= hi]
        if len(parts) == 2:
            np.add(parts[0], parts[1], out=acc[..., a:b])
        elif parts:
            acc[..., a:b] = parts[0]
        else:
            acc[..., a:b] = 0


#: Scratch memory per thread (the thread itself is the key, so that the memory goes with
#: the thread).
_SCRATCH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SCRATCH_LOCK = threading.Lock()


def _new_lock_after_fork() -> None:
    # A fork while another thread held the lock would leave it held in the child forever.
    global _SCRATCH_LOCK
    _SCRATCH_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def _scratch(nbytes: int) -> np.ndarray:
    """``nbytes`` of this thread's scratch memory, kept between calls (at most about
    :data:`TEMP_BUDGET_BYTES` per thread): freshly mapped memory costs a page fault per
    page, which on small layers takes longer than the arithmetic."""
    thread = threading.current_thread()
    with _SCRATCH_LOCK:
        held = _SCRATCH.get(thread)
        if held is None or held.nbytes < nbytes:
            _SCRATCH.pop(thread, None)  # let the old buffer go before mapping the new one
            held = None
    if held is None:
        held = np.empty(nbytes, np.uint8)
        with _SCRATCH_LOCK:
            _SCRATCH[thread] = held
    return held[:nbytes]


def scratch_bytes() -> int:
    """Bytes of scratch memory held between calls, by every thread."""
    with _SCRATCH_LOCK:
        return sum(held.nbytes for held in _SCRATCH.values())


def release_scratch() -> None:
    """Return every thread's scratch memory (the next call maps it again; a call still
    running keeps what it uses until it ends)."""
    with _SCRATCH_LOCK:
        _SCRATCH.clear()


#: Bytes of output written per block: every phase's share of a block goes out while the
#: block's cache lines are held (about a core's L2), instead of one strided pass over
#: the whole output per phase.
WRITE_BLOCK_BYTES = 2**20


def _write(y: np.ndarray, accs: list[np.ndarray | None], phases: tuple[_Phase, ...],
           g: Geometry, frame: tuple[int, ...], bias: np.ndarray | None) -> None:
    """Write every phase's accumulator (G, C_out/G, nb*frame) into ``y`` (nb, C_out,
    *out), a block of samples and channels at a time; rounds to float16 here when ``y``
    is float16. A phase whose accumulator is None, which no tap writes to, is written
    as the bias (or zero) itself, with no accumulator to fill and read back (stride 2
    with dilation 2: every tap in one phase, the other half of the output the bias)."""
    nb, c_out = y.shape[:2]
    per_block = max(1, WRITE_BLOCK_BYTES // (math.prod(g.out_size) * y.itemsize))
    samples, channels = max(1, per_block // c_out), min(c_out, per_block)
    lattices = [None if acc is None else
                acc.reshape((c_out, nb) + frame)[(slice(None),) * 2
                                                 + tuple(slice(0, n) for n in ph.size)]
                for acc, ph in zip(accs, phases)]
    strided = [tuple(slice(f, None, s) for f, s in zip(ph.first, g.stride)) for ph in phases]
    # (the bias rounded as the accumulators' sums are: to the compute type, then y's)
    constant = 0 if bias is None else \
        bias.astype(compute_dtype(y.dtype)).reshape((c_out,) + (1,) * g.rank)
    for n0 in range(0, nb, samples):
        for c0 in range(0, c_out, channels):
            block = (slice(n0, n0 + samples), slice(c0, c0 + channels))
            for lattice, where in zip(lattices, strided):
                if lattice is None:
                    y[block + where] = constant if bias is None else constant[block[1]]
                else:  # (C_out, nb, ...) to (nb, C_out, ...)
                    y[block + where] = lattice[block[::-1]].swapaxes(0, 1)


def _reduced(g: Geometry) -> Geometry:
    """The layer the formulations compute for ``g``: its sublattice's where stride and
    dilation share a factor (see :mod:`gpu_tconv.numpy_sublattice`)."""
    lattice = numpy_sublattice.reduce(g)
    return g if lattice is None else lattice[0]


#: The formulations :func:`conv_transpose` can run (see :func:`choose_method`).
METHODS = ("scatter", "gather", "stacked", "col2im", "col2im_cl", "hybrid", "windows")


def applies(g: Geometry, method: str, dtype=np.float32) -> bool:
    """Whether ``method`` can compute ``g`` on ``dtype`` arrays (scatter and gather can
    compute any layer; see :func:`gpu_tconv.numpy_col2im.applies`)."""
    g = _reduced(g)
    budget = TEMP_BUDGET_BYTES // _parts(g, method)
    if method == "col2im":
        return numpy_col2im.applies(g, np.dtype(dtype), compute_dtype(dtype), budget)
    if method == "col2im_cl":
        return numpy_col2im.applies_channels_last(g, compute_dtype(dtype), budget)
    if method == "hybrid":
        return numpy_hybrid.applies(g, compute_dtype(dtype), budget)
    if method == "windows":
        return numpy_windows.applies(g, compute_dtype(dtype).itemsize, budget)
    return method in METHODS


#: The numeric module constants the cost model reads, per module a getter of them all:
#: the key of :func:`choose_method`'s memo (one getter per module, not one getattr per
#: constant, because the key is built on every call).
def _constant_names(module) -> list[str]:
    return [name for name, value in sorted(vars(module).items())
            if name.isupper() and isinstance(value, (int, float)) and not isinstance(value, bool)]


_MODEL_CONSTANTS = tuple(
    (module, operator.attrgetter(*names))
    for module in (sys.modules[__name__], numpy_col2im, numpy_hybrid, numpy_stacked,
                   numpy_windows)
    if (names := _constant_names(module)))
