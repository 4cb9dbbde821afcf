"""bench/device_check.sh, rehearsed as a GPU machine would meet it: a fresh copy of the
checkout, only ``python3`` (and the few tools the script and the emulated backend's
compiler call) on the PATH, the package not installed, no Dask importable."""

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from gpu_tconv import emulated_backend, variants

ROOT = Path(__file__).resolve().parent.parent
#: What the script runs besides python3 and bash builtins, and what g++ needs.
TOOLS = ["timeout", "tee", "date", "mktemp", "mkdir", "rm", "dirname", "sed", "as", "ld"]
#: What comes back from the GPU machine: at most 8 files of at most 16 MiB.
MAX_FILES, MAX_BYTES = 8, 16 << 20


def _fresh_checkout(target: Path) -> None:
    """The files a clone of the working tree would have (tracked and new, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _bare_path(folder: Path) -> Path:
    folder.mkdir()
    python3 = folder / "python3"  # the interpreter of this run, as the image's only Python
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python3.chmod(0o755)
    for tool in TOOLS + [Path(emulated_backend.compiler()).name]:
        found = shutil.which(tool)
        assert found, f"{tool} is needed on this machine for the rehearsal"
        (folder / tool).symlink_to(found)
    return folder


def _hide_dask(folder: Path) -> Path:
    # None in sys.modules: `import dask` fails and importlib finds no dask.
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\nsys.modules['dask'] = None\nsys.modules['distributed'] = None\n")
    return folder


STEPS = ("PROBE", "SMOKE", "TESTS", "BENCH")


def test_the_steps_limits_add_up_to_at_most_8_minutes():
    script = (ROOT / "bench" / "device_check.sh").read_text()
    limits = {step: int(re.search(rf"\${{{step}_S:-(\d+)}}", script)[1]) for step in STEPS}
    assert sum(limits.values()) <= 8 * 60, limits
    assert limits["TESTS"] >= 120 and limits["BENCH"] >= 120  # the two long steps


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs a git checkout to copy")
def test_the_rehearsal_passes_from_a_fresh_checkout(tmp_path):
    checkout, out = tmp_path / "checkout", tmp_path / "out"
    _fresh_checkout(checkout)
    # The steps' limits are sized for the GPU machine; on a shared CPU the rehearsal is
    # about what runs, not how fast, so they are relaxed here.
    env = {"PATH": str(_bare_path(tmp_path / "bin")), "HOME": str(tmp_path),
           "TMPDIR": str(tmp_path), "PYTHONPATH": str(_hide_dask(tmp_path / "hide")),
           "HYPOTHESIS_PROFILE": "default", **{f"{step}_S": "300" for step in STEPS}}
    if "GPU_TCONV_CACHE_DIR" in os.environ:  # builds of this session, keyed on content
        env["GPU_TCONV_CACHE_DIR"] = os.environ["GPU_TCONV_CACHE_DIR"]
    done = subprocess.run([shutil.which("bash"), "bench/device_check.sh", "--rehearse",
                           "--output", str(out)], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=600)
    log = (out / "device-check.log").read_text()
    assert done.returncode == 0, log[-6000:] + done.stderr[-2000:]
    for name in ("probe", "smoke", "tests", "benchmark"):
        assert f"=== {name}: exit 0" in log, name

    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) <= MAX_FILES and all(p.stat().st_size <= MAX_BYTES for p in files)
    assert {"device-check.log", "probe.json", "smoke.json", "gpu-tests.xml"} <= {
        p.name for p in files}

    probe = json.loads((out / "probe.json").read_text())
    assert probe["gpu_tconv"].startswith(str(checkout))  # this copy, not an installed one
    assert probe["dask"].startswith("unavailable")
    smoke = json.loads((out / "smoke.json").read_text())
    assert {(c["variant"], c["dtype"]) for c in smoke} == {
        (v, d) for v in variants.VARIANTS for d in ("float16", "float32", "float64")}
    # Every case runs but those a variant refuses for its dtype (wmma has no float64);
    # wmma's float32 case runs at precision="tf32".
    refused = {(c["variant"], c["dtype"]) for c in smoke if c["status"] == "skipped"}
    assert refused == {("wmma", "float64")}, smoke
    assert all(c["status"] in ("ok", "skipped") for c in smoke), smoke
    assert {c["precision"] for c in smoke if c["variant"] == "wmma"} == {"highest", "tf32"}
    suite = ElementTree.parse(out / "gpu-tests.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) > 0 and suite.get("errors") == suite.get("failures") == "0"
    (bench,) = out.glob("gpu-rehearsal-*.json")
    _check_the_benchmark(json.loads(bench.read_text()), bench.with_suffix(".svg"), log)


def _check_the_benchmark(result: dict, plot: Path, log: str) -> None:
    """The rehearsed benchmark: every variant and peer on every row, checked."""
    assert result["complete"] and result["variants"] == list(variants.VARIANTS)
    assert [(r["name"][:9], r["dtype"]) for r in result["rows"]] == [
        ("rehearsal", "float32"), ("rehearsal", "float16")] * 2
    for row in result["rows"]:
        assert row["wrong"] == [], row["max_rel_diff"]
        assert {"torch", "torch_deterministic", "gemm_col2im"} <= set(row["ms"])
        assert ("torch_no_tf32" in row["ms"]) == (row["dtype"] == "float32")
        assert "simple" in row["ms"] and row["best_variant"] in row["ms"]
        assert row["ratio_to_best_peer"] > 0
        assert set(row["roofline_ms"]) == {"dram", "cuda_cores", "tensor_cores"}
    unrollable = result["rows"][2]
    assert "unrolls" in unrollable["skipped"]["phase"]  # the variant's own reason
    assert unrollable["heuristic"] == "phase_generic"
    summary = result["summary"]
    assert summary["rows"] == 4 and summary["wrong_results"] == []
    assert sum(map(len, summary["wins_by_variant"].values())) == 4
    assert len(ElementTree.parse(plot).getroot().findall("{*}rect")) == 4
    assert "cudnn-det" in log and "rehearsal 2-D" in log and "best variant by family" in log
