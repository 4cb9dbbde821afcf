"""Step 2 of bench/device_check.sh: every kernel variant in every dtype on a handful of
shapes, against PyTorch, before anything is timed.

For each variant of ``gpu_tconv.variants.VARIANTS`` x float16/float32/float64 x shape:
the result on the GPU (``--rehearse``: on the emulated backend) against PyTorch in
float64 on the same inputs (TF32 off), ``max|y - ref| / max|ref|`` within the dtype's
tolerance; a second run equal bit for bit; and, on a GPU, the compiled kernel's
registers and local memory from CuPy's kernel attributes. A failure is recorded and the
rest go on. Prints one line per case and writes ``smoke.json`` into ``--output``; the
exit status is 1 if any case failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gpu_tconv import cuda_backend, emulated_backend, launch, variants
from gpu_tconv.geometry import geometry_from_shapes

DTYPES = (np.float16, np.float32, np.float64)
TOLERANCE = {np.float16: 5e-3, np.float32: 1e-5, np.float64: 1e-12}
#: float32 on TF32 tensor cores (the ``wmma`` variant): operands rounded at 2**-11.
TF32_TOLERANCE = 5e-3
#: (name, x shape, weight shape, parameters). The two 2-D ones share their kernel size,
#: stride and dilation (one compile each); the rehearsal runs the first only.
SHAPES = [
    ("2-D k4 s2 p1, 19 ch, odd width", (2, 19, 9, 11), (19, 12, 4, 4), dict(stride=2, padding=1)),
    ("2-D k4 s2 p1 depthwise", (2, 6, 12, 12), (6, 1, 4, 4), dict(stride=2, padding=1, groups=6)),
    ("1-D k16 s8 p4", (2, 16, 40), (16, 8, 16), dict(stride=8, padding=4)),
    ("3-D k3 dilated, groups 2", (2, 8, 5, 6, 8), (8, 5, 3, 3, 3),
     dict(padding=1, dilation=(1, 2, 1), groups=2)),
]


class Device:
    """The GPU through CuPy, or (rehearsal) the emulated backend on NumPy arrays."""

    def __init__(self, rehearse: bool):
        self.rehearse = rehearse
        if not rehearse:
            import cupy

            cuda_backend.check_available()
            self.cupy = cupy

    def run(self, x, w, b, g, variant: str, precision: str = "highest"):
        if self.rehearse:
            return emulated_backend.conv_transpose(x, w, b, g, variant=variant,
                                                   precision=precision)
        cupy = self.cupy
        y = cuda_backend.conv_transpose(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), g,
                                        variant=variant, precision=precision)
        return y.get()

    def attributes(self, g, dtype, variant: str, precision: str = "highest") -> dict:
        if self.rehearse:
            return {"registers": "n/a (emulated)", "local_bytes": "n/a (emulated)"}
        plan = launch.plan(g, dtype, variant=variant, precision=precision)
        kernel = cuda_backend.kernel_function(self.cupy.cuda.Device().id, plan)
        read = lambda name: getattr(kernel, name, "not reported by this CuPy")
        return {"registers": read("num_regs"), "local_bytes": read("local_size_bytes"),
                "shared_bytes": read("shared_size_bytes")}

    def compile_ahead(self, shapes) -> None:
        """Every case's kernel compiled at once, in threads (NVRTC releases the GIL)."""
        if self.rehearse:
            return
        plans = []
        for variant in variants.VARIANTS:
            for dtype in DTYPES:
                for _, x_shape, w_shape, params in shapes:
                    g = geometry_from_shapes(x_shape, w_shape, **params)
                    try:
                        plans.append(launch.plan(g, np.dtype(dtype), variant=variant,
                                                 precision=precision_of(variant, g, dtype)))
                    except ValueError:
                        pass  # refused: the case says why
        device_id = self.cupy.cuda.Device().id
        with ThreadPoolExecutor(max(1, min(16, (os.cpu_count() or 2) - 1))) as pool:
            list(pool.map(lambda plan: cuda_backend.compile_plan(device_id, plan), plans))


def _reference(x, w, b, params, torch_device: str) -> np.ndarray:
    import torch

    fn = getattr(torch.nn.functional, f"conv_transpose{x.ndim - 2}d")
    as_tensor = lambda a: torch.from_numpy(a.astype(np.float64)).to(torch_device)
    with torch.backends.cudnn.flags(enabled=True, deterministic=True, allow_tf32=False):
        return fn(as_tensor(x), as_tensor(w), as_tensor(b), **params).cpu().numpy()


def precision_of(variant: str, g, dtype) -> str:
    """``"highest"``, or ``"tf32"`` for a float32 case of a variant that runs float32 on
    TF32 tensor cores only (``wmma``)."""
    try:
        variants.VARIANTS[variant].check(g, dtype)
        return "highest"
    except ValueError:
        return "tf32" if np.dtype(dtype) == np.float32 else "highest"


def check(device: Device, variant: str, dtype, shape) -> dict:
    """One case: ``status`` ok, failed (with why) or skipped (the variant refused)."""
    label, x_shape, w_shape, params = shape
    case = {"variant": variant, "dtype": np.dtype(dtype).name, "shape": label}
    rng = np.random.default_rng(11)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[1] * params.get("groups", 1)).astype(dtype)
    g = geometry_from_shapes(x.shape, w.shape, b.shape, **params)
    precision = precision_of(variant, g, dtype)
    tolerance = TF32_TOLERANCE if precision == "tf32" else TOLERANCE[dtype]
    case["precision"] = precision
    try:
        variants.VARIANTS[variant].check(g, dtype, precision)
    except ValueError as error:
        return {**case, "status": "skipped", "reason": str(error)}
    try:
        start = time.perf_counter()
        y = device.run(x, w, b, g, variant, precision)
        case["seconds_first_call"] = round(time.perf_counter() - start, 3)
        expected = _reference(x, w, b, params, "cpu" if device.rehearse else "cuda")
        error = float(np.abs(y.astype(np.float64) - expected).max() / np.abs(expected).max())
        case.update(max_rel_diff=error, tolerance=tolerance)
        again = device.run(x, w, b, g, variant, precision)
        case["deterministic"] = again.tobytes() == y.tobytes()
        case.update(device.attributes(g, dtype, variant, precision))
        ok = error <= tolerance and case["deterministic"]
        case["status"] = "ok" if ok else "failed"
        if not ok:
            case["reason"] = "result differs from PyTorch" if error > tolerance \
                else "two runs differ"
    except Exception as error:  # a compile or launch failure: recorded, the rest go on
        case.update(status="failed", reason=f"{type(error).__name__}: {error}"[:2000])
    return case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, metavar="DIR")
    parser.add_argument("--rehearse", action="store_true",
                        help="the emulated backend and PyTorch on the CPU, the first shape only")
    args = parser.parse_args()
    try:
        device = Device(args.rehearse)
    except RuntimeError as error:
        print(f"no usable GPU: {error}")
        return 1
    shapes = SHAPES[:1] if args.rehearse else SHAPES
    start = time.perf_counter()
    device.compile_ahead(shapes)
    print(f"kernels compiled in {time.perf_counter() - start:.1f}s", flush=True)
    cases = []
    args.output.mkdir(parents=True, exist_ok=True)
    for variant in variants.VARIANTS:
        for dtype in DTYPES:
            for shape in shapes:
                case = check(device, variant, dtype, shape)
                cases.append(case)
                detail = case.get("reason") or (f"rel diff {case['max_rel_diff']:.1e}, "
                                                f"registers {case['registers']}, "
                                                f"local {case['local_bytes']} B")
                print(f"{case['status']:<8}{variant:<15}{case['dtype']:<9}{shape[0]:<32}"
                      f"{detail}", flush=True)
                # Rewritten after every case: a run cut short keeps what it found.
                (args.output / "smoke.json").write_text(json.dumps(cases, indent=1))
    failed = [c for c in cases if c["status"] == "failed"]
    print(f"smoke: {len(cases) - len(failed)} of {len(cases)} cases ok or skipped, "
          f"{len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
