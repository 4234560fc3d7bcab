"""Winograd 3×3 convolutions by NNPACK on the CPU (fp32 inference), with oneDNN's as the fallback."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


def nnpack_available() -> bool:
    """Whether this PyTorch has NNPACK (Winograd convolutions on the CPU)."""
    try:
        return bool(torch._nnpack_available())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without it
        return False


class WinogradConv2d(nn.Conv2d):
    """A 3×3, stride-1 ``Conv2d`` computed by NNPACK's Winograd convolution on the CPU in fp32 inference.

    On one wide image (the decoder's convolutions) it does about half of oneDNN's or ONNX Runtime's work, at a
    rounding error of about 1e-5 (fp32). Anywhere else (CUDA, other dtypes, autograd) it is a plain ``Conv2d``.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "WinogradConv2d":
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError("WinogradConv2d computes 3x3 convolutions with stride 1, dilation 1 and one group")
        new = cls(conv.in_channels, conv.out_channels, 3, padding=conv.padding, bias=True,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            new.bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(new.bias))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return winograd_conv(x, self.weight, self.bias, self.padding)


_nnpack_failed = False  # set when NNPACK raised once: from then on oneDNN computes these convs


def winograd_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  padding=(0, 0)) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` (3×3, stride 1) by NNPACK's Winograd convolution where it
    can run (CPU, fp32, inference); elsewhere, or if NNPACK fails (a warning, once), by ``F.conv2d``."""
    global _nnpack_failed
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_grad_enabled() and not _nnpack_failed and nnpack_available()):
        b, w, pad = bias if bias is not None else x.new_zeros(weight.shape[0]), weight.contiguous(), list(padding)
        try:  # one image per call: NNPACK's batched algorithm is 1.1 to 2.7 times slower per image
            if x.shape[0] == 1:
                return torch._nnpack_spatial_convolution(x.contiguous(), w, b, pad)
            return torch.cat([torch._nnpack_spatial_convolution(xi.contiguous(), w, b, pad) for xi in x.split(1)])
        except RuntimeError as e:
            _nnpack_failed = True
            warnings.warn(f"NNPACK failed ({e}); using oneDNN's convolutions instead", stacklevel=2)
    return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), padding=tuple(padding))
