"""Layers whose stride and dilation share a factor, as a smaller layer on a sublattice.

Tap ``t`` sends input ``i`` to output ``o = i*s + t*d - p``. Where ``c = gcd(s, d) > 1``
along a dimension, ``o + p`` is always a multiple of ``c``: only every ``c``-th output
is reached, and those form the transposed convolution with stride ``s/c`` and dilation
``d/c`` of the same input and weight,

    y[..., c*o' + delta] = y'[..., o'],   p' = ceil(p / c),   delta = c*p' - p,

``o'`` in ``0..ceil((out - delta) / c) - 1``; every other output is the bias (or zero).
(A single tap, ``k == 1``, reaches every ``s``-th output whatever its dilation; col2im
copies such taps into place already, and making them a sublattice only added a fill:
sweep 04, k2x7x1 s5, 1.3x slower.) Sweep 31 of
the CPU benchmark (k6x5 s2 d2) becomes a stride-1 layer on a quarter of the outputs,
sweep 05 (k5 s4 d2) a stride-2 layer on an eighth: the formulations then see phases
that all hold taps, and neither multiply nor write the unreached ones.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

from .geometry import Geometry


@functools.lru_cache(maxsize=1024)
def reduce(g: Geometry) -> tuple[Geometry, tuple[slice, ...]] | None:
    """``(g', keep)``: the layer on the reached outputs and, per spatial dimension, the
    slice of the output they are; None where every output may be reached (``c == 1``
    along every dimension). Cached: every call of the backend asks."""
    factors = tuple(math.gcd(s, d) for s, d in zip(g.stride, g.dilation))
    if all(c == 1 for c in factors):
        return None
    stride, dilation, padding, high, out, keep = [], [], [], [], [], []
    for n_in, k, s, d, p, n_out, c in zip(g.in_size, g.kernel, g.stride, g.dilation,
                                          g.padding, g.out_size, factors):
        p2 = -(-p // c)
        delta = c * p2 - p
        n2 = max(0, -(-(n_out - delta) // c))
        s2, d2 = s // c, d // c
        stride.append(s2)
        dilation.append(d2)
        padding.append(p2)
        out.append(n2)
        # What the reduced layer trims at the high end (negative: outputs past the
        # kernel's reach, zeros, as a mode's output_padding makes them).
        high.append((n_in - 1) * s2 + d2 * (k - 1) + 1 - p2 - n2)
        keep.append(slice(delta, delta + c * n2, c))
    g2 = replace(g, stride=tuple(stride), dilation=tuple(dilation), padding=tuple(padding),
                 padding_high=tuple(high), output_padding=(0,) * g.rank, out_size=tuple(out))
    return g2, tuple(keep)


def unreached(g: Geometry, keep: tuple[slice, ...]) -> list[tuple[slice, ...]]:
    """Spatial index tuples that together cover, once each, every output off the
    sublattice ``keep``: along dimension ``a`` the other residues modulo its factor,
    with the dimensions before it on the sublattice and those after it whole. Writing
    the bias there, not over the whole output first, writes each output once (a whole
    first pass cost KernelBench 79, 1-D k3 s2 d2, a fifth of its time)."""
    out = []
    for a, (k, n_out) in enumerate(zip(keep, g.out_size)):
        c = k.step
        out.extend(keep[:a] + (slice(r, None, c),) + (slice(None),) * (g.rank - a - 1)
                   for r in range(min(c, n_out)) if r != k.start)
    return out
