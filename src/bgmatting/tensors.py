"""Conversions between image forms and sizes: numpy / PIL / tensor images to ``(B, 3, H, W)`` float tensors in
[0, 1] and back, padding to the size the model needs, resizing backgrounds and targets, colours from text."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import BgMattingError

SIZE_MULTIPLE = 4  # the refiner works on 4×4 patches of the full image

ImageLike = Union[np.ndarray, torch.Tensor, "PIL.Image.Image"]  # noqa: F821


def to_tensor(image: Any, name: str = "image") -> torch.Tensor:
    """Convert an image to a ``(B, 3, H, W)`` float32 tensor in [0, 1] (a new tensor, never a view of ``image``).

    Accepts numpy arrays ``(H, W)``, ``(H, W, 1|3|4)`` of uint8, uint16 or float (taken as [0, 1]); PIL
    images; tensors ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)`` (uint8 or float). Gray is repeated to RGB;
    a fourth (alpha) channel is dropped with a warning.
    """
    if hasattr(image, "mode") and hasattr(image, "convert"):  # PIL image
        image = np.asarray(image.convert("RGBA" if image.mode in ("RGBA", "LA", "PA") else "RGB"))
    if isinstance(image, np.ndarray):
        arr = image[..., None] if image.ndim == 2 else image
        if arr.ndim != 3:
            raise BgMattingError(f"{name} must be an (H, W) or (H, W, C) array, got shape {image.shape}")
        if arr.dtype not in (np.uint8, np.uint16, np.bool_) and not np.issubdtype(arr.dtype, np.floating):
            raise BgMattingError(f"{name} has unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
        _check_channels(arr.shape[2], name)
        _check_size(arr.shape[:2], name)
        if arr.shape[2] == 4:
            arr = arr[..., :3]
        elif arr.shape[2] == 1:
            arr = np.broadcast_to(arr, (*arr.shape[:2], 3))
        # One single-threaded pass into a new (H, W, 3) float32 array (x / 255 rounded once, no float64).
        if arr.dtype == np.uint8 or arr.dtype == np.uint16:
            arr = np.true_divide(arr, 255.0 if arr.dtype == np.uint8 else 65535.0, dtype=np.float32, order="C")
        elif arr.dtype == np.bool_:
            arr = arr.astype(np.float32, order="C")
        else:
            arr = np.clip(arr, 0.0, 1.0, dtype=np.float32, order="C")
        return torch.from_numpy(arr).unsqueeze(0).permute(0, 3, 1, 2)  # channels-last strides, as before
    if not isinstance(image, torch.Tensor):
        raise BgMattingError(f"{name} must be a numpy array, PIL image or torch tensor, not {type(image).__name__}")
    t = image
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise BgMattingError(f"{name} must be an (H, W), (C, H, W) or (B, C, H, W) tensor, got {tuple(image.shape)}")
    if t.dtype not in (torch.uint8, torch.bool) and not t.is_floating_point():
        raise BgMattingError(f"{name} has unsupported dtype {t.dtype}; use uint8, uint16 or float in [0, 1]")
    _check_channels(t.shape[1], name)
    _check_size(t.shape[2:], name)
    if t.shape[1] == 4:
        t = t[:, :3]
    elif t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if t.dtype == torch.bool:
        return t.float()
    return t.float().clamp(0.0, 1.0)


def _check_channels(c: int, name: str) -> None:
    """Refuse channel counts other than 1 (gray), 3 (RGB) and 4 (RGBA, whose alpha is dropped with a warning)."""
    if c == 4:
        warnings.warn(f"{name} has an alpha channel; it is ignored", stacklevel=4)
    elif c not in (1, 3):
        raise BgMattingError(f"{name} must have 1, 3 or 4 channels, got {c}")


def _check_size(size: tuple[int, int], name: str) -> None:
    if size[0] < 1 or size[1] < 1:
        raise BgMattingError(f"{name} is empty ({size[0]}x{size[1]})")


def check_background_size(bgr_size: tuple[int, int], src_size: tuple[int, int], tolerance: float = 0.01) -> None:
    """Raise BgMattingError unless a background of ``(h, w)`` can serve a source of ``(H, W)`` (same aspect ratio)."""
    (h, w), (H, W) = bgr_size, src_size
    if abs((w / h) / (W / H) - 1.0) > tolerance:
        raise BgMattingError(f"background is {w}x{h} but the source is {W}x{H}: the background shot must show the "
                             "same view as the source (same aspect ratio)")


def match_background(bgr: torch.Tensor, size: tuple[int, int], tolerance: float = 0.01) -> torch.Tensor:
    """Resize ``bgr`` to ``size`` when its aspect ratio matches (with a warning), else raise BgMattingError."""
    h, w = bgr.shape[2:]
    if (h, w) == tuple(size):
        return bgr
    H, W = size
    check_background_size((h, w), (H, W), tolerance)
    warnings.warn(f"background {w}x{h} resized to the source size {W}x{H}", stacklevel=3)
    return F.interpolate(bgr, size=(H, W), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def match_background_image(bgr: Any, size: tuple[int, int]) -> np.ndarray:
    """:func:`match_background` for one image in any form :func:`to_tensor` takes: a float32 ``(H, W, 3)`` array of
    ``size`` (what the aligner and the scene check compare with the source)."""
    return match_background(to_tensor(bgr), size)[0].permute(1, 2, 0).numpy()


def pad_to_multiple(x: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> torch.Tensor:
    """Replicate-pad ``x`` ``(B, C, H, W)`` at the bottom and right so that H and W are multiples of ``multiple``."""
    h, w = x.shape[2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def parse_colour(text: str) -> tuple[float, float, float]:
    """``'#RRGGBB'``, ``'#RGB'`` or ``'r,g,b'`` (0-255) → an RGB tuple in [0, 1]."""
    if not isinstance(text, str):
        raise BgMattingError(f"a colour is text such as '#00ff00' or '0,255,0', not {type(text).__name__}")
    s = text.strip()
    m = re.fullmatch(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})", s)
    if m:
        h = m.group(1)
        if len(h) == 3:
            h = "".join(c * 2 for c in h)
        return tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))
    parts = s.split(",")
    if len(parts) == 3:
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            vals = []
        if vals and all(0 <= v <= 255 for v in vals):
            return tuple(v / 255.0 for v in vals)
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise BgMattingError(f"'{shown}' is not a colour; use #RRGGBB (e.g. #00ff00) or r,g,b with values 0-255")


def cover_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale ``x`` ``(B, C, h, w)`` to cover ``size`` (keeping its aspect ratio) and centre-crop to it."""
    H, W = size
    h, w = x.shape[2:]
    if (h, w) == (H, W):
        return x
    s = max(H / h, W / w)
    nh, nw = max(H, round(h * s)), max(W, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - H) // 2, (nw - W) // 2
    return x[:, :, top:top + H, left:left + W].clamp(0, 1)


def tensor_to_uint(x: torch.Tensor, high_bit: bool = False) -> np.ndarray:
    """``(B, C, H, W)`` float in [0, 1] → contiguous ``(B, H, W, C)`` uint8 (or uint16) numpy, rounded."""
    top = 65535.0 if high_bit else 255.0
    # a copy in row order (as encoders take images), never the caller's tensor: one output can feed another
    x = x.cpu().permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format).clamp_(0, 1).mul_(top).round_()
    x = x.to(torch.int32 if high_bit else torch.uint8).numpy()
    return x.astype(np.uint16) if high_bit else x


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A CPU tensor ``(1, 1, H, W)`` → ``(H, W)``, ``(1, C, H, W)`` → C-contiguous ``(H, W, C)`` (same dtype)."""
    x = x[0]
    if x.shape[0] == 1:
        return x[0].numpy()  # shares the tensor's memory: no copy
    hwc = x.permute(1, 2, 0)
    if hwc.is_contiguous():
        return hwc.numpy()
    planes = x.numpy()
    out = np.empty(hwc.shape, planes.dtype)
    for c, plane in enumerate(planes):  # a plane at a time: reads in order, faster than a transpose copy
        out[..., c] = plane
    return out


def as_hwc(image: Any, name: str) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """``image`` as a float32 ``(H, W, 3)`` array in [0, 1], and a function that converts a result back.

    uint8 ``(H, W, 3)`` arrays come back as uint8, other numpy arrays as float32 ``(H, W, 3)``; tensors
    ``(3, H, W)`` / ``(1, 3, H, W)`` come back as tensors of the same shape, dtype and device.
    """
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3:
        if image.dtype == np.float32:
            return image, lambda out: out
        if image.dtype == np.uint8:
            return image.astype(np.float32) * (1 / 255), lambda out: np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)
    if isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] != 1:
            raise BgMattingError(f"{name}: align one frame at a time, got a batch of {image.shape[0]}")
        batched, dtype, device = image.ndim == 4, image.dtype, image.device
        arr = to_tensor(image, name)[0].permute(1, 2, 0).cpu().numpy()

        def back(out: np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)
            if batched:
                t = t[None]
            if not dtype.is_floating_point:  # uint8 tensors stay uint8
                t = (t * 255).round()
            return t.to(device=device, dtype=dtype)

        return np.ascontiguousarray(arr), back
    t = to_tensor(image, name)
    if t.shape[0] != 1:
        raise BgMattingError(f"{name}: align one image at a time")
    return np.ascontiguousarray(t[0].permute(1, 2, 0).numpy()), lambda out: out
