"""The NumPy fallback keeps its temporaries within its budget, whatever the batch."""

import tracemalloc

import numpy as np

from gpu_tconv import numpy_backend
from gpu_tconv.geometry import geometry_from_shapes
from gpu_tconv.reference import conv_transpose_reference


def _peak_temporaries(x, w, g) -> tuple[int, np.ndarray]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        y = numpy_backend.conv_transpose(x, w, None, g)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - y.nbytes, y


def test_temporaries_stay_within_budget(monkeypatch):
    budget = 256 * 1024
    monkeypatch.setattr(numpy_backend, "TEMP_BUDGET_BYTES", budget)
    rng = np.random.default_rng(5)
    # The whole batch's column buffer would be 64 x 8 x 4 x 16 x 16 x 8 bytes = 8 MiB.
    x = rng.standard_normal((64, 4, 16, 16))
    w = rng.standard_normal((4, 8, 4, 4))
    g = geometry_from_shapes(x.shape, w.shape, stride=2, padding=1)
    extra, y = _peak_temporaries(x, w, g)
    # One chunk's column block and accumulator, plus small per-tap views and the weight.
    assert extra <= 2 * budget, extra
    np.testing.assert_allclose(y[:2], conv_transpose_reference(x[:2], w, stride=2, padding=1),
                               rtol=1e-12, atol=1e-12)


def test_chunked_result_equals_unchunked(monkeypatch):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((9, 3, 7, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    g = geometry_from_shapes(x.shape, w.shape, stride=(2, 1), padding=1, dilation=(1, 2))
    whole = numpy_backend.conv_transpose(x, w, None, g)
    monkeypatch.setattr(numpy_backend, "TEMP_BUDGET_BYTES", 1)  # one sample per chunk
    assert numpy_backend.conv_transpose(x, w, None, g).tobytes() == whole.tobytes()
