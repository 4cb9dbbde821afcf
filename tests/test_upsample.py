"""Upsampling as a depthwise transposed convolution, against independent oracles:
PyTorch's ``interpolate`` (bilinear family, bicubic, nearest), Pillow's float-image
Lanczos resize and ``np.repeat``."""

import importlib
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gpu_tconv
from conftest import BACKENDS, requires_gpu
from oracles import torch_interpolate
from gpu_tconv import api
from gpu_tconv.layout import (from_batch_channels_space, parse_layout, spatial_layout,
                              to_batch_channels_space)
from gpu_tconv.layout import Layout
from gpu_tconv.upsample import bilinear_taps, interpolation_kernel, resampling_taps

upsample_module = importlib.import_module("gpu_tconv.upsample")

LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
# Small on purpose: the emulated backend runs every thread of the grid on the CPU.
SIZES = {1: [(1,), (2,), (7,)], 2: [(1, 3), (4, 5)], 3: [(2, 3, 2)]}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("rank, size", [(r, s) for r, sizes in SIZES.items() for s in sizes])
def test_bilinear_matches_pytorch_interpolate(backend, scale, rank, size):
    x = np.random.default_rng(scale * 10 + rank).standard_normal((2, 3) + size)
    y = gpu_tconv.upsample(x, scale, "bilinear", backend=backend)
    expected = torch_interpolate(x, scale, LINEAR_MODES[rank])
    assert y.shape == expected.shape == (2, 3) + tuple(scale * n for n in size)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1, 2, 3, 5])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_nearest_is_repeat(backend, scale, rank):
    x = np.random.default_rng(rank).standard_normal((1, 2) + (3, 2, 2)[:rank]).astype(np.float32)
    y = gpu_tconv.upsample(x, scale, "nearest", backend=backend)
    expected = x
    for axis in range(2, 2 + rank):
        expected = np.repeat(expected, scale, axis=axis)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(y, torch_interpolate(x, scale, "nearest"))


def test_large_scales_and_float32_on_numpy():
    x = np.random.default_rng(5).standard_normal((1, 2, 9, 6)).astype(np.float32)
    for scale in (5, 8):
        y = gpu_tconv.upsample(x, scale, backend="numpy")
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, torch_interpolate(x, scale, "bilinear"), atol=2e-6)


def test_edges_are_not_darkened():
    # A constant stays constant up to the border: zeros beyond the edge would pull it down.
    y = gpu_tconv.upsample(np.full((1, 1, 4, 4), 7.0), 3, backend="numpy")
    np.testing.assert_allclose(y, 7.0, rtol=0, atol=1e-14)


def test_is_a_depthwise_transposed_convolution(monkeypatch):
    calls = []

    def spy(x, weight, bias=None, **kw):
        calls.append((x.shape, weight.shape, kw))
        return real(x, weight, bias, **kw)

    real = api.conv_transpose
    monkeypatch.setattr(api, "conv_transpose", spy)
    gpu_tconv.upsample(np.zeros((2, 5, 4, 4)), 3, backend="emulated")
    ((x_shape, w_shape, kw),) = calls
    assert kw["groups"] == 5 and w_shape == (5, 1, 5, 5) and kw["stride"] == 3
    assert x_shape == (2, 5, 6, 6)  # one edge element added on each side


@pytest.mark.parametrize("scale, taps", [
    (1, [1.0]), (2, [0.25, 0.75, 0.75, 0.25]),
    (3, [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3]), (4, [.125, .375, .625, .875, .875, .625, .375, .125]),
])
def test_fcn_bilinear_kernel(scale, taps):
    np.testing.assert_allclose(bilinear_taps(scale), taps)
    k = interpolation_kernel("bilinear", scale)
    assert len(k.taps) == 2 * scale - scale % 2 and k.stride == scale


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32])
def test_integer_data_is_rounded_and_clipped(dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(6)
    x = rng.integers(info.min, info.max, (1, 3, 5, 4), dtype=dtype, endpoint=True)
    x[0, 0, 0, :2] = info.max, info.min                      # the extremes survive
    y = gpu_tconv.upsample(x, 3, backend="numpy")
    expected = torch_interpolate(x.astype(np.float64), 3, "bilinear")
    assert y.dtype == dtype
    assert np.abs(y.astype(np.float64) - expected).max() <= 0.5 + 1e-6 * float(info.max)
    assert y.max() == info.max and y.min() == info.min


@pytest.mark.parametrize("layout, shape", [("HWC", (4, 5, 3)), ("HW", (4, 5)),
                                           ("CL", (2, 6)), ("DHWNC", (2, 2, 3, 2, 2))])
def test_layout_moves_axes(layout, shape):
    x = np.random.default_rng(7).standard_normal(shape)
    y = gpu_tconv.upsample(x, 2, layout=layout, backend="numpy")
    ncs = to_batch_channels_space(x, parse_layout(layout, x.ndim))
    expected = from_batch_channels_space(torch_interpolate(
        np.ascontiguousarray(ncs), 2, LINEAR_MODES[ncs.ndim - 2]), parse_layout(layout, x.ndim))
    spatial = [i for i, c in enumerate(layout) if c not in "NC"]
    assert y.shape == tuple(n * 2 if i in spatial else n for i, n in enumerate(shape))
    np.testing.assert_allclose(y, expected, atol=1e-13)


def test_layout_round_trip_and_order():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)            # H, N, W, C
    layout = parse_layout("HNWC", 4)
    ncs = to_batch_channels_space(x, layout)
    assert ncs.shape == (3, 5, 2, 4) and ncs[1, 4, 0, 3] == x[0, 1, 3, 4]
    np.testing.assert_array_equal(from_batch_channels_space(ncs, layout), x)
    assert spatial_layout(3).letters == "DHW"


@pytest.mark.parametrize("call, error, words", [
    (lambda x: gpu_tconv.upsample(x, 0), ValueError, "scale"),
    (lambda x: gpu_tconv.upsample(x, 2.0), TypeError, "scale"),
    (lambda x: gpu_tconv.upsample(x, 2, "cubic"), ValueError, "kernel"),
    (lambda x: gpu_tconv.upsample(x, 2, layout="NCH"), ValueError, "4 axes"),
    (lambda x: gpu_tconv.upsample(x, 2, layout="NCHH"), ValueError, "distinct"),
    (lambda x: gpu_tconv.upsample(x, 2, layout="NCCW"), ValueError, "distinct"),
    (lambda x: gpu_tconv.upsample(x[0, 0], 2), ValueError, "(N, C, *spatial)"),
    (lambda x: gpu_tconv.upsample(x > 0, 2), TypeError, "bool"),
    (lambda x: gpu_tconv.upsample(x.astype(complex), 2), TypeError, "complex"),
    (lambda x: gpu_tconv.upsample(x, 2, backend="gpu"), ValueError, "backend"),
])
def test_bad_arguments(call, error, words):
    with pytest.raises(error, match=re.escape(words)):
        call(np.zeros((1, 1, 2, 2)))


def test_spatial_rank_limits():
    with pytest.raises(ValueError, match="spatial axes"):
        parse_layout("NCDHWT", 6)
    with pytest.raises(ValueError, match="layout"):
        spatial_layout(4)


@requires_gpu
def test_cupy_in_cupy_out():
    import cupy

    x = np.random.default_rng(8).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    y = gpu_tconv.upsample(cupy.asarray(x), 2, layout="HWC", backend="cuda")
    assert isinstance(y, cupy.ndarray) and y.dtype == np.uint8
    np.testing.assert_array_equal(y.get(), gpu_tconv.upsample(x, 2, layout="HWC",
                                                              backend="numpy"))


# ------------------------------------------------------------------ bicubic, lanczos

def torch_bicubic(x: np.ndarray, scale: int) -> np.ndarray:
    """PyTorch's bicubic of ``(N, C, *spatial)``, 1 to 3 spatial axes, in float64: 2-D
    directly, each other axis as a 2-D image of height 1 (bicubic along W only)."""
    t = torch.from_numpy(x.astype(np.float64))
    if t.ndim == 4:
        return F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False).numpy()
    for axis in range(2, t.ndim):
        moved = t.movedim(axis, -1)
        flat = moved.reshape(-1, 1, 1, moved.shape[-1])
        flat = F.interpolate(flat, scale_factor=(1, scale), mode="bicubic", align_corners=False)
        t = flat.reshape(moved.shape[:-1] + (-1,)).movedim(-1, axis)
    return t.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("size", [(7,), (5, 3), (3, 2, 3)])
def test_bicubic_matches_pytorch(backend, scale, dtype, atol, size):
    if backend == "emulated" and (len(size) == 3 or dtype == np.float32):
        pytest.skip("the emulated backend gets the 1-D and 2-D float64 cases (it is slow)")
    x = np.random.default_rng(scale).standard_normal((2, 3) + size).astype(dtype)
    y = gpu_tconv.upsample(x, scale, "bicubic", backend=backend)
    assert y.dtype == dtype and y.shape == (2, 3) + tuple(scale * n for n in size)
    np.testing.assert_allclose(y, torch_bicubic(x, scale), rtol=0, atol=atol)


@pytest.mark.parametrize("shape", [(1, 1, 17, 9), (2, 3, 1, 5), (1, 2, 40, 33)])
def test_bicubic_2d_odd_sizes_and_borders(shape):
    x = np.random.default_rng(1).standard_normal(shape)
    expected = F.interpolate(torch.from_numpy(x), scale_factor=3, mode="bicubic",
                             align_corners=False).numpy()
    np.testing.assert_allclose(gpu_tconv.upsample(x, 3, "bicubic", backend="numpy"),
                               expected, rtol=0, atol=1e-12)


def inside(n: int, scale: int, radius: int = 3) -> np.ndarray:
    """The outputs along an axis of ``n`` whose Lanczos support lies inside the input."""
    u = (np.arange(n * scale) + 0.5) / scale - 0.5
    return (u - radius >= 0) & (u + radius <= n - 1)


@pytest.mark.parametrize("backend", ["numpy", "emulated"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_lanczos_matches_pillow_inside_the_image(backend, scale):
    h, w = (12, 11) if backend == "numpy" else (8, 9)
    x = np.random.default_rng(scale).random((h, w, 2)).astype(np.float32)
    y = gpu_tconv.upsample(x, scale, "lanczos", layout="HWC", backend=backend)
    for c in range(2):
        pillow = np.asarray(Image.fromarray(x[:, :, c], mode="F").resize(
            (w * scale, h * scale), Image.LANCZOS))
        keep = np.outer(inside(h, scale), inside(w, scale))
        assert keep.sum() >= 4
        np.testing.assert_allclose(y[:, :, c][keep], pillow[keep], rtol=0, atol=2e-6)


def test_lanczos_taps_of_each_phase_sum_to_one_and_border_keeps_constants():
    for scale in (2, 3, 5):
        taps = resampling_taps("lanczos", scale)
        assert len(taps) == 6 * scale - scale % 2
        np.testing.assert_allclose([taps[p::scale].sum() for p in range(scale)], 1, atol=1e-14)
    y = gpu_tconv.upsample(np.full((1, 1, 5, 4), 3.0), 3, "lanczos", backend="numpy")
    np.testing.assert_allclose(y, 3.0, atol=1e-13)


@pytest.mark.parametrize("kernel", ["bicubic", "lanczos"])
def test_3d_is_the_kernel_along_each_axis(kernel):
    x = np.random.default_rng(2).standard_normal((1, 2, 3, 4, 2))
    y = gpu_tconv.upsample(x, 2, kernel, backend="numpy")
    expected = x
    taps = interpolation_kernel(kernel, 2)
    for axis in (2, 3, 4):   # 1-D upsampling of every line along the axis, in turn
        moved = np.moveaxis(expected, axis, -1)
        lines = moved.reshape(-1, 1, moved.shape[-1])
        lines = gpu_tconv.upsample(lines, 2, kernel, backend="numpy")
        expected = np.moveaxis(lines.reshape(moved.shape[:-1] + (-1,)), -1, axis)
    assert taps.stride == 2
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic", "lanczos", "nearest"])
@pytest.mark.parametrize("layout, shape", [("HWC", (19, 23, 3)), ("NCHW", (2, 1, 33, 5)),
                                           ("HW", (1, 7))])
def test_separable_path_equals_the_whole_kernel(kernel, layout, shape):
    # The numpy backend's band-by-band, axis-by-axis path against one transposed
    # convolution with the outer-product kernel (the path of the other backends).
    x = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    fast = gpu_tconv.upsample(x, 3, kernel, layout=layout, backend="numpy")
    spec = interpolation_kernel(kernel, 3)
    whole = upsample_module._full_kernel(x.astype(np.float64), Layout(layout), spec,
                                         np.dtype(np.float64), np.dtype(np.float64), "numpy")
    assert fast.dtype == np.uint8 and fast.shape == whole.shape
    assert np.abs(fast - np.clip(np.rint(whole), 0, 255)).max() <= 1
    assert (fast != np.clip(np.rint(whole), 0, 255)).mean() < 0.01


def test_bands_and_cores_do_not_change_a_bit(monkeypatch):
    from gpu_tconv import separable

    x = np.random.default_rng(4).integers(0, 256, (70, 45, 3), dtype=np.uint8)
    one = gpu_tconv.upsample(x, 2, "bicubic", layout="HWC", backend="numpy")
    monkeypatch.setattr(separable, "BAND_ELEMENTS", 1)       # one tile of rows per band
    np.testing.assert_array_equal(gpu_tconv.upsample(x, 2, "bicubic", layout="HWC",
                                                     backend="numpy"), one)


@pytest.mark.parametrize("kernel", ["bicubic", "lanczos"])
def test_8_bit_overshoot_is_clipped(kernel):
    x = np.zeros((1, 1, 6, 8), np.uint8)
    x[..., 4:] = 255                                         # a hard edge rings
    y = gpu_tconv.upsample(x, 4, kernel, backend="numpy")
    exact = gpu_tconv.upsample(x.astype(np.float64), 4, kernel, backend="numpy")
    assert exact.max() > 255.5 and exact.min() < -0.5        # there is overshoot to clip
    np.testing.assert_array_equal(y, np.clip(np.rint(exact), 0, 255))


def test_impossible_scale_is_refused_before_allocating():
    with pytest.raises(ValueError, match=r"scale 100000 would make a 300000 x 400000 .* "
                                         r"at most scale \d+ fits"):
        gpu_tconv.upsample(np.zeros((3, 4, 3), np.uint8), 100000, "bicubic", layout="HWC")
    with pytest.raises(ValueError, match="would make"):
        gpu_tconv.upsample(np.zeros((1, 1, 4)), 10**12, backend="numpy")
