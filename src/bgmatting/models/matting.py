"""MattingBase and MattingRefine, with the original BGMv2 parameter names and shapes.

``MattingBase`` runs the backbone, ASPP and decoder on the full input; ``MattingRefine`` runs them on
``src``/``bgr`` downsampled by ``backbone_scale`` and refines selected patches at full resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from ..errors import BgMattingError
from ..shapes import check_same_shape, check_shape
from .backbones import make_backbone
from .decoder import Decoder
from .refiner import Refiner

HIDDEN_CHANNELS = 32
_OUT_CHANNELS = 1 + 3 + 1 + HIDDEN_CHANNELS  # pha, fgr residual, err, hid


def check_pair(src: torch.Tensor, bgr: torch.Tensor, multiple: int = 1) -> None:
    """Refuse a network input pair that is not two ``(B, 3, H, W)`` tensors of one shape with ``H``, ``W``
    divisible by ``multiple`` (:class:`~bgmatting.shapes.ShapeError`, or :class:`BgMattingError` for the sizes)."""
    check_shape(src, "src", "B C H W", C=3)
    check_same_shape(src, "src", bgr, "bgr")
    h, w = src.shape[2:]
    if h % multiple or w % multiple:
        raise BgMattingError(f"the model needs H and W divisible by {multiple}, got {h}x{w} "
                             "(bgmatting.Matter pads any size for you)")


def _fraction(scale: float) -> str:
    """``0.125`` → ``'1/8'``; scales that are not 1/N as they are."""
    n = round(1 / scale)
    return f"1/{n}" if abs(n * scale - 1) < 1e-6 else f"{scale:g}"


def check_backbone_size(size: tuple[int, int], backbone_scale: float) -> None:
    """Refuse an input of ``size`` ``(H, W)`` that ``backbone_scale`` shrinks to nothing for the base network.

    The base network sees ``floor(H·s) x floor(W·s)`` pixels (as ``F.interpolate`` rounds); it needs at least one.
    """
    h, w = size
    sh, sw = math.floor(h * backbone_scale), math.floor(w * backbone_scale)
    if sh < 1 or sw < 1:
        raise BgMattingError(f"a {w}x{h} input is too small for backbone scale {_fraction(backbone_scale)}: the base "
                             f"network would see {sw}x{sh} pixels; use a larger backbone scale or a larger image")


class MattingBase(nn.Module):
    """The base network: backbone → ASPP (rates 3, 6, 9) → decoder.

    Args:
        backbone: ``"resnet50"``, ``"resnet101"`` or ``"mobilenetv2"``.

    ``forward(src, bgr)`` with ``src``, ``bgr`` ``(B, 3, H, W)`` in [0, 1] returns ``(pha, fgr, err, hid)``:
    ``pha`` ``(B, 1, H, W)`` in [0, 1], ``fgr`` ``(B, 3, H, W)`` = clamp(residual + src, 0, 1), ``err``
    ``(B, 1, H, W)`` in [0, 1], ``hid`` ``(B, 32, H, W)`` ≥ 0.
    """

    def __init__(self, backbone: str = "resnet50"):
        super().__init__()
        self.backbone_name = backbone
        self.backbone = make_backbone(backbone, in_channels=6)
        deep, *skips = self.backbone.channels
        self.aspp = ASPP(deep, [3, 6, 9])
        self.decoder = Decoder((256, 128, 64, 48, _OUT_CHANNELS), tuple(skips))

    def encode(self, src: torch.Tensor, bgr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Backbone and ASPP: the decoder's inputs ``(aspp(x4), x3, x2, x1, x0)``, ``x0`` = ``cat([src, bgr])``."""
        x, *skips = self.backbone(torch.cat([src, bgr], dim=1))
        return (self.aspp(x), *skips)

    @staticmethod
    def outputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first 5 channels of the last conv: ``pha`` in [0, 1], foreground *residual*, ``err`` in [0, 1]."""
        return x[:, 0:1].clamp(0.0, 1.0), x[:, 1:4], x[:, 4:5].clamp(0.0, 1.0)

    @classmethod
    def heads(cls, x: torch.Tensor):
        """All the last conv's channels: :meth:`outputs` and the hidden channels ``hid`` ≥ 0."""
        return (*cls.outputs(x), x[:, 5:].relu())

    def coarse(self, src: torch.Tensor, bgr: torch.Tensor):
        """Base network: ``pha`` in [0, 1], foreground *residual*, ``err`` in [0, 1], ``hid`` ≥ 0."""
        return self.heads(self.decoder(*self.encode(src, bgr)))

    def forward(self, src: torch.Tensor, bgr: torch.Tensor):
        check_pair(src, bgr)
        pha, fgr_res, err, hid = self.coarse(src, bgr)
        return pha, (fgr_res + src).clamp(0.0, 1.0), err, hid


class MattingRefine(MattingBase):
    """Base network at ``backbone_scale`` plus the patch refiner at full resolution.

    Args:
        backbone: ``"resnet50"``, ``"resnet101"`` or ``"mobilenetv2"``.
        backbone_scale: downsampling of the input to the base network, in (0, 1/2].
        refine_mode: ``"sampling"``, ``"thresholding"`` or ``"full"``.
        refine_sample_pixels: pixels refined in sampling mode (``// 16`` patches of 4×4).
        refine_threshold: error threshold in thresholding mode.
        refine_kernel_size: 3 (the released models) or 1.
        refine_prevent_oversampling: in sampling mode, skip patches with zero error.

    ``forward(src, bgr)`` with ``(B, 3, H, W)`` inputs in [0, 1] (``H``, ``W`` multiples of 4) returns
    ``(pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm)``: ``pha`` ``(B, 1, H, W)`` and ``fgr`` ``(B, 3, H, W)`` in [0, 1];
    the coarse ``pha_sm``, ``fgr_sm``, ``err_sm`` at ``(H·s, W·s)``; ``ref_sm`` ``(B, 1, H/4, W/4)``, 1 where refined.
    """

    def __init__(self, backbone: str = "resnet50", backbone_scale: float = 1 / 4, refine_mode: str = "sampling",
                 refine_sample_pixels: int = 80_000, refine_threshold: float = 0.1, refine_kernel_size: int = 3,
                 refine_prevent_oversampling: bool = True):
        if not 0 < backbone_scale <= 0.5:
            raise BgMattingError(f"backbone_scale must be in (0, 1/2], got {backbone_scale}")
        super().__init__(backbone)
        self.backbone_scale = backbone_scale
        self.refiner = Refiner(refine_mode, refine_sample_pixels, refine_threshold, refine_kernel_size,
                               refine_prevent_oversampling)

    def shrink(self, src: torch.Tensor, bgr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``src`` and ``bgr`` downsampled by ``backbone_scale`` (bilinear): the base network's input."""
        check_backbone_size(tuple(src.shape[2:]), self.backbone_scale)
        return tuple(F.interpolate(t, scale_factor=self.backbone_scale, mode="bilinear", align_corners=False,
                                   recompute_scale_factor=True) for t in (src, bgr))

    def forward(self, src: torch.Tensor, bgr: torch.Tensor):
        check_pair(src, bgr, multiple=4)
        src_sm, bgr_sm = self.shrink(src, bgr)
        pha_sm, fgr_sm, err_sm, hid_sm = self.coarse(src_sm, bgr_sm)
        pha, fgr, ref_sm = self.refiner(src, bgr, pha_sm, fgr_sm, err_sm, hid_sm)
        pha = pha.clamp(0.0, 1.0)
        fgr = (fgr + src).clamp(0.0, 1.0)
        fgr_sm = (fgr_sm + src_sm).clamp(0.0, 1.0)
        return pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm



