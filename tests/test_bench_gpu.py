"""The GPU benchmark without a GPU: it says so and succeeds; its configurations, its
GEMM + col2im peer (through the emulator) and its whole run, on a stand-in device."""

import json
import math
import sys
import xml.etree.ElementTree as ElementTree
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stand_in_cupy
from conftest import HAS_GPU
from gpu_tconv import bench_configs, bench_gpu, cli, col2im, cuda_backend, emulated_backend
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


def test_a_whole_run_on_a_stand_in_device(monkeypatch, tmp_path, capsys):
    """run_from_args end to end: the stand-in CuPy, the emulated kernels in place of
    the CUDA launches, PyTorch's CPU convolution as the cuDNN peer."""
    import torch

    monkeypatch.setitem(sys.modules, "cupy", stand_in_cupy)
    monkeypatch.setattr(cuda_backend, "unavailable_reason", lambda: None)
    monkeypatch.setattr(cuda_backend, "conv_transpose",
                        lambda x, w, b, g, variant, **kw: emulated_backend.conv_transpose(
                            x, w, b, g, variant=variant, **kw))
    monkeypatch.setattr(bench_gpu, "_import_torch_cuda", lambda: (torch, None))
    monkeypatch.setattr(bench_gpu, "all_configs", lambda: [
        Config("tiny DCGAN-like k4 s2 p1", (2, 9, 5, 6), (9, 5, 4, 4), dict(stride=2, padding=1)),
        Config("tiny 1-D k16 (too many row taps to unroll)", (1, 3, 20), (3, 2, 16), {}),
    ])
    args = cli.build_parser().parse_args(["bench", "--repeats", "2", "--output", str(tmp_path)])
    result = bench_gpu.run_from_args(args)

    assert [(r["name"][:4], r["dtype"]) for r in result["rows"]] == [
        ("tiny", "float32"), ("tiny", "float16")] * 2
    for row in result["rows"]:
        assert row["wrong"] == [], row["max_rel_diff"]
        assert set(bench_gpu.PEERS) <= set(row["ms"]) and "simple" in row["ms"]
        assert row["best_variant"] in row["ms"] and row["ratio_to_best_peer"] > 0
        assert 0 < row["bandwidth_fraction"] and 0 < row["peak_fraction"]
    unrollable = result["rows"][2]
    assert "phase" in unrollable["skipped"] and unrollable["heuristic"] == "phase_generic"
    assert result["summary"]["rows"] == 4
    assert result["summary"]["geomean_simple_to_best_peer"] > 0

    (written,) = tmp_path.glob("gpu-stand-in-gpu-*.json")
    saved = json.loads(written.read_text())
    assert saved["device"]["name"] == "Stand-in GPU" and saved["complete"]
    svg = ElementTree.parse(written.with_suffix(".svg")).getroot()
    assert svg.tag.endswith("svg") and len(svg.findall("{*}rect")) == 4
    table = capsys.readouterr().out
    assert "cudnn-det" in table and "tiny DCGAN-like" in table
