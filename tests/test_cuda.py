"""CuPy arrays through the cuda backend. These need a GPU: they skip, saying why,
on machines without one, and run wherever one is usable."""

import numpy as np
import pytest

import gpu_tconv
from conftest import requires_gpu
from gpu_tconv import cuda_backend, variants
from gpu_tconv.geometry import geometry_from_shapes
from gpu_tconv.reference import conv_transpose_reference

pytestmark = requires_gpu


@pytest.fixture
def cupy():
    import cupy

    return cupy


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5),
                                        (np.float16, 2e-2)])
def test_cupy_in_cupy_out(cupy, dtype, tol):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 5, 7)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 4)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    kw = dict(stride=(2, 3), padding=1, output_padding=(1, 0), groups=3, dilation=(1, 2))
    y = gpu_tconv.conv_transpose2d(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), **kw)
    assert isinstance(y, cupy.ndarray) and y.dtype == dtype
    assert y.device == cupy.cuda.Device()
    np.testing.assert_allclose(y.get(), conv_transpose_reference(x, w, b, **kw),
                               rtol=tol, atol=tol)


def test_auto_uses_the_gpu_and_returns_numpy():
    x, w = np.ones((1, 2, 3), np.float32), np.ones((2, 1, 2), np.float32)
    y = gpu_tconv.conv_transpose1d(x, w, stride=2)
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, np.full((1, 1, 6), 2, np.float32))
    assert gpu_tconv.available_backends()[0] == "cuda"


def test_runs_on_the_current_stream(cupy):
    rng = np.random.default_rng(8)
    x = cupy.asarray(rng.standard_normal((4, 8, 16, 16)).astype(np.float32))
    w = cupy.asarray(rng.standard_normal((8, 4, 4, 4)).astype(np.float32))
    expected = gpu_tconv.conv_transpose2d(x, w, stride=2, padding=1)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        y = gpu_tconv.conv_transpose2d(x, w, stride=2, padding=1)
    stream.synchronize()
    assert y.get().tobytes() == expected.get().tobytes()


def test_deterministic_on_a_large_problem(cupy):
    rng = np.random.default_rng(9)
    x = cupy.asarray(rng.standard_normal((8, 64, 32, 32)).astype(np.float32))
    w = cupy.asarray(rng.standard_normal((64, 32, 4, 4)).astype(np.float32))
    runs = [gpu_tconv.conv_transpose2d(x, w, stride=2, padding=1).get().tobytes()
            for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]


def test_emulated_and_gpu_agree(cupy):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 4, 3, 4, 5))
    w = rng.standard_normal((4, 2, 2, 3, 2))
    kw = dict(stride=(1, 2, 3), padding=(0, 1, 1), dilation=(2, 1, 1), groups=2)
    gpu = gpu_tconv.conv_transpose3d(cupy.asarray(x), cupy.asarray(w), **kw).get()
    emulated = gpu_tconv.conv_transpose3d(x, w, **kw, backend="emulated")
    np.testing.assert_allclose(gpu, emulated, rtol=1e-13, atol=1e-13)


# --- the kernel variants on the GPU -------------------------------------------------------

_VARIANT_CASES = [
    # DCGAN-like: stride 2, channels over several tiles, odd width (unaligned rows).
    ((2, 19, 9, 11), (19, 12, 4, 4), dict(stride=2, padding=1)),
    # Vocoder-like 1-D upsampler and an FCN-like depthwise bilinear one.
    ((2, 16, 40), (16, 8, 16), dict(stride=8, padding=4)),
    ((2, 6, 12, 12), (6, 1, 4, 4), dict(stride=2, padding=1, groups=6)),
    # Stride 1 (vector stores), dilation, groups, output_padding, 3-D.
    ((2, 8, 5, 6, 8), (8, 5, 3, 3, 3), dict(padding=1, dilation=(1, 2, 1), groups=2)),
    ((1, 9, 6, 7), (9, 4, 3, 5), dict(stride=(3, 2), padding=(2, 1), output_padding=(1, 1))),
]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-4), (np.float16, 2e-2)])
@pytest.mark.parametrize("name", [n for n, v in variants.VARIANTS.items()
                                  if not isinstance(v, variants.WmmaVariant)])
def test_every_variant_on_the_gpu(cupy, name, dtype, tol):
    rng = np.random.default_rng(11)
    for x_shape, w_shape, kw in _VARIANT_CASES:
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        b = rng.standard_normal(w_shape[1] * kw.get("groups", 1)).astype(dtype)
        g = geometry_from_shapes(x.shape, w.shape, b.shape, **kw)
        y = cuda_backend.conv_transpose(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), g,
                                        variant=name)
        expected = conv_transpose_reference(x, w, b, **kw)
        scale = conv_transpose_reference(np.abs(x), np.abs(w), np.abs(b), **kw)
        assert np.all(np.abs(y.get() - expected) <= tol * (scale + 1)), (name, x_shape)
        again = cuda_backend.conv_transpose(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b),
                                            g, variant=name)
        assert again.get().tobytes() == y.get().tobytes()  # deterministic


@pytest.mark.parametrize("kind", ["float16", "bfloat16", "tf32"])
def test_wmma_on_the_gpu(cupy, kind):
    """The tensor-core kernel on the device: within its format's error of float64, bit
    for bit reproducible, and as the emulated kernel computes it up to the order of the
    tensor cores' additions."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from gpu_tconv import emulated_backend, formats

    dtype = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "tf32": np.float32}[kind]
    precision = "tf32" if kind == "tf32" else "highest"
    if kind != "float16" and int(cupy.cuda.Device().compute_capability) < 80:
        pytest.skip("bfloat16 and TF32 tensor cores need sm_80")
    rng = np.random.default_rng(12)
    for x_shape, w_shape, kw in _VARIANT_CASES + [((2, 40, 9, 7), (40, 24, 4, 4),
                                                    dict(stride=2, padding=1))]:
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        b = rng.standard_normal(w_shape[1] * kw.get("groups", 1)).astype(dtype)
        g = geometry_from_shapes(x.shape, w.shape, b.shape, **kw)
        run = lambda: cuda_backend.conv_transpose(cupy.asarray(x), cupy.asarray(w),
                                                  cupy.asarray(b), g, variant="wmma",
                                                  precision=precision).get()
        y = run()
        assert y.dtype == np.dtype(dtype) and run().tobytes() == y.tobytes()
        xs, ws = ((formats.round_to_tf32(x), formats.round_to_tf32(w)) if kind == "tf32"
                  else (x, w))
        as64 = lambda a: np.asarray(a, np.float32).astype(np.float64)
        expected = conv_transpose_reference(as64(xs), as64(ws), as64(b), **kw)
        scale = conv_transpose_reference(np.abs(as64(xs)), np.abs(as64(ws)), np.abs(as64(b)),
                                         **kw)
        unit = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "tf32": 2.0**-24}[kind]
        terms = w_shape[0] // kw.get("groups", 1) * int(np.prod(w_shape[2:])) + 1
        bound = unit * np.abs(expected) + 2 * terms * 2.0**-24 * scale + 1e-30
        assert np.all(np.abs(as64(y) - expected) <= bound), (kind, x_shape)
        emulated = emulated_backend.conv_transpose(x, w, b, g, variant="wmma",
                                                   precision=precision)
        assert np.all(np.abs(as64(y) - as64(emulated)) <= 2 * bound)
