"""The CPU benchmark's layers, in three groups:

- ``common``: layers of common networks (the original eight, and others users run:
  pix2pix, non-square kernels, depthwise 1-D, a vocoder, grouped, U-Net up-convolutions
  with many channels on small images, a 3-D layer with many taps on a tiny volume);
- ``kernelbench``: the 17 transposed convolutions of KernelBench level 1, scaled for a
  CPU (:func:`scaled`: batch at most 2, spatial sizes halved until the work fits;
  kernel, stride, padding, dilation, groups and channels kept);
- ``sweep``: a seeded random sweep (:func:`sweep`) over rank 1-3, kernel 1-7, stride
  1-5, dilation 1-3, groups (depthwise included), 1-1024 channels and images from 2 to
  256 per side; every fourth layer is *held out*: the formulation rule was not fitted
  on it, so its figures show how the rule fares on layers it has not seen.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from .bench_configs import kernelbench
from .bench_cpu import CONFIGS, Config
from .geometry import geometry_from_shapes

#: Flops a layer of the KernelBench and sweep groups is scaled down to (at most): a
#: few tens of milliseconds on two cores, so that the whole benchmark runs in minutes.
MAX_FLOPS = 1.5e9
#: Output elements a scaled layer may have (memory, and the time to write it).
MAX_OUTPUT = 8 * 2**20

_S2 = dict(stride=2)

#: Common layers beyond the original eight.
MORE_COMMON = [
    Config("pix2pix k4 s2 p1 512>512 (1,512,8²)", (1, 512, 8, 8), (512, 512, 4, 4),
           dict(stride=2, padding=1)),
    Config("pix2pix k4 s2 p1 128>64 (1,128,64²)", (1, 128, 64, 64), (128, 64, 4, 4),
           dict(stride=2, padding=1)),
    Config("non-square k3 s2 p1 op1 (2,64,24x40)", (2, 64, 24, 40), (64, 32, 3, 3),
           dict(stride=2, padding=1, output_padding=1)),
    Config("depthwise 1-D k8 s4 p2 (2,256,1024)", (2, 256, 1024), (256, 1, 8),
           dict(stride=4, padding=2, groups=256), depthwise=True),
    Config("vocoder 1-D k16 s8 p4 256>128 (2,256,1024)", (2, 256, 1024), (256, 128, 16),
           dict(stride=8, padding=4)),
    Config("groups=4 k3 s2 p1 (4,64,32²)", (4, 64, 32, 32), (64, 16, 3, 3),
           dict(stride=2, padding=1, groups=4)),
    Config("U-Net k2 s2 1024>512 (2,1024,16²)", (2, 1024, 16, 16), (1024, 512, 2, 2), _S2),
    Config("U-Net k2 s2 512>256 (4,512,32²)", (4, 512, 32, 32), (512, 256, 2, 2), _S2),
    Config("3-D k5 s1 64>128 (2,64,4³)", (2, 64, 4, 4, 4), (64, 128, 5, 5, 5)),
    Config("2-D k5 s1 p2 32>32 (4,32,64²)", (4, 32, 64, 64), (32, 32, 5, 5), dict(padding=2)),
    Config("k3 s5 d2 p1 (4,32,32²)", (4, 32, 32, 32), (32, 64, 3, 3),
           dict(stride=5, dilation=2, padding=1)),
]


def _flops(c: Config) -> int:
    return geometry_from_shapes(c.x, c.weight, **c.params).flops


def _outputs(c: Config) -> int:
    return math.prod(geometry_from_shapes(c.x, c.weight, **c.params).out_shape)


def scaled(c: Config, max_batch: int = 2) -> Config:
    """``c`` with its batch at most ``max_batch`` and its spatial sizes halved (all
    together, none below 1) until its flops and output fit :data:`MAX_FLOPS` and
    :data:`MAX_OUTPUT`; everything else kept."""
    batch, spatial = min(c.x[0], max_batch), list(c.x[2:])
    while True:
        s = replace(c, x=(batch, c.x[1], *spatial))
        if (_flops(s) <= MAX_FLOPS and _outputs(s) <= MAX_OUTPUT) or max(spatial) == 1:
            break
        spatial = [max(1, n // 2) for n in spatial]
    size = ",".join(map(str, s.x[2:]))
    name = c.name.split(" (")[0] + f" ({batch},{c.x[1]},{size})"
    return replace(s, name=name, group="kernelbench")


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def _random_layer(rng: random.Random, index: int) -> Config:
    rank = rng.choice([1, 2, 2, 2, 3])
    side = {1: (2, 4096), 2: (2, 256), 3: (2, 32)}[rank]
    kernel = tuple(rng.randint(1, 7) for _ in range(rank)) if rng.random() < 0.3 else \
        (rng.randint(1, 7),) * rank
    stride = (rng.randint(1, 5),) * rank
    dilation = (rng.choice([1, 1, 1, 2, 3]),) * rank
    kind = rng.random()
    c_in = _log_uniform(rng, 1, 1024)
    if kind < 0.2:  # depthwise
        groups, c_out_g = c_in, rng.choice([1, 1, 2])
    elif kind < 0.35:  # grouped
        groups = rng.choice([2, 4, 8])
        c_in = max(groups, c_in - c_in % groups)
        c_out_g = max(1, _log_uniform(rng, 1, 1024) // groups)
    else:
        groups, c_out_g = 1, _log_uniform(rng, 1, 1024)
    padding = tuple(rng.randint(0, d * (k - 1) // 2) for d, k in zip(dilation, kernel))
    output_padding = tuple(rng.randint(0, max(s, d) - 1) if rng.random() < 0.3 else 0
                           for s, d in zip(stride, dilation))
    sizes = tuple(_log_uniform(rng, *side) for _ in range(rank))
    c = Config("", (rng.randint(1, 8), c_in, *sizes), (c_in, c_out_g, *kernel),
               dict(stride=stride, padding=padding, output_padding=output_padding,
                    groups=groups, dilation=dilation),
               depthwise=groups == c_in and c_in > 1, group="sweep", held_out=index % 4 == 3)
    c = scaled(c, max_batch=c.x[0])
    k, s, d, p = ("x".join(map(str, v)) for v in (kernel, stride, dilation, padding))
    tag = f"dw{c_out_g} " if c.depthwise else f"g{groups} " if groups > 1 else ""
    return replace(c, name=f"sweep {index:02d} {rank}-D k{k} s{s} d{d} p{p} {tag}"
                           f"{c_in}>{c_out_g * groups} "
                           f"({c.x[0]},{','.join(map(str, c.x[2:]))})",
                   group="sweep")


def sweep(count: int = 48, seed: int = 2026) -> list[Config]:
    """``count`` random layers (seeded: the same every run), every fourth held out."""
    rng = random.Random(seed)
    layers = []
    while len(layers) < count:
        try:
            layers.append(_random_layer(rng, len(layers)))
        except ValueError:  # an impossible combination (an output below 1): draw again
            continue
    return layers


def all_layers() -> list[Config]:
    """Every layer of the CPU benchmark: common, KernelBench (scaled), sweep."""
    return (CONFIGS + MORE_COMMON + [scaled(c) for c in kernelbench()] + sweep())
