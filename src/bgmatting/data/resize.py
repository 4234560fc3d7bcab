"""Resizing float images with PIL, channel by channel, without clipping (for values outside [0, 1] too)."""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["resize_float"]


def resize_float(arr: np.ndarray, size_wh: tuple[int, int], resample=Image.BICUBIC) -> np.ndarray:
    """Resize float ``(H, W)`` or ``(H, W, C)`` to ``size_wh = (W, H)``, channel by channel, no clipping."""
    if arr.shape[1::-1] == tuple(size_wh):
        return arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        return np.asarray(Image.fromarray(arr.astype(np.float32), "F").resize(size_wh, resample), np.float32)
    return np.stack([resize_float(arr[..., c], size_wh, resample) for c in range(arr.shape[2])], axis=2)
