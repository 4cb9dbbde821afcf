"""Time every NumPy formulation and PyTorch on the CPU benchmark's layers, interleaved,
and write the times to JSON: the data the formulation rule
(``numpy_backend.choose_method``) is fitted on (the sweep's held-out layers excepted);
``--fit FILE`` searches the cost model's constants on such a file.

Calls are interleaved one by one (each formulation, then PyTorch, again and again), and
each formulation's time is reported as PyTorch's median time times the median of its
per-round ratios to PyTorch: on a shared machine the load changes from second to
second, and a round's calls see about the same load.
"""

import argparse
import itertools
import json
import math
import os
import platform
import signal
import statistics
import time

import numpy as np

# Calls alternate one by one here: PyTorch's OpenMP threads, which spin for a while
# after each call by default, would take a core from the NumPy call that follows
# (gpu_tconv.bench_cpu, which reports the figures, times blocks with pauses instead).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gpu_tconv
from gpu_tconv import cpu_threads, numpy_backend
from gpu_tconv.bench_cpu import _torch_runner, blas_info, warm_heap
from gpu_tconv.bench_cpu_layers import all_layers
from gpu_tconv.geometry import geometry_from_shapes


HOW = ("bench/cpu_methods.py --seconds {seconds}: every formulation and PyTorch (OpenMP "
       "threads passive) interleaved call by call; each formulation's ms = PyTorch's median "
       "ms x the median of its per-round ratios to PyTorch; a formulation whose warm-up "
       "took 10x the fastest's is recorded by that call alone (10000000: it did not finish "
       "within 30x PyTorch's first call). 'chosen' is numpy_backend.choose_method's pick "
       "under 'constants', the values in force during the run.")


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class _Late(Exception):
    pass


def _within(fn, seconds: float) -> bool:
    """Call ``fn``; False if it was still running after ``seconds`` (it is interrupted
    between two NumPy calls)."""
    def late(*_):
        raise _Late
    old = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        fn()
        return True
    except _Late:
        # The call's parts on other cores run on: wait for them, or they would slow down
        # every call timed after this one.
        if cpu_threads._pool is not None:
            cpu_threads._pool.shutdown(wait=True)
            cpu_threads._pool = None
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def interleaved_times(fns: dict, seconds: float) -> dict:
    """Each function called in turn until ``seconds`` pass (5 rounds at least): per
    function, PyTorch's median time (ms) times the median of its ratios to PyTorch's
    call in the same round."""
    first = {}
    for name, fn in sorted(fns.items(), key=lambda item: item[0] != "torch"):  # warm-up
        t = time.perf_counter()
        if not _within(fn, min(120.0, max(2.0, 30 * first.get("torch", 0)))):
            first[name] = float("inf")  # too slow to be a candidate
            continue
        first[name] = time.perf_counter() - t
    # A formulation 10 times slower than another at its first call is not a candidate:
    # it is timed by that call alone.
    fastest = min(first.values())
    slow = {name: 1e3 * min(t, 1e4) for name, t in first.items()
            if name != "torch" and t > 10 * fastest and t > 0.05}
    fns = {name: fn for name, fn in fns.items() if name not in slow}
    times = {name: [] for name in fns}
    start = time.perf_counter()
    while len(times["torch"]) < 5 or time.perf_counter() - start < seconds:
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    torch_ms = 1e3 * statistics.median(times["torch"])
    return {**slow, **{name: torch_ms * statistics.median(a / b for a, b in
                                                         zip(ts, times["torch"]))
                       for name, ts in times.items()}}


#: The constants of numpy_backend's cost model, and the values tried for each.
GRID = {"FLOPS_PER_PASS": [30, 50, 70, 100], "GATHER_GEMM_PENALTY": [0.0, 0.15, 0.3],
        "COL2IM_STRIDED_PENALTY": [1.0, 2.0, 3.0, 4.0, 5.0], "PASSES_PER_CALL": [5e3, 2e4, 6e4],
        "PASSES_PER_RUN": [3, 10, 30], "COL2IM_PASSES_PER_RUN": [3, 10, 30],
        "TRANSPOSE_PASSES": [2, 3, 5],
        "STRIDED_READ_PASSES": [0.5, 1], "COL2IM_CL_ADD_PENALTY": [0.5, 0.75, 1.0, 1.5]}


#: The constants that cost only grouped layers (each term is zero, or the formulation
#: does not apply, with one group), fitted after :data:`GRID` on the grouped rows alone,
#: the others as fitted: so the dense layers' fit is what it was without them.
GROUPED_GRID = {"WINDOWS_GEMM_PASSES": [0.5, 1, 1.5, 2, 3, 5, 8, 12],
                "BLAS_CALL_PASSES": [0, 2000, 5000, 10000, 20000, 40000, 80000, 160000]}


def _losses(rows: list[dict]) -> tuple[float, float, float]:
    """Over ``rows``: the geometric means of the chosen formulation's time over the best
    one's and over PyTorch's, and the largest of the former."""
    lost, ratio = [], []
    for r in rows:
        g = geometry_from_shapes(r["x"], r["weight"], **r["params"])
        costs = {m: c for m, c in numpy_backend.method_costs(g, np.dtype(r["dtype"])).items()
                 if m in r["ms"]}  # among the formulations timed
        chosen = r["ms"][min(costs, key=costs.get)]
        lost.append(math.log(chosen / min(v for k, v in r["ms"].items() if k != "torch")))
        ratio.append(math.log(chosen / r["ms"]["torch"]))
    return (math.exp(statistics.fmean(lost)), math.exp(statistics.fmean(ratio)),
            math.exp(max(lost)))


#: Constants whose loss is within this factor of the least are ties: the loss is flat
#: near its least, and among ties the one whose worst fitted layer loses least is kept
#: (the least loss alone took constants at the grid's edges that lost on held-out rows).
TIE = 1.01


def _rows(path: str) -> list[dict]:
    """The timed rows of a file this script wrote, each with ``"machine"``: its CPU and
    the kernels its BLAS ran (an AVX2 and an AVX-512 AMD EPYC report the same CPU)."""
    data = json.load(open(path))
    if not isinstance(data, dict):
        return data
    kernels = [b.get("architecture") for b in data.get("blas", []) if b.get("user_api") == "blas"]
    machine = f"{data.get('cpu')} / {kernels[0] if kernels else None}"
    return [dict(r, machine=machine) for r in data["rows"]]


def _search(grid: dict, rows: list[dict]) -> dict:
    """The ``grid``'s constants that lose least time on ``rows`` (see :data:`TIE`), set
    in numpy_backend."""
    trials = []
    for values in itertools.product(*grid.values()):
        for name, value in zip(grid, values):
            setattr(numpy_backend, name, value)
        mean, _, worst = _losses(rows)
        trials.append((mean, worst, dict(zip(grid, values))))
    least = min(mean for mean, _, _ in trials)
    _, _, best = min((t for t in trials if t[0] <= TIE * least), key=lambda t: t[1])
    for name, value in best.items():
        setattr(numpy_backend, name, value)
    return best


def fit(paths: list[str], grouped_only: bool = False) -> dict:
    """The grid's constants that lose least time on the rows not held out (see
    :data:`TIE`), of every machine the files were timed on together; printed with how the
    rule fares on the held-out rows, and on each machine's rows. With
    ``grouped_only``, :data:`GROUPED_GRID` alone, on the grouped rows (the others as
    they are)."""
    # A layer timed in several files on one machine: the last file's row (a later run
    # with more formulations, say, over the rows of an earlier one); on several machines,
    # a row per machine, so that the rule is fitted to all of them at once.
    rows = list({(r.get("machine"), r["name"]): r for path in paths for r in _rows(path)
                 if r["ms"].get("torch") and min(r["ms"].values()) < 1e6}.values())
    for r in rows:
        r["params"] = {k: tuple(v) if isinstance(v, list) else v for k, v in r["params"].items()}
    if grouped_only:
        rows = [r for r in rows if r["params"].get("groups", 1) > 1]
    fitted = [r for r in rows if not r["held_out"]]
    held = [r for r in rows if r["held_out"]]
    best = {} if grouped_only else _search(GRID, fitted)
    best.update(_search(GROUPED_GRID, [r for r in fitted if r["params"].get("groups", 1) > 1]))
    per_machine = {}
    for m in sorted({r.get("machine") for r in rows}, key=str):
        parts = {"fitted": [r for r in fitted if r.get("machine") == m],
                 "held_out": [r for r in held if r.get("machine") == m]}
        per_machine[str(m)] = {name: _losses(part) for name, part in parts.items() if part}
    report = {"constants": best, "fitted": _losses(fitted), "held_out": _losses(held),
              "rows_fitted": len(fitted), "rows_held_out": len(held),
              "per_machine": per_machine}
    print(json.dumps(report, indent=1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--only", default="")
    parser.add_argument("--start", type=int, default=0, help="skip the first START layers")
    parser.add_argument("--grouped", action="store_true",
                        help="only the grouped layers (groups > 1, depthwise included); "
                             "with --fit, only their constants (GROUPED_GRID), on them")
    parser.add_argument("--output", default="bench/results/cpu-methods.json")
    parser.add_argument("--fit", metavar="JSON", nargs="+",
                        help="fit the cost model's constants to files this script wrote")
    args = parser.parse_args()
    if args.fit:
        fit(args.fit, args.grouped)
        return
    warm_heap()
    rng = np.random.default_rng(0)
    rows = []
    for c in all_layers()[args.start:]:
        if args.only not in c.name or args.grouped and c.params.get("groups", 1) == 1:
            continue
        x = rng.standard_normal(c.x).astype(c.dtype)
        w = rng.standard_normal(c.weight).astype(c.dtype)
        g = geometry_from_shapes(x.shape, w.shape, **c.params)
        fns = {m: (lambda m=m: numpy_backend.conv_transpose(x, w, None, g, method=m))
               for m in numpy_backend.METHODS if numpy_backend.applies(g, m, x.dtype)}
        fns["torch"] = _torch_runner(c, x, w)
        best = interleaved_times(fns, args.seconds)
        rows.append({"name": c.name, "group": c.group, "held_out": c.held_out,
                     "x": c.x, "weight": c.weight, "params": c.params, "dtype": c.dtype,
                     "depthwise": c.depthwise, "chosen": numpy_backend.choose_method(g, x.dtype),
                     "ms": best})
        print(f"{c.name:<60} " + "  ".join(f"{k} {v:8.2f}" for k, v in best.items())
              + f"  chose {rows[-1]['chosen']}", flush=True)
    constants = {name: getattr(numpy_backend, name) for name in {**GRID, **GROUPED_GRID}}
    with open(args.output, "w") as f:
        json.dump({"gpu_tconv": gpu_tconv.__version__, "machine": platform.machine(),
                   "cpu": _cpu_name(), "cores": os.cpu_count(), "numpy": np.__version__,
                   "blas": blas_info(), "how": HOW.format(seconds=args.seconds),
                   "constants": constants, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
