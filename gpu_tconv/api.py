"""The public functions: each is a docstring and one call."""

from __future__ import annotations

from typing import Sequence

from . import dispatch
from .geometry import IntOrTuple, Padding, geometry_from_shapes

_DOC = """{rank}-D transposed convolution ("deconvolution"), as PyTorch's ``{torch}``.

    Args:
        x: input, ``(N, C_in, {spatial})``, or ``(N, {spatial}, C_in)`` with
            ``layout="channels_last"``; NumPy or CuPy (or any array with
            ``__cuda_array_interface__`` or ``__dlpack__``), float16/32/64 or bfloat16
            (``ml_dtypes.bfloat16``).
        weight: ``(C_in, C_out/groups, {kernel})`` in either layout, same dtype as ``x``.
        bias: ``(C_out,)`` or ``None``.
        stride, output_padding, dilation: an int or one int per spatial dimension.
            ``output_padding`` must be smaller than ``stride`` or ``dilation`` and is
            added at the high end only.
        padding: an int or one int per dimension (removed at both ends), one
            ``(low, high)`` pair per dimension, or Keras/TensorFlow's ``"same"``
            (``out = in*stride``) or ``"valid"`` (``out = (in-1)*stride +
            max(dilation*(k-1)+1, stride)``).
        groups: ``C_in`` and ``C_out`` are split into this many independent groups.
        output_size: the spatial output sizes wanted (or a whole shape, whose
            trailing entries are used), between the minimum and minimum + stride - 1
            as PyTorch's modules allow; turned into output padding.
        layout: ``"channels_first"`` (default) or ``"channels_last"``, for ``x`` and
            the result.
        backend: ``"auto"`` (the CUDA kernel when CuPy and a GPU are usable, else
            NumPy), ``"cuda"``, ``"numpy"`` or ``"emulated"`` (the CUDA source run on
            the CPU, for testing).
        variant: the CUDA kernel: ``"auto"`` (chosen per shape by
            ``gpu_tconv.variants.choose``) or a name of ``gpu_tconv.variants.VARIANTS``
            (``"simple"``, ``"phase"``, ...), on the ``cuda`` and ``emulated`` backends;
            the ``numpy`` backend has no kernels and ignores it. An unknown name, or one
            that cannot run this shape, is a ``ValueError``.
        precision: ``"highest"`` (default: float32 computed in float32) or ``"tf32"``
            (float32 as on TF32 tensor cores, PyTorch's ``allow_tf32``: on every
            backend the operands of each product are rounded to 10 mantissa bits, a
            relative error of up to 2**-11 each, and summed in float32, so results
            differ from float32 by up to about 2**-10 of ``sum |x*w|``). It changes
            nothing for the other dtypes.

    Returns:
        ``y`` of shape ``(N, C_out, {out})`` (or channels last) with, per spatial
        dimension, ``out = (in-1)*stride - padding_low - padding_high + dilation*(k-1)
        + output_padding + 1``; the dtype of ``x``; NumPy for host input, CuPy on the
        device of ``x`` for device input. float16 and bfloat16 are accumulated in
        float32 and rounded once.

    Raises:
        ValueError, TypeError: for invalid shapes, dtypes or parameters (``precision``
            included), naming the parameter, before any work is done.
        RuntimeError: if ``backend`` names a backend that cannot run here, saying why.
    """


def conv_transpose(x, weight, bias=None, stride: IntOrTuple = 1, padding: Padding = 0,
                   output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                   *, output_size: Sequence[int] | None = None, layout: str = "channels_first",
                   backend: str = "auto", variant: str = "auto", precision: str = "highest"):
    return dispatch.conv_transpose(None, x, weight, bias, stride, padding, output_padding,
                                   groups, dilation, backend, output_size, layout,
                                   variant=variant, precision=precision)


def conv_transpose1d(x, weight, bias=None, stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                     *, output_size: Sequence[int] | None = None,
                     layout: str = "channels_first", backend: str = "auto",
                     variant: str = "auto", precision: str = "highest"):
    return dispatch.conv_transpose(1, x, weight, bias, stride, padding, output_padding,
                                   groups, dilation, backend, output_size, layout,
                                   variant=variant, precision=precision)


def conv_transpose2d(x, weight, bias=None, stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                     *, output_size: Sequence[int] | None = None,
                     layout: str = "channels_first", backend: str = "auto",
                     variant: str = "auto", precision: str = "highest"):
    return dispatch.conv_transpose(2, x, weight, bias, stride, padding, output_padding,
                                   groups, dilation, backend, output_size, layout,
                                   variant=variant, precision=precision)


def conv_transpose3d(x, weight, bias=None, stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                     *, output_size: Sequence[int] | None = None,
                     layout: str = "channels_first", backend: str = "auto",
                     variant: str = "auto", precision: str = "highest"):
    return dispatch.conv_transpose(3, x, weight, bias, stride, padding, output_padding,
                                   groups, dilation, backend, output_size, layout,
                                   variant=variant, precision=precision)


def document_ranks(template: str, generic, rank1, rank2, rank3) -> None:
    """Fill the docstrings of a family of functions (any rank, 1-D, 2-D, 3-D) from a template.

    The template's fields: ``rank``, ``name`` (``conv_transpose``, ``conv_transpose1d``,
    ...), ``torch`` (PyTorch's function), ``spatial``, ``kernel`` and ``out`` (the names
    of the dimensions).
    """
    dims = {None: ("N", "", "*spatial", "*kernel", "*out"),
            1: ("1", "1d", "L", "kL", "L_out"),
            2: ("2", "2d", "H, W", "kH, kW", "H_out, W_out"),
            3: ("3", "3d", "D, H, W", "kD, kH, kW", "D_out, H_out, W_out")}
    for rank, function in zip(dims, (generic, rank1, rank2, rank3)):
        label, suffix, spatial, kernel, out = dims[rank]
        function.__doc__ = template.format(
            rank=label, name=f"conv_transpose{suffix}",
            torch=f"conv_transpose{suffix or '{1,2,3}d'}", spatial=spatial, kernel=kernel,
            out=out)
    generic.__doc__ += "\n    The rank (1, 2 or 3) is ``weight.ndim - 2``.\n"


document_ranks(_DOC, conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d)


def output_shape(x_shape, weight_shape, stride: IntOrTuple = 1, padding: Padding = 0,
                 output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                 *, output_size: Sequence[int] | None = None,
                 layout: str = "channels_first") -> tuple[int, ...]:
    """Shape of the result for these shapes and parameters: ``(N, C_out, *out)``, or
    ``(N, *out, C_out)`` with ``layout="channels_last"``.

    Per spatial dimension ``out = (in-1)*stride - padding_low - padding_high
    + dilation*(k-1) + output_padding + 1``; the rank is ``len(weight_shape) - 2``.
    Invalid shapes or parameters raise the same errors as the convolution itself.
    """
    return geometry_from_shapes(x_shape, weight_shape, None, stride, padding, output_padding,
                                groups, dilation, output_size=output_size,
                                layout=layout).out_shape


def conv_transpose_backward(grad_output, x, weight, *, stride: IntOrTuple = 1,
                            padding: Padding = 0, output_padding: IntOrTuple = 0,
                            groups: int = 1, dilation: IntOrTuple = 1,
                            output_size: Sequence[int] | None = None,
                            layout: str = "channels_first",
                            needs: Sequence[str] = ("input", "weight", "bias"),
                            backend: str = "auto", precision: str = "highest"):
    """Gradients of ``y = conv_transpose(x, weight, bias, ...)`` given ``dy = grad_output``.

    Parameters are those of :func:`conv_transpose` (the rank is ``weight.ndim - 2``);
    ``grad_output`` has the output's shape. With ``o = i*stride + k*dilation -
    padding_low``:

    - input: ``dx[n, ci, i] = sum_{k, co} w[ci, co, k] dy[n, co, o]`` (a strided forward
      convolution of ``dy``), shape of ``x``;
    - weight: ``dw[ci, co, k] = sum_{n, i} x[n, ci, i] dy[n, co, o]``, shape of ``weight``;
    - bias: ``db[co] = sum_{n, o} dy[n, co, o]``, shape ``(C_out,)``.

    Returns ``(dx, dw, db)``, with ``None`` for each gradient not in ``needs``. The
    ``cuda`` and ``emulated`` backends run gather kernels, one thread per gradient
    element, with no atomics: deterministic bit for bit. ``precision`` is that of
    :func:`conv_transpose` (``"tf32"``: the operands of the products, ``dy``, ``x`` and
    ``weight``, are rounded to TF32 on every backend); another value raises
    ``ValueError`` naming ``precision``.
    """
    return dispatch.conv_transpose_backward(grad_output, x, weight, stride, padding,
                                            output_padding, groups, dilation, backend,
                                            output_size, layout, needs, precision=precision)


def available_backends() -> list[str]:
    """The backends usable on this machine, e.g. ``["numpy", "emulated"]``."""
    return dispatch.available_backends()
