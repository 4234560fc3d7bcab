"""The refiner's patches: which 4×4 patches to refine, how they are cut out, and how they are pasted back.

One definition, with the ways to run it as options:

* selection (:func:`select_patches`): ``"topk"`` (eager: the ``min(k, patches)`` largest errors), ``"fixed-k"``
  (a fixed top-``k`` over the errors padded with ``k`` values of -1: a size-independent graph when traced), or
  ``"bisection"`` (no TopK operator: the k-th largest error found by :data:`BISECTION_STEPS` halvings, for
  runtimes whose TopK has a maximum k);
* cropping (:func:`crop_patches`): ``"unfold"`` (a view of ``Tensor.unfold``) or ``"gather"`` (one gather: the same
  crops, exportable to ONNX at dynamic sizes).

All of them give the same patches on error maps without ties at the k-th value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..options import REFINE_MODES  # noqa: F401  (re-exported: the models' vocabulary)

SELECTIONS = ("topk", "fixed-k", "bisection")
CROPS = ("unfold", "gather")
BISECTION_STEPS = 32
PATCH = 4  # pixels per side of a patch at full resolution


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` ``(B, C, h, w)`` resized to ``size`` ``(H, W)``, bilinear, ``align_corners=False``."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def patch_count(sample_pixels: int) -> int:
    """Patches refined per image in sampling mode: ``sample_pixels // 16``."""
    return sample_pixels // (PATCH * PATCH)


def top_patches(flat: torch.Tensor, k: int, fixed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest errors per row of ``flat`` ``(B, n)`` (≥ 0), unsorted: ``(values, indices)`` ``(B, k')``.

    ``fixed=False``: ``k' = min(k, n)``. ``fixed=True``: ``k' = k`` always, from the row padded with ``k`` values of
    -1 (indices ``≥ n`` point into the padding, with value -1): the count does not depend on the input's size.
    """
    if fixed:
        flat = torch.cat([flat, torch.zeros_like(flat[:, :1]).expand(flat.shape[0], k) - 1.0], dim=1)
        return flat.topk(k, dim=1, sorted=False)
    return flat.topk(min(k, flat.shape[1]), dim=1, sorted=False)


def _kth_largest_or_more(flat: torch.Tensor, k: int) -> torch.Tensor:
    """``flat >= t`` (bool, ``(B, n)``) for ``t`` the k-th largest value per row of ``flat`` in [0, 1], found by
    bisection on [-1, 1] without TopK (every value that ties at ``t`` is included); all where ``n < k``."""
    f = flat.float()  # count in float32: exact up to 2**24 patches, also for fp16 models
    lo = torch.zeros_like(f[:, :1]) - 1.0  # count(f > lo) ≥ k, unless there are fewer than k patches
    hi = lo + 2.0
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) * 0.5
        enough = (f > mid).to(f.dtype).sum(dim=1, keepdim=True) >= k
        lo = torch.where(enough, mid, lo)
        hi = torch.where(enough, hi, mid)
    return f > lo  # the k-th largest value lies in (lo, hi], hi - lo = 2 ** (1 - BISECTION_STEPS)


def select_patches(err: torch.Tensor, mode: str, sample_pixels: int, threshold: float,
                   prevent_oversampling: bool = True, selection: str = "topk") -> torch.Tensor:
    """Which patches to refine: ``err`` ``(B, 1, h, w)`` in [0, 1] at 1/4 resolution → ``ref`` ``(B, 1, h, w)``, 1
    where refined (``err``'s dtype).

    ``mode="sampling"``: the :func:`patch_count` patches with the largest error per image (``selection`` says how,
    see :data:`SELECTIONS`); with ``prevent_oversampling`` patches whose error is 0 are dropped. Other modes: every
    patch whose error is above ``threshold``.
    """
    if mode != "sampling":
        return (err > threshold).to(err.dtype)
    b = err.shape[0]
    flat = err.reshape(b, -1)
    k = patch_count(sample_pixels)
    if selection == "bisection":
        ref = _kth_largest_or_more(flat, k)
        if prevent_oversampling:
            ref = ref & (flat > 0)
        return ref.to(err.dtype).reshape(err.shape)
    fixed = selection == "fixed-k"
    _, top = top_patches(flat, k, fixed=fixed)
    ref = torch.zeros_like(flat)
    if fixed:  # room for the indices into the padding
        ref = torch.cat([ref, torch.zeros_like(flat[:, :1]).expand(b, k)], dim=1)
    ref = ref.scatter(1, top, 1.0)[:, : flat.shape[1]]
    if prevent_oversampling:
        ref = ref * (flat > 0).to(ref.dtype)
    return ref.reshape(err.shape)


def _arange_like(x: torch.Tensor, n: int) -> torch.Tensor:
    """``arange(n)`` (long) on ``x``'s device, without a device constant in a trace: ``x``'s last dim must be ≥ n."""
    return torch.ones_like(x[0, 0, 0, :n], dtype=torch.long).cumsum(0) - 1


def crop_patches(x: torch.Tensor, idx: torch.Tensor, size: int, border: int, method: str = "unfold") -> torch.Tensor:
    """Crop the patch-grid cells ``idx`` out of ``x``.

    Args:
        x: ``(B, C, H, W)``, where ``H`` and ``W`` are multiples of ``size``.
        idx: ``(N, 3)`` long tensor of ``(batch, row, col)`` patch-grid coordinates.
        size: the grid cell size in pixels.
        border: extra pixels on each side (zero outside the image).
        method: ``"unfold"`` (views of ``Tensor.unfold``) or ``"gather"`` (one gather, exportable to ONNX at dynamic
            sizes); the same crops.

    Returns:
        ``(N, C, size + 2*border, size + 2*border)``.
    """
    if border:
        x = F.pad(x, (border, border, border, border))
    k = size + 2 * border
    if method == "unfold":
        windows = x.unfold(2, k, size).unfold(3, k, size)  # (B, C, H/size, W/size, k, k), a view
        return windows[idx[:, 0], :, idx[:, 1], idx[:, 2]]
    _, c, h, w = x.shape
    offsets = _arange_like(x, k)
    rows = idx[:, 1:2] * size + offsets  # (N, k)
    cols = idx[:, 2:3] * size + offsets
    flat = (idx[:, 0:1, None] * h + rows[:, :, None]) * w + cols[:, None, :]  # (N, k, k) into (B*H*W)
    pixels = x.permute(0, 2, 3, 1).reshape(-1, c)
    return pixels[flat.reshape(-1)].reshape(-1, k, k, c).permute(0, 3, 1, 2).contiguous()


def paste_patches(x: torch.Tensor, patches: torch.Tensor, idx: torch.Tensor, size: int = PATCH) -> torch.Tensor:
    """Return ``x`` ``(B, C, H, W)`` with the grid cells ``idx`` replaced by ``patches`` ``(N, C, size, size)``."""
    b, c, h, w = x.shape
    grid = x.reshape(b, c, h // size, size, w // size, size).permute(0, 2, 4, 1, 3, 5).clone()
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = patches.to(grid.dtype)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
