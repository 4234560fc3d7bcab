"""Trimaps for the "trimap" evaluation protocol: made from the ground-truth alpha, or read from a file.

A trimap here is a ``uint8`` array ``(H, W)``: ``0`` background, ``255`` foreground, ``128`` unknown.
Metrics are then computed over the unknown pixels only (:func:`unknown_region`).

Trimap from ground truth (:func:`trimap_from_alpha`), following the BGMv2 paper's recipe (thresholds
0.06 / 0.96, 10 morphological steps with a 3 × 3 cross):

- ``fg = α* ≥ high`` (0.96), ``bg = α* ≤ low`` (0.06); the pixels in between are the soft region.
- definite foreground: ``erode(fg)``, definite background: ``erode(bg)``, each eroded ``iterations``
  (10) times with the 3 × 3 cross; the image border does not erode (outside counts as the same class).
- unknown: everything else, i.e. ``¬erode(fg) ∧ ¬erode(bg)``.

Equivalently, a pixel is unknown when it lies within city-block distance ``iterations`` of both a
non-foreground and a non-background pixel. This contains the soft region dilated ``iterations`` times
(the usual "dilate the unknown band" reading) and also a band of the same width along hard edges where
foreground touches background directly, so hard silhouettes are evaluated too.
"""

from __future__ import annotations

import numpy as np

from .metrics import check_matte, require_scipy

__all__ = ["trimap_from_alpha", "unknown_region", "BG", "UNKNOWN", "FG"]

BG, UNKNOWN, FG = 0, 128, 255


def trimap_from_alpha(true_pha, *, low: float = 0.06, high: float = 0.96, iterations: int = 10) -> np.ndarray:
    """A trimap from a ground-truth alpha (see the module docstring for the exact rule).

    Args:
        true_pha: ground-truth alpha ``(H, W)`` float in ``[0, 1]``.
        low: alpha at or below which a pixel is background.
        high: alpha at or above which a pixel is foreground.
        iterations: erosion steps with the 3 × 3 cross (the width of the band, in pixels); 0 keeps only
            the soft region ``low < α* < high`` as unknown.

    Returns:
        ``uint8`` ``(H, W)``: 0 background, 128 unknown, 255 foreground.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((1, 7)); a[0, 4:] = 1.0
        >>> trimap_from_alpha(a, iterations=1)
        array([[  0,   0,   0, 128, 128, 255, 255]], dtype=uint8)
    """
    a = check_matte(true_pha, "true_pha")
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    fg = a >= high
    bg = a <= low
    if iterations > 0:
        ndi = require_scipy()
        cross = ndi.generate_binary_structure(2, 1)
        fg = ndi.binary_erosion(fg, cross, iterations=iterations, border_value=1)
        bg = ndi.binary_erosion(bg, cross, iterations=iterations, border_value=1)
    trimap = np.full(a.shape, UNKNOWN, dtype=np.uint8)
    trimap[fg] = FG
    trimap[bg] = BG
    return trimap


def unknown_region(trimap) -> np.ndarray:
    """The unknown pixels of a trimap, as a ``bool`` ``(H, W)`` mask for the metrics.

    Args:
        trimap: ``(H, W)``; integer arrays use 0 = background and 255 = foreground (65535 for
            ``uint16``); float images (as :func:`bgmatting.io.read_image` returns) use 0.0 and 1.0.
            Every other value is unknown (128 is the convention).

    Example:
        >>> import numpy as np
        >>> unknown_region(np.array([[0, 128, 255, 200]], dtype=np.uint8))
        array([[False,  True, False,  True]])
    """
    t = np.asarray(trimap)
    if t.ndim != 2:
        raise ValueError(f"trimap must be (H, W), got shape {t.shape}")
    if np.issubdtype(t.dtype, np.integer):
        top = 65535 if t.dtype == np.uint16 else 255
        return (t != 0) & (t != top)
    if np.issubdtype(t.dtype, np.floating):
        return (t != 0.0) & (t != 1.0)
    raise ValueError(f"trimap must be an integer or float array, got dtype {t.dtype}")
