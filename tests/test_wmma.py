"""The tensor-core kernel (variant ``wmma``), proven on the CPU: the unmodified source on
the emulated backend, whose WMMA stand-in carries the GPU's rounding, against float64
oracles of the rounded inputs with error bounds derived from the formats."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_tconv import emulated_backend, formats, launch, variants
from gpu_tconv.geometry import geometry_from_shapes
from gpu_tconv.reference import conv_transpose_reference
from oracles import Problem, problems

ml_dtypes = pytest.importorskip("ml_dtypes")
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
# (dtype of the arrays, precision, unit roundoff of the result's format)
KINDS = {"float16": (np.dtype(np.float16), "highest", 2.0**-11),
         "bfloat16": (BFLOAT16, "highest", 2.0**-8),
         "tf32": (np.dtype(np.float32), "tf32", 2.0**-24)}
FLOAT32_ROUNDOFF = 2.0**-24
# Channels per group below, at and across one 16-wide fragment.
CHANNELS = st.sampled_from([1, 3, 16, 17])


def _geometry(p: Problem):
    return geometry_from_shapes(p.x.shape, p.weight.shape,
                                None if p.bias is None else p.bias.shape, **p.params)


def _rounded(p: Problem, dtype, precision) -> Problem:
    """``p`` in ``dtype``, and for TF32 with the operands of the products rounded as the
    tensor cores see them; the float64 oracle takes these values exactly."""
    q = p.astype(dtype)
    if formats.uses_tf32(dtype, precision):
        return Problem(q.x, q.weight, q.bias, q.params)
    return q


def _oracle_operands(q: Problem, dtype, precision):
    x, w = q.x, q.weight
    if formats.uses_tf32(dtype, precision):
        x, w = formats.round_to_tf32(x), formats.round_to_tf32(w)
    as64 = lambda a: None if a is None else np.asarray(a, np.float32).astype(np.float64)
    return as64(x), as64(w), as64(q.bias)


def assert_within_format_bound(y, q: Problem, dtype, precision, unit):
    """|y - exact(rounded inputs)| <= unit*|exact| + 2*K*2**-24*sum|x*w| + tiny: one
    rounding of the result to its format, float32 accumulation of K terms (the taps
    of a phase times the input channels, and the bias)."""
    x, w, b = _oracle_operands(q, dtype, precision)
    exact = conv_transpose_reference(x, w, b, **q.params)
    scale = conv_transpose_reference(np.abs(x), np.abs(w), None if b is None else np.abs(b),
                                     **q.params)
    terms = q.weight.shape[0] // q.params["groups"] * math.prod(q.weight.shape[2:]) + 1
    tiny = float(ml_dtypes.finfo(dtype).smallest_subnormal)
    bound = unit * np.abs(exact) + 2 * terms * FLOAT32_ROUNDOFF * scale + tiny
    error = np.abs(np.asarray(y, np.float32).astype(np.float64) - exact)
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert np.all(error <= bound), (f"error {error[worst]} > bound {bound[worst]} at {worst}",
                                    q.params, q.x.shape, q.weight.shape)


@pytest.mark.parametrize("kind", list(KINDS))
def test_wmma_matches_the_oracle_of_its_rounded_inputs(kind):
    dtype, precision, unit = KINDS[kind]

    @settings(max_examples=8)
    @given(p=problems(channels=CHANNELS, max_in=4, max_batch=2))
    def check(p: Problem):
        q = _rounded(p, dtype, precision)
        y = emulated_backend.conv_transpose(q.x, q.weight, q.bias, _geometry(q), variant="wmma",
                                            precision=precision)
        assert y.dtype == dtype
        assert_within_format_bound(y, q, dtype, precision, unit)

    check()


def test_tf32_carries_the_tensor_cores_rounding():
    """A TF32 run is measurably farther from the float32 answer than from the answer of
    its TF32-rounded inputs (on the emulated kernel and on the NumPy backend), and
    precision="highest" is not."""
    import gpu_tconv

    rng = np.random.default_rng(50)
    x = rng.standard_normal((1, 32, 4, 4)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    kw = dict(stride=2, padding=1)
    full = conv_transpose_reference(x.astype(np.float64), w.astype(np.float64), **kw)
    of_rounded = conv_transpose_reference(formats.round_to_tf32(x).astype(np.float64),
                                          formats.round_to_tf32(w).astype(np.float64), **kw)
    g = geometry_from_shapes(x.shape, w.shape, **kw)
    runs = {"emulated": emulated_backend.conv_transpose(x, w, None, g, variant="wmma",
                                                        precision="tf32"),
            "numpy": gpu_tconv.conv_transpose2d(x, w, **kw, precision="tf32", backend="numpy"),
            # A CUDA-core kernel (auto's default) gets TF32-rounded operands.
            "simple": gpu_tconv.conv_transpose2d(x, w, **kw, precision="tf32",
                                                 backend="emulated")}
    for name, y in runs.items():
        to_full, to_rounded = np.abs(y - full).max(), np.abs(y - of_rounded).max()
        assert to_full > 30 * to_rounded, (name, to_full, to_rounded)
        assert to_full > 1e-4 * np.abs(full).max()  # TF32's 2**-11, not float32's 2**-24
    highest = gpu_tconv.conv_transpose2d(x, w, **kw, backend="numpy")
    assert np.abs(highest - full).max() * 30 < np.abs(highest - of_rounded).max()


def test_bit_for_bit_reproducible_and_independent_of_the_grid(monkeypatch):
    rng = np.random.default_rng(51)
    x = rng.standard_normal((2, 20, 5, 3)).astype(np.float16)
    w = rng.standard_normal((20, 18, 3, 2)).astype(np.float16)
    kw = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    g = geometry_from_shapes(x.shape, w.shape, **kw)
    first = emulated_backend.conv_transpose(x, w, None, g, variant="wmma")
    assert variants.VARIANTS["wmma"].blocks(g) > 2
    monkeypatch.setattr(launch, "MAX_BLOCKS", 2)  # every block loops over several tiles
    assert launch.plan(g, x.dtype, variant="wmma").grid == (2, 1, 1)
    again = emulated_backend.conv_transpose(x, w, None, g, variant="wmma")
    assert first.tobytes() == again.tobytes()


def test_every_output_is_written_and_unreached_phases_are_the_bias():
    # Stride 5 over a kernel of 2 taps: residues 2, 3 and 4 of each dimension have no
    # tap, so their outputs are the bias exactly, computed without a reduction.
    rng = np.random.default_rng(52)
    x = rng.standard_normal((1, 17, 3, 2)).astype(BFLOAT16)
    w = rng.standard_normal((17, 16, 2, 2)).astype(BFLOAT16)
    b = rng.standard_normal(16).astype(BFLOAT16)
    kw = dict(stride=5, output_padding=3)
    g = geometry_from_shapes(x.shape, w.shape, b.shape, **kw)
    plan = launch.plan(g, x.dtype, variant="wmma")
    y = np.full(g.out_shape, np.nan, np.float32).astype(BFLOAT16)
    emulated_backend.run_plan(plan, (x, w, b, y))
    assert np.isfinite(y.astype(np.float32)).all()  # none left unwritten
    unreached = y[:, :, 2::5, :].astype(np.float32), y[:, :, :, 2::5].astype(np.float32)
    for part in unreached:
        np.testing.assert_array_equal(part, np.broadcast_to(
            b.astype(np.float32)[:, None, None], part.shape[1:])[None])
    assert_within_format_bound(y, Problem(x, w, b, dict(kw, groups=1)), BFLOAT16, "highest",
                               2.0**-8)


def test_kernel_equal_to_stride_is_a_pixel_shuffle_of_one_gemm_per_tap():
    rng = np.random.default_rng(53)
    x = rng.standard_normal((2, 16, 3, 4)).astype(np.float16)
    w = rng.standard_normal((16, 17, 2, 2)).astype(np.float16)
    g = geometry_from_shapes(x.shape, w.shape, stride=2)
    y = emulated_backend.conv_transpose(x, w, None, g, variant="wmma").astype(np.float64)
    # Output (2i + a, 2j + b) is x[:, :, i, j] times the tap (a, b): one product per tap.
    for a in range(2):
        for b in range(2):
            tap = np.einsum("ncij,cd->ndij", x.astype(np.float64), w[:, :, a, b].astype(np.float64))
            np.testing.assert_allclose(y[:, :, a::2, b::2], tap, rtol=2e-3, atol=2e-3)


def test_the_plan_declares_the_shared_memory_the_kernel_has():
    g = geometry_from_shapes((1, 16, 4), (16, 16, 3), stride=2)
    # The builds of the other tests, and one with 64-bit indices (wider pixel tables).
    for dtype, precision, bits in [(np.float16, "highest", 32), (BFLOAT16, "highest", 32),
                                   (np.float32, "tf32", 32), (np.float16, "highest", 64)]:
        plan = launch.plan(g, dtype, bits, variant="wmma", precision=precision)
        assert plan.block_sync and plan.block == (128, 1, 1)
        assert emulated_backend.static_shared_bytes(plan) == plan.static_shared_bytes
        assert plan.static_shared_bytes < launch_limits_default()


def launch_limits_default() -> int:
    from gpu_tconv import launch_limits

    return launch_limits.DEFAULT_SHARED_BYTES


def test_wmma_is_refused_where_it_cannot_run():
    g = geometry_from_shapes((1, 16, 4, 4), (16, 16, 3, 3))
    for dtype, precision in [(np.float64, "highest"), (np.float32, "highest"),
                             (np.float64, "tf32")]:
        with pytest.raises(ValueError, match="wmma"):
            launch.plan(g, dtype, variant="wmma", precision=precision)
    last = geometry_from_shapes((1, 4, 4, 16), (16, 16, 3, 3), layout="channels_last")
    with pytest.raises(ValueError, match="channels-first"):
        launch.plan(last, np.float16, variant="wmma")
    # sm_75 has float16 tensor cores only.
    assert launch.plan(g, np.float16, variant="wmma", arch=75).variant == "wmma"
    for dtype, precision in [(BFLOAT16, "highest"), (np.float32, "tf32")]:
        with pytest.raises(ValueError, match="compute capability"):
            launch.plan(g, dtype, variant="wmma", precision=precision, arch=75)
        assert launch.plan(g, dtype, variant="wmma", precision=precision, arch=80).variant == "wmma"


@pytest.mark.parametrize("x_shape, w_shape, kw, dtype, precision, arch, expected", [
    # DCGAN middle layer: float16 and bfloat16 on tensor cores.
    ((8, 64, 16, 16), (64, 32, 4, 4), dict(stride=2, padding=1), np.float16, "highest", None,
     "wmma"),
    ((8, 64, 16, 16), (64, 32, 4, 4), dict(stride=2, padding=1), BFLOAT16, "highest", 90,
     "wmma"),
    # float32: TF32 tensor cores only when asked for.
    ((8, 64, 16, 16), (64, 32, 4, 4), dict(stride=2, padding=1), np.float32, "tf32", None,
     "wmma"),
    ((8, 64, 16, 16), (64, 32, 4, 4), dict(stride=2, padding=1), np.float32, "highest", None,
     "phase_smem"),
    # bfloat16 on sm_75: no tensor cores for it.
    ((8, 64, 16, 16), (64, 32, 4, 4), dict(stride=2, padding=1), BFLOAT16, "highest", 75,
     "phase_smem"),
    # Too few channels for a 16-wide fragment: depthwise, RGB out, 8 in.
    ((1, 21, 64, 64), (21, 1, 16, 16), dict(stride=8, groups=21), np.float16, "highest", None,
     "phase_narrow"),
    ((8, 64, 32, 32), (64, 3, 4, 4), dict(stride=2, padding=1), np.float16, "highest", None,
     "phase_narrow"),
    ((8, 8, 16, 16), (8, 32, 3, 3), {}, np.float16, "highest", None, "phase_smem"),
])
def test_auto_rule_for_tensor_cores(x_shape, w_shape, kw, dtype, precision, arch, expected):
    g = geometry_from_shapes(x_shape, w_shape, **kw)
    assert variants.choose(g, dtype, precision, arch) == expected
    assert launch.plan(g, dtype, variant=expected, precision=precision, arch=arch).variant \
        == expected


def test_the_heuristic_hands_auto_to_wmma(monkeypatch):
    monkeypatch.setattr(variants, "AUTO_USES_HEURISTIC", True)
    g = geometry_from_shapes((2, 16, 4), (16, 16, 3), stride=2)
    assert launch.plan(g, np.float16).variant == "wmma"
    assert launch.plan(g, np.float32, precision="tf32").variant == "wmma"
    assert launch.plan(g, np.float32).variant != "wmma"


def test_missing_mma_header_names_its_package():
    from gpu_tconv import cuda_backend

    log = 'conv_transpose_wmma.cu(41): catastrophic error: cannot open source file "crt/mma.h"'
    explained = str(cuda_backend.explain_compile_error(RuntimeError(log)))
    assert "pip install nvidia-cuda-crt==13.*" in explained
