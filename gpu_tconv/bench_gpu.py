"""GPU benchmark: gpu_tconv's CUDA kernels against cuDNN and GEMM + col2im, same run.

Run ``python bench/gpu.py`` or ``gpu-tconv bench``. For every configuration of
:mod:`gpu_tconv.bench_configs`, in float32 and float16, on the current CUDA device:

- each kernel variant of gpu_tconv (:mod:`gpu_tconv.variants`) that applies;
- PyTorch's ``conv_transpose*`` (cuDNN) with its defaults, and with
  ``torch.backends.cudnn.deterministic = True``;
- GEMM + col2im in CuPy (cuBLAS and the classic gather, :mod:`gpu_tconv.col2im`).

Times are CUDA events around the call after a warm-up (compiles, algorithm search,
memory pools): each sample repeats the call until it lasts a millisecond, and the
figure is the median of ``--repeats`` samples. Every result is checked against
PyTorch's before it is timed. Printed per row: milliseconds, the ratio of the best
variant to the best peer (below 1: gpu_tconv is faster), the best variant's DRAM
throughput (inputs, weights and output moved once) against the device's bandwidth, and
its arithmetic rate against the FP32 FMA peak of the CUDA cores (gpu_tconv accumulates
float16 in float32; cuDNN may use tensor cores, which this peak does not count). Results
go to ``bench/results/gpu-<device>-<time>.json`` with an SVG plot beside it.

Without a usable GPU it says so and exits successfully; ``gpu-tconv bench --cpu`` is
the benchmark for that case.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import re
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__, bench_cpu, bench_plot, col2im, cuda_backend, variants
from .bench_configs import all_configs
from .bench_cpu import Config
from .geometry import Geometry, geometry_from_shapes

DTYPES = ("float32", "float16")
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
PEERS = ("torch", "torch_deterministic", "gemm_col2im")
# Largest relative difference from PyTorch's result (fp16 and TF32 round at about 1e-3).
MATCH_TOLERANCE = 2e-2
# FP32 lanes per SM by compute capability (CUDA C programming guide, throughput table).
_FP32_LANES = {(7, 5): 64, (8, 0): 64}
_DEFAULT_FP32_LANES = 128


# ------------------------------------------------------------------------------ device

def device_peaks(cc: tuple[int, int], sms: int, clock_khz: int, memory_clock_khz: int,
                 bus_bits: int) -> dict:
    """DRAM bandwidth (double data rate over the bus) and FP32 FMA peak of a device."""
    lanes = _FP32_LANES.get(cc, _DEFAULT_FP32_LANES)
    return {"bandwidth_gbs": 2 * memory_clock_khz * 1e3 * bus_bits / 8 / 1e9,
            "fp32_tflops": 2 * sms * lanes * clock_khz * 1e3 / 1e12}


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
    return info


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


@contextlib.contextmanager
def _cudnn_deterministic(torch, on: bool):
    saved = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = on
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic = saved


def _import_torch_cuda():
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed"
    if not torch.cuda.is_available():
        return None, "PyTorch has no CUDA device (a CPU build?)"
    return torch, None


# --------------------------------------------------------------------------------- rows

def _runners(config: Config, g: Geometry, x, w, torch, names: list[str]):
    """(method, callable or the reason it cannot run) for every method of a row."""
    runners = {}
    for name in names:
        try:
            precision = array_dtype_and_precision(config.dtype)[1]
            variants.VARIANTS[name].check(g, x.dtype, precision)
            runners[name] = (lambda v=name, p=precision: cuda_backend.conv_transpose(
                x, w, None, g, variant=v, precision=p))
        except ValueError as error:
            runners[name] = str(error)
    if torch is None:
        return runners
    fn = getattr(torch.nn.functional, f"conv_transpose{g.rank}d")
    tx, tw = torch.from_dlpack(x), torch.from_dlpack(w)

    def torch_call(deterministic: bool):
        def call():
            with _cudnn_deterministic(torch, deterministic):
                return fn(tx, tw, **config.params)
        return call

    runners["torch"] = torch_call(False)
    runners["torch_deterministic"] = torch_call(True)
    try:
        col2im.batch_chunk(g, x.itemsize)
        runners["gemm_col2im"] = lambda: col2im.conv_transpose(x, w, g)
    except ValueError as error:
        runners["gemm_col2im"] = str(error)
    return runners


def _as_cupy(result, cupy):
    return result if cuda_backend.is_device_array(result) else cupy.from_dlpack(result)


def measure(config: Config, names: list[str], repeats: int, cupy, torch) -> dict:
    """One row: every method's milliseconds (or why it was skipped) and derived figures."""
    g = geometry_from_shapes(config.x, config.weight, **config.params)
    rng = cupy.random.default_rng(0)
    dtype, precision = array_dtype_and_precision(config.dtype)
    x = rng.standard_normal(config.x, dtype=np.float32).astype(dtype)
    w = (rng.standard_normal(config.weight, dtype=np.float32)
         / math.sqrt(g.c_in_per_group * math.prod(g.kernel))).astype(dtype)
    row = {"name": config.name, "dtype": config.dtype, "x": config.x, "weight": config.weight,
           "params": config.params, "flops": g.flops,
           "bytes": (x.size + w.size + math.prod(g.out_shape)) * x.itemsize,
           "heuristic": variants.choose(g, x.dtype, precision), "ms": {}, "skipped": {},
           "max_rel_diff": {}}
    runners = _runners(config, g, x, w, torch, names)
    reference = None
    for method, run in runners.items():
        if isinstance(run, str):
            row["skipped"][method] = run
            continue
        try:
            result = _as_cupy(run(), cupy)  # checked, and the warm-up of the timing
            if reference is None:
                reference = _as_cupy(runners["torch"](), cupy) if "torch" in runners else result
            scale = float(cupy.abs(reference).max()) or 1.0
            row["max_rel_diff"][method] = float(cupy.abs(result.astype(np.float32)
                                                         - reference.astype(np.float32)).max()
                                                / scale)
            del result
            row["ms"][method] = gpu_time_ms(run, repeats, cupy)
        except (MemoryError, RuntimeError, ValueError) as error:  # out of memory, a CUDA error
            row["skipped"][method] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        cupy.get_default_memory_pool().free_all_blocks()
    if torch is not None:
        torch.cuda.empty_cache()  # the next row's CuPy allocations may need that memory
    return row


def derive(row: dict, device: dict | None) -> dict:
    """Add the best variant and peer, their ratio and the best variant's rates."""
    ours = {m: t for m, t in row["ms"].items() if m in variants.VARIANTS}
    peers = {m: t for m, t in row["ms"].items() if m in PEERS}
    row["wrong"] = sorted(m for m, d in row["max_rel_diff"].items() if d > MATCH_TOLERANCE)
    if ours:
        best = min(ours, key=ours.get)
        row["best_variant"], seconds = best, ours[best] / 1e3
        row["gbs"], row["tflops"] = row["bytes"] / seconds / 1e9, row["flops"] / seconds / 1e12
        if device:
            row["bandwidth_fraction"] = row["gbs"] / device["bandwidth_gbs"]
            row["peak_fraction"] = row["tflops"] / device["fp32_tflops"]
    if peers:
        row["best_peer"] = min(peers, key=peers.get)
    if ours and peers:
        row["ratio_to_best_peer"] = ours[row["best_variant"]] / peers[row["best_peer"]]
    return row


def _geomean(values: list[float]) -> float | None:
    return math.exp(statistics.fmean(map(math.log, values))) if values else None


def summarize(rows: list[dict]) -> dict:
    """Geometric means over the rows of each way of choosing a variant, against the best
    peer: the best variant, ``simple`` (today's default) and the heuristic (the
    candidate default), plus where gpu_tconv is faster."""
    def ratios(pick: Callable[[dict], str | None]) -> list[float]:
        out = []
        for r in rows:
            method = pick(r)
            if method in r["ms"] and "best_peer" in r:
                out.append(r["ms"][method] / r["ms"][r["best_peer"]])
        return out

    wins = [r["name"] + " " + r["dtype"] for r in rows if r.get("ratio_to_best_peer", 2) < 1]
    heuristic_vs_simple = [r["ms"][r["heuristic"]] / r["ms"]["simple"] for r in rows
                           if r["heuristic"] in r["ms"] and "simple" in r["ms"]]
    return {"geomean_best_variant_to_best_peer": _geomean(ratios(lambda r: r.get("best_variant"))),
            "geomean_simple_to_best_peer": _geomean(ratios(lambda r: "simple")),
            "geomean_heuristic_to_best_peer": _geomean(ratios(lambda r: r["heuristic"])),
            "geomean_heuristic_to_simple": _geomean(heuristic_vs_simple),
            "heuristic_picked_the_best": sum(r["heuristic"] == r.get("best_variant")
                                             for r in rows),
            "rows": len(rows), "faster_than_every_peer": wins,
            "wrong_results": [f"{r['name']} {r['dtype']}: {', '.join(r['wrong'])}"
                              for r in rows if r["wrong"]]}


# ------------------------------------------------------------------------------ report

_SHORT = {"simple": "simple", "phase_generic": "ph-gen", "phase": "phase",
          "phase_narrow": "narrow", "phase_smem": "smem", "torch": "cudnn",
          "torch_deterministic": "cudnn-det", "gemm_col2im": "gemm"}


def header(names: list[str]) -> str:
    return (f"{'configuration':<46}{'dtype':<8}"
            + "".join(f"{_SHORT.get(m, m):>10}" for m in names + list(PEERS))
            + f"{'best/peer':>10}{'GB/s':>9}{'(% DRAM)':>9}{'TFLOP/s':>9}{'(% FP32)':>9}")


def format_row(row: dict, names: list[str]) -> str:
    """One table line: milliseconds per method (``-`` skipped, ``!`` wrong result)."""
    cells = []
    for method in names + list(PEERS):
        ms = row["ms"].get(method)
        mark = "!" if method in row["wrong"] else ""
        cells.append(f"{'-' if ms is None else f'{ms:.3f}{mark}':>10}")
    ratio = row.get("ratio_to_best_peer")
    percent = lambda key: f"{100 * row[key]:8.1f}%" if key in row else f"{'':>9}"
    rates = (f"{row['gbs']:9.0f}{percent('bandwidth_fraction')}{row['tflops']:9.2f}"
             f"{percent('peak_fraction')}") if "gbs" in row else ""
    return (f"{row['name'][:45]:<46}{row['dtype']:<8}" + "".join(cells)
            + (f"{ratio:10.2f}" if ratio else f"{'':>10}") + rates)


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
                        default=list(variants.VARIANTS),
                        help="GPU: the kernel variants to time (default: all)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES + EXTRA_DTYPES,
                        default=list(DTYPES),
                        help="GPU: the element types (default: float32 float16; also "
                             "bfloat16, and tf32: float32 at precision='tf32')")


def run_from_args(args: argparse.Namespace) -> dict:
    configs = [c for c in all_configs() if not args.only or args.only in c.name]
    if not configs:
        raise ValueError(f"no benchmark configuration matches {args.only!r}")
    reason = cuda_backend.unavailable_reason()
    if reason is not None:
        print(f"no usable GPU, nothing timed: {reason}\n"
              "(gpu-tconv bench --cpu runs the CPU benchmark)")
        return {"skipped": reason}
    import cupy

    torch, torch_reason = _import_torch_cuda()
    if torch_reason:
        print(f"PyTorch peers skipped: {torch_reason}")
    device = describe_device(cupy)
    print(f"{device['name']} (sm_{device['compute_capability'].replace('.', '')}): "
          f"{device['bandwidth_gbs']:.0f} GB/s DRAM, {device['fp32_tflops']:.1f} TFLOP/s FP32")
    print(header(args.variants), flush=True)
    path = results_path(args.output, device)
    result = {"gpu_tconv": __version__, "device": device, "python": platform.python_version(),
              "cupy": cupy.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
              "torch": torch.__version__ if torch else None,
              "cudnn": torch.backends.cudnn.version() if torch else None,
              "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if torch else None,
              "repeats": args.repeats, "variants": args.variants,
              "auto_uses_heuristic": variants.AUTO_USES_HEURISTIC, "complete": False,
              "rows": [], "summary": {}}
    for config in configs:
        for dtype in args.dtypes:
            row = derive(measure(replace(config, dtype=dtype), args.variants, args.repeats,
                                 cupy, torch), device)
            result["rows"].append(row)
            result["summary"] = summarize(result["rows"])
            write_results(result, path)
            print(format_row(row, args.variants), flush=True)
    result["complete"] = True
    write_results(result, path)
    for key, value in result["summary"].items():
        print(f"{key}: {value}")
    print("wrote", path, "and", path.with_suffix(".svg"))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_cpu.add_arguments(parser)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
