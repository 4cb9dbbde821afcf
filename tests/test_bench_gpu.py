"""The GPU benchmark without a GPU: it says so and succeeds; its configurations, its
GEMM + col2im peer (through the emulator), its check of results, its roofline bounds
and its whole run, rehearsed on the CPU."""

import dataclasses
import json
import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import HAS_GPU
from gpu_tconv import bench_configs, bench_gpu, cli, col2im, launch_limits, variants
from gpu_tconv.bench_cpu import Config
from gpu_tconv.geometry import geometry_from_shapes
from gpu_tconv.reference import conv_transpose_reference
from oracles import Problem, assert_close, problems


@pytest.mark.skipif(HAS_GPU, reason="a GPU is usable here")
def test_without_a_gpu_it_says_so_and_succeeds(tmp_path, capsys):
    assert cli.main(["bench", "--output", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "no usable GPU" in out and "bench --cpu" in out
    assert not (tmp_path / "results").exists()


def test_configurations():
    configs = bench_configs.all_configs()
    names = [c.name for c in configs]
    assert len(set(names)) == len(names)
    for family, count in (("DCGAN", 4), ("U-Net", 2), ("FCN depthwise", 2), ("3-D", 2),
                          ("vocoder", 1), ("large batch", 1), ("KernelBench", 17)):
        assert sum(n.startswith(family) for n in names) == count, family
    published = json.loads(bench_configs.resources.files("gpu_tconv").joinpath(
        "data", "kernelbench_level1_tconv.json").read_text())["problems"]
    for config, p in zip(bench_configs.kernelbench(), published):
        g = geometry_from_shapes(config.x, config.weight, **config.params)
        assert g.out_size == tuple(p["out_size"]) and g.flops == p["flops"]
    for config in configs:
        geometry_from_shapes(config.x, config.weight, **config.params)  # valid


def test_device_peaks_of_an_h100():
    peaks = bench_gpu.device_peaks((9, 0), sms=132, clock_khz=1_980_000,
                                   memory_clock_khz=2_619_000, bus_bits=5120)
    assert math.isclose(peaks["bandwidth_gbs"], 3352.3, rel_tol=1e-3)
    assert math.isclose(peaks["fp32_tflops"], 66.9, rel_tol=1e-3)


@settings(max_examples=12)
@given(p=problems(), dtype=st.sampled_from([np.float64, np.float32, np.float16]),
       budget=st.sampled_from([1, 1 << 30]))
def test_gemm_col2im_peer_matches_the_reference(p: Problem, dtype, budget):
    p = p.astype(dtype)
    g = geometry_from_shapes(p.x.shape, p.weight.shape, **p.params)
    with mock.patch.object(col2im, "COL_BUDGET_BYTES", budget):  # 1 byte: a GEMM per sample
        y = col2im.conv_transpose(p.x, p.weight, g)
    assert_close(y, conv_transpose_reference(p.x, p.weight, None, **p.params),
                 Problem(p.x, p.weight, None, p.params), dtype)


def test_a_variant_added_to_the_registry_is_benchmarked(monkeypatch, tmp_path, capsys):
    """A rehearsal (the whole run is rehearsed by tests/test_device_check.py): a variant
    registered by name is timed and checked like the others."""
    extra = dataclasses.replace(variants.VARIANTS["phase_generic"], name="phase_wide")
    monkeypatch.setitem(variants.VARIANTS, "phase_wide", extra)
    monkeypatch.setitem(launch_limits.REGISTERS, "phase_wide",
                        launch_limits.REGISTERS["phase_generic"])
    args = cli.build_parser().parse_args(["bench", "--rehearse", "--repeats", "1", "--only",
                                          "1-D", "--dtypes", "float32", "--output", str(tmp_path)])
    result = bench_gpu.run_from_args(args)
    (row,) = result["rows"]
    assert "phase_wide" in row["ms"] and "phase_wide" not in row["wrong"]
    assert result["variants"][-1] == "phase_wide"
    # Printed in its own column: the table's header and the row name every variant
    # (the summary names only the variants that won a row, which depends on timing).
    out = capsys.readouterr().out
    assert bench_gpu.header(result["variants"]) in out
    assert bench_gpu.format_row(row, result["variants"]) in out


def _tf32(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32 (10 mantissa bits), as tensor cores read them."""
    bits = a.astype(np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def test_a_kernel_that_drops_a_border_tap_is_never_the_best():
    """The old check (a TF32 reference, 2e-2 of max|ref|) passed a kernel that drops the
    one tap reaching a corner output; the check against the float32 reference fails it,
    and the correct but slower variant is the best."""
    rng = np.random.default_rng(5)
    config = Config("3-D k3, many channels", (1, 64, 6, 6, 6), (64, 8, 3, 3, 3), {})
    x = rng.standard_normal(config.x).astype(np.float32)
    w = (rng.standard_normal(config.weight) / math.sqrt(64 * 27)).astype(np.float32)
    torch = pytest.importorskip("torch")
    in_float64 = lambda a, b: torch.nn.functional.conv_transpose3d(
        torch.from_numpy(a.astype(np.float64)), torch.from_numpy(b.astype(np.float64))).numpy()
    exact = in_float64(x, w)
    dropped = exact.copy()
    dropped[0, 0, 0, 0, 0] -= np.einsum("c,c->", x[0, :, 0, 0, 0].astype(np.float64),
                                        w[:, 0, 0, 0, 0].astype(np.float64))
    assert abs(dropped[0, 0, 0, 0, 0]) < 1e-12  # the corner's only tap, gone
    tf32 = in_float64(_tf32(x), _tf32(w))
    old = float(np.abs(dropped - tf32).max() / np.abs(tf32).max())
    assert old <= 2e-2  # the old check: passed

    g = geometry_from_shapes(config.x, config.weight)
    reference = bench_gpu.reference(config, g, x, w, torch, np)
    row = {"name": config.name, "dtype": "float32", "bytes": 1, "flops": 1, "heuristic": "simple",
           "ms": {"phase": 1.0, "simple": 2.0, "torch": 1.5}, "max_rel_diff": {}, "tolerance": {}}
    for method, y in (("phase", dropped), ("simple", exact), ("torch", tf32)):
        row["max_rel_diff"][method] = bench_gpu.relative_error(y.astype(np.float32), reference, np)
        row["tolerance"][method] = bench_gpu.tolerance(method, "float32")
    bench_gpu.derive(row, None)
    assert row["wrong"] == ["phase"] and row["best_variant"] == "simple"
    assert row["best_peer"] == "torch"  # TF32 rounding is within the TF32 peers' tolerance
    assert "phase" not in bench_gpu.summarize([row])["wins_by_variant"]


def test_roofline_bounds_of_a_known_device():
    h200 = bench_gpu.known_peaks("NVIDIA H200")
    assert h200["bandwidth_gbs"] == 4800 and h200["tf32_tflops"] == 495
    assert bench_gpu.known_peaks("NVIDIA H100 PCIe")["bandwidth_gbs"] == 2000
    assert bench_gpu.known_peaks("NVIDIA H100 80GB HBM3")["bandwidth_gbs"] == 3350
    assert bench_gpu.known_peaks("Stand-in GPU") is None
    row = {"dtype": "float16", "bytes": 4.8e9, "flops": 990e12 / 1e3}
    bounds = bench_gpu.roofline_ms(row, h200)
    assert math.isclose(bounds["dram"], 1) and math.isclose(bounds["tensor_cores"], 1)
    assert math.isclose(bounds["cuda_cores"], 990 / 67)
    assert bench_gpu.roofline_ms(row, {"bandwidth_gbs": None})["dram"] is None


def test_every_rows_kernels_are_compiled_ahead_in_row_order(monkeypatch):
    import stand_in_cupy

    compiled = []
    monkeypatch.setattr(bench_gpu.cuda_backend, "compile_plan",
                        lambda device_id, plan: compiled.append((device_id, plan.variant)))
    configs = bench_configs.rehearsal_configs()
    pool, futures = bench_gpu.compile_ahead(configs, ["float32", "float16"], ["simple", "phase"],
                                            stand_in_cupy)
    for row in futures.values():
        for future in row:
            future.result()
    pool.shutdown()
    assert list(futures) == [(c.name, d) for c in configs for d in ("float32", "float16")]
    assert [len(f) for f in futures.values()] == [2, 2, 1, 1]  # phase refuses the 1-D row
    assert sorted(compiled) == sorted([(0, "simple")] * 4 + [(0, "phase")] * 2)
