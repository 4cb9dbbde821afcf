"""GPU benchmark: gpu_tconv's CUDA kernels against cuDNN and GEMM + col2im, same run.

Run ``python bench/gpu.py`` or ``gpu-tconv bench``. For every configuration of
:mod:`gpu_tconv.bench_configs` (KernelBench level 1 first, then the standard layers),
in float32 and float16, on the current CUDA device:

- every kernel variant of :data:`gpu_tconv.variants.VARIANTS` (a variant that refuses
  a shape is skipped with its reason);
- PyTorch's ``conv_transpose*`` (cuDNN) with its defaults, with
  ``torch.backends.cudnn.deterministic = True``, and, in float32, with TF32 off;
- GEMM + col2im in CuPy (cuBLAS and the classic gather, :mod:`gpu_tconv.col2im`).

Times are CUDA events around the call after a warm-up (compiles, algorithm search,
memory pools): each sample repeats the call until it lasts a millisecond, and the
figure is the median of ``--repeats`` samples. Every result is first checked against
PyTorch in float32 with TF32 off (the same inputs): ``max|y - ref| / max|ref|`` must
stay within :func:`tolerance` (1e-4 in float32, where a kernel that drops one border
tap is far off; 5e-3 in float16; 5e-3 for the TF32 peers), and a method that fails is
marked ``!`` and never counted as the best. Beside the times each row gives its
roofline bounds: the bytes (inputs, weights and output moved once) at the DRAM
bandwidth, and the FLOPs at the CUDA cores' FP32 peak (gpu_tconv's kernels, which
accumulate float16 in float32) and at the tensor cores' dense peak (TF32 or FP16, which
cuDNN may use), from :data:`KNOWN_DEVICES` or the device's attributes. Results go to
``bench/results/gpu-<device>-<time>.json`` with an SVG plot beside it, rewritten after
every row; the summary says which variant wins where.

``--rehearse`` runs the same code without a GPU, at tiny sizes: the kernels on the
emulated backend, PyTorch's CPU convolution as the cuDNN peers, the wall clock as the
timer. Without a usable GPU and without ``--rehearse`` it says so and exits
successfully; ``gpu-tconv bench --cpu`` is the benchmark for that case.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import (__version__, bench_cpu, bench_plot, col2im, cuda_backend, emulated_backend,
               launch, variants)
from .bench_configs import all_configs, rehearsal_configs
from .bench_cpu import Config
from .geometry import Geometry, geometry_from_shapes

DTYPES = ("float32", "float16")
PEERS = ("torch", "torch_deterministic", "torch_no_tf32", "gemm_col2im")
#: Peers that may round float32 inputs to TF32 (PyTorch's default for cuDNN).
TF32_PEERS = ("torch", "torch_deterministic")
#: Rows on request (``--dtypes``): bfloat16 arrays, and float32 at precision="tf32".
EXTRA_DTYPES = ("bfloat16", "tf32")


def array_dtype_and_precision(name: str):
    """The arrays' dtype and the ``precision=`` of a row's dtype name."""
    if name == "tf32":
        return np.dtype(np.float32), "tf32"
    if name == "bfloat16":
        from .formats import bfloat16_dtype

        return bfloat16_dtype(), "highest"
    return np.dtype(name), "highest"


# FP32 lanes per SM by compute capability (CUDA C programming guide, throughput table).
_FP32_LANES = {(7, 5): 64, (8, 0): 64}
_DEFAULT_FP32_LANES = 128

#: Published peaks of known devices (dense, no sparsity): DRAM GB/s, FP32 CUDA-core
#: TFLOP/s, TF32 and FP16 tensor-core TFLOP/s. Matched on the device name, first match.
KNOWN_DEVICES = [
    (r"H200", dict(bandwidth_gbs=4800, fp32_tflops=67, tf32_tflops=495, fp16_tflops=990)),
    (r"H100.*PCIe", dict(bandwidth_gbs=2000, fp32_tflops=51, tf32_tflops=378, fp16_tflops=756)),
    (r"H100 NVL", dict(bandwidth_gbs=3900, fp32_tflops=60, tf32_tflops=418, fp16_tflops=835)),
    (r"H100", dict(bandwidth_gbs=3350, fp32_tflops=67, tf32_tflops=495, fp16_tflops=990)),
    (r"A100.*40GB", dict(bandwidth_gbs=1555, fp32_tflops=19.5, tf32_tflops=156,
                         fp16_tflops=312)),
    (r"A100", dict(bandwidth_gbs=2039, fp32_tflops=19.5, tf32_tflops=156, fp16_tflops=312)),
    (r"L40S", dict(bandwidth_gbs=864, fp32_tflops=91.6, tf32_tflops=183, fp16_tflops=362)),
    (r"\bL4\b", dict(bandwidth_gbs=300, fp32_tflops=30.3, tf32_tflops=60, fp16_tflops=121)),
    (r"\bT4\b", dict(bandwidth_gbs=320, fp32_tflops=8.1, tf32_tflops=None, fp16_tflops=65)),
]


def tolerance(method: str, dtype: str) -> float:
    """Largest ``max|y - ref| / max|ref|`` accepted against the float32, TF32-off
    reference: fp32 rounding is about 1e-6 there, while a tap dropped at the border
    costs ~1e-2 of a small border output; float16 rounds its result at 2**-11; TF32
    rounds inputs at 2**-11."""
    if dtype == "bfloat16":  # 8 significant bits: inputs and result round at 2**-9
        return 2e-2
    if dtype in ("float16", "tf32"):
        return 5e-3
    return 5e-3 if method in TF32_PEERS else 1e-4


# ------------------------------------------------------------------------------ device

def device_peaks(cc: tuple[int, int], sms: int, clock_khz: int, memory_clock_khz: int,
                 bus_bits: int) -> dict:
    """DRAM bandwidth (double data rate over the bus) and FP32 FMA peak of a device."""
    lanes = _FP32_LANES.get(cc, _DEFAULT_FP32_LANES)
    return {"bandwidth_gbs": 2 * memory_clock_khz * 1e3 * bus_bits / 8 / 1e9,
            "fp32_tflops": 2 * sms * lanes * clock_khz * 1e3 / 1e12}


def known_peaks(name: str) -> dict | None:
    """The published peaks of a device of :data:`KNOWN_DEVICES`, else ``None``."""
    for pattern, peaks in KNOWN_DEVICES:
        if re.search(pattern, name):
            return dict(peaks)
    return None


def describe_device(cupy) -> dict:
    runtime = cupy.cuda.runtime
    device = cupy.cuda.Device()
    props = runtime.getDeviceProperties(device.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    # Attribute numbers of cudaDeviceAttr: the clock fields left cudaDeviceProp in CUDA 13.
    attribute = lambda number: runtime.deviceGetAttribute(number, device.id)
    cc = (props["major"], props["minor"])
    info = {"name": name, "compute_capability": f"{cc[0]}.{cc[1]}",
            "multiprocessors": attribute(16), "clock_khz": attribute(13),
            "memory_clock_khz": attribute(36), "memory_bus_bits": attribute(37),
            "memory_bytes": int(props["totalGlobalMem"])}
    info.update(device_peaks(cc, info["multiprocessors"], info["clock_khz"],
                             info["memory_clock_khz"], info["memory_bus_bits"]))
    info.update({"tf32_tflops": None, "fp16_tflops": None})
    published = known_peaks(name)
    info["peaks_from"] = "published" if published else "attributes (no tensor-core peak)"
    info.update(published or {})
    return info


def roofline_ms(row: dict, device: dict) -> dict:
    """The row's lower bounds in milliseconds: its bytes at the DRAM bandwidth, its FLOPs
    at the CUDA cores' FP32 peak and at the tensor cores' peak for its dtype."""
    tensor = device.get("fp16_tflops" if row["dtype"] == "float16" else "tf32_tflops")
    bound = lambda amount, rate: None if not rate else 1e3 * amount / rate
    return {"dram": bound(row["bytes"], (device.get("bandwidth_gbs") or 0) * 1e9),
            "cuda_cores": bound(row["flops"], (device.get("fp32_tflops") or 0) * 1e12),
            "tensor_cores": bound(row["flops"], (tensor or 0) * 1e12)}


# ------------------------------------------------------------------------------ timing

def gpu_time_ms(fn: Callable[[], object], repeats: int, cupy) -> float:
    """Median milliseconds of ``fn`` by CUDA events on the legacy default stream, which
    waits for (and is waited for by) every other blocking stream, PyTorch's included.
    The caller has run ``fn`` once already (the warm-up: compiles, algorithm search,
    memory pools)."""
    stream = cupy.cuda.Stream.null
    start, end = cupy.cuda.Event(), cupy.cuda.Event()

    def sample(calls: int) -> float:
        start.record(stream)
        for _ in range(calls):
            fn()
        end.record(stream)
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / calls

    cupy.cuda.Device().synchronize()
    once = sample(1)
    calls = max(1, min(100, math.ceil(1.0 / max(once, 1e-3))))  # samples of >= 1 ms
    if once > 200:
        repeats = min(repeats, 3)  # a slow case: its spread matters less than the time
    return statistics.median(sample(calls) for _ in range(repeats))


def wall_time_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock milliseconds of ``fn`` (the rehearsal's timer)."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(1e3 * (time.perf_counter() - start))
    return statistics.median(samples)


@dataclass
class Runner:
    """Where the benchmark runs: the array module, gpu_tconv's kernel call, the timer,
    PyTorch's device, and what to free between rows."""

    xp: object
    kernel: Callable  # (x, w, geometry, variant, precision) -> y
    time_ms: Callable[[Callable[[], object], int], float]
    torch_device: str
    release: Callable[[], None]


def gpu_runner(cupy) -> Runner:
    return Runner(cupy, lambda x, w, g, v, p: cuda_backend.conv_transpose(x, w, None, g, variant=v,
                                                                     precision=p),
                  lambda fn, repeats: gpu_time_ms(fn, repeats, cupy), "cuda",
                  lambda: cupy.get_default_memory_pool().free_all_blocks())


def rehearsal_runner() -> Runner:
    """The kernels on the emulated backend, PyTorch on the CPU, the wall clock."""
    return Runner(np, lambda x, w, g, v, p: emulated_backend.conv_transpose(
                      x, w, None, g, variant=v, precision=p),
                  wall_time_ms, "cpu", lambda: None)


@contextlib.contextmanager
def _cudnn(torch, deterministic: bool, tf32: bool):
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic = deterministic
    if not tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved


def _import_torch(device: str):
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed"
    if device == "cuda" and not torch.cuda.is_available():
        return None, "PyTorch has no CUDA device (a CPU build?)"
    return torch, None


# --------------------------------------------------------------------------------- rows

def _runners(config: Config, g: Geometry, x, w, torch, names: list[str], runner: Runner):
    """(method, callable or the reason it cannot run) for every method of a row."""
    runners = {}
    for name in names:
        try:
            precision = array_dtype_and_precision(config.dtype)[1]
            variants.VARIANTS[name].check(g, x.dtype, precision)
            runners[name] = (lambda v=name, p=precision: runner.kernel(x, w, g, v, p))
        except ValueError as error:
            runners[name] = str(error)
    if torch is not None:
        fn = getattr(torch.nn.functional, f"conv_transpose{g.rank}d")
        tx, tw = torch.from_dlpack(x), torch.from_dlpack(w)

        def torch_call(deterministic: bool, tf32: bool = True):
            def call():
                with _cudnn(torch, deterministic, tf32):
                    return fn(tx, tw, **config.params)
            return call

        runners["torch"] = torch_call(False)
        runners["torch_deterministic"] = torch_call(True)
        runners["torch_no_tf32"] = torch_call(False, tf32=False) if x.dtype == np.float32 \
            else "TF32 concerns float32 only"
    try:
        col2im.batch_chunk(g, x.itemsize)
        runners["gemm_col2im"] = lambda: col2im.conv_transpose(x, w, g)
    except ValueError as error:
        runners["gemm_col2im"] = str(error)
    return runners


def reference(config: Config, g: Geometry, x, w, torch, xp):
    """The result every method is checked against: PyTorch in float32 with TF32 off
    (deterministic) on the same inputs, or gpu_tconv's NumPy backend without PyTorch."""
    if torch is None:
        from . import numpy_backend

        host = lambda a: a.get() if cuda_backend.is_device_array(a) else a
        return xp.asarray(numpy_backend.conv_transpose(host(x).astype(np.float32),
                                                       host(w).astype(np.float32), None, g))
    fn = getattr(torch.nn.functional, f"conv_transpose{g.rank}d")
    with _cudnn(torch, deterministic=True, tf32=False):
        y = fn(torch.from_dlpack(x).float(), torch.from_dlpack(w).float(), **config.params)
    return xp.from_dlpack(y)


def relative_error(result, expected, xp) -> float:
    """``max|result - expected| / max|expected|`` (float32 arithmetic)."""
    scale = float(xp.abs(expected).max()) if expected.size else 0.0
    return float(xp.abs(result.astype(np.float32) - expected).max()) / (scale or 1.0) \
        if expected.size else 0.0


def measure(config: Config, names: list[str], repeats: int, runner: Runner, torch) -> dict:
    """One row: every method's milliseconds (or why it was skipped) and its error."""
    xp = runner.xp
    g = geometry_from_shapes(config.x, config.weight, **config.params)
    rng = xp.random.default_rng(0)
    dtype, precision = array_dtype_and_precision(config.dtype)
    x = rng.standard_normal(config.x, dtype=np.float32).astype(dtype)
    w = (rng.standard_normal(config.weight, dtype=np.float32)
         / math.sqrt(g.c_in_per_group * math.prod(g.kernel))).astype(dtype)
    row = {"name": config.name, "dtype": config.dtype, "x": config.x, "weight": config.weight,
           "params": config.params, "flops": g.flops,
           "bytes": (x.size + w.size + math.prod(g.out_shape)) * x.itemsize,
           "heuristic": variants.choose(g, x.dtype, precision), "ms": {}, "skipped": {},
           "max_rel_diff": {}, "tolerance": {}}
    expected = reference(config, g, x, w, torch, xp)
    for method, run in _runners(config, g, x, w, torch, names, runner).items():
        if isinstance(run, str):
            row["skipped"][method] = run
            continue
        try:
            result = run()  # checked, and the warm-up of the timing
            result = result if isinstance(result, type(expected)) else xp.from_dlpack(result)
            row["max_rel_diff"][method] = relative_error(result, expected, xp)
            row["tolerance"][method] = tolerance(method, config.dtype)
            del result
            row["ms"][method] = runner.time_ms(run, repeats)
        except (MemoryError, RuntimeError, ValueError) as error:  # out of memory, a CUDA error
            row["skipped"][method] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        runner.release()
    del expected
    if torch is not None and runner.torch_device == "cuda":
        torch.cuda.empty_cache()  # the next row's CuPy allocations may need that memory
    return row


def derive(row: dict, device: dict | None) -> dict:
    """Add the methods that failed the check, the best variant and peer among those that
    passed, their ratio, the best variant's rates and the row's roofline bounds."""
    row["wrong"] = sorted(m for m, d in row["max_rel_diff"].items()
                          if not d <= row["tolerance"].get(m, 0.0))  # NaN is wrong too
    passed = {m: t for m, t in row["ms"].items() if m not in row["wrong"]}
    ours = {m: t for m, t in passed.items() if m in variants.VARIANTS}
    peers = {m: t for m, t in passed.items() if m in PEERS}
    for key in ("best_variant", "best_peer", "ratio_to_best_peer", "gbs", "tflops"):
        row.pop(key, None)
    if ours:
        best = min(ours, key=ours.get)
        row["best_variant"], seconds = best, ours[best] / 1e3
        row["gbs"], row["tflops"] = row["bytes"] / seconds / 1e9, row["flops"] / seconds / 1e12
        if device and device.get("bandwidth_gbs"):
            row["bandwidth_fraction"] = row["gbs"] / device["bandwidth_gbs"]
            row["peak_fraction"] = row["tflops"] / device["fp32_tflops"]
    if peers:
        row["best_peer"] = min(peers, key=peers.get)
    if ours and peers:
        row["ratio_to_best_peer"] = ours[row["best_variant"]] / peers[row["best_peer"]]
    if device:
        row["roofline_ms"] = roofline_ms(row, device)
    return row


def _geomean(values: list[float]) -> float | None:
    return math.exp(statistics.fmean(map(math.log, values))) if values else None


def _family(name: str) -> str:
    return "KernelBench" if name.startswith("KernelBench") else name.split(" ")[0]


def summarize(rows: list[dict]) -> dict:
    """Which variant wins where, and geometric means over the rows of each way of
    choosing a variant (the best, ``simple``, the heuristic that ``auto`` runs) against
    the best peer and against each cuDNN setting."""
    def ratios(pick: Callable[[dict], str | None], peer: Callable[[dict], str | None]):
        out = []
        for r in rows:
            method, other = pick(r), peer(r)
            if (method in r["ms"] and other in r["ms"]
                    and method not in r["wrong"] and other not in r["wrong"]):
                out.append(r["ms"][method] / r["ms"][other])
        return out

    best_peer = lambda r: r.get("best_peer")
    wins: dict[str, list[str]] = {}
    for r in rows:
        if "best_variant" in r:
            wins.setdefault(r["best_variant"], []).append(f"{r['name']} {r['dtype']}")
    by_family = {}
    for r in rows:
        if "best_variant" in r:
            counts = by_family.setdefault(f"{_family(r['name'])} {r['dtype']}", {})
            counts[r["best_variant"]] = counts.get(r["best_variant"], 0) + 1
    summary = {
        "geomean_best_variant_to_best_peer": _geomean(ratios(lambda r: r.get("best_variant"),
                                                             best_peer)),
        "geomean_simple_to_best_peer": _geomean(ratios(lambda r: "simple", best_peer)),
        "geomean_heuristic_to_best_peer": _geomean(ratios(lambda r: r["heuristic"], best_peer)),
        "geomean_heuristic_to_simple": _geomean(ratios(lambda r: r["heuristic"],
                                                       lambda r: "simple")),
        "heuristic_picked_the_best": sum(r["heuristic"] == r.get("best_variant") for r in rows),
        "rows": len(rows),
        "wins_by_variant": wins, "wins_by_family": by_family,
        "faster_than_every_peer": [f"{r['name']} {r['dtype']}" for r in rows
                                   if r.get("ratio_to_best_peer", 2) < 1],
        "wrong_results": [f"{r['name']} {r['dtype']}: {', '.join(r['wrong'])}"
                          for r in rows if r["wrong"]]}
    for peer in PEERS[:3]:
        summary[f"geomean_best_variant_to_{peer}"] = _geomean(
            ratios(lambda r: r.get("best_variant"), lambda r, p=peer: p))
    return summary


# ------------------------------------------------------------------------------ report

_SHORT = {"simple": "simple", "phase_generic": "ph-gen", "phase": "phase",
          "phase_narrow": "narrow", "phase_smem": "smem", "torch": "cudnn",
          "torch_deterministic": "cudnn-det", "torch_no_tf32": "no-tf32",
          "gemm_col2im": "gemm"}
_BOUNDS = (("dram", "DRAM"), ("cuda_cores", "FP32"), ("tensor_cores", "TC"))


def header(names: list[str]) -> str:
    return (f"{'configuration':<46}{'dtype':<8}"
            + "".join(f"{_SHORT.get(m, m)[:9]:>10}" for m in names + list(PEERS))
            + "".join(f"{label + ' ms':>10}" for _, label in _BOUNDS)
            + f"{'best':>8}{'best/peer':>10}{'GB/s':>9}{'TFLOP/s':>9}")


def format_row(row: dict, names: list[str]) -> str:
    """One table line: milliseconds per method (``-`` skipped, ``!`` failed the check),
    the roofline bounds in milliseconds, the best variant, its ratio and rates."""
    cells = []
    for method in names + list(PEERS):
        ms = row["ms"].get(method)
        mark = "!" if method in row["wrong"] else ""
        cells.append(f"{'-' if ms is None else f'{ms:.3f}{mark}':>10}")
    bounds = row.get("roofline_ms", {})
    cells += [f"{'-' if bounds.get(key) is None else f'{bounds[key]:.3f}':>10}"
              for key, _ in _BOUNDS]
    ratio = row.get("ratio_to_best_peer")
    best = _SHORT.get(row.get("best_variant"), row.get("best_variant") or "-")
    rates = f"{row['gbs']:9.0f}{row['tflops']:9.2f}" if "gbs" in row else ""
    return (f"{row['name'][:45]:<46}{row['dtype']:<8}" + "".join(cells) + f"{best[:7]:>8}"
            + (f"{ratio:10.2f}" if ratio else f"{'':>10}") + rates)


def format_summary(summary: dict) -> list[str]:
    """The summary as lines: the geometric means, then which variant wins where."""
    lines = [f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}"
             for key, value in summary.items()
             if key not in ("wins_by_variant", "wins_by_family")]
    lines.append("best variant by family (rows won):")
    for family, counts in summary["wins_by_family"].items():
        lines.append(f"  {family}: " + ", ".join(f"{v} {n}" for v, n in
                                                  sorted(counts.items(), key=lambda c: -c[1])))
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def results_path(output: Path, device: dict) -> Path:
    """``output/gpu-<device>-<time>.json``; the plot goes beside it as ``.svg``."""
    output.mkdir(parents=True, exist_ok=True)
    return output / f"gpu-{_slug(device['name'])}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def write_results(result: dict, path: Path) -> None:
    """The JSON and its SVG plot (rewritten after every row, so a run that is stopped
    keeps what it measured; ``complete`` says whether it ran to the end)."""
    path.write_text(json.dumps(result, indent=1))
    path.with_suffix(".svg").write_text(bench_plot.speedup_svg(result))


# --------------------------------------------------------------------------------- main

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The GPU benchmark's own flags (with ``bench_cpu.add_arguments``' shared ones)."""
    parser.add_argument("--variants", nargs="+", metavar="NAME", choices=list(variants.VARIANTS),
                        default=None, help="GPU: the kernel variants to time (default: all)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES + EXTRA_DTYPES,
                        default=list(DTYPES),
                        help="GPU: the element types (default: float32 float16; also "
                             "bfloat16, and tf32: float32 at precision='tf32')")
    parser.add_argument("--rehearse", action="store_true",
                        help="GPU: without a GPU, run the whole benchmark at tiny sizes on the "
                             "emulated backend against PyTorch on the CPU")


def compile_ahead(configs: list[Config], dtypes: list[str], names: list[str],
                  cupy) -> tuple[ThreadPoolExecutor, dict]:
    """Start compiling every row's kernels in threads, in row order, so that NVRTC
    (about a second per specialized kernel) works on all cores while the first rows
    are timed. Returns the pool and, per ``(name, dtype)``, the futures to wait for."""
    pool = ThreadPoolExecutor(max(1, min(16, (os.cpu_count() or 2) - 1)))
    device_id, futures = cupy.cuda.Device().id, {}
    for config in configs:
        g = geometry_from_shapes(config.x, config.weight, **config.params)
        for dtype in dtypes:
            for name in names:
                try:
                    array_dtype, precision = array_dtype_and_precision(dtype)
                    plan = launch.plan(g, array_dtype, variant=name, precision=precision)
                except ValueError:
                    continue  # the row records why
                futures.setdefault((config.name, dtype), []).append(
                    pool.submit(cuda_backend.compile_plan, device_id, plan))
    return pool, futures


def _setup(args: argparse.Namespace):
    """(runner, device description, PyTorch or None, result header), or the reason
    there is nothing to time here."""
    if args.rehearse:
        runner, device = rehearsal_runner(), {
            "name": "rehearsal", "what": "emulated kernels, PyTorch CPU peers, wall clock",
            "bandwidth_gbs": None, "fp32_tflops": None, "tf32_tflops": None,
            "fp16_tflops": None}
        versions = {}
    else:
        reason = cuda_backend.unavailable_reason()
        if reason is not None:
            return reason
        import cupy

        runner, device = gpu_runner(cupy), describe_device(cupy)
        versions = {"cupy": cupy.__version__,
                    "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}
    torch, torch_reason = _import_torch(runner.torch_device)
    if torch_reason:
        print(f"PyTorch peers skipped: {torch_reason}")
    versions.update({"torch": torch.__version__ if torch else None,
                     "cudnn": torch.backends.cudnn.version() if torch else None,
                     "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if torch else None})
    return runner, device, torch, versions


def run_from_args(args: argparse.Namespace) -> dict:
    names = args.variants or list(variants.VARIANTS)  # the registry as it is now
    candidates = rehearsal_configs() if args.rehearse else all_configs()
    configs = [c for c in candidates if not args.only or args.only in c.name]
    if not configs:
        raise ValueError(f"no benchmark configuration matches {args.only!r}")
    setup = _setup(args)
    if isinstance(setup, str):
        print(f"no usable GPU, nothing timed: {setup}\n"
              "(gpu-tconv bench --cpu runs the CPU benchmark; --rehearse rehearses this one)")
        return {"skipped": setup}
    runner, device, torch, versions = setup
    if device.get("bandwidth_gbs"):
        print(f"{device['name']} (sm_{device['compute_capability'].replace('.', '')}): "
              f"{device['bandwidth_gbs']:.0f} GB/s DRAM, {device['fp32_tflops']:.1f} TFLOP/s "
              f"FP32, tensor cores {device['tf32_tflops']} TF32 / {device['fp16_tflops']} FP16 "
              f"TFLOP/s ({device['peaks_from']})")
    else:
        print(f"{device['name']}: {device['what']}")
    print(header(names), flush=True)
    path = results_path(args.output, device)
    result = {"gpu_tconv": __version__, "device": device, "python": platform.python_version(),
              **versions, "repeats": args.repeats, "variants": names,
              "auto_uses_heuristic": variants.AUTO_USES_HEURISTIC, "complete": False,
              "rows": [], "summary": {}}
    pool, compiling = compile_ahead(configs, args.dtypes, names, runner.xp) \
        if runner.torch_device == "cuda" else (None, {})
    try:
        for config in configs:
            for dtype in args.dtypes:
                for future in compiling.pop((config.name, dtype), []):
                    future.result()  # this row's kernels are compiled (errors: at the launch)
                row = derive(measure(replace(config, dtype=dtype), names, args.repeats, runner,
                                     torch), device)
                result["rows"].append(row)
                result["summary"] = summarize(result["rows"])
                write_results(result, path)
                print(format_row(row, names), flush=True)
    finally:  # stopped by the time limit: no more compiles
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    result["complete"] = True
    write_results(result, path)
    print("\n".join(format_summary(result["summary"])))
    print("wrote", path, "and", path.with_suffix(".svg"))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_cpu.add_arguments(parser)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
