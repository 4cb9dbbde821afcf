"""Step 1 of bench/device_check.sh: what this machine has, before anything is measured.

Prints and writes ``probe.json`` into ``--output``: the GPU and driver, the CUDA, cuDNN,
CuPy, PyTorch and NumPy versions, where the CUDA headers that the kernels include
(``cuda_fp16.h``, ``mma.h``) are found, the tools on the PATH, then ``gpu-tconv info``.
Every question answers on its own: one that fails is recorded and the rest go on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable


def _answer(question: Callable[[], object]) -> object:
    try:
        return question()
    except Exception as error:  # any failure is itself the answer
        return f"unavailable ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"


def _include_dirs() -> list[Path]:
    """The folders NVRTC searches when CuPy compiles, then the usual CUDA homes."""
    dirs = []
    try:
        from cupy._core.core import assemble_cupy_compiler_options

        for option in assemble_cupy_compiler_options(()):
            for prefix in ("-I", "--include-path="):
                if option.startswith(prefix):
                    dirs.append(Path(option[len(prefix):]))
    except Exception:  # no CuPy: only the usual places
        pass
    for home in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            dirs.append(Path(home) / "include")
    return dirs


def find_header(name: str) -> str:
    """Where ``name`` (or ``crt/name``) is found among the include folders, or why not."""
    for folder in _include_dirs():
        for candidate in (folder / name, folder / "crt" / name):
            if candidate.is_file():
                return str(candidate)
    return "not found in " + ", ".join(map(str, _include_dirs()))


def _gpu() -> dict:
    import cupy

    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(0)
    name = props["name"]
    return {"count": runtime.getDeviceCount(),
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "memory_bytes": int(props["totalGlobalMem"]),
            "driver_cuda": runtime.driverGetVersion(), "runtime_cuda": runtime.runtimeGetVersion()}


def _nvidia_smi() -> str:
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                           "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip() or done.stderr.strip()


def _torch() -> dict:
    import torch

    return {"version": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def probe() -> dict:
    """Everything the device check wants to know about the machine, as a dict."""
    import numpy

    def version(module: str) -> str:
        return __import__(module).__version__

    return {
        "python": platform.python_version(), "executable": sys.executable,
        "platform": platform.platform(), "cpus": os.cpu_count(),
        "numpy": numpy.__version__,
        "cupy": _answer(lambda: version("cupy")),
        "gpu": _answer(_gpu),
        "nvidia_smi": _answer(_nvidia_smi) if shutil.which("nvidia-smi") else "not on the PATH",
        "nvrtc": _answer(lambda: "%d.%d" % __import__("cupy").cuda.nvrtc.getVersion()),
        "torch": _answer(_torch),
        "headers": {name: find_header(name) for name in ("cuda_fp16.h", "mma.h")},
        "tools": {tool: shutil.which(tool) for tool in ("nvcc", "g++", "ncu", "compute-sanitizer")},
        "gpu_tconv": _answer(lambda: __import__("gpu_tconv").__file__),
        "dask": _answer(lambda: version("dask")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, metavar="DIR")
    args = parser.parse_args()
    found = probe()
    for key, value in found.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, dict) else value}")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "probe.json").write_text(json.dumps(found, indent=1))
    print("--- gpu-tconv info")
    from gpu_tconv import cli

    return cli.main(["info"])


if __name__ == "__main__":
    sys.exit(main())
