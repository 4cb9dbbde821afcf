"""Whether an upsampling (or a decoded image) fits in memory, checked before anything is
allocated, so that an impossible request ends in one sentence that says what it would
need, instead of an allocation failure deep inside NumPy (or a machine that swaps).
"""

from __future__ import annotations

import math
import os

import numpy as np

#: Share of the available memory one result may take: the rest is for the input, the
#: encoder's copy of the result and the other work of the process.
USABLE_SHARE = 0.8


def available_bytes(device: bool = False) -> int | None:
    """Memory free for this process now (the GPU's when ``device``); None if unknown."""
    if device:
        import cupy

        return int(cupy.cuda.runtime.memGetInfo()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def describe_bytes(n: float) -> str:
    """``n`` bytes in the unit that reads best (``"1.5 GiB"``)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def upsample_bytes(shape: tuple[int, ...], letters: str, dtype: np.dtype, compute: np.dtype,
                   taps: int, scale: int, separable: bool) -> int:
    """Bytes an upsampling needs at its peak, the input excluded: the output, and for the
    whole-kernel transposed convolution its float result, padded input and weights."""
    rank = sum(c not in "NC" for c in letters)
    out = math.prod(shape) * scale ** rank
    channels = math.prod(n for n, c in zip(shape, letters) if c in "NC")
    need = out * np.dtype(dtype).itemsize
    if not separable:
        need += 2 * out * np.dtype(compute).itemsize + channels * taps ** rank * compute.itemsize
    return need


def check_upsample(shape: tuple[int, ...], letters: str, dtype: np.dtype, compute: np.dtype,
                   taps: int, scale: int, separable: bool, device: bool = False) -> None:
    """``ValueError`` when the upsampling cannot fit, with the sizes and the largest scale
    that would."""
    need = upsample_bytes(shape, letters, dtype, compute, taps, scale, separable)
    free = available_bytes(device)
    if free is None or need <= USABLE_SHARE * free:
        return
    spatial = [n for n, c in zip(shape, letters) if c not in "NC"]
    fits, too_big = 1, scale          # the largest scale that fits, by bisection
    while too_big - fits > 1:
        middle = (fits + too_big) // 2
        taps_then = taps * middle // scale + 1
        if upsample_bytes(shape, letters, dtype, compute, taps_then, middle,
                          separable) <= USABLE_SHARE * free:
            fits = middle
        else:
            too_big = middle
    where = "GPU memory" if device else "memory"
    raise ValueError(
        f"scale {scale} would make a {' x '.join(str(n * scale) for n in spatial)} result "
        f"({'x'.join(map(str, shape))} input, {taps}-tap kernel per axis) needing about "
        f"{describe_bytes(need)}, and {describe_bytes(free)} of {where} is available: "
        + (f"at most scale {fits} fits" if fits > 1 else "even scale 2 does not fit"))


def check_decoded(name: str, pixels: int, bytes_per_pixel: int) -> None:
    """``ValueError`` when decoding an image of ``pixels`` would not fit in memory."""
    need = pixels * bytes_per_pixel
    free = available_bytes()
    if free is not None and need > USABLE_SHARE * free:
        raise ValueError(f"{name}: decoding it needs {describe_bytes(need)} "
                         f"({pixels} pixels), and {describe_bytes(free)} of memory is available")
