"""The CPU benchmark: it runs, writes what it prints, and times enough calls."""

import json
import subprocess
import sys
from pathlib import Path

from gpu_tconv import bench_cpu

ROOT = Path(__file__).resolve().parent.parent


def test_runs_one_configuration_and_writes_json(tmp_path):
    # In a process of its own: the benchmark changes glibc's allocator settings.
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu.py"), "--only", "1-D",
                          "--repeats", "1", "--pause", "0", "--output", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "heap: warm" in run.stdout and "geometric mean" in run.stdout
    (path,) = tmp_path.glob("cpu-*.json")
    result = json.loads(path.read_text())
    (row,) = result["rows"]
    assert row["name"].startswith("1-D") and row["method"] == "scatter"
    assert row["numpy_ms"] > 0 and row["torch_ms"] > 0 and row["peak_extra_mib"] > 0
    assert result["warm_heap"] is True
    assert result["summary"]["geomean_ratio_to_torch"] == row["numpy_ms"] / row["torch_ms"]


def test_short_cases_get_enough_samples():
    calls = []
    ms = bench_cpu.median_ms(lambda: calls.append(1), repeats=3, pause=0, min_seconds=0.01)
    assert ms >= 0 and len(calls) >= 3 + 3  # a warm-up of at least 3, then the samples
    calls.clear()
    bench_cpu.median_ms(lambda: calls.append(1), repeats=5, pause=0, min_seconds=0)
    assert len(calls) >= 3 + 5
