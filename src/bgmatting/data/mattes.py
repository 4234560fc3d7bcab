"""Turning a teacher's matte into a training matte: a second opinion for see-through patches, a region of interest,
cleaning (stray blobs, holes, nearly opaque insides), and a measure of unsureness. Needs SciPy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BgMattingError

__all__ = ["clean_matte", "cut_out", "fuse_support", "instance_roi", "uncertain_ratio"]


def _ndimage():
    try:
        from scipy import ndimage
    except ImportError:
        raise BgMattingError("scipy is needed to clean teacher mattes: pip install scipy") from None
    return ndimage


def fuse_support(pha: np.ndarray, support: np.ndarray, *, solid: float = 0.8, erode_frac: float = 0.015) -> np.ndarray:
    """Fill see-through patches inside a body with a second, coarser opinion.

    ``support`` ``(H, W)`` in [0, 1] (e.g. a saliency mask) is thresholded at ``solid`` and eroded by
    ``erode_frac`` of the long side, so it never reaches the subject's outline, where ``pha`` keeps
    its soft edge. Only support regions that overlap the matte's core (``pha > 0.5``) by at least a
    fifth count, so salient objects away from the person add nothing. Returns ``max(pha, fill)``.
    """
    nd = _ndimage()
    H, W = pha.shape
    r = max(1, int(round(erode_frac * max(H, W))))
    core = nd.binary_erosion(support >= solid, iterations=r)
    lab, n = nd.label(core)
    if n == 0:
        return pha.astype(np.float32)
    ids = np.arange(1, n + 1)
    area = nd.sum(np.ones_like(pha), lab, ids)
    overlap = nd.sum(pha > 0.5, lab, ids)
    keep = ids[overlap >= 0.2 * area]
    core = np.isin(lab, keep)
    fill = nd.gaussian_filter(core.astype(np.float32), sigma=r / 2)
    fill = np.clip(fill * 2.0, 0.0, 1.0) * nd.binary_dilation(core, iterations=r)
    return np.maximum(pha, fill).astype(np.float32)


def clean_matte(
    pha: np.ndarray,
    *,
    low: float = 0.05,
    keep_ratio: float = 0.2,
    small_hole: float = 0.01,
    big_hole: float = 0.05,
    see_through: float = 0.2,
    solid: float = 0.85,
    edge_frac: float = 0.006,
) -> np.ndarray:
    """Clean a teacher's matte ``(H, W)`` in [0, 1]; soft edges are kept.

    1. Stray blobs: connected components (8-connected) of ``pha > low`` whose alpha mass is below
       ``keep_ratio`` of the largest one are set to 0; the main subject, and subjects of similar size,
       stay.
    2. Holes: regions of ``pha <= 0.5`` enclosed by the subject (not reaching the image border) are
       set to 1 when their area is at most ``small_hole`` of the subject's area, or at most
       ``big_hole`` of it with a mean alpha of at least ``see_through`` (a see-through patch rather
       than background seen through a gap, e.g. between an arm and the body), and so is the soft rim
       around a filled hole (alpha above 0.5 within ``edge_frac`` of the long side of it).
    3. Nearly opaque inside: pixels of alpha at least ``solid`` that lie more than ``edge_frac`` of the
       long side (at least 1 pixel) inside the subject (``pha > 0.5``) become 1 (a body the teacher left
       slightly below 1 would composite see-through).
    4. Alpha below 1/255 becomes exactly 0.

    Returns a new ``(H, W)`` float32 array in [0, 1].
    """
    nd = _ndimage()
    pha = np.clip(np.asarray(pha, dtype=np.float32), 0.0, 1.0).copy()
    eight = np.ones((3, 3), bool)

    lab, n = nd.label(pha > low, structure=eight)
    if n > 1:
        ids = np.arange(1, n + 1)
        mass = nd.sum(pha, lab, ids)
        drop = ids[mass < keep_ratio * mass.max()]
        pha[np.isin(lab, drop)] = 0.0

    core = pha > 0.5
    area = int(core.sum())
    r = max(1, int(round(edge_frac * max(pha.shape))))
    if area:
        holes = nd.binary_fill_holes(core) & ~core
        hl, hn = nd.label(holes)
        if hn:
            ids = np.arange(1, hn + 1)
            h_area = nd.sum(holes, hl, ids)
            h_mean = nd.mean(pha, hl, ids)
            fill = ids[(h_area <= small_hole * area) | ((h_area <= big_hole * area) & (h_mean >= see_through))]
            if fill.size:
                mask = np.isin(hl, fill)
                pha[nd.binary_dilation(mask, iterations=r) & (pha > 0.5) | mask] = 1.0  # with the hole's soft rim
        inside = nd.binary_erosion(pha > 0.5, structure=eight, iterations=r)
        pha[inside & (pha >= solid)] = 1.0
    pha[pha < 1.0 / 255.0] = 0.0
    return pha


def uncertain_ratio(pha: np.ndarray) -> float:
    """Pixels with alpha in (0.1, 0.9) over pixels with alpha above 0.5: a matte's unsureness
    (clean portrait mattes score about 0.03–0.10; blotchy ones 0.15 and more)."""
    core = int((pha > 0.5).sum())
    return float(((pha > 0.1) & (pha < 0.9)).sum() / core) if core else 1.0


def cut_out(rgb: np.ndarray, teacher, support, *, ref_size: int | None = None,
            roi: np.ndarray | None = None) -> np.ndarray:
    """Teacher → support (see-through patches) → region of interest → :func:`clean_matte`.
    ``ref_size`` is passed to the teacher only when set; ``roi`` ``(H, W)`` bool keeps the matte there."""
    pha = teacher(rgb) if ref_size is None else teacher(rgb, ref_size=ref_size)
    pha = np.clip(np.asarray(pha, np.float32), 0.0, 1.0)
    if pha.shape != rgb.shape[:2]:
        raise BgMattingError(f"the teacher returned alpha of shape {pha.shape} for an image of shape {rgb.shape[:2]}")
    if support is not None:
        pha = fuse_support(pha, np.clip(np.asarray(support(rgb), np.float32), 0.0, 1.0))
    if roi is not None:
        pha = pha * roi
    return clean_matte(pha)


def instance_roi(path: Path, value: int, crop: tuple[int, int, int, int] | None, *, grow: float = 0.03) -> np.ndarray:
    """Where label image ``path`` (e.g. a VOC ``SegmentationObject`` PNG) equals ``value``, cropped like
    the photo and dilated by ``grow`` of the long side: ``(H, W)`` bool."""
    with Image.open(path) as im:
        labels = np.asarray(im)
    if labels.ndim != 2:
        raise BgMattingError(f"'{path}' is not a label image (one channel of indices)")
    if crop is not None:
        left, top, right, bottom = crop
        labels = labels[top:bottom, left:right]
    mask = labels == value
    if not mask.any():
        raise BgMattingError(f"label image '{path}' has no pixel of value {value} in the crop {crop}")
    return _ndimage().binary_dilation(mask, iterations=max(1, int(round(grow * max(mask.shape)))))
