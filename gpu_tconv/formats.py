"""Number formats beyond NumPy's own: bfloat16 arrays and the TF32 precision.

- **bfloat16** arrays are NumPy arrays of ``ml_dtypes.bfloat16`` (the dtype JAX uses;
  ``pip install ml_dtypes``) or CuPy arrays of it. ``ml_dtypes`` is never imported
  here to recognize one: an array of that dtype exists only once its user has
  imported it, so :func:`is_bfloat16` looks it up in ``sys.modules``.
- ``precision="tf32"`` lets float32 run through TF32 tensor cores (as PyTorch's
  ``allow_tf32``): each operand of a product is rounded to TF32 (8-bit exponent,
  10-bit mantissa: round to nearest, ties away from zero, on the 13 low mantissa
  bits, as ``cvt.rna.tf32.f32`` does) and the products are accumulated in float32.
  Every backend and kernel computes it so: the tensor-core kernel rounds its
  fragments, the others get operands rounded beforehand (:func:`round_to_tf32`), so
  the result has the same error whichever kernel runs.
  ``"highest"`` (the default) keeps float32 exact to float32 rounding. The precision
  changes nothing for the other dtypes.
"""

from __future__ import annotations

import sys

import numpy as np

#: The values of ``precision=``.
PRECISIONS = ("highest", "tf32")


def check_precision(precision) -> str:
    """``precision`` itself if it is one of :data:`PRECISIONS`, else a ``ValueError``."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, "
                         f"got {precision!r}")
    return precision


def is_bfloat16(dtype) -> bool:
    """Whether ``dtype`` is ``ml_dtypes.bfloat16`` (without importing ``ml_dtypes``)."""
    module = sys.modules.get("ml_dtypes")
    try:
        return module is not None and np.dtype(dtype) == np.dtype(module.bfloat16)
    except TypeError:
        return False


def bfloat16_dtype() -> np.dtype:
    """``np.dtype(ml_dtypes.bfloat16)``, importing ``ml_dtypes`` (a ``RuntimeError`` saying
    what to install where it is missing)."""
    try:
        import ml_dtypes
    except ImportError as error:
        raise RuntimeError("bfloat16 arrays need ml_dtypes: pip install ml_dtypes") from error
    return np.dtype(ml_dtypes.bfloat16)


def uses_tf32(dtype, precision: str) -> bool:
    """Whether a computation in ``dtype`` at ``precision`` runs its products in TF32."""
    return precision == "tf32" and np.dtype(dtype) == np.float32


def round_to_tf32(a, xp=np):
    """float32 ``a`` rounded to TF32 (a new float32 array of the array module ``xp``,
    NumPy or CuPy): to nearest, ties away from zero, on the 13 low mantissa bits; NaN
    and infinities unchanged, values that round past the largest float32 become
    infinite."""
    bits = xp.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    finite = (bits & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
    rounded = xp.where(finite, (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000), bits)
    return rounded.astype(np.uint32).view(np.float32)
