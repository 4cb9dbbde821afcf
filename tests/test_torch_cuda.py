"""torch.ops.gpu_tconv on CUDA tensors: results, PyTorch's allocator and stream, CUDA
graphs, torch.compile, half types. GPU only (marker ``gpu``)."""

import pytest

torch = pytest.importorskip("torch")
import gpu_tconv.torch as gtt  # noqa: E402
from conftest import requires_gpu  # noqa: E402
from gpu_tconv.torch import device  # noqa: E402
from test_torch_ops import (BACKWARD, CHANNELS_LAST, OP, half_bound, operands,  # noqa: E402
                            params, torch_oracle)

pytestmark = [pytest.mark.gpu, requires_gpu]

CASES = [  # rank, bias, groups, dilation, channels last
    (1, True, 2, 1, False),
    (2, False, 1, 2, True),
    (2, True, 2, 1, False),
    (3, True, 1, 2, True),
]


def on_cuda(*tensors):
    return [None if t is None else t.detach().cuda().requires_grad_(t.requires_grad)
            for t in tensors]


@pytest.mark.parametrize("rank, bias, groups, dilation, channels_last", CASES)
def test_forward_and_gradients_match_pytorch(rank, bias, groups, dilation, channels_last):
    fmt = CHANNELS_LAST.get(rank) if channels_last else None
    x, w, b = operands(rank, torch.float64, bias, groups, c_in=2 * groups, size=5,
                       kernel=3, memory_format=fmt, requires_grad=True)
    p = params(rank, groups=groups, dilation=dilation)
    xc, wc, bc = on_cuda(x, w, b)
    y = OP(xc, wc, bc, *p)
    expected = torch_oracle(x, w, b, *p)
    torch.testing.assert_close(y.cpu(), expected)
    # PyTorch's memory format on CUDA (cuDNN: contiguous for float64, see formats).
    assert y.is_cuda and y.stride() == torch_oracle(xc, wc, bc, *p).stride()
    dy = torch.randn_like(expected)
    inputs = [t for t in (x, w, b) if t is not None]
    ours = torch.autograd.grad(y, [t for t in (xc, wc, bc) if t is not None], dy.cuda())
    for a, e in zip(ours, torch.autograd.grad(expected, inputs, dy)):
        torch.testing.assert_close(a.cpu(), e)
    assert torch.autograd.gradcheck(lambda *a: OP(*a, *p), (xc[:1].detach().requires_grad_(),
                                                           wc, bc))


def test_kernels_read_and_write_the_tensors_memory(monkeypatch):
    seen = []
    real = device.cuda_backend.run_plan
    monkeypatch.setattr(device.cuda_backend, "run_plan",
                        lambda plan, arrays, dev: seen.append(arrays) or real(plan, arrays, dev))
    x, w, b = on_cuda(*operands(2, torch.float32, memory_format=torch.channels_last))
    y = OP(x, w, b, *params(2))
    xa, wa, ba, ya = seen[-1]  # x taken as it is: float32 channels-last on cuDNN's rule
    assert (xa.data.ptr, wa.data.ptr, ba.data.ptr, ya.data.ptr) == \
        (x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr())
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_no_cupy_pool_and_no_host_synchronisation():
    import cupy

    x, w, b = on_cuda(*operands(2, torch.float32, requires_grad=True))
    p = params(2)
    OP(x, w, b, *p).sum().backward()  # compiles the kernels
    pool = cupy.get_default_memory_pool()
    before = (pool.used_bytes(), pool.total_bytes())
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(200_000_000)  # keeps the stream busy: a host sync would wait
        y = OP(x, w, b, *p)
        grads = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
        queued = not stream.query()  # the call returned before the stream ran it
    stream.synchronize()
    assert queued
    assert (pool.used_bytes(), pool.total_bytes()) == before
    expected = torch_oracle(*(t.detach().cpu().requires_grad_() for t in (x, w, b)), *p)
    torch.testing.assert_close(y.cpu(), expected)
    assert all(g.is_cuda for g in grads)


def test_runs_on_pytorchs_current_stream():
    x, w, b = on_cuda(*operands(2, torch.float32))
    fresh = torch.randn_like(x)
    p = params(2)
    OP(x, w, b, *p)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(100_000_000)
        x.copy_(fresh)  # queued behind the sleep: only a kernel on this stream sees it
        y = OP(x, w, b, *p)
    stream.synchronize()
    torch.testing.assert_close(y.cpu(), torch_oracle(fresh.cpu(), w.cpu(), b.cpu(), *p))


@pytest.mark.parametrize("dtype, channels_last", [(torch.float32, False),
                                                  (torch.float16, True)])
def test_cuda_graph_capture_and_replay(dtype, channels_last):
    fmt = torch.channels_last if channels_last else None
    x, w, b = on_cuda(*operands(2, torch.float32, memory_format=fmt))
    x, w, b = (t.to(dtype) for t in (x, w, b))
    p = params(2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compiles the kernel before the capture
        OP(x, w, b, *p)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = OP(x, w, b, *p)
    fresh = torch.randn(x.shape, device="cuda", dtype=dtype).contiguous(
        memory_format=fmt or torch.contiguous_format)
    x.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, OP(fresh, w, b, *p), rtol=0, atol=0)
    torch.testing.assert_close(y.double().cpu(), torch_oracle(
        *(t.double().cpu() for t in (fresh, w, b)), *p), rtol=1e-2, atol=1e-2)


def test_graphed_training_step():
    """Forward and backward captured (make_graphed_callables warms up first)."""
    torch.manual_seed(0)
    layer = gtt.ConvTranspose2d(4, 2, 3, stride=2, padding=1).cuda().double()
    reference = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1).cuda().double()
    reference.load_state_dict(layer.state_dict())
    sample = torch.randn(2, 4, 5, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(layer, (sample,))
    for _ in range(2):
        for m in (layer, reference):
            m.zero_grad()
        data = torch.randn_like(sample)
        ours, theirs = data.clone().requires_grad_(), data.clone().requires_grad_()
        graphed(ours).square().sum().backward()
        reference(theirs).square().sum().backward()
        torch.testing.assert_close(ours.grad, theirs.grad)
        for a, e in zip(layer.parameters(), reference.parameters()):
            torch.testing.assert_close(a.grad, e.grad)


def test_compile_on_cuda():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              gtt.ConvTranspose2d(4, 2, 4, stride=2, padding=1)).cuda().double()
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 5, 5, device="cuda", dtype=torch.float64)
    torch.testing.assert_close(compiled(x), net(x))
    program = torch.export.export(net, (x,))
    torch.testing.assert_close(program.module()(x), net(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_types_on_cuda(dtype):
    c_in, kernel, rank = 16, 3, 2
    x, w, b = operands(rank, torch.float64, c_in=c_in, c_out_g=3, size=4, kernel=kernel)
    x, w, b = (t.to(dtype) for t in (x, w, b))
    p = params(rank, padding=0, output_padding=0)
    dy = torch.randn(torch_oracle(x.double(), w.double(), None, *p).shape,
                     dtype=torch.float64).to(dtype)
    y = OP(*on_cuda(x, w, b), *p).cpu()
    dx, dw, db = (t.cpu() for t in BACKWARD(*on_cuda(dy, x, w), *p, [True, True, True]))
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
        # Fused multiply-adds round less often than this bound assumes.
        error = (got.double() - ref.detach()).abs()
        assert (error <= half_bound(dtype, ref.detach(), mag.detach(), n)).all()


def test_non_contiguous_and_empty_inputs():
    x, w, b = operands(2, torch.float32, size=6)
    p = params(2)
    xc, wc, bc = on_cuda(x, w, b)
    torch.testing.assert_close(OP(xc[:, :, ::2, 1:], wc, bc, *p).cpu(),
                               torch_oracle(x[:, :, ::2, 1:], w, b, *p))
    empty = OP(xc[:0], wc, bc, *p)
    assert empty.shape == torch_oracle(x[:0], w, b, *p).shape and empty.is_cuda
