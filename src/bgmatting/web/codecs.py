"""Images over HTTP: the accepted upload types (sniffed from the bytes), decoding uploads, and encoding the
answers as PNG or JPEG."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ..io.images import ImageDecodeError, ImageTooLargeError, to_uint
from ..io.images import decode_image as _decode
from ..tensors import tensor_to_uint
from .errors import WebError

# What the page accepts, by content (the client's file name and declared type are not trusted).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
ACCEPTED_TYPES = "PNG, JPEG, WebP, BMP or TIFF"
OUTPUT_ALIASES = {"composite": "com"}
"""Other names the clients may give an output kind."""


def sniff_format(data: bytes) -> str | None:
    """The image format of ``data`` from its first bytes (PNG, JPEG, TIFF, BMP, WEBP), or ``None``."""
    for sig, fmt in _SIGNATURES:
        if data.startswith(sig):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_image_type(data: bytes, name: str) -> str:
    """The format of the uploaded image ``name`` (see :func:`sniff_format`); raises :class:`WebError` 415 when
    it is not an accepted type."""
    fmt = sniff_format(data)
    if fmt is None:
        raise WebError(f"'{name}' is not a supported image; upload a {ACCEPTED_TYPES} file", 415)
    return fmt


def decode_image(data: bytes, name: str, max_pixels: int, raw: bool = False) -> np.ndarray:
    """Decode an uploaded image file held in memory.

    Args:
        data: the file's bytes.
        name: what the user calls it (``"src"``), for the messages.
        max_pixels: refuse (413) images with more pixels than this, before decoding them.
        raw: return ``uint8`` ``(H, W, 3)`` (8-bit sources only, faster) instead of ``float32`` in [0, 1].

    Returns:
        RGB ``(H, W, 3)``, EXIF orientation applied.

    Raises:
        WebError: 415 not an accepted image type, 413 too many pixels, 422 empty, corrupt or truncated.
    """
    if not data:
        raise WebError(f"'{name}' is an empty file; upload a {ACCEPTED_TYPES} image")
    fmt = check_image_type(data, name)
    try:
        return _decode(data, name=f"'{name}'", max_pixels=max_pixels, formats=[fmt], uint8=raw)
    except ImageTooLargeError as e:
        raise WebError(str(e), 413) from None
    except ImageDecodeError as e:
        raise WebError(f"{e}; upload the complete {fmt} file") from None


def encode_png(array: np.ndarray) -> bytes:
    """``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` float in [0, 1] (or uint8) → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(to_uint(np.asarray(array), 8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(1, C, H, W)`` float in [0, 1] → ``(H, W)`` or ``(H, W, 3)`` uint8."""
    arr = tensor_to_uint(x)[0]
    return arr[..., 0] if arr.shape[2] == 1 else arr


def encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    """``(H, W)`` or ``(H, W, 3)`` uint8 → JPEG bytes at ``quality`` (1-100)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
