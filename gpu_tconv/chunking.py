"""Chunk arithmetic for a transposed convolution computed block by block (no Dask here).

Along one spatial axis, tap ``k`` sends input ``i`` to output ``o = i*s + k*d - p``
(stride ``s``, dilation ``d``, padding ``p``). Write ``D = d*(kernel - 1)``.

**Output chunking.** The input chunks have boundaries ``0 = b_0 < ... < b_m = in``
(zero-size chunks allowed). Output block ``j`` is ``[B_j, B_{j+1})`` with
``B_0 = 0``, ``B_m = out`` and, in between, ``B_j = clamp(b_j*s - p, 0, out)``: input
chunk ``[a, b)`` owns the outputs ``[a*s - p, b*s - p)``, where each of its inputs
lands with tap 0. The first block absorbs the left border (the padding crop) and the
last one the right border (the ``D + 1 - s`` tail and ``output_padding``). Where the
padding exceeds what the end chunks own, blocks next to the ends are clamped to size
zero; the number of blocks always equals the input's, so output block ``j`` is the
counterpart of input block ``j``.

**Input of a block.** Output ``o`` is reached by the inputs
``ceil((o + p - D)/s) <= i <= floor((o + p)/s)``, so a block ``[o_lo, o_hi)`` is
computed from one contiguous input range ``[i_lo, i_hi)``: a transposed convolution of
that range with padding 0, whose outputs are the global outputs shifted by
``i_lo*s - p``, cropped to the block. The range is widened (never narrowed) so that
the sub-problem's output starts at or before ``o_lo`` and is never empty, and the
sub-problem's ``output_padding`` (always below ``max(s, d)``) lengthens it to reach
``o_hi``. Extra inputs only add to outputs outside the block, so every element of the
block is the same sum, of the same terms, as in the whole problem.

**Halo.** A non-empty block needs nothing after its own input chunk (``i_hi <= b``) and
at most ``ceil(D/s)`` inputs before it (``i_lo >= a - ceil(D/s)``); a block whose own
input chunk is empty takes at least one input from its neighbours.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

from .geometry import output_length


@dataclass(frozen=True)
class BlockPlan:
    """How one output block along one spatial axis is computed.

    ``[own_start, own_stop)`` is the input chunk of the same index and
    ``[out_start, out_stop)`` the block in global output coordinates. When the block is
    not empty, it equals the outputs ``[crop_start, crop_start + out_stop - out_start)``
    of the transposed convolution of the inputs ``[in_start, in_stop)`` with padding 0
    and this ``output_padding`` (stride, dilation and kernel unchanged). An empty block
    has the empty input range ``[own_start, own_start)``.
    """

    own_start: int
    own_stop: int
    out_start: int
    out_stop: int
    in_start: int
    in_stop: int
    output_padding: int
    crop_start: int

    @property
    def extended_start(self) -> int:
        """Start of the input a block reads: its own chunk extended by the halo before it."""
        return min(self.in_start, self.own_start)

    @property
    def crop(self) -> slice:
        return slice(self.crop_start, self.crop_start + self.out_stop - self.out_start)


def _bounds(chunks: Sequence[int]) -> list[int]:
    return list(itertools.accumulate(chunks, initial=0))


def output_chunks(in_chunks: Sequence[int], kernel: int, stride: int, padding: int,
                  output_padding: int, dilation: int,
                  padding_high: int | None = None) -> tuple[int, ...]:
    """Output chunk sizes along one axis for input chunk sizes ``in_chunks``.

    One output chunk per input chunk; they add up to the output size given by
    :func:`gpu_tconv.geometry.output_length` (``padding`` is the low end's, and the
    high end's unless ``padding_high`` is given). See the module docstring for the rule.
    """
    bounds = _bounds(in_chunks)
    out = output_length(bounds[-1], kernel, stride, padding, output_padding, dilation,
                        padding_high)
    cuts = [0] + [min(max(b * stride - padding, 0), out) for b in bounds[1:-1]] + [out]
    return tuple(hi - lo for lo, hi in zip(cuts, cuts[1:]))


def plan_axis(in_chunks: Sequence[int], kernel: int, stride: int, padding: int,
              output_padding: int, dilation: int,
              padding_high: int | None = None) -> tuple[BlockPlan, ...]:
    """One :class:`BlockPlan` per input chunk along one axis (see the module docstring)."""
    s, p, reach = stride, padding, dilation * (kernel - 1)
    n_in = sum(in_chunks)
    bounds = _bounds(in_chunks)
    plans = []
    out_start = 0
    sizes = output_chunks(in_chunks, kernel, stride, padding, output_padding, dilation,
                          padding_high)
    for a, b, size in zip(bounds, bounds[1:], sizes):
        o_lo, o_hi = out_start, out_start + size
        out_start = o_hi
        if size == 0:
            plans.append(BlockPlan(a, b, o_lo, o_hi, a, a, 0, 0))
            continue
        # First input reaching o_lo, moved left if needed so that the sub-problem's
        # first output (i*s - p) is not after o_lo, and kept inside the input.
        first_reaching = max(0, -(-(o_lo + p - reach) // s))
        i_lo = min(first_reaching, (o_lo + p) // s, n_in - 1)
        # One past the last input reaching o_hi - 1; it is after i_lo because
        # i_lo <= (o_lo + p) // s.
        i_hi = min(n_in, (o_hi - 1 + p) // s + 1)
        natural_last = (i_hi - 1) * s + reach - p  # last output of the sub-problem
        plans.append(BlockPlan(a, b, o_lo, o_hi, i_lo, i_hi,
                               output_padding=max(0, o_hi - 1 - natural_last),
                               crop_start=o_lo - (i_lo * s - p)))
    return tuple(plans)
