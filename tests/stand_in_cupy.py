"""Just enough of CuPy's API, over NumPy arrays and the wall clock, to run the GPU
benchmark's own code on a machine without a GPU (the kernels then run emulated)."""

import time
from types import SimpleNamespace

import numpy as np

__version__ = "stand-in"
abs = np.abs
from_dlpack = np.from_dlpack


class _Generator:
    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)

    def standard_normal(self, size, dtype=np.float64):
        return self._rng.standard_normal(size).astype(dtype)


class _Event:
    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self):
        pass


class _Device:
    id = 0

    def synchronize(self):
        pass


def _properties(device_id):
    return {"name": b"Stand-in GPU", "major": 9, "minor": 0, "totalGlobalMem": 2**34}


# cudaDevAttr numbers: clock (kHz), multiprocessors, memory clock (kHz), bus width (bits).
_ATTRIBUTES = {13: 1_980_000, 16: 132, 36: 2_619_000, 37: 5120}

#: What the stand-in device reports: the driver's free bytes, and the free blocks held
#: by the memory pool (tests set them).
FREE_BYTES = 2**33
POOL_FREE_BYTES = 0

random = SimpleNamespace(default_rng=_Generator)
cuda = SimpleNamespace(
    Stream=SimpleNamespace(null=None), Event=_Event, Device=_Device,
    get_elapsed_time=lambda start, end: 1e3 * (end.time - start.time),
    runtime=SimpleNamespace(getDeviceProperties=_properties, runtimeGetVersion=lambda: 13000,
                            deviceGetAttribute=lambda number, device: _ATTRIBUTES[number],
                            memGetInfo=lambda: (FREE_BYTES, _properties(0)["totalGlobalMem"])))
get_default_memory_pool = lambda: SimpleNamespace(free_all_blocks=lambda: None,
                                                  free_bytes=lambda: POOL_FREE_BYTES)
