"""``precision=`` on every public function, and bfloat16 on every backend: validated,
computed in float32 and rounded once, within its format's error of a float64 oracle."""

import numpy as np
import pytest
from hypothesis import given, settings

import gpu_tconv
from gpu_tconv import emulated_backend, formats, launch
from gpu_tconv.geometry import geometry_from_shapes
from gpu_tconv.reference import conv_transpose_reference
from conftest import BACKENDS
from oracles import Problem, problems

ml_dtypes = pytest.importorskip("ml_dtypes")
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

X = np.random.default_rng(60).standard_normal((2, 4, 5, 5)).astype(np.float32)
W = np.random.default_rng(61).standard_normal((4, 3, 3, 3)).astype(np.float32)


@pytest.mark.parametrize("call", [
    lambda **kw: gpu_tconv.conv_transpose(X, W, **kw),
    lambda **kw: gpu_tconv.conv_transpose1d(X[:, :, 0], W[:, :, 0], **kw),
    lambda **kw: gpu_tconv.conv_transpose2d(X, W, **kw),
    lambda **kw: gpu_tconv.conv_transpose3d(X[:, :, None], W[:, :, None], **kw),
    lambda **kw: gpu_tconv.conv_transpose_backward(
        np.ones(gpu_tconv.output_shape(X.shape, W.shape), np.float32), X, W, **kw),
], ids=["any", "1d", "2d", "3d", "backward"])
def test_precision_is_validated_by_every_public_function(call):
    for bad in ("fast", "TF32", None, 32):
        with pytest.raises(ValueError, match="precision"):
            call(precision=bad)
    for good in formats.PRECISIONS:
        call(precision=good, backend="numpy")


def test_tf32_on_the_numpy_backend_is_float32_math_on_rounded_operands():
    b = np.random.default_rng(62).standard_normal(3).astype(np.float32)
    y = gpu_tconv.conv_transpose2d(X, W, b, stride=2, precision="tf32", backend="numpy")
    same = gpu_tconv.conv_transpose2d(formats.round_to_tf32(X), formats.round_to_tf32(W), b,
                                      stride=2, backend="numpy")
    assert y.dtype == np.float32 and y.tobytes() == same.tobytes()
    dy = np.random.default_rng(63).standard_normal(y.shape).astype(np.float32)
    grads = gpu_tconv.conv_transpose_backward(dy, X, W, stride=2, precision="tf32",
                                              backend="numpy")
    rounded = gpu_tconv.conv_transpose_backward(formats.round_to_tf32(dy),
                                                formats.round_to_tf32(X),
                                                formats.round_to_tf32(W), stride=2,
                                                backend="numpy")
    for got, want in zip(grads[:2], rounded[:2]):
        assert got.tobytes() == want.tobytes()
    np.testing.assert_array_equal(grads[2], dy.sum(axis=(0, 2, 3)).astype(np.float32))
    # Other dtypes: the precision changes nothing.
    x64, w64 = X.astype(np.float64), W.astype(np.float64)
    assert gpu_tconv.conv_transpose2d(x64, w64, precision="tf32", backend="numpy").tobytes() \
        == gpu_tconv.conv_transpose2d(x64, w64, backend="numpy").tobytes()


@pytest.mark.parametrize("variant", ["simple", "phase"])
def test_tf32_on_the_cuda_core_kernels_is_float32_math_on_rounded_operands(variant):
    g = geometry_from_shapes(X.shape, W.shape, stride=2)
    y = emulated_backend.conv_transpose(X, W, None, g, variant=variant, precision="tf32")
    same = emulated_backend.conv_transpose(formats.round_to_tf32(X), formats.round_to_tf32(W),
                                           None, g, variant=variant)
    assert y.tobytes() == same.tobytes()
    assert y.tobytes() != emulated_backend.conv_transpose(X, W, None, g, variant=variant).tobytes()
    dy = np.random.default_rng(65).standard_normal(y.shape).astype(np.float32)
    grads = gpu_tconv.conv_transpose_backward(dy, X, W, stride=2, precision="tf32",
                                              backend="emulated")
    rounded = gpu_tconv.conv_transpose_backward(
        formats.round_to_tf32(dy), formats.round_to_tf32(X), formats.round_to_tf32(W),
        stride=2, backend="emulated")
    for got, want in zip(grads[:2], rounded[:2]):
        assert got.tobytes() == want.tobytes()
    np.testing.assert_allclose(grads[2], dy.sum(axis=(0, 2, 3)), rtol=1e-6)


def _bound_check(y, p: Problem):
    """bfloat16 result: within one bfloat16 rounding (2**-8) of the exact sum of its
    inputs, plus float32 accumulation."""
    as64 = lambda a: None if a is None else a.astype(np.float32).astype(np.float64)
    exact = conv_transpose_reference(as64(p.x), as64(p.weight), as64(p.bias), **p.params)
    scale = conv_transpose_reference(np.abs(as64(p.x)), np.abs(as64(p.weight)),
                                     None if p.bias is None else np.abs(as64(p.bias)), **p.params)
    error = np.abs(y.astype(np.float32).astype(np.float64) - exact)
    assert y.dtype == BFLOAT16
    assert np.all(error <= 2.0**-8 * np.abs(exact) + 1e-5 * scale + 1e-38)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_on_every_backend(backend):
    @settings(max_examples=6)
    @given(p=problems(max_channels=3))
    def check(p: Problem):
        q = p.astype(BFLOAT16)
        _bound_check(gpu_tconv.conv_transpose(q.x, q.weight, q.bias, **q.params,
                                              backend=backend), q)

    check()


def test_bfloat16_is_computed_in_float32_and_rounded_once():
    xb, wb = X.astype(BFLOAT16), W.astype(BFLOAT16)
    y = gpu_tconv.conv_transpose2d(xb, wb, stride=2, padding=1, backend="numpy")
    in_float32 = gpu_tconv.conv_transpose2d(xb.astype(np.float32), wb.astype(np.float32),
                                            stride=2, padding=1, backend="numpy")
    assert y.view(np.uint16).tobytes() == in_float32.astype(BFLOAT16).view(np.uint16).tobytes()
    dy = np.ones(y.shape, BFLOAT16)
    for backend in ("numpy", "emulated"):
        dx, dw, db = gpu_tconv.conv_transpose_backward(dy, xb, wb, stride=2, padding=1,
                                                       backend=backend)
        assert dx.dtype == dw.dtype == db.dtype == BFLOAT16
        ref = gpu_tconv.conv_transpose_backward(dy.astype(np.float32), xb.astype(np.float32),
                                                wb.astype(np.float32), stride=2, padding=1,
                                                backend="numpy")
        for got, want in zip((dx, dw, db), ref):
            np.testing.assert_allclose(got.astype(np.float32), want, rtol=2**-7, atol=1e-2)


@pytest.mark.parametrize("name", ["phase_smem"])
def test_bfloat16_on_the_tiled_kernels(name):
    # Their pixel pairs load as __nv_bfloat162: bfloat16 has its own vector type (the
    # other tiled variants share this code; the sanitizer test runs them all).
    rng = np.random.default_rng(64)
    x = rng.standard_normal((1, 9, 4, 8)).astype(BFLOAT16)
    w = rng.standard_normal((9, 10, 3, 3)).astype(BFLOAT16)
    g = geometry_from_shapes(x.shape, w.shape, padding=1)
    y = emulated_backend.conv_transpose(x, w, None, g, variant=name)
    _bound_check(y, Problem(x, w, None, dict(padding=1, groups=1)))


def test_bfloat16_is_known_to_the_kernels_and_the_checks():
    assert launch.C_TYPES[BFLOAT16] == "__nv_bfloat16"
    assert BFLOAT16 in launch.kernel_dtypes()
    assert launch.kernel_expression(BFLOAT16, 32) == \
        "gpu_tconv::conv_transpose_gather<__nv_bfloat16, int, false>"
    with pytest.raises(TypeError, match="bfloat16"):
        gpu_tconv.conv_transpose2d(X.astype(np.int32), W.astype(np.int32))
    with pytest.raises(TypeError, match="weight"):
        gpu_tconv.conv_transpose2d(X.astype(BFLOAT16), W)


def test_torch_bfloat16_tensors_pass_through():
    torch = pytest.importorskip("torch")
    import gpu_tconv.torch as gtt

    x = torch.randn(2, 4, 5, 5, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    y = gtt.conv_transpose2d(x, w, stride=2, padding=1)
    assert y.dtype == torch.bfloat16
    expected = torch.nn.functional.conv_transpose2d(x.double(), w.double(), stride=2, padding=1)
    assert torch.allclose(y.double(), expected, rtol=2**-7, atol=5e-2)
    y.sum().backward()
    assert x.grad.dtype == w.grad.dtype == torch.bfloat16
    # A bfloat16 tensor given to the plain functions: a bfloat16 NumPy result.
    plain = gpu_tconv.conv_transpose2d(x.detach(), w.detach(), stride=2, padding=1)
    assert plain.dtype == BFLOAT16
    np.testing.assert_array_equal(plain.view(np.int16), y.detach().view(torch.int16).numpy())
