"""OpenCV, imported only when a feature needs it (``pip install opencv-python-headless``), and the small image
operations that several modules do with it."""

from __future__ import annotations

import numpy as np

from .errors import BgMattingError


def import_cv2():
    """Import OpenCV, or raise :class:`BgMattingError` that says how to install it."""
    try:
        import cv2
    except ImportError:
        raise BgMattingError("this feature needs OpenCV; install it with: pip install opencv-python-headless") from None
    return cv2


def resize_max(image: np.ndarray, max_size: int) -> np.ndarray:
    """``image`` ``(H, W[, C])`` shrunk (area interpolation) so that its longest side is at most ``max_size``; an
    image that fits already is returned as it is."""
    cv2 = import_cv2()
    h, w = image.shape[:2]
    s = min(1.0, max_size / max(h, w))
    if s >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``x`` ``(H, W[, C])`` float32 with standard deviation ``sigma`` pixels (0: ``x`` itself)."""
    return import_cv2().GaussianBlur(x, (0, 0), sigma) if sigma > 0 else x
