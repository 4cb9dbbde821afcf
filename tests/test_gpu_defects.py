"""Defects of the CUDA host code that CPU emulation alone would not show, each proven
here without a GPU (stand-ins for CuPy, PyTorch's CUDA tensors and its allocator)
and, where one is usable, on the GPU itself."""

import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gpu_tconv
import stand_in_cupy
from conftest import requires_gpu
from gpu_tconv import cuda_backend, dispatch, launch
from gpu_tconv.geometry import geometry_from_shapes
from oracles import TORCH_TRANSPOSED, Problem, problems


# --- CuPy's disk cache and included files -------------------------------------------------

def test_a_change_to_an_included_file_changes_the_compiled_text(tmp_path):
    """CuPy keys its cache of cubins on the source text and options: the text it gets
    must change when a file that a kernel includes changes."""
    folder = tmp_path / "kernels"
    shutil.copytree(launch.kernel_source_path().parent, folder)
    for name in ("conv_transpose_tiled.cu", "col2im.cu"):
        before = launch.kernel_code(str(folder / name), (("TCONV_BLOCK", 128),))
        assert '#include "conv_transpose.cu"' not in before
        assert "conv_transpose_gather" in before  # the included file, inlined
        assert "#include <cuda_fp16.h>" in before  # system headers stay includes
    included = folder / "conv_transpose.cu"
    before = launch.kernel_code(str(folder / "conv_transpose_tiled.cu"))
    included.write_text(included.read_text().replace("Acc acc = 0;", "Acc acc = 0; ", 1))
    assert launch.kernel_code(str(folder / "conv_transpose_tiled.cu")) != before


def test_inlined_files_keep_their_line_numbers(tmp_path):
    (tmp_path / "inner.cuh").write_text("int inner_a;\nint inner_b;\n")
    (tmp_path / "outer.cu").write_text('int outer_a;\n#include "inner.cuh"\n'
                                       '#include "inner.cuh"\nint outer_b;\n')
    lines = launch.kernel_code(str(tmp_path / "outer.cu")).splitlines()
    assert lines.count("int inner_a;") == 1  # each file once
    after = lines.index("int outer_b;")
    assert lines[after - 1] == '#line 4 "outer.cu"'
    assert lines[lines.index("int inner_a;") - 1] == '#line 1 "inner.cuh"'


# --- PyTorch tensors that require grad -------------------------------------------------------

class _CudaTensorThatRequiresGrad:
    """What PyTorch's CUDA tensor does when it requires grad: its CUDA array interface
    raises RuntimeError (so ``hasattr`` does too) until it is detached."""

    requires_grad = True

    def __init__(self, detached):
        self._detached = detached

    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad. "
                           "If gradients aren't required, use var.detach()")

    def detach(self):
        return self._detached


def test_tensors_that_require_grad_are_read_detached():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 4))
    layer = torch.nn.ConvTranspose2d(3, 2, 3, stride=2, dtype=torch.float64)
    assert layer.weight.requires_grad
    expected = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), layer.weight.detach(),
                                                    layer.bias.detach(), stride=2).numpy()
    for backend in ("numpy", "emulated"):
        y = gpu_tconv.conv_transpose2d(torch.from_numpy(x).requires_grad_(), layer.weight,
                                       layer.bias, stride=2, backend=backend)
        assert isinstance(y, np.ndarray)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    w = rng.standard_normal((3, 2, 3, 3))
    stand_in = _CudaTensorThatRequiresGrad(w)
    assert dispatch._as_array(stand_in) is w
    np.testing.assert_allclose(gpu_tconv.conv_transpose2d(x, stand_in, backend="numpy"),
                               gpu_tconv.conv_transpose2d(x, w, backend="numpy"))


@requires_gpu
def test_cuda_tensors_that_require_grad_run_on_the_gpu():
    import cupy

    layer = torch.nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1).cuda()
    x = torch.randn(2, 4, 6, 7, device="cuda", requires_grad=True)
    y = gpu_tconv.conv_transpose2d(x, layer.weight, layer.bias, stride=2, padding=1)
    assert isinstance(y, cupy.ndarray)
    with torch.backends.cudnn.flags(allow_tf32=False):
        expected = layer(x).detach()
    np.testing.assert_allclose(y.get(), expected.cpu().numpy(), rtol=1e-4, atol=1e-4)


# --- None and other non-arrays ------------------------------------------------------------

@pytest.mark.parametrize("name, value", [("x", None), ("weight", None), ("x", "abc"),
                                         ("weight", object()), ("bias", "abc"),
                                         ("bias", {"a": 1})])
def test_non_arrays_are_a_type_error_naming_the_parameter(name, value):
    args = dict(x=np.ones((1, 2, 3)), weight=np.ones((2, 1, 2)), bias=None)
    args[name] = value
    with pytest.raises(TypeError, match=rf"^{name} must be an array"):
        gpu_tconv.conv_transpose1d(**args)


@pytest.mark.parametrize("name", ["grad_output", "x", "weight"])
def test_non_arrays_in_the_backward_pass_are_a_type_error_naming_the_parameter(name):
    args = dict(grad_output=np.ones((1, 1, 4)), x=np.ones((1, 2, 3)), weight=np.ones((2, 1, 2)))
    args[name] = None
    with pytest.raises(TypeError, match=rf"^{name} must be an array"):
        gpu_tconv.conv_transpose_backward(**args)


# --- the free-memory check --------------------------------------------------------------

class _TorchCuda:
    """PyTorch's caching allocator as ``torch.cuda`` reports it."""

    def __init__(self, reserved, allocated):
        self.reserved, self.allocated, self.emptied = reserved, allocated, 0

    def is_initialized(self):
        return True

    def memory_reserved(self, device):
        return self.reserved

    def memory_allocated(self, device):
        return self.allocated

    def empty_cache(self):
        self.emptied += 1
        stand_in_cupy.FREE_BYTES += self.reserved - self.allocated
        self.reserved = self.allocated


def test_free_memory_counts_cupys_pool_and_pytorchs_cache(monkeypatch):
    monkeypatch.setattr(stand_in_cupy, "FREE_BYTES", 1000)
    monkeypatch.setattr(stand_in_cupy, "POOL_FREE_BYTES", 300)
    monkeypatch.delitem(sys.modules, "torch")  # a process that does not use PyTorch
    assert cuda_backend._free_bytes(stand_in_cupy) == 1300
    torch_cuda = _TorchCuda(reserved=5000, allocated=1000)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=torch_cuda))
    assert cuda_backend._free_bytes(stand_in_cupy) == 1300 + 4000
    # PyTorch keeps its cache while the driver and CuPy's pool suffice...
    cuda_backend._make_room(stand_in_cupy, 1300)
    assert torch_cuda.emptied == 0
    # ... and returns it when they do not.
    cuda_backend._make_room(stand_in_cupy, 2000)
    assert torch_cuda.emptied == 1 and stand_in_cupy.FREE_BYTES == 5000
    assert cuda_backend._free_bytes(stand_in_cupy) == 5300


def test_a_warm_pool_neither_chunks_nor_fails(monkeypatch):
    """The driver sees the pool's free blocks as used: counting them, a call that fits
    runs whole."""
    monkeypatch.setattr(stand_in_cupy, "FREE_BYTES", 100)
    monkeypatch.setattr(stand_in_cupy, "POOL_FREE_BYTES", 10_000)
    monkeypatch.delitem(sys.modules, "torch")
    free = cuda_backend._free_bytes(stand_in_cupy)
    assert cuda_backend.batch_chunk(8, per_sample=1000, fixed=0, free=free) == 8


# --- the weight gradient, split over many blocks ----------------------------------------

def test_the_weight_gradient_of_a_dcgan_output_layer_fills_a_large_gpu():
    g = geometry_from_shapes((64, 64, 32, 32), (64, 3, 4, 4), stride=2, padding=1)
    chunks, size = launch.grad_weight_split(g)
    assert chunks > 1 and (chunks - 1) * size < 64 * 32 * 32 <= chunks * size
    partial = launch.plan(g, np.float32, kind="grad_weight_partial")
    assert partial.grid[0] >= 4 * 132  # blocks, on a GPU of 132 SMs
    combine = launch.plan(g, np.float32, kind="grad_weight_combine")
    assert [int(v) for v in combine.scalars] == [64 * 3 * 16, chunks]
    assert launch.grad_weight_split(g) == (chunks, size)  # fixed by the geometry
    # A large weight already has a thread per element to spare: one pass.
    big = geometry_from_shapes((64, 512, 4, 4), (512, 256, 4, 4), stride=2, padding=1)
    assert launch.grad_weight_split(big)[0] == 1


def _torch_weight_gradient(p: Problem, dy):
    x = torch.from_numpy(p.x.astype(np.float64))
    w = torch.from_numpy(p.weight.astype(np.float64)).requires_grad_()
    TORCH_TRANSPOSED[p.rank](x, w, None, **p.params).backward(torch.from_numpy(dy.astype(np.float64)))
    return w.grad.numpy()


@settings(max_examples=15)
@given(p=problems(bias=False), dtype=st.sampled_from([np.float64, np.float32, np.float16]),
       min_chunk=st.sampled_from([1, 3, 16]), last=st.booleans())
def test_split_weight_gradient_matches_autograd_and_repeats_bit_for_bit(p, dtype, min_chunk,
                                                                        last):
    p = p.astype(dtype)
    with pytest.MonkeyPatch.context() as patch:  # small chunks: many, in every dimension
        patch.setattr(launch, "GRAD_WEIGHT_MIN_CHUNK", min_chunk)
        g = geometry_from_shapes(p.x.shape, p.weight.shape, **p.params)
        chunks, _ = launch.grad_weight_split(g)
        dy = np.random.default_rng(2).standard_normal(g.out_shape).astype(dtype)
        x, dy_in, layout = p.x, dy, "channels_first"
        if last:
            x, dy_in = (np.ascontiguousarray(np.moveaxis(a, 1, -1)) for a in (p.x, dy))
            layout = "channels_last"
        runs = [gpu_tconv.conv_transpose_backward(dy_in, x, p.weight, **p.params, layout=layout,
                                                  needs=("weight",), backend="emulated")[1]
                for _ in range(2)]
    assert runs[0].tobytes() == runs[1].tobytes()
    expected = _torch_weight_gradient(p, dy)
    tol = {np.float64: 1e-10, np.float32: 1e-4, np.float16: 3e-2}[dtype]
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(runs[0].astype(np.float64), expected, rtol=tol, atol=tol * scale)
    assert chunks >= 1


def test_gradients_and_temporaries_come_from_the_callers_allocator(monkeypatch):
    monkeypatch.setattr(launch, "GRAD_WEIGHT_MIN_CHUNK", 4)
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((3, 2, 3, 3))
    g = geometry_from_shapes(x.shape, w.shape, stride=2)
    dy = rng.standard_normal(g.out_shape)
    chunks, _ = launch.grad_weight_split(g)
    assert chunks > 1
    allocated = []

    def empty(shape, dtype):
        allocated.append((tuple(shape), np.dtype(dtype)))
        return np.full(shape, np.nan, dtype)

    from gpu_tconv import emulated_backend

    dx, dw, db = dispatch._kernel_gradients(np, emulated_backend.run_plan, dy, x, w, g,
                                            dispatch.NEEDS, empty=empty)
    assert allocated == [(x.shape, x.dtype), (w.shape, w.dtype), ((chunks, *w.shape), x.dtype),
                         ((g.c_out,), x.dtype)]
    expected = gpu_tconv.conv_transpose_backward(dy, x, w, stride=2, backend="numpy")
    for ours, theirs in zip((dx, dw, db), expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


@requires_gpu
def test_split_weight_gradient_on_the_gpu_is_deterministic():
    import cupy

    rng = np.random.default_rng(4)
    x = cupy.asarray(rng.standard_normal((16, 32, 16, 16)).astype(np.float32))
    w = cupy.asarray(rng.standard_normal((32, 3, 4, 4)).astype(np.float32))
    g = geometry_from_shapes(x.shape, w.shape, stride=2, padding=1)
    assert launch.grad_weight_split(g)[0] > 1
    dy = cupy.asarray(rng.standard_normal(g.out_shape).astype(np.float32))
    runs = [gpu_tconv.conv_transpose_backward(dy, x, w, stride=2, padding=1,
                                              needs=("weight",))[1].get() for _ in range(3)]
    assert runs[0].tobytes() == runs[1].tobytes() == runs[2].tobytes()
    expected = gpu_tconv.conv_transpose_backward(dy.get(), x.get(), w.get(), stride=2, padding=1,
                                                 needs=("weight",), backend="numpy")[1]
    np.testing.assert_allclose(runs[0], expected, rtol=1e-4, atol=1e-3)
