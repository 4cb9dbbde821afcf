"""Padding modes, asymmetric padding, output_size and channels-last, on every backend,
against PyTorch (computed with no padding, then cropped or extended by the definition)."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import gpu_tconv
from conftest import BACKENDS
from oracles import Problem, TORCH_TRANSPOSED, assert_close, assert_within_seam_tolerance, problems


def _unpadded_torch(p: Problem, magnitude: bool = False) -> np.ndarray:
    """PyTorch with padding 0 and output_padding 0: the full canvas of contributions
    (of |x| and |w| with ``magnitude``, for the error scale)."""
    params = dict(p.params, padding=0, output_padding=0)
    f = np.abs if magnitude else np.asarray
    t = lambda a: torch.from_numpy(f(np.asarray(a, np.float64)))
    return TORCH_TRANSPOSED[p.rank](t(p.x), t(p.weight), None, **params).numpy()


def _check(y, p: Problem, lows, sizes) -> None:
    expected = _crop(_unpadded_torch(p), lows, sizes, p.bias)
    scale = _crop(_unpadded_torch(p, magnitude=True), lows, sizes,
                  None if p.bias is None else np.abs(p.bias))
    assert_close(y, expected, p, np.float64, scale=scale)


def _crop(canvas: np.ndarray, lows, sizes, bias) -> np.ndarray:
    """Outputs [low, low + size) of the canvas per dimension, zeros beyond it, plus bias."""
    out = np.zeros(canvas.shape[:2] + tuple(sizes))
    src = tuple(slice(lo, min(lo + n, c)) for lo, n, c in zip(lows, sizes, canvas.shape[2:]))
    dst = tuple(slice(0, s.stop - s.start) for s in src)
    out[(slice(None),) * 2 + dst] = canvas[(slice(None),) * 2 + src]
    if bias is not None:
        out += bias.reshape((1, -1) + (1,) * len(sizes))
    return out


def _per_dim(v, rank):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * rank


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problems(), mode=st.sampled_from(["same", "valid"]))
def test_padding_modes_follow_keras(backend, p: Problem, mode):
    rank, params = p.rank, p.params
    s, d = _per_dim(params["stride"], rank), _per_dim(params["dilation"], rank)
    dk = [di * (k - 1) + 1 for di, k in zip(d, p.weight.shape[2:])]
    n_in = p.x.shape[2:]
    if mode == "same":  # TensorFlow: out = in*s, trimming max(dk - s, 0), less at the low end
        sizes = [i * si for i, si in zip(n_in, s)]
        lows = [max(k - si, 0) // 2 for k, si in zip(dk, s)]
    else:               # out = (in-1)*s + max(dk, s), nothing trimmed
        sizes = [(i - 1) * si + max(k, si) for i, si, k in zip(n_in, s, dk)]
        lows = [0] * rank
    kw = dict(params, padding=mode, output_padding=0)
    y = gpu_tconv.conv_transpose(p.x, p.weight, p.bias, **kw, backend=backend)
    assert y.shape[2:] == tuple(sizes)
    _check(y, p, lows, sizes)


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problems(), data=st.data())
def test_asymmetric_padding(backend, p: Problem, data):
    rank = p.rank
    pairs = tuple((data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3)))
                  for _ in range(rank))
    canvas = _unpadded_torch(p)
    sizes = [c - lo - hi for c, (lo, hi) in zip(canvas.shape[2:], pairs)]
    assume(all(n >= 1 for n in sizes))
    kw = dict(p.params, padding=pairs, output_padding=0)
    y = gpu_tconv.conv_transpose(p.x, p.weight, p.bias, **kw, backend=backend)
    _check(y, p, [lo for lo, _ in pairs], sizes)


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problems(), data=st.data())
def test_output_size_as_pytorch_modules(backend, p: Problem, data):
    # PyTorch's module turns output_size into output_padding; so must we.
    rank = p.rank
    s = _per_dim(p.params["stride"], rank)
    try:
        base = gpu_tconv.output_shape(p.x.shape, p.weight.shape,
                                      **dict(p.params, output_padding=0))[2:]
    except ValueError:  # this problem needs its output padding to have any output
        assume(False)
    wanted = tuple(n + data.draw(st.integers(0, si - 1)) for n, si in zip(base, s))
    module = getattr(torch.nn, f"ConvTranspose{rank}d")(
        p.x.shape[1], p.weight.shape[1] * p.params["groups"], p.weight.shape[2:],
        stride=p.params["stride"], padding=p.params["padding"], dilation=p.params["dilation"],
        groups=p.params["groups"], bias=p.bias is not None).double()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(p.weight))
        if p.bias is not None:
            module.bias.copy_(torch.from_numpy(p.bias))
        expected = module(torch.from_numpy(p.x), output_size=list(wanted)).numpy()
    kw = dict(p.params, output_padding=0)
    y = gpu_tconv.conv_transpose(p.x, p.weight, p.bias, **kw, output_size=wanted,
                                 backend=backend)
    assert y.shape == expected.shape
    lows = _per_dim(p.params["padding"], rank)
    _check(y, p, lows, wanted)


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problems(), dtype=st.sampled_from([np.float64, np.float32, np.float16]))
def test_channels_last_is_the_transpose_of_channels_first(backend, p: Problem, dtype):
    p = p.astype(dtype)
    # One kernel for both layouts (variant "auto" runs a tiled one for channels first,
    # which adds in another order); the numpy backend ignores the variant.
    first = gpu_tconv.conv_transpose(p.x, p.weight, p.bias, **p.params, backend=backend,
                                     variant="simple")
    x_last = np.ascontiguousarray(np.moveaxis(p.x, 1, -1))
    last = gpu_tconv.conv_transpose(x_last, p.weight, p.bias, **p.params,
                                    layout="channels_last", backend=backend, variant="simple")
    assert last.shape == np.moveaxis(first, 1, -1).shape
    assert gpu_tconv.output_shape(x_last.shape, p.weight.shape, **p.params,
                                  layout="channels_last") == last.shape
    if backend == "numpy":
        # The formulation may differ with the layout (col2im_cl costs less where the
        # channels are innermost already): within the seam tolerance, as for any seam.
        assert_within_seam_tolerance(np.moveaxis(last, -1, 1), first, p, dtype)
        return
    # The same sums in the same order: bit for bit.
    assert np.moveaxis(last, -1, 1).tobytes() == np.ascontiguousarray(first).tobytes()
