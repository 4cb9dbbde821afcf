"""gpu_tconv.torch: drop-in functions and modules against torch.nn, gradcheck, training,
and zero-copy interop of the array API."""

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

import gpu_tconv
import gpu_tconv.torch as gtt
from conftest import requires_gpu
from gpu_tconv import dispatch

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, requires_gpu])]

CASES = [  # rank, C_in, C_out/groups, size, kernel, params
    (1, 4, 3, (7,), (3,), dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)),
    (2, 3, 2, (4, 5), (3, 2), dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0),
                                   groups=1, dilation=(1, 2))),
    (3, 2, 2, (3, 3, 2), (2, 2, 3), dict(stride=2, padding=0, output_padding=0, groups=2,
                                         dilation=1)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rank, c_in, c_out_g, size, kernel, params", CASES)
def test_gradcheck_float64(device, rank, c_in, c_out_g, size, kernel, params):
    torch.manual_seed(0)
    x = torch.randn(2, c_in, *size, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(c_in, c_out_g, *kernel, dtype=torch.float64, device=device,
                    requires_grad=True)
    b = torch.randn(c_out_g * params["groups"], dtype=torch.float64, device=device,
                    requires_grad=True)
    fn = getattr(gtt, f"conv_transpose{rank}d")
    assert gradcheck(lambda *a: fn(*a, **params), (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rank, c_in, c_out_g, size, kernel, params", CASES)
def test_modules_match_torch_nn_outputs_and_gradients(device, rank, c_in, c_out_g, size,
                                                       kernel, params):
    ours_cls, theirs_cls = (getattr(gtt, f"ConvTranspose{rank}d"),
                            getattr(torch.nn, f"ConvTranspose{rank}d"))
    args = (c_in, c_out_g * params["groups"], kernel)
    torch.manual_seed(1)
    theirs = theirs_cls(*args, **params).double().to(device)
    torch.manual_seed(1)
    ours = ours_cls(*args, **params).double().to(device)
    # Same initialization from the same seed, same state_dict keys.
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    x = torch.randn(3, c_in, *size, dtype=torch.float64, device=device)
    base = theirs(x)
    # output_size, as the modules take it: the smallest size (without output padding).
    ops = np.broadcast_to(params["output_padding"], (rank,))
    wanted = [n - int(op) for n, op in zip(base.shape[2:], ops)]
    outputs = [m(x.clone().requires_grad_(), output_size=wanted) for m in (ours, theirs)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)
    dy = torch.randn_like(outputs[1])
    for out in outputs:
        out.backward(dy)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)


def test_training_steps_give_the_same_loss_curve():
    def model(cls):
        torch.manual_seed(2)
        return torch.nn.Sequential(cls(8, 4, 4, stride=2, padding=1), torch.nn.ReLU(),
                                   cls(4, 1, 4, stride=2, padding=1)).double()

    torch.manual_seed(3)
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    target = torch.randn(4, 1, 20, 20, dtype=torch.float64)
    curves = []
    for cls in (gtt.ConvTranspose2d, torch.nn.ConvTranspose2d):
        net = model(cls)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        losses = []
        for _ in range(8):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0][-1] < curves[0][0]  # it learns
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-10)


def test_other_padding_modes_are_refused():
    module = gtt.ConvTranspose2d(2, 2, 3)
    module.padding_mode = "reflect"  # PyTorch's constructor refuses it already
    with pytest.raises(ValueError, match="zeros"):
        module(torch.ones(1, 2, 3, 3))


def test_cpu_tensors_are_taken_without_a_copy():
    t = torch.randn(2, 3, 4)
    view = dispatch._as_array(t)
    assert isinstance(view, np.ndarray) and np.shares_memory(view, t.numpy())
    y = gpu_tconv.conv_transpose1d(t, torch.ones(3, 1, 2), stride=2, backend="numpy")
    np.testing.assert_allclose(y, torch.nn.functional.conv_transpose1d(
        t, torch.ones(3, 1, 2), stride=2).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@requires_gpu
def test_cuda_tensors_are_taken_without_a_copy():
    t = torch.randn(2, 3, 4, device="cuda")
    view = dispatch._as_array(t)
    assert view.data.ptr == t.data_ptr()
