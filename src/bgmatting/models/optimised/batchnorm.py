"""BatchNorm folding: an eval-mode BatchNorm2d after a Conv2d is a per-channel affine map, merged into the conv."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the Conv2d that feeds it, in place; returns ``module``.

    A pair is a ``Conv2d`` child of a module followed directly, in the order the children were registered, by a
    ``BatchNorm2d`` child over its output channels: the items of an ``nn.Sequential`` (torchvision's MobileNetV2,
    ASPP, ResNet downsample) and ``self.conv = ...; self.bn = ...`` attributes (ResNet stem and bottlenecks, the
    decoder, the refiner) alike, whatever their names. The BatchNorm becomes ``nn.Identity``. Every BatchNorm of
    the networks is found this way (``tests/test_fast.py`` checks that none is left and the outputs agree).
    """
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and bn.num_features == conv.out_channels):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    return module
