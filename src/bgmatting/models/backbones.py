"""Backbones: torchvision ResNet-50/101 and MobileNetV2 with a 6-channel input and output stride 16.

Both encoders take ``x`` = ``cat([src, bgr], dim=1)`` of shape ``(B, 6, H, W)`` and return the deepest
feature map followed by the skip connections, deepest first::

    ResNet:      (B, 2048, H/16, W/16), (B, 512, H/8, W/8), (B, 256, H/4, W/4), (B, 64, H/2, W/2), x
    MobileNetV2: (B,  320, H/16, W/16), (B,  32, H/8, W/8), (B,  24, H/4, W/4), (B, 16, H/2, W/2), x

(sizes rounded up for odd inputs). Output stride 16 comes from replacing the last stride by dilation.
Parameter names are torchvision's, so ImageNet/DeepLabV3 and original BGMv2 checkpoints load by name.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import mobilenet_v2, resnet50, resnet101

from ..options import BACKBONES  # noqa: F401  (re-exported: the models' vocabulary)


class ResNetEncoder(nn.Module):
    """ResNet-50/101 trunk (no pooling head), first conv widened to ``in_channels``, layer4 dilated."""

    def __init__(self, in_channels: int = 6, variant: str = "resnet50"):
        super().__init__()
        factory = {"resnet50": resnet50, "resnet101": resnet101}.get(variant)
        if factory is None:
            raise ValueError(f"unknown ResNet variant {variant!r}")
        net = factory(weights=None, replace_stride_with_dilation=[False, False, True])
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = (2048, 512, 256, 64, in_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x0 = x
        x1 = self.relu(self.bn1(self.conv1(x0)))      # stride 2
        x2 = self.layer1(self.maxpool(x1))           # stride 4
        x3 = self.layer2(x2)                         # stride 8
        x4 = self.layer4(self.layer3(x3))            # stride 16 (layer4 dilated)
        return x4, x3, x2, x1, x0


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 ``features`` without its last 1×1 conv; block 14 un-strided and blocks 15-17 dilated by 2."""

    def __init__(self, in_channels: int = 6):
        super().__init__()
        features = mobilenet_v2(weights=None).features[:-1]
        if in_channels != 3:
            features[0][0] = nn.Conv2d(in_channels, 32, kernel_size=3, stride=2, padding=1, bias=False)
        # Keep output stride 16: the depthwise conv of block 14 no longer strides, later ones dilate instead.
        features[14].conv[1][0].stride = (1, 1)
        for block in features[15:]:
            block.conv[1][0].dilation = (2, 2)
            block.conv[1][0].padding = (2, 2)
        self.features = features
        self.channels = (320, 32, 24, 16, in_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.features
        x0 = x
        x1 = f[1](f[0](x0))          # stride 2, 16 ch
        x2 = f[3](f[2](x1))          # stride 4, 24 ch
        x3 = x2
        for i in range(4, 7):        # stride 8, 32 ch
            x3 = f[i](x3)
        x4 = x3
        for i in range(7, 18):       # stride 16, 320 ch
            x4 = f[i](x4)
        return x4, x3, x2, x1, x0


def make_backbone(name: str, in_channels: int = 6) -> nn.Module:
    """Build the encoder called ``name`` (one of :data:`BACKBONES`)."""
    if name in ("resnet50", "resnet101"):
        return ResNetEncoder(in_channels, name)
    if name == "mobilenetv2":
        return MobileNetV2Encoder(in_channels)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
