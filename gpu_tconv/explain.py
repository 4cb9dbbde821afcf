"""Transposed-convolution arithmetic as text, for people: the size formula with numbers
filled in, and the gather view of which inputs and kernel taps make each output.

The gather view is the kernel's own formulation. Along each dimension, input ``i`` and
tap ``k`` reach output ``o = i*stride + k*dilation - padding``; so output ``o`` gathers
every tap ``k`` for which ``i = (o + padding - k*dilation) / stride`` is a whole number
and a valid input index. In several dimensions a term is one such pair per dimension.
"""

from __future__ import annotations

import itertools
import math

from .geometry import Geometry

FORMULA = "out = (in - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1"
#: The gather view prints one line per output element; beyond this it stops being readable.
MAX_EXPLAINED_OUTPUTS = 144

Term = tuple[tuple[int, ...], tuple[int, ...]]   # (input index, kernel tap), one entry per dim


def formula_lines(g: Geometry) -> list[str]:
    """The output-size formula, then one line per spatial dimension with its numbers."""
    lines = [FORMULA]
    for axis, (n, k, s, p, op, d, out) in enumerate(zip(g.in_size, g.kernel, g.stride,
                                                         g.padding, g.output_padding,
                                                         g.dilation, g.out_size)):
        lines.append(f"  dim {axis}: ({n} - 1)*{s} - 2*{p} + {d}*({k} - 1) + {op} + 1 = {out}")
    return lines


def _axis_terms(out: int, n: int, k: int, s: int, p: int, d: int) -> list[list[tuple[int, int]]]:
    """For each output position of one dimension, its ``(input, tap)`` pairs."""
    per_output = []
    for o in range(out):
        pairs = []
        for tap in range(k):
            i, remainder = divmod(o + p - tap * d, s)
            if remainder == 0 and 0 <= i < n:
                pairs.append((i, tap))
        per_output.append(pairs)
    return per_output


def gather_terms(g: Geometry) -> dict[tuple[int, ...], list[Term]]:
    """Every output index (row-major) with the ``(input index, tap)`` terms summed into it."""
    axes = [_axis_terms(*a) for a in zip(g.out_size, g.in_size, g.kernel, g.stride,
                                         g.padding, g.dilation)]
    terms = {}
    for o in itertools.product(*(range(n) for n in g.out_size)):
        combos = itertools.product(*(axes[a][o[a]] for a in range(g.rank)))
        terms[o] = [(tuple(i for i, _ in c), tuple(t for _, t in c)) for c in combos]
    return terms


def gather_lines(g: Geometry) -> list[str]:
    """The gather view, one line per output element: ``y[o] = x[i]*w[k] + ...``.

    Only for 1-D and 2-D cases of at most :data:`MAX_EXPLAINED_OUTPUTS` outputs;
    ``ValueError`` otherwise.
    """
    if g.rank > 2:
        raise ValueError("--explain shows 1-D and 2-D cases; this one is 3-D")
    if math.prod(g.out_size) > MAX_EXPLAINED_OUTPUTS:
        raise ValueError(f"--explain is for small cases: this output has "
                         f"{math.prod(g.out_size)} elements, at most "
                         f"{MAX_EXPLAINED_OUTPUTS} are shown (try a smaller --input)")
    index = lambda t: ",".join(map(str, t))
    lines = ["gather view: y[o] = sum of x[i]*w[k] over the taps k for which "
             "i = (o + padding - k*dilation) / stride is a whole number inside x"]
    for o, terms in gather_terms(g).items():
        rhs = " + ".join(f"x[{index(i)}]*w[{index(k)}]" for i, k in terms)
        lines.append(f"y[{index(o)}] = {rhs or '0   (no input reaches it)'}")
    return lines
