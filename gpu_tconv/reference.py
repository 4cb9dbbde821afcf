"""The textbook definition of transposed convolution, as plain scatter loops.

An independent oracle for the tests: it shares no code with the backends (not even the
shape arithmetic) and favours being obviously right over being fast. Every input
element, times every kernel tap, is added at ``i*stride + tap*dilation - padding``.
"""

from __future__ import annotations

import itertools

import numpy as np


def conv_transpose_reference(x, weight, bias=None, stride=1, padding=0, output_padding=0,
                             groups=1, dilation=1) -> np.ndarray:
    """PyTorch's conv_transpose{1,2,3}d by its definition, accumulated in float64."""
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    rank = x.ndim - 2

    def per_dim(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * rank

    stride, padding = per_dim(stride), per_dim(padding)
    output_padding, dilation = per_dim(output_padding), per_dim(dilation)
    n, c_in = x.shape[:2]
    cin_g, cout_g = c_in // groups, weight.shape[1]
    kernel = weight.shape[2:]

    # Scatter into an unpadded canvas, then crop the padding away at the end.
    canvas_size = [(x.shape[2 + a] - 1) * stride[a] + dilation[a] * (kernel[a] - 1) + 1
                   + output_padding[a] for a in range(rank)]
    canvas = np.zeros((n, cout_g * groups, *canvas_size))
    for grp in range(groups):
        outs = slice(grp * cout_g, (grp + 1) * cout_g)
        for ci in range(grp * cin_g, (grp + 1) * cin_g):
            for i in itertools.product(*(range(s) for s in x.shape[2:])):
                for k in itertools.product(*(range(s) for s in kernel)):
                    o = tuple(i[a] * stride[a] + k[a] * dilation[a] for a in range(rank))
                    canvas[(slice(None), outs) + o] += np.multiply.outer(
                        x[(slice(None), ci) + i], weight[(ci, slice(None)) + k])
    crop = tuple(slice(p, c - p) for p, c in zip(padding, canvas_size))
    y = canvas[(slice(None), slice(None)) + crop]
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64).reshape((1, -1) + (1,) * rank)
    return y
