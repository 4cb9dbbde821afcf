"""Time every NumPy formulation and PyTorch on the CPU benchmark's layers, interleaved,
and write the best time of each to JSON: the data the formulation rule
(``numpy_backend.choose_method``) is fitted on (the sweep's held-out layers excepted).

The best of interleaved calls, not the median: on a shared machine other work only ever
adds time, and what is compared here is one formulation against another.
"""

import argparse
import json
import time

import numpy as np

from gpu_tconv import numpy_backend
from gpu_tconv.bench_cpu import _torch_runner, warm_heap
from gpu_tconv.bench_cpu_layers import all_layers
from gpu_tconv.geometry import geometry_from_shapes


def best_times(fns: dict, seconds: float) -> dict:
    """Each function called in turn until ``seconds`` pass (3 calls each at least): the
    fastest call of each, in ms."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < seconds:
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], 1e3 * (time.perf_counter() - t))
        calls += 1
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--only", default="")
    parser.add_argument("--output", default="bench/results/cpu-methods.json")
    args = parser.parse_args()
    warm_heap()
    rng = np.random.default_rng(0)
    rows = []
    for c in all_layers():
        if args.only not in c.name:
            continue
        x = rng.standard_normal(c.x).astype(c.dtype)
        w = rng.standard_normal(c.weight).astype(c.dtype)
        g = geometry_from_shapes(x.shape, w.shape, **c.params)
        fns = {m: (lambda m=m: numpy_backend.conv_transpose(x, w, None, g, method=m))
               for m in numpy_backend.METHODS if numpy_backend.applies(g, m, x.dtype)}
        fns["torch"] = _torch_runner(c, x, w)
        best = best_times(fns, args.seconds)
        rows.append({"name": c.name, "group": c.group, "held_out": c.held_out,
                     "x": c.x, "weight": c.weight, "params": c.params, "dtype": c.dtype,
                     "depthwise": c.depthwise, "chosen": numpy_backend.choose_method(g, x.dtype),
                     "ms": best})
        print(f"{c.name:<60} " + "  ".join(f"{k} {v:8.2f}" for k, v in best.items())
              + f"  chose {rows[-1]['chosen']}", flush=True)
    with open(args.output, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
