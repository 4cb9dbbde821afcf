import os

import pytest
from hypothesis import HealthCheck, settings

import gpu_tconv
from gpu_tconv import cuda_backend

settings.register_profile("default", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=400,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

HAS_GPU = cuda_backend.unavailable_reason() is None
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason=f"no usable GPU: "
                                  f"{cuda_backend.unavailable_reason()}")

#: Every backend, as a parametrize list; cuda skips (with the reason) where it cannot run.
BACKENDS = ["numpy", "emulated", pytest.param("cuda", marks=requires_gpu)]


@pytest.fixture(autouse=True, scope="session")
def _emulator_cache(tmp_path_factory):
    # One fresh build cache per test session, so the tests build what they test.
    if "GPU_TCONV_CACHE_DIR" not in os.environ:
        os.environ["GPU_TCONV_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    assert "emulated" in gpu_tconv.available_backends(), "the emulated backend must run in CI"
