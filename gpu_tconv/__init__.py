"""gpu_tconv: transposed convolution with a gather CUDA kernel (through CuPy) and a NumPy fallback.

Semantics and layouts are PyTorch's ``conv_transpose{1,2,3}d``. Importing the package
neither needs CuPy nor touches a GPU.
"""

from .api import (available_backends, conv_transpose, conv_transpose1d, conv_transpose2d,
                  conv_transpose3d, conv_transpose_backward, output_shape)
from .upsample import upsample

__version__ = "0.1.0"

__all__ = ["available_backends", "conv_transpose", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "conv_transpose_backward", "output_shape", "upsample", "__version__"]
