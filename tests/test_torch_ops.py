"""torch.ops.gpu_tconv: opcheck, fake kernels, memory formats, half types, padding forms,
double backward, and the device path run on the CPU through the emulated kernels."""

import gc
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

import gpu_tconv.torch as gtt  # noqa: E402
from gpu_tconv.torch import device, formats, host  # noqa: E402

OP = torch.ops.gpu_tconv.conv_transpose.default
BACKWARD = torch.ops.gpu_tconv.conv_transpose_backward.default
TORCH_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


def operands(rank, dtype=torch.float64, bias=True, groups=1, c_in=4, c_out_g=2, size=3,
             kernel=2, memory_format=None, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, *(size,) * rank, generator=g, dtype=dtype)
    w = torch.randn(c_in, c_out_g, *(kernel,) * rank, generator=g, dtype=dtype)
    b = torch.randn(c_out_g * groups, generator=g, dtype=dtype) if bias else None
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
    return [t if t is None else t.requires_grad_(requires_grad) for t in (x, w, b)]


def params(rank, stride=2, padding=1, output_padding=1, groups=1, dilation=1):
    return ([stride] * rank, [padding] * rank, [output_padding] * rank, groups,
            [dilation] * rank)


def torch_oracle(x, w, b, stride, padding, output_padding, groups, dilation):
    return TORCH_FN[x.dim() - 2](x, w, b, stride, padding, output_padding, groups, dilation)


# Every rank, both dtypes, with and without bias, groups, dilation and channels-last.
OPCHECK_CASES = [  # rank, dtype, bias, groups, dilation, channels last
    (1, torch.float64, True, 2, 1, False),
    (2, torch.float32, False, 1, 2, True),
    (2, torch.float64, True, 2, 2, False),
    (3, torch.float64, False, 2, 2, True),
    (3, torch.float32, True, 1, 1, False),
]


@pytest.mark.parametrize("rank, dtype, bias, groups, dilation, channels_last", OPCHECK_CASES)
def test_opcheck_forward(rank, dtype, bias, groups, dilation, channels_last):
    x, w, b = operands(rank, dtype, bias, groups, c_in=2 * groups, size=3 if rank < 3 else 2,
                       memory_format=CHANNELS_LAST.get(rank) if channels_last else None,
                       requires_grad=True)
    args = (x, w, b, *params(rank, groups=groups, dilation=dilation))
    torch.library.opcheck(OP, args)
    torch.testing.assert_close(OP(*args), torch_oracle(*args))


@pytest.mark.parametrize("rank, mask", [(1, [True, True, True]), (3, [False, True, False])])
def test_opcheck_backward(rank, mask):
    x, w, _ = operands(rank, groups=2, size=2, requires_grad=True)
    p = params(rank, groups=2)
    dy = torch.randn(OP(x, w, None, *p).shape, dtype=x.dtype, requires_grad=True)
    torch.library.opcheck(BACKWARD, (dy, x, w, *p, mask))


@pytest.mark.parametrize("rank, dtype", [(2, torch.float32), (2, torch.float64),
                                         (3, torch.float32), (3, torch.float64),
                                         (3, torch.bfloat16)])
def test_channels_last_is_taken_and_returned_as_pytorch_does(rank, dtype, monkeypatch):
    fmt = CHANNELS_LAST[rank]
    x, w, b = operands(rank, dtype, memory_format=fmt, requires_grad=True)
    p = params(rank)
    seen = []
    real = host.api.conv_transpose

    def spy(xa, *args, **kwargs):
        seen.append((xa, kwargs["layout"]))
        return real(xa, *args, **kwargs)

    monkeypatch.setattr(host.api, "conv_transpose", spy)
    y = OP(x, w, b, *p)
    (xa, layout), = seen
    expected = torch_oracle(x, w, b, *p)
    # The memory format PyTorch returns here (channels-last but for 3-D calls outside
    # oneDNN, float64 always), and the backend ran in it.
    assert y.stride() == expected.stride()
    assert layout == ("channels_last" if y.is_contiguous(memory_format=fmt) else
                      "channels_first")
    if dtype in (torch.float32, torch.float64):  # a view of x itself, not a copy
        assert np.shares_memory(xa, x.detach().numpy())
    assert rank == 3 or layout == "channels_last"  # 2-D: always, as PyTorch
    torch.testing.assert_close(y, expected, **tolerance(dtype))
    dy = torch.randn_like(expected)
    ours = torch.autograd.grad(y, (x, w, b), dy)
    theirs = torch.autograd.grad(expected, (x, w, b), dy)
    assert ours[0].stride() == theirs[0].stride()
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, **tolerance(dtype))


def tolerance(dtype):
    return dict(rtol=2e-2, atol=5e-2) if dtype == torch.bfloat16 else {}


@pytest.mark.parametrize("case", ["x channels_last", "weight channels_last", "contiguous",
                                  "sliced channels_last", "1-D"])
def test_fake_kernels_give_the_real_shapes_and_strides(case):
    rank = 1 if case == "1-D" else 2
    x, w, b = operands(rank, torch.float32, memory_format=torch.channels_last
                       if case.startswith(("x", "sliced")) else None)
    if case == "weight channels_last":
        w = w.contiguous(memory_format=torch.channels_last)
    if case.startswith("sliced"):
        x = x[:, :, 1:, ::2]
    p = params(rank)
    dy_shape = OP(x, w, b, *p).shape
    real = [OP(x, w, b, *p), *BACKWARD(torch.randn(dy_shape), x, w, *p, [True, True, True])]
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fx, fw, fb = (mode.from_tensor(t) for t in (x, w, b))
        fake = [OP(fx, fw, fb, *p),
                *BACKWARD(torch.empty(dy_shape), fx, fw, *p, [True, True, True])]
    for r, f in zip(real, fake):
        assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype)
    assert real[0].stride() == torch_oracle(x, w, b, *p).stride()


def half_bound(dtype, reference, magnitude, terms):
    """|computed - exact| allowed for a result of ``dtype`` accumulated in float32 over
    ``terms`` products and rounded once: half an ulp of the format (relative) plus
    float32's ``gamma_terms`` times the sum of the terms' magnitudes."""
    unit = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    gamma = terms * 2.0**-24 / (1 - terms * 2.0**-24)
    return unit * reference.abs() + gamma * magnitude + torch.finfo(dtype).tiny


@pytest.mark.parametrize("dtype, run", [(torch.bfloat16, "host"), (torch.float16, "host"),
                                        (torch.bfloat16, "emulated")])
def test_half_types_are_computed_in_float32_and_rounded_once(dtype, run):
    c_in, kernel, rank = 16, 3, 2
    x, w, b = operands(rank, torch.float64, c_in=c_in, c_out_g=3, size=4, kernel=kernel)
    x, w, b = (t.to(dtype) for t in (x, w, b))  # exactly representable operands
    p = params(rank, padding=0, output_padding=0)
    dy = torch.randn(OP(x, w, b, *p).shape, dtype=torch.float64).to(dtype)
    if run == "host":
        y = OP(x, w, b, *p)
        dx, dw, db = BACKWARD(dy, x, w, *p, [True, True, True])
    else:
        launcher = device.EmulatedLauncher()
        y = device.forward(x, w, b, *p, launcher)
        dx, dw, db = device.backward(dy, x, w, *p, [True, True, True], launcher)
    assert {t.dtype for t in (y, dx, dw, db)} == {dtype}

    wide = [t.double().requires_grad_() for t in (x, w, b)]
    exact = torch_oracle(*wide, *p)
    grads = torch.autograd.grad(exact, wide, dy.double())
    absolute = [t.detach().abs().requires_grad_() for t in wide]
    magnitude = torch_oracle(*absolute, *p)
    magnitudes = torch.autograd.grad(magnitude, absolute, dy.double().abs())
    terms = [c_in * kernel**rank + 1, 3 * kernel**rank, 2 * 4**rank, dy[:, 0].numel()]
    for got, ref, mag, n in zip((y, dx, dw, db), (exact, *grads), (magnitude, *magnitudes),
                                terms):
        error = (got.double() - ref.detach()).abs()
        assert (error <= half_bound(dtype, ref.detach(), mag.detach(), n)).all()


@pytest.mark.parametrize("padding, kernel, crop", [
    (((1, 2), (0, 1)), 2, (slice(1, -2), slice(0, -1))),
    # same: in*stride = 6 outputs of 7; TensorFlow trims the odd one at the end.
    ("same", 3, (slice(0, 6), slice(0, 6))),
])
def test_padding_forms_beyond_ints_are_a_crop_of_the_operator(padding, kernel, crop):
    x, w, b = operands(2, kernel=kernel, requires_grad=True)
    y = gtt.conv_transpose2d(x, w, b, stride=2, padding=padding)
    full = F.conv_transpose2d(x, w, b, stride=2)
    expected = full[(slice(None), slice(None)) + crop]
    torch.testing.assert_close(y, expected)
    dy = torch.randn_like(y)
    for a, e in zip(torch.autograd.grad(y, (x, w, b), dy),
                    torch.autograd.grad(expected, (x, w, b), dy)):
        torch.testing.assert_close(a, e)


def test_same_and_valid_follow_the_packages_rule():
    x, w, b = operands(1, kernel=5)
    for padding in ("same", "valid"):
        for stride in (2, 7):
            y = gtt.conv_transpose1d(x, w, b, stride=stride, padding=padding)
            expected = gtt_numpy(x, w, b, stride, padding)
            np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert gtt.conv_transpose1d(x, w, b, stride=2, padding="same").shape[-1] == 6


def gtt_numpy(x, w, b, stride, padding):
    import gpu_tconv

    return gpu_tconv.conv_transpose1d(x.numpy(), w.numpy(), b.numpy(), stride=stride,
                                      padding=padding, backend="numpy")


def test_unbatched_input_as_in_torch():
    x, w, b = operands(2)
    torch.testing.assert_close(gtt.conv_transpose2d(x[0], w, b, stride=2),
                               F.conv_transpose2d(x[0], w, b, stride=2))


@pytest.mark.parametrize("call, error, words", [
    (lambda x, w, b: gtt.conv_transpose2d(x, w.float(), b), TypeError, "weight"),
    (lambda x, w, b: gtt.conv_transpose2d(x.long(), w.long()), TypeError, "x must be"),
    (lambda x, w, b: gtt.conv_transpose2d(x[0, 0], w), ValueError, "input must have"),
    (lambda x, w, b: gtt.conv_transpose2d(x, w, b, padding="full"), ValueError, "padding"),
    (lambda x, w, b: gtt.conv_transpose2d(x, w, b, output_padding=2), ValueError,
     "output_padding"),
    (lambda x, w, b: gtt.conv_transpose2d(x, w, b, stride=1.5), TypeError, "stride"),
    (lambda x, w, b: gtt.conv_transpose2d(x, w, b[:1]), ValueError, "bias"),
])
def test_bad_calls_name_the_parameter(call, error, words):
    x, w, b = operands(2)
    with pytest.raises(error, match=words):
        call(x, w, b)


def test_double_backward():
    x, w, b = operands(2, groups=2, c_in=2, c_out_g=1, size=2, requires_grad=True)
    x = x[:1].detach().requires_grad_()
    p = dict(stride=2, padding=1, output_padding=1, groups=2)
    assert torch.autograd.gradgradcheck(lambda *a: gtt.conv_transpose2d(*a, **p), (x, w, b))


@pytest.mark.parametrize("rank, channels_last", [(2, True), (3, False)])
def test_device_path_on_the_emulated_kernels(rank, channels_last):
    """The CUDA implementation's code (layouts, plans, PyTorch allocations, gradient
    kernels) with the kernels compiled for the CPU."""
    x, w, b = operands(rank, groups=2, size=3, memory_format=CHANNELS_LAST.get(rank)
                       if channels_last else None, requires_grad=True)
    p = params(rank, groups=2, dilation=2)
    launcher = device.EmulatedLauncher()
    y = device.forward(x, w, b, *p, launcher)
    expected = torch_oracle(x, w, b, *p)
    torch.testing.assert_close(y, expected)
    assert y.stride() == OP(x, w, b, *p).stride()
    dy = torch.randn_like(expected)
    ours = device.backward(dy, x, w, *p, [True, True, True], launcher)
    for a, e in zip(ours, torch.autograd.grad(expected, (x, w, b), dy)):
        torch.testing.assert_close(a, e)
    assert device.backward(dy, x, w, *p, [False, True, False], launcher)[::2] == (None, None)


def test_gradient_kernels_get_a_pytorch_allocator(monkeypatch):
    """Every array the gradient kernels allocate through their ``empty`` allocator is a
    torch.empty tensor, and the gradients come back as those tensors."""
    calls = []
    real = device.dispatch._kernel_gradients

    def with_allocator(xp, run, dy, x, weight, geometry, needs, empty=None):
        calls.append(empty)
        workspace = empty((3,), np.float32)  # a temporary, as a workspace would be
        assert workspace.shape == (3,)
        return real(xp, run, dy, x, weight, geometry, needs, empty=empty)

    x, w, _ = operands(2, requires_grad=True)
    p = params(2)
    dy = torch.randn(OP(x, w, None, *p).shape, dtype=x.dtype)
    expected = torch.autograd.grad(torch_oracle(x, w, None, *p), (x, w), dy)
    monkeypatch.setattr(device.dispatch, "_kernel_gradients", with_allocator)
    made = []
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: made.append(a) or real_empty(*a, **k))
    dx, dw, _ = device.backward(dy, x, w, *p, [True, True, False], device.EmulatedLauncher())
    assert len(calls) == 1 and isinstance(calls[0], device._Allocations)
    assert [tuple(s[0]) for s in made] == [(3,), tuple(x.shape), tuple(w.shape)]
    torch.testing.assert_close((dx, dw), expected)


def test_bfloat16_runs_in_float32_unless_the_kernels_have_it(monkeypatch):
    assert formats.kernel_dtype(torch.float16) == (torch.float16, np.dtype(np.float16))
    native = {d.name for d in device.launch.kernel_dtypes()}
    expected = torch.bfloat16 if "bfloat16" in native else torch.float32
    assert formats.kernel_dtype(torch.bfloat16)[0] == expected


def test_cuda_views_describe_the_tensors_memory():
    """The CuPy arrays handed to the CUDA kernels: the tensor's pointer, shape, strides
    and dtype, and the tensor kept alive (metadata only: nothing is dereferenced here)."""
    pytest.importorskip("cupy")
    import ml_dtypes

    launcher = device.CudaLauncher(torch.device("cuda", 0))
    t = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    view = launcher.view(formats.to_layout(t, True), np.dtype(np.float32))
    assert view.data.ptr == t.data_ptr() and view.shape == (2, 4, 5, 3)
    assert view.flags.c_contiguous and view.strides == (240, 60, 12, 4)
    kept = torch.randn(4)
    alive, view = weakref.ref(kept), launcher.view(kept, np.dtype(np.float32))
    del kept
    assert alive() is not None  # the view holds the tensor
    del view
    gc.collect()
    assert alive() is None
    half = launcher.view(torch.zeros(3, 2, dtype=torch.bfloat16), np.dtype(ml_dtypes.bfloat16))
    assert half.dtype == np.dtype(ml_dtypes.bfloat16) and half.strides == (4, 2)
    assert launcher.view(None, np.dtype(np.float32)) is None
