"""The BGMv2 decoder: bilinear upsampling with skip connections, 3×3 conv + BN + ReLU at each scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Decoder(nn.Module):
    """Upsample the ASPP output through the encoder's skips back to the input resolution.

    Args:
        channels: ``(c_in, c1, c2, c3, c_out)``: ASPP output channels, the three hidden widths and the output width.
        skip_channels: channels of the skips ``(x3, x2, x1, x0)``, deepest first.

    ``forward(x4, x3, x2, x1, x0)`` with ``x4`` ``(B, c_in, h, w)`` returns ``(B, c_out, H, W)`` at the size of
    ``x0``; the last conv has a bias and no normalisation or activation.
    """

    def __init__(self, channels: tuple[int, ...], skip_channels: tuple[int, ...]):
        super().__init__()
        c = channels
        s = skip_channels
        self.conv1 = nn.Conv2d(c[0] + s[0], c[1], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c[1])
        self.conv2 = nn.Conv2d(c[1] + s[1], c[2], 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c[2])
        self.conv3 = nn.Conv2d(c[2] + s[2], c[3], 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c[3])
        self.conv4 = nn.Conv2d(c[3] + s[3], c[4], 3, padding=1, bias=True)
        self.relu = nn.ReLU(True)

    @staticmethod
    def up_cat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return torch.cat([x, skip], dim=1)

    def low_features(self, x4, x3, x2, x1) -> torch.Tensor:
        """The third conv's output ``(B, c3, h, w)`` at the size of ``x1``: upsampled to the size of ``x0`` and
        concatenated with ``x0``, it is the last conv's input."""
        x = self.relu(self.bn1(self.conv1(self.up_cat(x4, x3))))
        x = self.relu(self.bn2(self.conv2(self.up_cat(x, x2))))
        return self.relu(self.bn3(self.conv3(self.up_cat(x, x1))))

    def forward(self, x4, x3, x2, x1, x0) -> torch.Tensor:
        return self.conv4(self.up_cat(self.low_features(x4, x3, x2, x1), x0))
