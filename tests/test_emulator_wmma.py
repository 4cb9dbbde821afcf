"""The emulator's stand-ins for <mma.h> and <cuda_bf16.h>, and its shared memory,
against values computed by hand: tile products, TF32 rounding (ties included),
bfloat16 conversions, the warp-collective store, the alignment rules, and garbage in
shared memory before a block writes it."""

from pathlib import Path

import numpy as np
import pytest

from gpu_tconv import emulated_backend, formats
from gpu_tconv.launch import LaunchPlan

ml_dtypes = pytest.importorskip("ml_dtypes")
PROBE = Path(__file__).resolve().parent / "kernels" / "wmma_probe.cu"
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def _run(kernel: str, arrays, scalars=(), threads: int = 32, blocks: int = 1) -> None:
    plan = LaunchPlan(kernel=f"probe::{kernel}", grid=(blocks, 1, 1), block=(threads, 1, 1),
                      scalars=tuple(scalars), index_bits=32, source=str(PROBE), block_sync=True)
    emulated_backend.run_plan(plan, arrays)


def _aligned(values: np.ndarray) -> np.ndarray:
    """A copy of ``values`` at a 256-bit aligned address (WMMA's rule)."""
    raw = np.zeros(values.nbytes + 32, np.uint8)
    start = -raw.ctypes.data % 32
    out = raw[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


def _convert(values: np.ndarray):
    """(TF32-rounded, bfloat16, bfloat16 back to float32) of float32 ``values``, by the
    stand-ins' conversions."""
    tf32, back = np.zeros_like(values), np.zeros_like(values)
    bf16 = np.zeros(values.size, BFLOAT16)
    _run("conversions", (values, tf32, bf16, back), (np.int32(values.size),))
    return tf32, bf16, back


@pytest.mark.parametrize("dtype", [np.float16, BFLOAT16], ids=["float16", "bfloat16"])
def test_mma_of_16_bit_tiles(dtype):
    rng = np.random.default_rng(40)
    # Small integers and halves: every product and partial sum is exact in float32,
    # so the tile is known exactly.
    a = (rng.integers(-8, 9, (16, 16)) / 2).astype(dtype)
    b = (rng.integers(-8, 9, (16, 16)) / 2).astype(dtype)
    c = rng.integers(-50, 50, (16, 16)).astype(np.float32)
    d = _aligned(np.full((16, 16), np.nan, np.float32))
    # b is read column major: pass its transpose's rows.
    _run(f"mma16<{'__half' if dtype == np.float16 else '__nv_bfloat16'}>",
         (_aligned(a), _aligned(np.ascontiguousarray(b.T)), _aligned(c), d))
    expected = a.astype(np.float64) @ b.astype(np.float64) + c
    np.testing.assert_array_equal(d, expected)


def test_mma_accumulates_in_float32():
    # 1 + 2**-24 * 16 terms: a float32 accumulator loses every small term added to 1
    # one at a time (each is half an ulp, ties to even), float64 would not.
    a = np.zeros((16, 16), np.float16)
    a[0, :] = 2.0**-12
    b = np.zeros((16, 16), np.float16)
    b[:, 0] = 2.0**-12
    c = np.zeros((16, 16), np.float32)
    c[0, 0] = 1.0
    d = _aligned(np.zeros((16, 16), np.float32))
    _run("mma16<__half>", (_aligned(a), _aligned(np.ascontiguousarray(b.T)), _aligned(c), d))
    assert d[0, 0] == np.float32(1.0)


def test_tf32_rounding_to_nearest_ties_away_from_zero():
    one = 1.0
    ulp = 2.0**-10  # TF32's spacing at 1
    values = np.array([
        one + ulp / 2,          # a tie: away from zero -> 1 + ulp
        -(one + ulp / 2),       # a tie, negative -> -(1 + ulp)
        one + 3 * ulp / 2,      # a tie above an odd mantissa -> 1 + 2 ulp (not even)
        one + ulp / 2 - 2.0**-23,  # just below the tie -> 1
        one + ulp / 2 + 2.0**-23,  # just above -> 1 + ulp
        np.inf, -np.inf, 3.0,
        np.finfo(np.float32).max,  # rounds past the largest float32: infinity
    ], np.float32)
    expected = np.array([one + ulp, -(one + ulp), one + 2 * ulp, one, one + ulp,
                         np.inf, -np.inf, 3.0, np.inf], np.float32)
    out = _convert(values)[0]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(formats.round_to_tf32(values), expected)
    nan = np.array([np.nan], np.float32)
    assert np.isnan(formats.round_to_tf32(nan)).all()


def test_tf32_mma_uses_the_rounded_operands_and_truncates_unrounded_ones():
    rng = np.random.default_rng(41)
    a = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal((8, 16)).astype(np.float32)
    products = {}
    for round_ in (1, 0):
        d = _aligned(np.zeros((16, 16), np.float32))
        _run("mma_tf32", (_aligned(a), _aligned(b), d), (np.int32(round_),))
        products[round_] = d.T  # stored column major
    # float64 products of exactly representable operands, summed: within float32
    # accumulation error of the emulated tile.
    rounded = formats.round_to_tf32(a).astype(np.float64) @ formats.round_to_tf32(b)
    truncated = ((a.view(np.uint32) & 0xFFFFE000).view(np.float32).astype(np.float64)
                 @ (b.view(np.uint32) & 0xFFFFE000).view(np.float32))
    scale = np.abs(a).astype(np.float64) @ np.abs(b)
    assert np.all(np.abs(products[1] - rounded) <= 8 * 2.0**-24 * scale)
    assert np.all(np.abs(products[0] - truncated) <= 8 * 2.0**-24 * scale)
    assert not np.array_equal(products[0], products[1])


def test_bfloat16_conversions_round_to_nearest_even():
    ulp = 2.0**-7  # bfloat16's spacing at 1
    values = np.array([1 + ulp / 2,          # tie, even below -> 1
                       1 + 3 * ulp / 2,      # tie, even above -> 1 + 2 ulp
                       1 + ulp / 2 + 2.0**-20, -2.5, 3.0e38, 1e-40, np.inf, np.nan],
                      np.float32)
    _, out, back = _convert(values)
    expected = values.astype(BFLOAT16)  # ml_dtypes: round to nearest even
    np.testing.assert_array_equal(out.view(np.uint16)[:-1], expected.view(np.uint16)[:-1])
    assert np.isnan(back[-1]) and list(back[:3]) == [1.0, 1 + 2 * ulp, 1 + ulp]
    np.testing.assert_array_equal(back[:-1], expected[:-1].astype(np.float32))


def test_a_lane_that_skips_the_store_leaves_its_share_unwritten():
    d = _aligned(np.full((16, 16), -7.0, np.float32))
    _run("partial_store", (d,), (np.float32(2.5), np.int32(16)))
    lane_of = np.arange(256).reshape(16, 16) % 32
    assert np.all(d[lane_of < 16] == 2.5) and np.all(d[lane_of >= 16] == -7.0)
    _run("partial_store", (d,), (np.float32(1.0), np.int32(32)))
    assert np.all(d == 1.0)


@pytest.mark.parametrize("offset, ldm", [(8, 16), (0, 12)], ids=["misaligned", "ldm"])
def test_wmma_rules_are_enforced(offset, ldm):
    a = _aligned(np.ones(16 * 32, np.float16))
    d = np.zeros(32, np.float32)
    _run("load_at", (a, d), (np.int32(0), np.int32(16)))  # the legal load works
    assert np.all(d == 1.0)
    with pytest.raises(RuntimeError, match="WMMA"):
        _run("load_at", (a, d), (np.int32(offset), np.int32(ldm)))


def test_shared_memory_is_garbage_when_a_block_starts():
    # Every block finds 0xff bytes (NaN as floats, -1 as ints), not zeros and not
    # what the previous block left there.
    out = np.zeros(3 * 64, np.int32)
    _run("read_before_write", (out,), threads=64, blocks=3)
    assert np.all(out == -1)
