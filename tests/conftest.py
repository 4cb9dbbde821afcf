import importlib.util
import os
import subprocess

import pytest
from hypothesis import HealthCheck, settings

import gpu_tconv
from gpu_tconv import cuda_backend, emulated_backend

settings.register_profile("default", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=400,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

HAS_GPU = cuda_backend.unavailable_reason() is None
#: Marks a test that exercises the cuda backend (``pytest -m gpu`` selects them all, as
#: bench/device_check.sh does); without a usable GPU it skips, saying why.
requires_gpu = pytest.mark.gpu

# Dask is optional (the GPU machine's image has none): its tests are not collected then.
collect_ignore = [] if importlib.util.find_spec("dask") else ["test_dask.py"]


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason=f"no usable GPU: {cuda_backend.unavailable_reason()}")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)

#: Every backend, as a parametrize list; cuda skips (with the reason) where it cannot run.
BACKENDS = ["numpy", "emulated", pytest.param("cuda", marks=requires_gpu)]


def require_toolchain(available: bool, reason: str) -> None:
    """Skip a compile check whose tool is missing, except in CI, where it must run.

    CI sets GPU_TCONV_REQUIRE_TOOLCHAIN=1, so a missing nvcc or CuPy/NVRTC fails there.
    """
    if not available:
        if os.environ.get("GPU_TCONV_REQUIRE_TOOLCHAIN") == "1":
            pytest.fail(f"{reason} (GPU_TCONV_REQUIRE_TOOLCHAIN=1)")
        pytest.skip(reason)


@pytest.fixture(autouse=True, scope="session")
def _emulator_cache(tmp_path_factory):
    # One fresh build cache per test session, so the tests build what they test.
    if "GPU_TCONV_CACHE_DIR" not in os.environ:
        os.environ["GPU_TCONV_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    assert "emulated" in gpu_tconv.available_backends(), "the emulated backend must run in CI"


@pytest.fixture
def emulator_builds(monkeypatch, tmp_path):
    """The command of every emulated kernel build during the test, which starts from an
    empty build cache, on disk and in the process."""
    monkeypatch.setenv("GPU_TCONV_CACHE_DIR", str(tmp_path))
    emulated_backend._library.cache_clear()
    builds = []
    real_run = subprocess.run

    def counting_run(command, *args, **kwargs):
        builds.append(command)
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(emulated_backend.subprocess, "run", counting_run)
    yield builds
    emulated_backend._library.cache_clear()
