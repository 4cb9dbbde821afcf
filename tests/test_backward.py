"""Gradients on every backend against PyTorch autograd (float64), and their determinism."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gpu_tconv
from conftest import BACKENDS
from oracles import TORCH_TRANSPOSED, Problem, problems


def _torch_gradients(p: Problem, dy: np.ndarray):
    x = torch.from_numpy(p.x.astype(np.float64)).requires_grad_()
    w = torch.from_numpy(p.weight.astype(np.float64)).requires_grad_()
    b = torch.zeros(p.weight.shape[1] * p.params["groups"], dtype=torch.float64,
                    requires_grad=True)
    y = TORCH_TRANSPOSED[p.rank](x, w, b, **p.params)
    y.backward(torch.from_numpy(dy.astype(np.float64)))
    return x.grad.numpy(), w.grad.numpy(), b.grad.numpy()


def _close(actual, expected, dtype):
    tol = {np.float64: 1e-10, np.float32: 1e-4, np.float16: 3e-2}[dtype]
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problems(bias=False), dtype=st.sampled_from([np.float64, np.float32, np.float16]),
       seed=st.integers(0, 2**32 - 1))
def test_gradients_match_pytorch_autograd(backend, p: Problem, dtype, seed):
    p = p.astype(dtype)
    shape = gpu_tconv.output_shape(p.x.shape, p.weight.shape, **p.params)
    dy = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    dx, dw, db = gpu_tconv.conv_transpose_backward(dy, p.x, p.weight, **p.params,
                                                   backend=backend)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    assert dx.shape == p.x.shape and dw.shape == p.weight.shape
    for ours, theirs in zip((dx, dw, db), _torch_gradients(p, dy)):
        _close(ours, theirs, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problems(bias=False), data=st.data())
def test_gradients_with_modes_output_size_and_channels_last(backend, p: Problem, data):
    padding = data.draw(st.sampled_from(["same", "valid", "pairs"]))
    rank = p.rank
    if padding == "pairs":
        padding = tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2)))
                        for _ in range(rank))
    kw = dict(p.params, padding=padding, output_padding=0)
    try:
        y = gpu_tconv.conv_transpose(p.x, p.weight, **kw, backend="numpy")
    except ValueError:
        return  # pairs too large for this input
    dy = np.random.default_rng(0).standard_normal(y.shape)
    first = gpu_tconv.conv_transpose_backward(dy, p.x, p.weight, **kw, backend=backend)
    # Reference: the same gradients through autograd on the NumPy forward is not an
    # oracle; use the adjoint identity instead: <T(x), dy> = <x, dx> for every x.
    probe = np.random.default_rng(1).standard_normal(p.x.shape)
    forward = gpu_tconv.conv_transpose(probe, p.weight, **kw, backend="numpy")
    assert np.vdot(forward, dy) == pytest.approx(np.vdot(probe, first[0]), rel=1e-9, abs=1e-9)
    # and <T_w(x), dy> is linear in w: <T(x; w'), dy> = <w', dw>.
    w_probe = np.random.default_rng(2).standard_normal(p.weight.shape)
    forward_w = gpu_tconv.conv_transpose(p.x, w_probe, **kw, backend="numpy")
    assert np.vdot(forward_w, dy) == pytest.approx(np.vdot(w_probe, first[1]), rel=1e-9,
                                                   abs=1e-9)
    # Channels last: the same gradients, transposed.
    last = gpu_tconv.conv_transpose_backward(
        np.ascontiguousarray(np.moveaxis(dy, 1, -1)), np.ascontiguousarray(np.moveaxis(p.x, 1, -1)),
        p.weight, **kw, layout="channels_last", backend=backend)
    np.testing.assert_allclose(np.moveaxis(last[0], -1, 1), first[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last[1], first[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last[2], first[2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_needs_selects_the_gradients(backend):
    x, w = np.ones((2, 2, 3)), np.ones((2, 1, 2))
    dy = np.ones(gpu_tconv.output_shape(x.shape, w.shape, stride=2))
    dx, dw, db = gpu_tconv.conv_transpose_backward(dy, x, w, stride=2, needs=("weight",),
                                                   backend=backend)
    assert dx is None and db is None and dw.shape == w.shape
    with pytest.raises(ValueError, match="needs"):
        gpu_tconv.conv_transpose_backward(dy, x, w, stride=2, needs=("x",), backend=backend)
    with pytest.raises(ValueError, match="grad_output"):
        gpu_tconv.conv_transpose_backward(dy[:, :, 1:], x, w, stride=2, backend=backend)


@pytest.mark.parametrize("backend", ["emulated", pytest.param("cuda", marks=BACKENDS[2].marks)])
def test_kernel_gradients_are_deterministic(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    dy = rng.standard_normal(gpu_tconv.output_shape(x.shape, w.shape, stride=2)).astype(np.float32)
    runs = [gpu_tconv.conv_transpose_backward(dy, x, w, stride=2, backend=backend)
            for _ in range(2)]
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gradients(backend):
    x, w = np.zeros((0, 2, 3)), np.ones((2, 1, 2))
    dy = np.zeros(gpu_tconv.output_shape(x.shape, w.shape, stride=2))
    dx, dw, db = gpu_tconv.conv_transpose_backward(dy, x, w, stride=2, backend=backend)
    assert dx.shape == x.shape and (dw == 0).all() and (db == 0).all()
