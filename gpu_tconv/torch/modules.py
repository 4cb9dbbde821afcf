"""``ConvTranspose{1,2,3}d``: ``torch.nn``'s modules computed by the operator."""

from __future__ import annotations

import torch
from torch import nn

from . import functional


class _Forward:
    """The forward of PyTorch's ConvTranspose modules on ``torch.ops.gpu_tconv``."""

    _rank: int

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError(f"only 'zeros' padding mode is supported, got {self.padding_mode!r}")
        # torch.nn's own rule turns output_size into output padding (or says why it cannot).
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, self._rank, self.dilation)
        return functional.conv_transpose(self._rank, input, self.weight, self.bias, self.stride,
                                         self.padding, output_padding, self.groups,
                                         self.dilation)


class ConvTranspose1d(_Forward, nn.ConvTranspose1d):
    """``torch.nn.ConvTranspose1d`` (same constructor and state), computed by gpu_tconv."""

    _rank = 1


class ConvTranspose2d(_Forward, nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` (same constructor and state), computed by gpu_tconv."""

    _rank = 2


class ConvTranspose3d(_Forward, nn.ConvTranspose3d):
    """``torch.nn.ConvTranspose3d`` (same constructor and state), computed by gpu_tconv."""

    _rank = 3
