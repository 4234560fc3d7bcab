"""The BGMv2 refiner: re-predicts alpha and foreground residual on selected 4×4 patches at full resolution.

Selection works on the coarse error map upsampled to 1/4 resolution, where each pixel stands for one 4×4
patch of the full image:

* ``"sampling"``: the ``sample_pixels // 16`` patches with the largest error (top-k per image); with
  ``prevent_oversampling`` patches whose error is exactly 0 are dropped.
* ``"thresholding"``: every patch whose error is above ``threshold``.
* ``"full"``: no selection; the refiner runs densely over the whole image.

Stage 1 runs on 8×8 crops (4×4 patch plus a 2-pixel border) of ``[hid, pha, fgr]`` and ``[src, bgr]``, both
resized to 1/2 resolution; two 3×3 valid convs (+BN+ReLU) shrink them to 4×4. Stage 2 upsamples that to 8×8
(nearest), adds the full-resolution ``[src, bgr]`` crop, and two more 3×3 valid convs give the 4×4 patch.
With ``kernel_size=1`` the crops carry no border.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .patches import CROPS, REFINE_MODES, SELECTIONS, crop_patches, paste_patches, resize_bilinear, select_patches


class Refiner(nn.Module):
    """Patch refiner. ``forward(src, bgr, pha, fgr, err, hid) -> (pha, fgr, ref)``.

    Inputs: ``src``, ``bgr`` ``(B, 3, H, W)`` in [0, 1] with ``H``, ``W`` multiples of 4; ``pha`` ``(B, 1, h, w)``,
    ``fgr`` ``(B, 3, h, w)`` (the foreground *residual*), ``err`` ``(B, 1, h, w)``, ``hid`` ``(B, 32, h, w)`` from
    the base network at any coarse size ``(h, w)``.

    Returns full-resolution ``pha`` ``(B, 1, H, W)`` and ``fgr`` residual ``(B, 3, H, W)`` (not clamped), and
    ``ref`` ``(B, 1, H/4, W/4)``: 1 where a patch was refined.

    ``selection`` and ``crop`` say how the patches are chosen and cut out (:data:`~.patches.SELECTIONS`,
    :data:`~.patches.CROPS`); every way gives the same patches, and they are not part of the state dict.
    """

    def __init__(self, mode: str = "sampling", sample_pixels: int = 80_000, threshold: float = 0.1,
                 kernel_size: int = 3, prevent_oversampling: bool = True, selection: str = "topk",
                 crop: str = "unfold"):
        super().__init__()
        if mode not in REFINE_MODES:
            raise ValueError(f"refine mode must be one of {', '.join(REFINE_MODES)}, not {mode!r}")
        if kernel_size not in (1, 3):
            raise ValueError(f"refine kernel size must be 1 or 3, not {kernel_size!r}")
        if selection not in SELECTIONS or crop not in CROPS:
            raise ValueError(f"selection must be one of {SELECTIONS} and crop one of {CROPS}, not {selection!r} and "
                             f"{crop!r}")
        self.selection, self.crop = selection, crop  # how to run it (patches.py): not in the state dict
        self.mode = mode
        self.sample_pixels = sample_pixels
        self.threshold = threshold
        self.kernel_size = kernel_size
        self.prevent_oversampling = prevent_oversampling
        hid, src_bgr, coarse = 32, 6, 4  # channels of hid, [src, bgr] and [pha, fgr]
        self.conv1 = nn.Conv2d(hid + coarse + src_bgr, 24, kernel_size, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.conv2 = nn.Conv2d(24, 16, kernel_size, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16 + src_bgr, 12, kernel_size, bias=False)
        self.bn3 = nn.BatchNorm2d(12)
        self.conv4 = nn.Conv2d(12, 4, kernel_size, bias=True)
        self.relu = nn.ReLU(True)

    def extra_repr(self) -> str:
        ways = "" if (self.selection, self.crop) == ("topk", "unfold") else \
            f", selection={self.selection!r}, crop={self.crop!r}"
        return (f"mode={self.mode!r}, sample_pixels={self.sample_pixels}, threshold={self.threshold}, "
                f"kernel_size={self.kernel_size}, prevent_oversampling={self.prevent_oversampling}{ways}")

    def select(self, err: torch.Tensor) -> torch.Tensor:
        """Which patches to refine: ``err`` ``(B, 1, h, w)`` at 1/4 resolution → ``ref`` ``(B, 1, h, w)`` of 0/1
        (:func:`~bgmatting.models.patches.select_patches` with this refiner's options)."""
        return select_patches(err, self.mode, self.sample_pixels, self.threshold, self.prevent_oversampling,
                              self.selection)

    def stage1(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))

    def stage2(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv4(self.relu(self.bn3(self.conv3(x))))

    def forward(self, src, bgr, pha, fgr, err, hid):
        H, W = src.shape[2:]
        half, quarter = (H // 2, W // 2), (H // 4, W // 4)
        src_bgr = torch.cat([src, bgr], dim=1)
        coarse = torch.cat([hid, pha, fgr], dim=1)
        k3 = self.kernel_size == 3

        if self.mode == "full":
            x = resize_bilinear(coarse, half)
            y = resize_bilinear(src_bgr, half)
            if k3:  # 3 px of zeros on each side: two valid 3×3 convs leave a 1 px border for stage 2
                x, y = F.pad(x, (3, 3, 3, 3)), F.pad(y, (3, 3, 3, 3))
            x = self.stage1(torch.cat([x, y], dim=1))
            if k3:
                x = F.interpolate(x, size=(H + 4, W + 4), mode="nearest")
                y = F.pad(src_bgr, (2, 2, 2, 2))
            else:
                x = F.interpolate(x, size=(H, W), mode="nearest")
                y = src_bgr
            out = self.stage2(torch.cat([x, y], dim=1))
            ref = torch.ones_like(src[:, :1, ::4, ::4])  # (B, 1, H/4, W/4); no device constant in a trace
            return out[:, :1], out[:, 1:], ref

        ref = self.select(resize_bilinear(err, quarter))
        idx = torch.nonzero(ref[:, 0])  # (N, 3): batch, row, col on the 1/4 grid
        out = resize_bilinear(torch.cat([pha, fgr], dim=1), (H, W))
        if idx.shape[0] > 0 or torch.jit.is_tracing():  # a trace keeps the patch path (it copes with none)
            x = crop_patches(resize_bilinear(coarse, half), idx, 2, 3 if k3 else 0, self.crop)
            y = crop_patches(resize_bilinear(src_bgr, half), idx, 2, 3 if k3 else 0, self.crop)
            x = self.stage1(torch.cat([x, y], dim=1))
            x = F.interpolate(x, size=(8, 8) if k3 else (4, 4), mode="nearest")
            y = crop_patches(src_bgr, idx, 4, 2 if k3 else 0, self.crop)
            out = paste_patches(out, self.stage2(torch.cat([x, y], dim=1)), idx)
        return out[:, :1], out[:, 1:], ref
