"""The kernel variants, proven without a GPU: each one's numbers through the emulated
backend (every dtype and index width), its launch plan, and the heuristic that will
choose between them."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings

import gpu_tconv
from gpu_tconv import emulated_backend, launch, variants
from gpu_tconv.geometry import geometry_from_shapes
from gpu_tconv.reference import conv_transpose_reference
from oracles import SPECIALIZATIONS, Problem, assert_close, problems

# The CUDA-core tiled kernels (every dtype); the tensor-core one has tests of its own.
TILED = [name for name, v in variants.VARIANTS.items()
         if v.tiled and not isinstance(v, variants.WmmaVariant)]
DTYPES = [np.float64, np.float32, np.float16]
CASES = [(name, dtype, bits, SPECIALIZATIONS[i % len(SPECIALIZATIONS)])
         for name in TILED
         for i, (dtype, bits) in enumerate((d, b) for d in DTYPES for b in (32, 64))]


def _geometry(p: Problem):
    return geometry_from_shapes(p.x.shape, p.weight.shape,
                                None if p.bias is None else p.bias.shape, **p.params)


@pytest.mark.parametrize("name, dtype, bits, spec", CASES,
                         ids=[f"{n}-{np.dtype(d).name}-{b}" for n, d, b, _ in CASES])
def test_every_variant_matches_the_reference(name, dtype, bits, spec):
    # Up to 10 channels per group: partial and several output-channel tiles (4 or 8
    # wide) and input-channel chunks (8 deep) of shared weights.
    fixed = None if not variants.VARIANTS[name].specialized else spec

    @settings(max_examples=8)
    @given(p=problems(max_channels=10, kernel_stride_dilation=fixed))
    def check(p: Problem):
        p = p.astype(dtype)
        y = emulated_backend.conv_transpose(p.x, p.weight, p.bias, _geometry(p),
                                            index_bits=bits, variant=name)
        assert_close(y, conv_transpose_reference(p.x, p.weight, p.bias, **p.params), p, dtype)

    check()


@pytest.mark.parametrize("name", TILED)
def test_grid_stride_loop_covers_blocks_beyond_the_grid(name, monkeypatch):
    # Two blocks for dozens of block tiles: every block loops, and in the shared-memory
    # variant every thread still meets every barrier.
    monkeypatch.setattr(launch, "MAX_BLOCKS", 2)
    rng = np.random.default_rng(21)
    x, w = rng.standard_normal((2, 9, 5, 6)), rng.standard_normal((9, 10, 3, 4))
    kw = dict(stride=(2, 1), padding=1, dilation=(1, 2))
    g = geometry_from_shapes(x.shape, w.shape, **kw)
    plan = launch.plan(g, x.dtype, variant=name)
    assert plan.grid == (2, 1, 1) and variants.VARIANTS[name].blocks(g) >= 8
    y = emulated_backend.conv_transpose(x, w, None, g, variant=name)
    np.testing.assert_allclose(y, conv_transpose_reference(x, w, **kw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("name", ["phase", "phase_smem"])
def test_vector_access_at_unaligned_addresses(name, dtype):
    """Operands one element past an aligned address: the pair loads and stores fall
    back to scalar accesses (UBSan would report a misaligned vector access) and the
    result is the aligned one."""
    rng = np.random.default_rng(22)
    x = rng.standard_normal((1, 3, 4, 8)).astype(dtype)
    w = rng.standard_normal((3, 4, 3, 3)).astype(dtype)
    g = geometry_from_shapes(x.shape, w.shape, padding=1)  # stride 1: adjacent outputs
    plan = launch.plan(g, dtype, variant=name)
    aligned = emulated_backend.conv_transpose(x, w, None, g, variant=name)
    x_buffer = np.zeros(x.size + 1, dtype)
    x_buffer[1:] = x.ravel()
    y_buffer = np.full(aligned.size + 1, np.nan, dtype)
    emulated_backend.run_plan(plan, (x_buffer.ctypes.data + x.itemsize, w, None,
                                     y_buffer.ctypes.data + x.itemsize))
    assert y_buffer[1:].tobytes() == aligned.ravel().tobytes()


def test_auto_runs_the_heuristic_and_simple_stays_selectable():
    assert variants.AUTO_USES_HEURISTIC is True
    for x_shape, w_shape, kw in [((8, 64, 16, 16), (64, 32, 4, 4), dict(stride=2, padding=1)),
                                 ((1, 21, 64, 64), (21, 1, 16, 16), dict(stride=8, groups=21))]:
        g = geometry_from_shapes(x_shape, w_shape, **kw)
        assert launch.plan(g, np.float32).variant == variants.choose(g, np.float32) != "simple"
        simple = launch.plan(g, np.float32, variant="simple")
        assert simple.variant == "simple"
        assert simple.kernel == launch.kernel_expression(np.float32, 32, channels_last=False)


def test_the_switch_hands_auto_back_to_the_default(monkeypatch):
    monkeypatch.setattr(variants, "AUTO_USES_HEURISTIC", False)
    g = geometry_from_shapes((8, 64, 16, 16), (64, 32, 4, 4), stride=2, padding=1)
    assert launch.plan(g, np.float32).variant == variants.DEFAULT == "simple"


def test_public_functions_take_the_variant_by_name(monkeypatch):
    rng = np.random.default_rng(23)
    x, w = rng.standard_normal((1, 3, 5, 4)), rng.standard_normal((3, 2, 3, 3))
    chosen = []
    real_plan = launch.plan
    monkeypatch.setattr(launch, "plan", lambda *a, **k: chosen.append(real_plan(*a, **k).variant)
                        or real_plan(*a, **k))
    expected = conv_transpose_reference(x, w, stride=2)
    for name in ("simple", "phase_generic", "auto"):
        y = gpu_tconv.conv_transpose2d(x, w, stride=2, backend="emulated", variant=name)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    assert chosen == ["simple", "phase_generic", "phase_generic"]  # a tiny call: generic
    # The numpy backend has no kernels: it ignores a valid name and refuses an unknown one.
    np.testing.assert_allclose(gpu_tconv.conv_transpose2d(x, w, stride=2, backend="numpy",
                                                          variant="phase"), expected, rtol=1e-12)
    for backend in ("numpy", "emulated"):
        with pytest.raises(ValueError, match="variant"):
            gpu_tconv.conv_transpose2d(x, w, backend=backend, variant="fastest")
        with pytest.raises(TypeError, match="variant"):
            gpu_tconv.conv_transpose2d(x, w, backend=backend, variant=None)
    with pytest.raises(ValueError, match="phase_generic"):  # inapplicable: before any work
        gpu_tconv.conv_transpose1d(x[0], rng.standard_normal((5, 2, 16)), backend="emulated",
                                   variant="phase")


@pytest.mark.parametrize("x_shape, w_shape, kw, dtype, expected", [
    # DCGAN middle layer: many channels on both sides.
    ((8, 64, 16, 16), (64, 32, 4, 4), dict(stride=2, padding=1), np.float32, "phase_smem"),
    # FCN bilinear upsampling: depthwise.
    ((1, 21, 64, 64), (21, 1, 16, 16), dict(stride=8, padding=4, groups=21), np.float16,
     "phase_narrow"),
    # DCGAN output layer: 3 channels out.
    ((8, 64, 32, 32), (64, 3, 4, 4), dict(stride=2, padding=1), np.float32, "phase_narrow"),
    # Few input channels.
    ((8, 4, 16, 16), (4, 16, 3, 3), {}, np.float32, "phase"),
    # 125 taps of float64 weights per channel tile: more shared memory than a block has.
    ((1, 8, 6, 6, 6), (8, 8, 5, 5, 5), {}, np.float64, "phase"),
    # 16 taps along the row: too many to unroll.
    ((1, 8, 32), (8, 8, 16), {}, np.float32, "phase_generic"),
    # Too little work for a specialized kernel to pay for its compile.
    ((1, 4, 6, 6), (4, 8, 3, 3), {}, np.float32, "phase_generic"),
    ((1, 8, 6, 6), (8, 8, 3, 3), {}, np.float32, "phase_smem"),  # whatever the size
])
def test_heuristic(x_shape, w_shape, kw, dtype, expected):
    g = geometry_from_shapes(x_shape, w_shape, **kw)
    assert variants.choose(g, dtype) == expected
    assert launch.plan(g, dtype, variant=expected).variant == expected  # it is applicable


def test_inapplicable_variants_are_refused():
    g = geometry_from_shapes((1, 8, 32), (8, 8, 16))
    with pytest.raises(ValueError, match="unknown|one of"):
        launch.plan(g, np.float32, variant="fastest")
    with pytest.raises(ValueError, match="phase_generic"):
        launch.plan(g, np.float32, variant="phase")
    big = geometry_from_shapes((1, 8, 6, 6, 6), (8, 8, 5, 5, 5))
    with pytest.raises(ValueError, match="shared memory"):
        launch.plan(big, np.float64, variant="phase_smem")
    assert launch.plan(big, np.float32, variant="phase_smem").block_sync


def test_plan_carries_the_compile_time_inputs():
    g = geometry_from_shapes((2, 4, 5, 6), (4, 6, 3, 4), stride=(1, 2), dilation=(2, 1))
    fixed = dict(launch.plan(g, np.float16, variant="phase").defines)
    assert fixed["TCONV_COUT_TILE"] == 4 and fixed["TCONV_PIXELS"] == 2
    assert [fixed[f"TCONV_{a}{i}"] for a in "KSD" for i in range(3)] == [1, 3, 4, 1, 1, 2, 1, 2, 1]
    generic = launch.plan(g, np.float16, variant="phase_generic")
    assert not any(name.startswith(("TCONV_K", "TCONV_S", "TCONV_D")) for name, _ in generic.defines)
    assert generic.kernel == "gpu_tconv::conv_transpose_phase<__half, int>"
    assert generic.source == "conv_transpose_tiled.cu" and not generic.block_sync
    smem = launch.plan(g, np.float16, variant="phase_smem", index_bits=64)
    assert smem.block_sync and smem.shared_bytes == 0 and smem.kernel.endswith("<__half, long long>")
    assert launch.plan(g, np.float16, variant="simple").defines == ()
    code = launch.kernel_code(smem.source, smem.defines)
    assert code.startswith("#define TCONV_BLOCK 128\n") and '#line 1 "conv_transpose_tiled.cu"' in code


def test_emulator_builds_once_per_set_of_compile_time_inputs(emulator_builds):
    x, w = np.ones((1, 2, 5)), np.ones((2, 3, 3))
    for stride in (1, 2, 1, 2):  # two specializations, each built once
        g = geometry_from_shapes(x.shape, w.shape, stride=stride)
        y = emulated_backend.conv_transpose(x, w, None, g, variant="phase")
        np.testing.assert_array_equal(y, conv_transpose_reference(x, w, stride=stride))
    assert len(emulator_builds) == 2 and emulator_builds[0] != emulator_builds[1]
    assert {"-DTCONV_S2=1", "-DTCONV_S2=2"} <= {a for b in emulator_builds for a in b}


def test_channels_last_runs_the_simple_kernel():
    g = geometry_from_shapes((2, 8, 8, 16), (16, 8, 4, 4), stride=2, padding=1,
                             layout="channels_last")
    assert variants.choose(g, np.float32) == "simple"
    assert launch.plan(g, np.float32).kernel.endswith(", true>")
    with pytest.raises(ValueError, match="channels-first"):
        launch.plan(g, np.float32, variant="phase")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_size_dependent_choices_give_the_same_bits(dtype):
    """phase_generic, phase and phase_narrow sum in one order: a batch chunk or a Dask
    block that the heuristic gives another of them matches the whole bit for bit."""
    rng = np.random.default_rng(24)
    x = rng.standard_normal((2, 5, 6, 7)).astype(dtype)
    w = rng.standard_normal((5, 3, 4, 3)).astype(dtype)
    g = geometry_from_shapes(x.shape, w.shape, stride=(2, 1), padding=1, dilation=(1, 2))
    results = {name: emulated_backend.conv_transpose(x, w, None, g, variant=name).tobytes()
               for name in ("phase_generic", "phase", "phase_narrow")}
    assert len(set(results.values())) == 1
    big = geometry_from_shapes((64, 5, 32, 32), (5, 3, 4, 4), stride=2, padding=1)
    assert variants.choose(big, dtype) == "phase_narrow"
    assert variants.choose(dataclasses.replace(big, batch=1), dtype) == "phase_generic"
