"""Transposed convolution over Dask arrays, block by block, on any Dask scheduler.

Needs the ``dask`` extra (``pip install "gpu-tconv[dask]"``); ``import gpu_tconv``
does not. Each output block is one call of :func:`gpu_tconv.conv_transpose` on the
input range that reaches it (see :mod:`gpu_tconv.chunking` for the arithmetic), so
blocks run wherever Dask puts them: threads, processes, or one GPU per worker with
``dask_cuda.LocalCUDACluster`` and CuPy chunks.
"""

from __future__ import annotations

import math
import warnings

try:
    import dask
    import dask.array as da
except ImportError as error:  # pragma: no cover - exercised without the extra only
    raise ImportError('gpu_tconv.dask needs Dask: pip install "gpu-tconv[dask]"') from error
import numpy as np

from . import dispatch
from .api import document_ranks
from .chunking import BlockPlan, plan_axis
from .geometry import IntOrTuple, Padding, check_dtypes, geometry_from_shapes

_DOC = """{rank}-D transposed convolution of a Dask array, as ``gpu_tconv.{name}``.

    Args:
        x: ``dask.array.Array`` of shape ``(N, C_in, {spatial})`` whose chunks are NumPy
            or CuPy arrays (float16/32/64). Any chunking of the batch and spatial axes
            works, uneven or with empty chunks; the channels must be one chunk and are
            rechunked into one, with a ``dask.array.PerformanceWarning``, if they are not.
        weight: shape ``(C_in, C_out/groups, {kernel})``, same dtype as ``x``; NumPy,
            CuPy or a Dask array (computed as one block, sent once to each worker).
        bias: shape ``(C_out,)`` or ``None``, as ``weight``.
        stride, padding, output_padding, groups, dilation, backend: as in
            ``gpu_tconv.{name}`` (padding modes and pairs included; channels-last
            layouts and ``output_size`` are not offered here); ``backend`` is chosen on
            each worker, so ``"auto"`` uses the GPU of a GPU worker.

    Returns:
        A lazy ``dask.array.Array`` of shape ``(N, C_out, {out})`` (sizes as in
        ``gpu_tconv.output_shape``), with the dtype and chunk type (NumPy or CuPy) of
        ``x``. Its chunks follow ``x``'s, one block per input block: the batch chunks
        of ``x``, one chunk of channels and, along each spatial axis, output
        boundaries ``clamp(b*stride - padding, 0, out)`` at the input boundaries ``b``,
        the first and last blocks taking the borders (:mod:`gpu_tconv.chunking`).
        Every element is the same sum, in the same order, as in the in-memory result,
        so ``y.compute()`` equals ``gpu_tconv.{name}(x.compute(), ...)`` bit for bit.

    Raises:
        ValueError, TypeError: as ``gpu_tconv.{name}``, when this is called, for
            invalid shapes, dtypes, parameters or backend names; also for an ``x`` that
            is not a Dask array or has unknown chunk sizes.
    """


def conv_transpose(x, weight, bias=None, stride: IntOrTuple = 1, padding: Padding = 0,
                   output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                   *, backend: str = "auto") -> da.Array:
    return _conv_transpose(None, x, weight, bias, stride, padding, output_padding, groups,
                           dilation, backend)


def conv_transpose1d(x, weight, bias=None, stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                     *, backend: str = "auto") -> da.Array:
    return _conv_transpose(1, x, weight, bias, stride, padding, output_padding, groups,
                           dilation, backend)


def conv_transpose2d(x, weight, bias=None, stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                     *, backend: str = "auto") -> da.Array:
    return _conv_transpose(2, x, weight, bias, stride, padding, output_padding, groups,
                           dilation, backend)


def conv_transpose3d(x, weight, bias=None, stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                     *, backend: str = "auto") -> da.Array:
    return _conv_transpose(3, x, weight, bias, stride, padding, output_padding, groups,
                           dilation, backend)


document_ranks(_DOC, conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d)


def _conv_transpose(rank: int | None, x, weight, bias, stride: IntOrTuple, padding: Padding,
                    output_padding: IntOrTuple, groups: int, dilation: IntOrTuple,
                    backend: str) -> da.Array:
    """Validate on the client, then build the graph: halo exchange and one task per block."""
    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask.array.Array, got {type(x).__name__}; "
                        "gpu_tconv.conv_transpose takes NumPy and CuPy arrays")
    if any(math.isnan(n) for n in x.shape):
        raise ValueError(f"x has unknown chunk sizes (shape {x.shape}); "
                         "call x.compute_chunk_sizes() first")
    dispatch.check_backend_name(backend)
    weight = _operand(weight)
    bias = None if bias is None else _operand(bias)
    check_dtypes(x, weight, bias)
    g = geometry_from_shapes(x.shape, weight.shape, None if bias is None else bias.shape,
                             stride, padding, output_padding, groups, dilation, rank)

    if len(x.chunks[1]) > 1:
        warnings.warn(f"the channels of x are in {len(x.chunks[1])} chunks; rechunking them "
                      "into one (every output block needs all input channels)",
                      da.PerformanceWarning, stacklevel=3)
        x = x.rechunk({1: -1})
    plans = tuple(plan_axis(x.chunks[2 + a], g.kernel[a], g.stride[a], g.padding[a],
                            g.output_padding[a], g.dilation[a], g.padding_high[a])
                  for a in range(g.rank))
    for a, axis_plans in enumerate(plans):
        x = _with_halo(x, 2 + a, axis_plans)

    out_chunks = (x.chunks[0], (g.c_out,)) + tuple(
        tuple(p.out_stop - p.out_start for p in axis_plans) for axis_plans in plans)
    return da.map_blocks(_block, x, _delayed(weight), _delayed(bias), chunks=out_chunks,
                         dtype=x.dtype, meta=x._meta, token="conv_transpose",
                         plans=plans, stride=g.stride, groups=g.groups,
                         dilation=g.dilation, backend=backend)


def _operand(a):
    """Weight or bias as an array with a shape and dtype (a list becomes NumPy)."""
    return a if hasattr(a, "shape") and hasattr(a, "dtype") else np.asarray(a)


def _delayed(a):
    # One key for the whole operand, so that each worker receives it once rather than
    # inside every task.
    if a is None:
        return None
    if isinstance(a, da.Array):
        return a.rechunk(-1).to_delayed().ravel()[0]
    return dask.delayed(a, pure=True)


def _with_halo(x: da.Array, axis: int, plans: tuple[BlockPlan, ...]) -> da.Array:
    """``x`` whose block ``j`` along ``axis`` is extended to start at ``plans[j].extended_start``.

    Each block is the slice ``[extended_start, own_stop)`` of ``x``; Dask takes the halo
    from the neighbouring blocks (only the sliced part travels between workers) and
    the rechunk joins it to the block, so the number of blocks does not change.
    """
    if all(p.extended_start == p.own_start for p in plans):
        return x
    index = (slice(None),) * axis
    pieces = [x[index + (slice(p.extended_start, p.own_stop),)] for p in plans]
    # Every axis named: concatenate drops empty chunks of the other axes, which must stay.
    extended = tuple(p.own_stop - p.extended_start for p in plans)
    return da.concatenate(pieces, axis=axis).rechunk(
        x.chunks[:axis] + (extended,) + x.chunks[axis + 1:])


def _block(x, weight, bias, *, plans: tuple[tuple[BlockPlan, ...], ...], stride, groups,
           dilation, backend: str, block_id: tuple[int, ...]):
    """One output block from its extended input block ``x`` (NumPy or CuPy)."""
    here = [axis_plans[j] for axis_plans, j in zip(plans, block_id[2:])]
    sizes = tuple(p.out_stop - p.out_start for p in here)
    if 0 in sizes:
        # Shape and array kind only: there is nothing to compute.
        return np.empty_like(x, shape=(x.shape[0], weight.shape[1] * groups) + sizes)
    both = (slice(None),) * 2
    x = x[both + tuple(slice(p.in_start - p.extended_start, p.in_stop - p.extended_start)
                       for p in here)]
    y = dispatch.conv_transpose(len(here), x, weight, bias, stride, 0,
                                tuple(p.output_padding for p in here), groups, dilation,
                                backend)
    # A copy, so that the block does not keep the whole sub-problem's output alive.
    return y[both + tuple(p.crop for p in here)].copy()
