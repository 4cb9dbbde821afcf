"""CPU benchmark: the NumPy backend against PyTorch's CPU conv_transpose, same run.

Run ``python bench/cpu.py`` from a checkout. Each configuration is timed in blocks: the
median of repeats after a warm-up, with a pause before each block (BLAS threads spin
for a while after a call and would slow whatever runs next). NumPy and PyTorch blocks
alternate for a few rounds, and the median over rounds is reported. Printed:
milliseconds, the ratio to PyTorch, GFLOP/s and the peak extra memory of gpu_tconv
(beyond inputs and output, by ``tracemalloc``, scratch memory included). The textbook
scatter loops are timed on the tiny case only. Results are written as JSON, with
glibc's allocator set as :func:`warm_heap` says.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import math
import platform
import statistics
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__, numpy_backend
from .geometry import Geometry, geometry_from_shapes
from .reference import conv_transpose_reference


@dataclass(frozen=True)
class Config:
    name: str
    x: tuple[int, ...]
    weight: tuple[int, ...]
    params: dict = field(default_factory=dict)
    dtype: str = "float32"
    depthwise: bool = False
    group: str = "common"              # see gpu_tconv.bench_cpu_layers
    held_out: bool = False             # not used to fit the formulation rule


CONFIGS = [
    Config("DCGAN k4 s2 p1 (8,64,64²)", (8, 64, 64, 64), (64, 32, 4, 4),
           dict(stride=2, padding=1)),
    Config("DCGAN deep k4 s2 p1 (16,256,16²)", (16, 256, 16, 16), (256, 128, 4, 4),
           dict(stride=2, padding=1)),
    Config("U-Net k2 s2 (4,256,32²)", (4, 256, 32, 32), (256, 128, 2, 2), dict(stride=2)),
    Config("FCN depthwise k4 s2 p1 (1,21,64²)", (1, 21, 64, 64), (21, 1, 4, 4),
           dict(stride=2, padding=1, groups=21), depthwise=True),
    Config("3-D k3 s2 p1 op1 (2,16,16³)", (2, 16, 16, 16, 16), (16, 8, 3, 3, 3),
           dict(stride=2, padding=1, output_padding=1)),
    Config("1-D k16 s8 p4 (1,512,2048)", (1, 512, 2048), (512, 256, 16),
           dict(stride=8, padding=4)),
    Config("dilated k3 d2 s1 p2 (4,64,32²)", (4, 64, 32, 32), (64, 64, 3, 3),
           dict(dilation=2, padding=2)),
    Config("DCGAN k4 s2 p1 float64 (8,64,64²)", (8, 64, 64, 64), (64, 32, 4, 4),
           dict(stride=2, padding=1), dtype="float64"),
]
#: The textbook loops are timed once, on the smallest configuration only (they take
#: hundreds of times longer than the others).
TEXTBOOK_CONFIGS = {"FCN depthwise k4 s2 p1 (1,21,64²)"}


#: A call slower than this is warmed up once and timed 3 times (PyTorch's unoptimized
#: paths, such as dilated 3-D layers, take seconds): the benchmark stays minutes long.
SLOW_CALL_SECONDS = 0.5


def median_ms(fn: Callable[[], object], repeats: int, pause: float,
              min_seconds: float = 0.2) -> float:
    """Median time of ``fn`` in ms: after a warm-up of at least 3 calls and 50 ms (caches,
    BLAS threads, the allocator's first page faults), at least ``repeats`` timed calls
    and ``min_seconds`` in all, so that sub-millisecond cases get enough samples; a call
    slower than :data:`SLOW_CALL_SECONDS` is warmed up once and timed 3 times."""
    time.sleep(pause)
    start = time.perf_counter()
    for calls in itertools.count(1):
        fn()
        elapsed = time.perf_counter() - start
        if calls >= 3 and elapsed >= 0.05 or elapsed >= SLOW_CALL_SECONDS:
            break
    if elapsed / calls >= SLOW_CALL_SECONDS:
        repeats = min(repeats, 3)
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 1000):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _once_ms(fn: Callable[[], object], pause: float) -> float:
    """One call's time in ms (for the textbook loops, which take seconds)."""
    time.sleep(pause)
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def peak_extra_bytes(fn: Callable[[], np.ndarray]) -> int:
    """Peak memory allocated during ``fn`` beyond the array it returns, counting the
    NumPy backend's scratch memory (mapped afresh for the call)."""
    numpy_backend.release_scratch()
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - result.nbytes


def _torch_runner(config: Config, x: np.ndarray, w: np.ndarray):
    try:
        import torch
    except ImportError:
        return None
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    fn = getattr(torch.nn.functional, f"conv_transpose{x.ndim - 2}d")
    return lambda: fn(tx, tw, **config.params)


def blas_info() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed"}]
    return [{k: v for k, v in info.items() if k in ("internal_api", "version", "num_threads",
                                                      "architecture", "user_api")}
            for info in threadpool_info()]


def warm_heap() -> bool:
    """Keep freed memory in glibc's heap (up to its 32 MiB mmap limit), for every library.

    PyTorch and NumPy allocate their outputs with malloc. By default glibc maps a large
    block afresh, paying a page fault per page on first touch, or reuses its heap,
    depending on what the process freed before: that history alone changed PyTorch's
    time on the DCGAN layer by 2x. With these settings every timing sees a warm heap.
    Returns whether the settings took (glibc only).
    """
    try:
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)
                    and libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):
        return False


def run(configs: list[Config], repeats: int, pause: float, methods: bool,
        keep_heap: bool = True, rounds: int = 3,
        progress: Callable[[dict], None] | None = None) -> dict:
    heap = warm_heap() if keep_heap else False
    rng = np.random.default_rng(0)
    rows = []
    for config in configs:
        x = rng.standard_normal(config.x).astype(config.dtype)
        w = rng.standard_normal(config.weight).astype(config.dtype)
        g: Geometry = geometry_from_shapes(x.shape, w.shape, **config.params)
        row = {"name": config.name, "group": config.group, "held_out": config.held_out,
               "dtype": config.dtype, "x": config.x, "weight": config.weight,
               "params": config.params, "flops": g.flops, "depthwise": config.depthwise,
               "method": numpy_backend.choose_method(g, x.dtype)}
        ours = lambda m=None: numpy_backend.conv_transpose(x, w, None, g, method=m)
        torch_fn = _torch_runner(config, x, w)
        # Rounds of one block each: the machine's speed drifts over seconds (shared
        # hosts), and both libraries should see the same drift.
        # Every formulation (with --methods) is timed in the same rounds, alternating
        # with PyTorch, so that their ratios to it see the same drift.
        numpy_rounds, torch_rounds = [], []
        method_rounds = {m: [] for m in (numpy_backend.METHODS if methods else ())}
        for _ in range(rounds):
            numpy_rounds.append(median_ms(ours, repeats, pause))
            if torch_fn is not None:
                torch_rounds.append(median_ms(torch_fn, repeats, pause))
            for m, times in method_rounds.items():
                if numpy_backend.applies(g, m):
                    times.append(median_ms(lambda: ours(m), repeats, pause))
        row["numpy_ms"], row["numpy_rounds_ms"] = statistics.median(numpy_rounds), numpy_rounds
        if torch_rounds:
            row["torch_ms"], row["torch_rounds_ms"] = statistics.median(torch_rounds), torch_rounds
        row["peak_extra_mib"] = peak_extra_bytes(ours) / 2**20
        row["output_mib"] = math.prod(g.out_shape) * x.itemsize / 2**20
        for m, times in method_rounds.items():
            if times:
                row[f"{m}_ms"] = statistics.median(times)
        if config.name in TEXTBOOK_CONFIGS:
            row["textbook_ms"] = _once_ms(lambda: conv_transpose_reference(x, w, **config.params),
                                          pause)
        rows.append(row)
        _print_row(row, methods)
        if progress is not None:
            progress(_result(rows, repeats, rounds, heap))
    return _result(rows, repeats, rounds, heap)


def _result(rows: list[dict], repeats: int, rounds: int, heap: bool) -> dict:
    summary = summarize(rows)
    return {"gpu_tconv": __version__, "machine": platform.processor() or platform.machine(),
            "numpy": np.__version__, "blas": blas_info(), "repeats": repeats, "rounds": rounds,
            "warm_heap": heap, "rows": rows,
            "summary": summary}


def _geomean(values: list[float]) -> float | None:
    return math.exp(statistics.fmean(map(math.log, values))) if values else None


def bound(row: dict) -> float:
    """The ratio to PyTorch a layer must stay within: 3x, or 4x for depthwise layers and
    layers that take PyTorch under 1 ms."""
    return 4.0 if row["depthwise"] or row["torch_ms"] < 1.0 else 3.0


def summarize(rows: list[dict]) -> dict:
    """Geometric means of numpy/torch over all rows, per group, and over the sweep's
    held-out and fitted rows; the worst rows and those beyond their :func:`bound`."""
    timed = [r for r in rows if "torch_ms" in r]
    ratio = {id(r): r["numpy_ms"] / r["torch_ms"] for r in timed}
    groups = sorted({r["group"] for r in timed})
    sweep = [r for r in timed if r["group"] == "sweep"]
    worst = sorted(timed, key=lambda r: -ratio[id(r)])[:5]
    return {
        "geomean_ratio_to_torch": _geomean(list(ratio.values())),
        "per_group": {grp: _geomean([ratio[id(r)] for r in timed if r["group"] == grp])
                      for grp in groups},
        "sweep_held_out": _geomean([ratio[id(r)] for r in sweep if r["held_out"]]),
        "sweep_fitted": _geomean([ratio[id(r)] for r in sweep if not r["held_out"]]),
        "worst": [(r["name"], ratio[id(r)]) for r in worst],
        "beyond_bound": [(r["name"], ratio[id(r)]) for r in timed if ratio[id(r)] > bound(r)],
    }


def _print_row(r: dict, methods: bool) -> None:
    torch_ms = r.get("torch_ms")
    ratio = f"{r['numpy_ms'] / torch_ms:6.2f}x" if torch_ms else "   n/a "
    extra = f"  textbook {r['textbook_ms']:9.1f} ms ({r['textbook_ms'] / torch_ms:.0f}x torch)" \
        if "textbook_ms" in r and torch_ms else ""
    per_method = "".join(f"  {m} {r[m + '_ms']:.2f}" for m in numpy_backend.METHODS
                         if methods and m + "_ms" in r)
    print(f"{r['name']:<52} numpy {r['numpy_ms']:9.2f} ms  torch "
          f"{torch_ms if torch_ms else float('nan'):9.2f} ms  {ratio}  "
          f"{r['flops'] / r['numpy_ms'] / 1e6:6.1f} GFLOP/s  peak extra "
          f"{r['peak_extra_mib']:6.1f} MiB ({r['method']}){per_method}{extra}", flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags, shared by ``bench/cpu.py`` and ``gpu-tconv bench --cpu``."""
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per case (default 7)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating blocks of NumPy and PyTorch per case; the medians "
                             "over rounds are reported (default 3)")
    parser.add_argument("--pause", type=float, default=0.3,
                        help="seconds of rest between blocks (default 0.3)")
    parser.add_argument("--only", metavar="TEXT",
                        help="run the configurations whose name contains TEXT")
    parser.add_argument("--group", choices=("common", "kernelbench", "sweep"),
                        help="CPU: run one group of layers (see gpu_tconv.bench_cpu_layers; "
                             "default: all)")
    parser.add_argument("--default-heap", action="store_true",
                        help="leave glibc's allocator as it is (timings then depend on what "
                             "the process freed before; see warm_heap)")
    parser.add_argument("--methods", action="store_true",
                        help="also time every NumPy formulation, not only the chosen one")
    parser.add_argument("--output", type=Path, default=Path("bench/results"), metavar="DIR",
                        help="folder for the JSON results (default bench/results)")


def run_from_args(args: argparse.Namespace) -> dict:
    from .bench_cpu_layers import all_layers  # it imports this module

    configs = [c for c in all_layers() if (not args.only or args.only in c.name)
               and (not getattr(args, "group", None) or c.group == args.group)]
    if not configs:
        raise ValueError(f"no benchmark configuration matches {args.only!r}")
    print("heap:", "as it is" if args.default_heap else "warm (freed memory kept by glibc)")
    print("BLAS:", ", ".join(f"{b.get('internal_api')} {b.get('version')} "
                             f"({b.get('num_threads')} threads)" for b in blas_info()))
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    # Written after every row, so that an interrupted run keeps what it measured.
    result = run(configs, args.repeats, args.pause, args.methods, not args.default_heap,
                 args.rounds, progress=lambda partial: path.write_text(json.dumps(partial,
                                                                                  indent=1)))
    summary = result["summary"]
    if summary["geomean_ratio_to_torch"] is not None:
        print(f"geometric mean of numpy/torch: {summary['geomean_ratio_to_torch']:.2f}x")
        for grp, value in summary["per_group"].items():
            print(f"  {grp}: {value:.2f}x")
        for part in ("sweep_fitted", "sweep_held_out"):
            if summary[part] is not None:
                print(f"  {part.replace('_', ' ')}: {summary[part]:.2f}x")
        print("worst:", "; ".join(f"{n} {v:.2f}x" for n, v in summary["worst"]))
        print("beyond their bound:", "; ".join(f"{n} {v:.2f}x" for n, v in
                                              summary["beyond_bound"]) or "none")
    path.write_text(json.dumps(result, indent=1))
    print("wrote", path)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
