"""BatchNorm folding: an eval-mode BatchNorm2d after a Conv2d is a per-channel affine map, merged into the conv."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the Conv2d that feeds it, in place; returns ``module``.

    Covers both ways the networks pair them: consecutive ``(Conv2d, BatchNorm2d)`` in an ``nn.Sequential``
    (torchvision's MobileNetV2 and ASPP, ResNet downsample) and attributes ``convN``/``bnN`` of one module
    (ResNet stem and bottlenecks, the decoder, the refiner). The BatchNorm becomes ``nn.Identity``.
    """
    for child in list(module.modules()):
        if isinstance(child, nn.Sequential):
            items = list(child)
            for i in range(len(items) - 1):
                conv, bn = items[i], items[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    child[i] = fuse_conv_bn_eval(conv, bn)
                    child[i + 1] = nn.Identity()
        for suffix in ("", "1", "2", "3", "4"):
            conv, bn = getattr(child, "conv" + suffix, None), getattr(child, "bn" + suffix, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(child, "conv" + suffix, fuse_conv_bn_eval(conv, bn))
                setattr(child, "bn" + suffix, nn.Identity())
    return module
