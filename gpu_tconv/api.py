"""The public functions: each is a docstring and one call."""

from __future__ import annotations

from . import dispatch
from .geometry import IntOrTuple, geometry_from_shapes

_DOC = """{rank}-D transposed convolution ("deconvolution"), as PyTorch's ``{torch}``.

    Args:
        x: input, shape ``(N, C_in, {spatial})``; NumPy or CuPy, float16/32/64.
        weight: shape ``(C_in, C_out/groups, {kernel})``, same dtype as ``x``.
        bias: shape ``(C_out,)`` or ``None``.
        stride, padding, output_padding, dilation: an int or one int per spatial
            dimension. ``output_padding`` must be smaller than ``stride`` or
            ``dilation`` and is added to one side only.
        groups: ``C_in`` and ``C_out`` are split into this many independent groups.
        backend: ``"auto"`` (the CUDA kernel when CuPy and a GPU are usable, else
            NumPy), ``"cuda"``, ``"numpy"`` or ``"emulated"`` (the CUDA source run on
            the CPU, for testing).

    Returns:
        ``y`` of shape ``(N, C_out, {out})`` with, per spatial dimension,
        ``out = (in-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1``;
        the dtype of ``x`` and the array kind of ``x`` (CuPy results stay on the
        device of ``x``). float16 is accumulated in float32.

    Raises:
        ValueError, TypeError: for invalid shapes, dtypes or parameters, naming the
            parameter, before any work is done.
        RuntimeError: if ``backend`` names a backend that cannot run here, saying why.
    """


def conv_transpose(x, weight, bias=None, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
                   output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                   *, backend: str = "auto"):
    return dispatch.conv_transpose(None, x, weight, bias, stride, padding, output_padding,
                                   groups, dilation, backend)


def conv_transpose1d(x, weight, bias=None, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                     *, backend: str = "auto"):
    return dispatch.conv_transpose(1, x, weight, bias, stride, padding, output_padding,
                                   groups, dilation, backend)


def conv_transpose2d(x, weight, bias=None, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                     *, backend: str = "auto"):
    return dispatch.conv_transpose(2, x, weight, bias, stride, padding, output_padding,
                                   groups, dilation, backend)


def conv_transpose3d(x, weight, bias=None, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                     *, backend: str = "auto"):
    return dispatch.conv_transpose(3, x, weight, bias, stride, padding, output_padding,
                                   groups, dilation, backend)


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


def output_shape(x_shape, weight_shape, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
                 output_padding: IntOrTuple = 0, groups: int = 1,
                 dilation: IntOrTuple = 1) -> tuple[int, ...]:
    """Shape ``(N, C_out, *out)`` of the result for these shapes and parameters.

    Per spatial dimension ``out = (in-1)*stride - 2*padding + dilation*(k-1)
    + output_padding + 1``; the rank is ``len(weight_shape) - 2``. Invalid shapes or
    parameters raise the same errors as the convolution itself.
    """
    return geometry_from_shapes(x_shape, weight_shape, None, stride, padding, output_padding,
                                groups, dilation).out_shape


def available_backends() -> list[str]:
    """The backends usable on this machine, e.g. ``["numpy", "emulated"]``."""
    return dispatch.available_backends()
