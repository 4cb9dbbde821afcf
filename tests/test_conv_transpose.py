"""Every backend against the independent oracles, over random problems of every rank."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpu_tconv
from gpu_tconv.reference import conv_transpose_reference
from conftest import BACKENDS
from oracles import (Problem, assert_close, convolution_matrix, problems,
                     torch_conv_forward, torch_conv_transpose)

DTYPES = [np.float64, np.float32, np.float16]


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problems(), dtype=st.sampled_from(DTYPES))
def test_matches_reference(backend, p: Problem, dtype):
    p = p.astype(dtype)
    y = gpu_tconv.conv_transpose(p.x, p.weight, p.bias, **p.params, backend=backend)
    assert y.dtype == dtype and isinstance(y, np.ndarray)
    assert y.shape == gpu_tconv.output_shape(p.x.shape, p.weight.shape, **p.params)
    assert_close(y, conv_transpose_reference(p.x, p.weight, p.bias, **p.params), p, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problems(), dtype=st.sampled_from([np.float64, np.float32]))
def test_matches_pytorch(backend, p: Problem, dtype):
    p = p.astype(dtype)
    fn = {1: gpu_tconv.conv_transpose1d, 2: gpu_tconv.conv_transpose2d,
          3: gpu_tconv.conv_transpose3d}[p.rank]
    y = fn(p.x, p.weight, p.bias, **p.params, backend=backend)
    assert_close(y, torch_conv_transpose(p), p, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problems(ranks=(1, 2), bias=False))
def test_matches_convolution_matrix_transpose(backend, p: Problem):
    y = gpu_tconv.conv_transpose(p.x, p.weight, **p.params, backend=backend)
    c = convolution_matrix(p, y.shape[2:])
    expected = np.stack([(c.T @ s.ravel()).reshape(y.shape[1:]) for s in p.x])
    assert_close(y, expected, p, np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problems(bias=False), seed=st.integers(0, 2**32 - 1))
def test_adjoint_identity(backend, p: Problem, seed):
    # <T x, y> == <x, C y> for the forward convolution C with the same weight.
    y_probe = np.random.default_rng(seed).standard_normal(
        gpu_tconv.output_shape(p.x.shape, p.weight.shape, **p.params))
    tx = gpu_tconv.conv_transpose(p.x, p.weight, **p.params, backend=backend)
    lhs, rhs = np.vdot(tx, y_probe), np.vdot(p.x, torch_conv_forward(y_probe, p))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10 * np.abs(tx).sum() * np.abs(y_probe).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_bit_for_bit(backend):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 9, 7)).astype(np.float32)
    w = rng.standard_normal((8, 3, 4, 3)).astype(np.float32)
    kw = dict(stride=2, padding=1, groups=2, dilation=(1, 2))
    first = gpu_tconv.conv_transpose2d(x, w, **kw, backend=backend)
    second = gpu_tconv.conv_transpose2d(x, w, **kw, backend=backend)
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_read_only_inputs(backend):
    rng = np.random.default_rng(2)
    base = rng.standard_normal((3, 6, 10, 12))
    x = base[::2, ::2, ::-1, 1::2]  # strided, reversed, offset
    w = np.asfortranarray(rng.standard_normal((3, 2, 3, 3)))
    b = rng.standard_normal(2)
    for a in (x, w, b):
        a.flags.writeable = False
    p = Problem(x, w, b, dict(stride=2, padding=1, output_padding=1))
    y = gpu_tconv.conv_transpose2d(x, w, b, **p.params, backend=backend)
    assert_close(y, conv_transpose_reference(x, w, b, **p.params), p, np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_empty_batch(backend, rank):
    x = np.zeros((0, 4) + (5,) * rank, np.float32)
    w = np.zeros((4, 3) + (2,) * rank, np.float32)
    y = gpu_tconv.conv_transpose(x, w, stride=2, backend=backend)
    assert y.shape == (0, 3) + (10,) * rank and y.dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_accumulates_in_float32(backend):
    # 2048 + 1 + 1 + ... : in float16 arithmetic each +1 would round away (2048 has a
    # spacing of 2); accumulated in float32 and rounded once, the sum is 2048 + 64 = 2112.
    x = np.ones((1, 65, 1), np.float16)
    x[0, 0, 0] = 2048
    w = np.ones((65, 1, 1), np.float16)
    y = gpu_tconv.conv_transpose1d(x, w, backend=backend)
    assert y.dtype == np.float16 and y[0, 0, 0] == 2112


@pytest.mark.parametrize("backend", BACKENDS)
def test_accepts_array_likes(backend):
    y = gpu_tconv.conv_transpose1d([[[1.0, 2.0, 3.0]]], [[[1.0, 10.0]]], stride=2,
                                   backend=backend)
    np.testing.assert_array_equal(y, [[[1, 10, 2, 20, 3, 30]]])


def test_backends_agree_on_a_larger_case():
    # A shape with every parameter active and several hundred channels-times-taps per output.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, 5, 6, 7))
    w = rng.standard_normal((12, 4, 3, 2, 3))
    b = rng.standard_normal(12)
    kw = dict(stride=(2, 1, 3), padding=(1, 0, 2), output_padding=(1, 0, 1),
              dilation=(1, 2, 2), groups=3)
    results = {name: gpu_tconv.conv_transpose3d(x, w, b, **kw, backend=name)
               for name in gpu_tconv.available_backends()}
    expected = torch_conv_transpose(Problem(x, w, b, kw))
    for name, y in results.items():
        np.testing.assert_allclose(y, expected, rtol=1e-11, atol=1e-11, err_msg=name)
