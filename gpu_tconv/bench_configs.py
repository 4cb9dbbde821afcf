"""The GPU benchmark's configurations: layers that users run, and KernelBench's level-1
transposed-convolution problems at their published shapes.

Each is a :class:`gpu_tconv.bench_cpu.Config` in float32; the benchmark runs every one
in float32 and float16.
"""

from __future__ import annotations

import json
from importlib import resources

from .bench_cpu import Config

_DCGAN = dict(stride=2, padding=1)

#: Layers of common networks at typical training shapes.
STANDARD = [
    # DCGAN generator (batch 64): 4x4 -> 64x64, 512 -> 256 -> 128 -> 64 -> 3 channels.
    Config("DCGAN G1 k4 s2 p1 512>256 (64,512,4²)", (64, 512, 4, 4), (512, 256, 4, 4), _DCGAN),
    Config("DCGAN G2 k4 s2 p1 256>128 (64,256,8²)", (64, 256, 8, 8), (256, 128, 4, 4), _DCGAN),
    Config("DCGAN G3 k4 s2 p1 128>64 (64,128,16²)", (64, 128, 16, 16), (128, 64, 4, 4), _DCGAN),
    Config("DCGAN G4 k4 s2 p1 64>3 (64,64,32²)", (64, 64, 32, 32), (64, 3, 4, 4), _DCGAN),
    # U-Net decoder up-convolutions.
    Config("U-Net k2 s2 512>256 (8,512,64²)", (8, 512, 64, 64), (512, 256, 2, 2), dict(stride=2)),
    Config("U-Net k2 s2 128>64 (8,128,256²)", (8, 128, 256, 256), (128, 64, 2, 2),
           dict(stride=2)),
    # FCN: bilinear upsampling of 21 class scores, depthwise (groups = channels).
    Config("FCN depthwise x2 k4 s2 p1 (8,21,128²)", (8, 21, 128, 128), (21, 1, 4, 4),
           dict(stride=2, padding=1, groups=21), depthwise=True),
    Config("FCN depthwise x8 k16 s8 p4 (8,21,64²)", (8, 21, 64, 64), (21, 1, 16, 16),
           dict(stride=8, padding=4, groups=21), depthwise=True),
    # 3-D medical volumes (a 3-D U-Net decoder).
    Config("3-D k2 s2 64>32 (1,64,64³)", (1, 64, 64, 64, 64), (64, 32, 2, 2, 2), dict(stride=2)),
    Config("3-D k3 s2 p1 op1 64>32 (1,64,64³)", (1, 64, 64, 64, 64), (64, 32, 3, 3, 3),
           dict(stride=2, padding=1, output_padding=1)),
    # 1-D vocoder upsampler (HiFi-GAN's first stage).
    Config("vocoder 1-D k16 s8 p4 512>256 (16,512,8192)", (16, 512, 8192), (512, 256, 16),
           dict(stride=8, padding=4)),
    # A small layer at a large batch.
    Config("large batch k4 s2 p1 256>128 (1024,256,8²)", (1024, 256, 8, 8), (256, 128, 4, 4),
           _DCGAN),
]


def kernelbench() -> list[Config]:
    """KernelBench level 1's transposed convolutions (``data/kernelbench_level1_tconv.json``)."""
    text = resources.files("gpu_tconv").joinpath("data", "kernelbench_level1_tconv.json")
    configs = []
    for p in json.loads(text.read_text())["problems"]:
        number = p["name"].split("_")[1]
        size = ",".join(map(str, p["size"]))
        params = {key: tuple(p[key]) for key in ("stride", "padding", "output_padding",
                                                 "dilation")}
        params["groups"] = p["groups"]
        configs.append(Config(
            f"KernelBench {number} {p['dim']}-D k{'x'.join(map(str, p['k']))} "
            f"({p['n']},{p['cin']},{size})",
            (p["n"], p["cin"], *p["size"]), (p["cin"], p["cout"] // p["groups"], *p["k"]),
            params))
    return configs


def all_configs() -> list[Config]:
    """Every configuration of the GPU benchmark, in float32: KernelBench's first, so
    that a run cut short by its time limit has those."""
    return kernelbench() + STANDARD


#: The rehearsal's configurations (``bench/gpu.py --rehearse``): tiny, so that the
#: emulated kernels run them in seconds; a 2-D layer every variant runs (the kernel size,
#: stride and dilation of the device check's smoke step, so the builds are shared) and a
#: 1-D one whose row of taps is too long to unroll (the specialized variants refuse it).
REHEARSAL = [
    Config("rehearsal 2-D k4 s2 p1 9>5 (2,9,5x6)", (2, 9, 5, 6), (9, 5, 4, 4),
           dict(stride=2, padding=1)),
    Config("rehearsal 1-D k16 3>2 (1,3,20)", (1, 3, 20), (3, 2, 16), {}),
]


def rehearsal_configs() -> list[Config]:
    """The configurations of the rehearsal, in float32."""
    return list(REHEARSAL)
