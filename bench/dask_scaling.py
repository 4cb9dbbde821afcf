"""Scaling of gpu_tconv.dask from 1 to 2 workers on a large 3-D volume (NumPy backend).

Each configuration is a LocalCluster of single-threaded worker processes (Dask's
nanny also pins BLAS to one thread per worker). The input is generated on the
workers and persisted first, so the timing covers the convolution, the halo
exchange and the scheduling, and not the transfer of the input or the result to
this process. Prints the best of ``--repeat`` runs per worker count and the ratio.

    python bench/dask_scaling.py [--size 96] [--batch 4] [--json bench/results/dask_scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

import dask.array as da
from distributed import Client, LocalCluster, wait

import gpu_tconv
import gpu_tconv.dask as gd


def _time_workers(n_workers: int, args, weight, params) -> float:
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        shape = (args.batch, args.channels) + (args.size,) * 3
        # Two blocks per sample along the depth: enough blocks for two workers, and
        # every block but the first needs a halo from its neighbour.
        chunks = (1, -1, args.size // 2, -1, -1)
        x = da.random.default_rng(0).standard_normal(shape, chunks=chunks, dtype=np.float32)
        x = x.persist()
        wait(x)
        best = float("inf")
        for run in range(args.repeat):
            # A pass-through layer named per run gives each run its own keys, so no run
            # finds the previous one's result.
            x_run = x.map_blocks(_same, token=f"bench-input-{run}")
            y = gd.conv_transpose3d(x_run, weight, **params, backend="numpy")
            start = time.perf_counter()
            y = y.persist()
            wait(y)
            best = min(best, time.perf_counter() - start)
            del y
    return best * 1e3


def _same(block):
    return block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="D = H = W of the input")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, default=16, help="input channels")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    weight = rng.standard_normal((args.channels, args.channels // 2, 4, 4, 4)).astype(np.float32)
    params = dict(stride=2, padding=1)  # 2x upsampling
    x_shape = (args.batch, args.channels) + (args.size,) * 3
    out_shape = gpu_tconv.output_shape(x_shape, weight.shape, **params)
    print(f"x {x_shape} float32 -> y {out_shape}, kernel 4x4x4, stride 2, padding 1, "
          f"{os.cpu_count()} CPUs")

    ms = {n: _time_workers(n, args, weight, params) for n in (1, 2)}
    ratio = ms[1] / ms[2]
    for n, t in ms.items():
        print(f"{n} worker{'s' if n > 1 else ' '}: {t:9.1f} ms")
    print(f"speed-up 1 -> 2 workers: {ratio:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "x_shape": x_shape, "out_shape": out_shape, "cpus": os.cpu_count(),
            "machine": platform.machine(), "ms": {str(n): t for n, t in ms.items()},
            "speedup": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
