"""Independent oracles and problem generators shared by the tests.

None of them calls gpu_tconv's backends: PyTorch's CPU convolutions and an explicit
convolution matrix built from the forward convolution's definition.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

import torch
import torch.nn.functional as F

TORCH_TRANSPOSED = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
TORCH_FORWARD = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

# Relative error allowed against a float64 oracle, as a fraction of sum |x*w| + |b|.
TOLERANCE = {np.float64: 1e-12, np.float32: 2e-6, np.float16: 1.5e-3}


@dataclass
class Problem:
    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    params: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.x.ndim - 2

    def astype(self, dtype) -> "Problem":
        return Problem(self.x.astype(dtype), self.weight.astype(dtype),
                       None if self.bias is None else self.bias.astype(dtype), self.params)


def torch_conv_transpose(p: Problem) -> np.ndarray:
    """PyTorch CPU, in float64."""
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.float64))
    return TORCH_TRANSPOSED[p.rank](t(p.x), t(p.weight), t(p.bias), **p.params).numpy()


def torch_interpolate(x: np.ndarray, scale: int, mode: str) -> np.ndarray:
    """PyTorch's ``interpolate`` of an ``(N, C, *spatial)`` array by an integer factor."""
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(torch.from_numpy(x), scale_factor=scale, mode=mode, **kw).numpy()


def torch_conv_forward(y: np.ndarray, p: Problem) -> np.ndarray:
    """The forward convolution C whose adjoint is the transposed convolution (no bias)."""
    kw = {k: v for k, v in p.params.items() if k != "output_padding"}
    c_y = TORCH_FORWARD[p.rank](torch.from_numpy(y), torch.from_numpy(p.weight.astype(np.float64)),
                                **kw).numpy()
    # With output_padding >= stride (allowed when below the dilation), the forward
    # convolution of the output is longer than x: the extra positions are not x's.
    return c_y[tuple(slice(0, n) for n in p.x.shape)]


def convolution_matrix(p: Problem, out_size: tuple[int, ...]) -> np.ndarray:
    """Dense matrix C of the forward convolution from (C_out, *out) to (C_in, *in).

    Built from the forward definition x[ci, i] = sum w[ci, co, k] y[co, i*s + k*d - p];
    the transposed convolution of one sample is then C.T @ x.
    """
    rank = p.rank
    per_dim = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * rank
    s, pad, d = (per_dim(p.params.get(n, dflt)) for n, dflt in
                 (("stride", 1), ("padding", 0), ("dilation", 1)))
    groups = p.params.get("groups", 1)
    c_in, cout_g, *kernel = p.weight.shape
    cin_g = c_in // groups
    in_size = p.x.shape[2:]
    rows = np.arange(c_in * int(np.prod(in_size))).reshape((c_in,) + tuple(in_size))
    cols = np.arange(cout_g * groups * int(np.prod(out_size))).reshape((cout_g * groups,) + out_size)
    c = np.zeros((rows.size, cols.size))
    for ci in range(c_in):
        grp = ci // cin_g
        for i in itertools.product(*map(range, in_size)):
            for k in itertools.product(*map(range, kernel)):
                o = tuple(i[a] * s[a] + k[a] * d[a] - pad[a] for a in range(rank))
                if all(0 <= o[a] < out_size[a] for a in range(rank)):
                    for co in range(cout_g):
                        c[rows[(ci,) + i], cols[(grp * cout_g + co,) + o]] += \
                            p.weight[(ci, co) + k]
    return c


# (kernel, stride, dilation) per dimension for tests of the specialized kernel variants,
# each a single build: the most unrolled row (8 taps); gcd(stride, dilation) = 2, so
# half the phases have no tap; a stride above the kernel size, and dilation, in 3-D.
SPECIALIZATIONS = [
    ((8, 1, 1),),
    ((3, 2, 2), (4, 2, 1)),
    ((2, 3, 1), (3, 2, 1), (3, 1, 2)),
]


@st.composite
def problems(draw, ranks=(1, 2, 3), max_batch=2, bias=None, max_channels=3,
             kernel_stride_dilation=None, channels=None, max_in=None) -> Problem:
    """Random valid problems: every parameter in play, sizes small enough for the emulator.

    ``max_channels`` bounds the input and output channels per group (``channels``, a
    strategy, draws them instead); ``max_in`` bounds the input sizes;
    ``kernel_stride_dilation``, one ``(kernel, stride, dilation)`` per spatial dimension,
    fixes those (and the rank) and leaves the rest random.
    """
    fixed = kernel_stride_dilation
    rank = len(fixed) if fixed else draw(st.sampled_from(ranks))
    groups = draw(st.integers(1, 3))
    per_group = channels if channels is not None else st.integers(1, max_channels)
    cin_g, cout_g = draw(per_group), draw(per_group)
    max_in = min(max_in or 9, {1: 9, 2: 6, 3: 4}[rank])
    dims = []
    for axis in range(rank):
        s, d = draw(st.integers(1, 4)), draw(st.integers(1, 3))
        k, n_in, pad = draw(st.integers(1, 4)), draw(st.integers(1, max_in)), draw(st.integers(0, 4))
        if fixed:
            k, s, d = fixed[axis]
        op = draw(st.integers(0, max(s, d) - 1))
        assume((n_in - 1) * s - 2 * pad + d * (k - 1) + op + 1 >= 1)
        dims.append((s, d, k, n_in, pad, op))
    s, d, k, n_in, pad, op = map(tuple, zip(*dims))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, max_batch))
    x = rng.standard_normal((n, groups * cin_g) + n_in)
    w = rng.standard_normal((groups * cin_g, cout_g) + k)
    has_bias = draw(st.booleans()) if bias is None else bias
    b = rng.standard_normal(groups * cout_g) if has_bias else None
    scalar = lambda t: t[0] if draw(st.booleans()) and len(set(t)) == 1 else t
    params = dict(stride=scalar(s), padding=scalar(pad), output_padding=scalar(op),
                  dilation=scalar(d), groups=groups)
    return Problem(x, w, b, params)


@st.composite
def chunkings(draw, size: int) -> tuple[int, ...]:
    """Random chunk sizes adding up to ``size``: uneven, sometimes of size zero."""
    cuts = sorted(draw(st.lists(st.integers(0, size), max_size=4)))
    return tuple(hi - lo for lo, hi in zip([0] + cuts, cuts + [size]))


def assert_close(actual: np.ndarray, expected: np.ndarray, p: Problem, dtype,
                 scale: np.ndarray | None = None) -> None:
    """|actual - expected| within the dtype's tolerance of the magnitude of the sum.

    ``scale`` is that magnitude (sum of |x*w| + |b| per output); by default it is
    computed for ``p``'s explicit parameters.
    """
    from gpu_tconv.reference import conv_transpose_reference

    assert actual.shape == expected.shape
    if scale is None:
        scale = conv_transpose_reference(np.abs(p.x), np.abs(p.weight),
                                         None if p.bias is None else np.abs(p.bias), **p.params)
    error = np.abs(actual.astype(np.float64) - expected)
    # Rounding to a subnormal result can err by half the subnormal spacing, whatever the scale.
    bound = TOLERANCE[np.dtype(dtype).type] * scale + np.finfo(dtype).smallest_subnormal
    worst = np.unravel_index(np.argmax(error - bound), error.shape) if error.size else None
    assert np.all(error <= bound), (
        f"max error {error.max()} at {worst}: got {actual[worst]}, expected {expected[worst]}")


def assert_within_seam_tolerance(actual: np.ndarray, expected: np.ndarray, p: Problem,
                                 dtype, crop: tuple | None = None) -> None:
    """The NumPy backend's promise across batch chunks, output boxes and Dask seams:
    ``|actual - expected|`` within ``numpy_backend.SEAM_TOLERANCE_ULPS`` ulps (of the
    result's dtype) of the sum of |terms| (|x*w| + |b|) of each output. BLAS promises no
    bit pattern across GEMM shapes, thread counts or CPUs, so neither do the results."""
    from gpu_tconv.numpy_backend import SEAM_TOLERANCE_ULPS
    from gpu_tconv.reference import conv_transpose_reference

    assert actual.shape == expected.shape
    scale = conv_transpose_reference(np.abs(p.x), np.abs(p.weight),
                                     None if p.bias is None else np.abs(p.bias), **p.params)
    if crop is not None:
        scale = scale[crop]
    error = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    bound = SEAM_TOLERANCE_ULPS * np.finfo(dtype).eps * scale + np.finfo(dtype).smallest_subnormal
    # NaN and infinities must be where they are in the other result.
    same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    assert np.all(same | (error <= bound)), f"max error {np.nanmax(error - bound)} beyond the bound"
