"""The CPU benchmark: it runs, writes what it prints, and times enough calls."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_tconv import bench_cpu, bench_cpu_layers, numpy_backend
from gpu_tconv.geometry import geometry_from_shapes

ROOT = Path(__file__).resolve().parent.parent


def test_runs_one_configuration_and_writes_json(tmp_path):
    # In a process of its own: the benchmark changes glibc's allocator settings.
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu.py"), "--only",
                          "depthwise 1-D", "--group", "common", "--repeats", "1", "--rounds",
                          "1", "--pause", "0", "--output", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "heap: warm" in run.stdout and "geometric mean" in run.stdout
    (path,) = tmp_path.glob("cpu-*.json")
    result = json.loads(path.read_text())
    (row,) = result["rows"]
    assert row["name"].startswith("depthwise 1-D") and row["group"] == "common"
    assert row["method"] in numpy_backend.METHODS
    assert row["numpy_ms"] > 0 and row["torch_ms"] > 0 and row["peak_extra_mib"] > 0
    assert result["warm_heap"] is True
    ratio = row["numpy_ms"] / row["torch_ms"]
    assert result["summary"]["geomean_ratio_to_torch"] == pytest.approx(ratio)
    assert result["summary"]["per_group"] == {"common": pytest.approx(ratio)}


def test_the_layer_set_spans_the_field():
    layers = bench_cpu_layers.all_layers()
    groups = {g: [c for c in layers if c.group == g] for g in ("common", "kernelbench", "sweep")}
    assert len(groups["kernelbench"]) == 17 and len(groups["sweep"]) >= 40
    assert len(layers) == sum(map(len, groups.values()))
    assert [c.name for c in bench_cpu_layers.sweep()] == [c.name for c in groups["sweep"]]
    held = [c for c in groups["sweep"] if c.held_out]
    assert 0 < len(held) < len(groups["sweep"]) / 2 and not any(
        c.held_out for c in groups["common"] + groups["kernelbench"])
    for c in groups["kernelbench"] + groups["sweep"]:
        g = geometry_from_shapes(c.x, c.weight, **c.params)
        assert g.flops <= bench_cpu_layers.MAX_FLOPS or max(c.x[2:]) == 1, c.name
    for c in groups["kernelbench"]:
        assert c.x[0] <= 2
    sweep = [geometry_from_shapes(c.x, c.weight, **c.params) for c in groups["sweep"]]
    assert {g.rank for g in sweep} == {1, 2, 3}
    assert any(g.groups == g.c_in > 1 for g in sweep) and any(1 < g.groups < g.c_in for g in sweep)
    assert {max(g.stride) for g in sweep} >= {1, 2, 3, 4, 5}


def test_short_cases_get_enough_samples():
    calls = []
    ms = bench_cpu.median_ms(lambda: calls.append(1), repeats=3, pause=0, min_seconds=0.01)
    assert ms >= 0 and len(calls) >= 3 + 3  # a warm-up of at least 3, then the samples
    calls.clear()
    bench_cpu.median_ms(lambda: calls.append(1), repeats=5, pause=0, min_seconds=0)
    assert len(calls) >= 3 + 5
