"""What a user gets from ``pip install``: the kernel sources inside the package, and an
import that needs neither CuPy nor a GPU."""

import subprocess
import sys
import zipfile
from pathlib import Path

import gpu_tconv
from gpu_tconv import launch

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_kernel_and_emulator_sources_and_the_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("gpu_tconv-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kernel in (ROOT / "kernels").glob("*.cu"):
        assert f"gpu_tconv/kernels/{kernel.name}" in names
    for part in ("cuda_shim.h", "launcher.cpp", "runtime.cpp", "shared_memory.ld",
                 "include/cuda_fp16.h", "include/cuda_bf16.h", "include/mma.h"):
        assert f"gpu_tconv/emulator/{part}" in names
    assert "gpu_tconv/data/kernelbench_level1_tconv.json" in names  # the GPU benchmark's problems
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "gpu-tconv = gpu_tconv.cli:main" in scripts


def test_kernel_source_is_found():
    assert launch.kernel_source_path().read_text().count("conv_transpose_gather") >= 1


def test_import_needs_no_cupy_nor_dask_and_compiles_nothing(tmp_path):
    # CuPy and Dask made unimportable; importing and running on NumPy must still work,
    # and the import itself must not build anything.
    script = (
        "import sys; sys.modules['cupy'] = None; sys.modules['dask'] = None\n"
        "import numpy as np, gpu_tconv\n"
        "assert 'cupy' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "try:\n"
        "    import gpu_tconv.dask\n"
        "except ImportError as e:\n"
        "    assert 'gpu-tconv[dask]' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('gpu_tconv.dask imported without Dask')\n"
        "assert gpu_tconv.available_backends()[0] == 'numpy'\n"
        "y = gpu_tconv.conv_transpose2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), stride=2)\n"
        "assert y.shape == (1, 1, 4, 4) and (y == 1).all()\n"
        "try:\n"
        "    gpu_tconv.conv_transpose2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), backend='cuda')\n"
        "except RuntimeError as e:\n"
        "    assert 'CuPy' in str(e) and isinstance(e.__cause__, ImportError), e\n"
        "else:\n"
        "    raise AssertionError('cuda ran without CuPy')\n"
    )
    env_path = str(Path(gpu_tconv.__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": env_path,
                                             "GPU_TCONV_CACHE_DIR": str(tmp_path / "cache"),
                                             "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "cache").exists()
