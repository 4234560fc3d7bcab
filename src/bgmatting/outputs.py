"""The outputs of a matte: which kinds a command writes, what each looks like as an image, and the target the
composite goes over."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import BgMattingError
from .io.images import DEFAULT_MAX_PIXELS, read_image
from .options import OUTPUT_KINDS
from .results import MatteResult
from .tensors import parse_colour


def parse_outputs(text: str | Iterable[str], known: Sequence[str] = OUTPUT_KINDS, what: str = "output") -> list[str]:
    """``'com,pha'`` → ``['com', 'pha']`` (duplicates dropped), checked against ``known``."""
    kinds = [k.strip() for k in (text.split(",") if isinstance(text, str) else text) if k.strip()]
    bad = [k for k in kinds if k not in known]
    if bad or not kinds:
        raise BgMattingError(f"unknown {what}(s) {', '.join(bad) or '(none given)'}; choose from {','.join(known)}")
    return list(dict.fromkeys(kinds))


def load_target(target: str | None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Any:
    """``--target-bgr``: ``None``, a colour tuple (from ``#RRGGBB`` / ``r,g,b``) or an image array (of at most
    ``max_pixels`` pixels; ``None``: no limit)."""
    if target is None:
        return None
    if Path(target).is_file():
        return read_image(target, max_pixels=max_pixels)
    if Path(target).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
        raise BgMattingError(f"target background '{target}' does not exist")
    return parse_colour(target)


def output_image(kind: str, result: MatteResult | Mapping[str, torch.Tensor], target: Any = None,
                 mask_threshold: float = 0.5) -> np.ndarray | torch.Tensor:
    """The image of one output kind (one of :data:`~bgmatting.options.OUTPUT_KINDS`).

    ``com`` is the foreground over ``target``, or without one RGBA with straight alpha (no colour where alpha is
    0); ``mask`` is white where alpha ≥ ``mask_threshold``; ``pha``, ``fgr``, ``err`` and ``ref`` are the maps
    themselves.

    Args:
        result: a :class:`~bgmatting.results.MatteResult` (one image), or the dict of
            :meth:`~bgmatting.Matter.forward_tensors` (a batch; ``com`` needs ``pha`` and ``fgr``).
        target: for a result, what :meth:`~bgmatting.results.MatteResult.composite` takes; for tensors, ``None``
            or a ``(1 | B, 3, H | 1, W | 1)`` float tensor in [0, 1] on their device.

    Returns:
        for a result, a numpy image ``(H, W[, C])`` float32 in [0, 1] (``mask``: uint8 0 or 255); for tensors, a
        ``(B, C, H, W)`` float tensor in [0, 1].
    """
    if isinstance(result, MatteResult):
        if kind == "com":
            return result.composite(target)
        if kind == "mask":
            return result.mask(mask_threshold).astype(np.uint8) * 255
        return getattr(result, kind)
    if kind == "com":
        pha, fgr = result["pha"], result["fgr"]
        if target is None:
            return torch.cat([fgr * (pha > 0), pha], dim=1)  # straight alpha; no colour where fully transparent
        return torch.lerp(target, fgr, pha)  # pha * fgr + (1 - pha) * target, in one pass
    if kind == "mask":
        return (result["pha"] >= mask_threshold).float()
    return result[kind]
