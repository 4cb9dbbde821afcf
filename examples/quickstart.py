"""Upsample a batch of feature maps 2x with a DCGAN-style transposed convolution.

Runs on whatever this machine offers: the CUDA kernel when CuPy and a GPU are present,
NumPy otherwise; with a C++ compiler it also runs the kernel source on the CPU
("emulated") and checks that every backend gives the same numbers.
"""

import time

import numpy as np

import gpu_tconv

rng = np.random.default_rng(0)
x = rng.standard_normal((4, 64, 16, 16)).astype(np.float32)      # N, C_in, H, W
weight = rng.standard_normal((64, 32, 4, 4)).astype(np.float32)  # C_in, C_out, kH, kW
bias = rng.standard_normal(32).astype(np.float32)
params = dict(stride=2, padding=1)

print("backends usable here:", gpu_tconv.available_backends())
print("output shape:", gpu_tconv.output_shape(x.shape, weight.shape, **params))

results = {}
for backend in gpu_tconv.available_backends():
    start = time.perf_counter()
    results[backend] = gpu_tconv.conv_transpose2d(x, weight, bias, **params, backend=backend)
    print(f"{backend:>9}: {1e3 * (time.perf_counter() - start):8.1f} ms "
          "(first call, includes compilation)")

first = next(iter(results.values()))
for backend, y in results.items():
    assert y.shape == (4, 32, 32, 32) and y.dtype == np.float32
    print(f"{backend:>9}: max |difference| from {next(iter(results))} = "
          f"{float(np.abs(y - first).max()):.2e}")
