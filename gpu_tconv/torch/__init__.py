"""PyTorch front end: the operator ``torch.ops.gpu_tconv.conv_transpose`` (with its
backward, ``torch.ops.gpu_tconv.conv_transpose_backward``), the functions
``conv_transpose{1,2,3}d`` and the modules ``ConvTranspose{1,2,3}d`` on it. Needs
PyTorch; ``import gpu_tconv`` does not.

Importing this module registers the operators (:mod:`.ops`). They have fake kernels,
autograd and CPU (NumPy backend, zero-copy) and CUDA (gather kernels on PyTorch's
stream and allocator, CUDA-graph capturable) kernels, so ``torch.compile``,
``torch.export`` and ``torch.library.opcheck`` treat them as built-in ones. The
modules subclass ``torch.nn.ConvTranspose{1,2,3}d``: construction, parameters,
initialization and ``state_dict`` keys are PyTorch's own.
"""

from .functional import conv_transpose1d, conv_transpose2d, conv_transpose3d
from .modules import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from .ops import conv_transpose, conv_transpose_backward

__all__ = ["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "conv_transpose",
           "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "conv_transpose_backward"]
