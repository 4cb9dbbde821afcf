"""bfloat16 and TF32 on the NumPy backend: the operands converted on the way in, the
results on the way out, the computation itself (:mod:`gpu_tconv.numpy_backend`,
:mod:`gpu_tconv.numpy_backward`) untouched.

- bfloat16 operands are computed in float32 and each result rounded to bfloat16 once
  (round to nearest even, ``ml_dtypes``' cast), as float16 is.
- float32 at ``precision="tf32"``: the operands of every product (``x`` and ``weight``;
  ``grad_output``, ``x`` and ``weight`` for the gradients) are rounded to TF32
  (:func:`gpu_tconv.formats.round_to_tf32`), then multiplied and summed in float32, as
  tensor cores do; the bias is added in float32.
"""

from __future__ import annotations

import numpy as np

from . import numpy_backend, numpy_backward
from .formats import is_bfloat16, round_to_tf32, uses_tf32
from .geometry import Geometry


def _operand(a, dtype, precision: str):
    """``a`` as the NumPy backend computes with it (float32 for bfloat16, TF32-rounded
    float32 at ``precision="tf32"``), or as it is."""
    if a is None:
        return None
    if is_bfloat16(dtype):
        return a.astype(np.float32)
    if uses_tf32(dtype, precision):
        return round_to_tf32(a)
    return a


def _result(a, dtype):
    return a if a is None or a.dtype == dtype else a.astype(dtype)


def conv_transpose(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                   geometry: Geometry, precision: str = "highest") -> np.ndarray:
    """:func:`gpu_tconv.numpy_backend.conv_transpose` for every dtype and precision."""
    dtype = x.dtype
    x, weight = _operand(x, dtype, precision), _operand(weight, dtype, precision)
    bias = bias.astype(np.float32) if bias is not None and is_bfloat16(dtype) else bias
    return _result(numpy_backend.conv_transpose(x, weight, bias, geometry), dtype)


def conv_transpose_backward(grad_output: np.ndarray, x: np.ndarray, weight: np.ndarray,
                            geometry: Geometry, needs, precision: str = "highest"):
    """:func:`gpu_tconv.numpy_backward.conv_transpose_backward` for every dtype and
    precision: ``(dx, dw, db)``, ``None`` where not needed."""
    dtype = x.dtype
    operands = [_operand(a, dtype, precision) for a in (grad_output, x, weight)]
    if uses_tf32(dtype, precision) and "bias" in needs:
        # The bias gradient is a sum of grad_output itself, not of products.
        db = numpy_backward.conv_transpose_backward(grad_output, x, weight, geometry,
                                                    ("bias",))[2]
        needs = tuple(n for n in needs if n != "bias")
        dx, dw, _ = numpy_backward.conv_transpose_backward(*operands, geometry, needs)
        return _result(dx, dtype), _result(dw, dtype), db
    return tuple(_result(r, dtype) for r in
                 numpy_backward.conv_transpose_backward(*operands, geometry, needs))
