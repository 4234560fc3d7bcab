"""Image reading and writing: the one place where image files are opened or written.

Arrays at this boundary are ``float32`` in ``[0, 1]``: ``(H, W)`` for gray, ``(H, W, 3)`` for RGB and
``(H, W, 4)`` for RGBA. Writes are atomic (temporary name in the same folder, then rename), so an
interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import ctypes
import functools
import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BgMattingError
from .atomic import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

_MODES = {"RGB": 3, "L": 1, "RGBA": 4}

DEFAULT_MAX_PIXELS = 40_000_000
"""The most pixels (width × height) an image file may declare before it is refused unread: an 8K photo (7680×4320,
33 MP) passes, a small file that declares a huge image (a decompression bomb) does not. ``None`` lifts it (Pillow's
own guard, twice ``PIL.Image.MAX_IMAGE_PIXELS``, stays)."""

_RAISE_HINT = "raise the limit with --max-pixels N (in Python: max_pixels=N)"


@functools.cache
def _quiet_libtiff() -> bool:
    """Stop the libtiff inside Pillow from printing its own warnings and errors on stderr ("tempfile.tif: Using code
    not yet in table." for a damaged LZW strip, unknown-tag notices): a failed decode still raises in Pillow and
    becomes our one-line error, and a file that decodes needs no notice. Whether the handlers were found (Linux)."""
    from PIL import _imaging  # noqa: F401  (loads Pillow's libtiff)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libtiff" in line}
    except OSError:
        return False
    quieted = False
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
            for name in ("TIFFSetWarningHandler", "TIFFSetErrorHandler"):
                setter = getattr(lib, name)
                setter.restype, setter.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
                setter(None)
            quieted = True
        except (OSError, AttributeError):
            continue
    return quieted


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a suffix of an image format that :func:`read_image` reads."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(path: str | os.PathLike) -> list[Path]:
    """The image files at ``path``: the file itself, or every image below a folder (recursive, sorted).

    Raises :class:`BgMattingError` when the path does not exist or a folder holds no image.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f) and not f.name.startswith("."))
        if not files:
            raise BgMattingError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) found in folder '{p}'")
        return files
    raise BgMattingError(f"'{p}' does not exist")


def _to_float(img: Image.Image, mode: str) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) gray: keep the precision.
        arr = np.asarray(img, dtype=np.float32)
        arr = arr / (65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0)
        arr = np.clip(arr, 0.0, 1.0)
        if mode == "L":
            return arr
        arr = np.repeat(arr[..., None], 3, axis=2)
        if mode == "RGBA":
            arr = np.concatenate([arr, np.ones_like(arr[..., :1])], axis=2)
        return arr
    if img.mode == "F":
        arr = _float_pixels(np.asarray(img, dtype=np.float32))
        return arr if mode == "L" else np.repeat(arr[..., None], _MODES[mode], axis=2)
    if img.mode == "P":
        img = img.convert("RGBA")  # palette images, possibly with a transparent colour
    return np.asarray(img.convert(mode), dtype=np.float32) / 255.0


def _float_pixels(arr: np.ndarray) -> np.ndarray:
    """A floating-point image in ``[0, 1]``. Whole numbers above 1 are 8-bit (or, above 255, 16-bit) values stored
    as floats, and are scaled; other values above 1 (HDR highlights) are clipped; NaN reads as 0, +-inf as 1/0."""
    arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    top = float(arr.max(initial=0.0))
    if top > 1.0 and np.array_equal(arr, np.round(arr)):
        arr = arr / (255.0 if top <= 255.0 else 65535.0)
    return np.clip(arr, 0.0, 1.0)


class ImageTooLargeError(BgMattingError):
    """The image has more pixels than allowed (a decompression-bomb guard or a server limit)."""


class ImageDecodeError(BgMattingError):
    """The data is not an image, or a corrupt or truncated one."""


def check_max_pixels(max_pixels: int | None) -> None:
    """Refuse a ``max_pixels`` that is not ``None`` (no limit) or a positive integer."""
    if max_pixels is not None and (not isinstance(max_pixels, (int, np.integer)) or isinstance(max_pixels, bool)
                                   or max_pixels < 1):
        raise BgMattingError(f"max_pixels must be a positive integer, or None for no limit; got {max_pixels!r}")


def check_pixels(size: tuple[int, int], name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 hint: str = _RAISE_HINT) -> None:
    """Refuse an image of ``size`` ``(H, W)`` with more than ``max_pixels`` pixels (``None``: no limit).

    Meant for the size an image's header declares, before any pixel is decoded (video frames included).

    Raises:
        ImageTooLargeError: with a one-line message naming ``name``, its size, the limit and ``hint``.
    """
    check_max_pixels(max_pixels)
    h, w = size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(f"{name} is {w}x{h} = {_amount(w * h, '.1f')}, over the limit of "
                                 f"{_amount(max_pixels, '.3g')}; {hint}")


def _amount(pixels: int, spec: str) -> str:
    return f"{pixels / 1e6:{spec}} megapixels" if pixels >= 100_000 else f"{pixels} pixels"


def _bomb_message(name: str) -> str:
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return (f"{name} is too large to decode safely: it declares more than {limit / 1e6:.0f} megapixels, Pillow's "
            "limit against decompression bombs")


def _has_alpha(img: Image.Image) -> bool:
    """Whether ``img`` carries transparency: an alpha channel or a transparent (palette) colour."""
    return "A" in img.getbands() or img.mode in ("PA", "RGBa", "La") or "transparency" in img.info


def _decode(fp, name: str, mode: str, max_pixels: int | None, formats: list[str] | None, uint8: bool,
            hint: str = _RAISE_HINT, warn_alpha: bool = False) -> np.ndarray:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {sorted(_MODES)}, not {mode!r}")
    check_max_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            # Pillow warns from MAX_IMAGE_PIXELS on; our limit decides instead (Pillow's error at twice it stays)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp, formats=formats) as img:
                if img.format == "TIFF":
                    _quiet_libtiff()
                w, h = img.size
                check_pixels((h, w), name, max_pixels, hint)  # from the header, before any pixel is decoded
                img.load()
                dropped_alpha = mode != "RGBA" and _has_alpha(img)
                img = ImageOps.exif_transpose(img)
                if uint8 and img.mode in ("RGB", "L", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                    array = np.asarray(img.convert(mode))
                else:
                    array = _to_float(img, mode)
    except Image.DecompressionBombError:
        raise ImageTooLargeError(_bomb_message(name)) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name} is not an image file that can be read "
                               "(corrupt or unsupported format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageDecodeError(f"{name} is corrupt or truncated ({e})") from None
    if dropped_alpha and warn_alpha:
        warnings.warn(f"{name} has an alpha channel (transparency); it is ignored: the colours stored under "
                      "transparent pixels are used as they are", stacklevel=3)
    return array


def read_image(path: str | os.PathLike, mode: str = "RGB", *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               warn_alpha: bool = True) -> np.ndarray:
    """Read an image file as ``float32`` in ``[0, 1]``, with its EXIF orientation applied.

    Args:
        path: an image file (PNG, JPEG, WebP, BMP, TIFF; 8 or 16 bit, or 32-bit float gray: see ``_float_pixels``).
        mode: ``"RGB"`` → ``(H, W, 3)``, ``"L"`` → ``(H, W)`` gray, ``"RGBA"`` → ``(H, W, 4)``. An alpha channel
            read as ``"RGB"`` or ``"L"`` is ignored, with a warning.
        max_pixels: refuse images that declare more pixels than this, before decoding them (``None``: no limit;
            default :data:`DEFAULT_MAX_PIXELS`, 40 MP).
        warn_alpha: warn when an alpha channel is ignored (``False`` for callers that say it once for many files,
            e.g. the frames of a sequence).

    Raises:
        BgMattingError: the file is missing, unreadable, truncated, not an image, or too large.
    """
    p = Path(path)
    if not p.is_file():
        raise BgMattingError(f"image '{p}' does not exist" if not p.exists() else f"'{p}' is not a file")
    try:
        return _decode(p, f"'{p}'", mode, max_pixels, None, uint8=False, warn_alpha=warn_alpha)
    except PermissionError:
        raise BgMattingError(f"cannot read image '{p}': permission denied") from None


def decode_image(data: bytes, mode: str = "RGB", *, name: str = "image", max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 formats: list[str] | None = None, uint8: bool = False) -> np.ndarray:
    """Decode an image file held in memory, like :func:`read_image` (EXIF orientation applied).

    Args:
        data: the file's bytes.
        mode: ``"RGB"``, ``"L"`` or ``"RGBA"``.
        name: what the user calls it, for the messages.
        max_pixels: refuse images with more pixels than this, before decoding them (``None``: no limit).
        formats: PIL format names to accept (``None``: any).
        uint8: return ``uint8`` for 8-bit images (faster) instead of ``float32`` in [0, 1].

    Raises:
        ImageTooLargeError: more than ``max_pixels`` pixels (or a decompression bomb).
        ImageDecodeError: not an image, or a corrupt or truncated one.
    """
    if not data:
        raise ImageDecodeError(f"{name} is an empty file")
    return _decode(io.BytesIO(data), name, mode, max_pixels, formats, uint8, hint="scale it down first")


def image_size(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(H, W)`` of an image file as displayed (EXIF rotation applied), reading only its header.

    Raises :class:`BgMattingError` when the file is missing or not an image, and :class:`ImageTooLargeError` when
    it declares more than ``max_pixels`` pixels (``None``: no limit), as :func:`read_image` would.
    """
    p = Path(path)
    if not p.is_file():
        raise BgMattingError(f"image '{p}' does not exist" if not p.exists() else f"'{p}' is not a file")
    check_max_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides, as in _decode
            with Image.open(p) as img:
                w, h = img.size
                check_pixels((h, w), f"'{p}'", max_pixels)
                # the EXIF read with the header: a PNG's own getexif() decodes every pixel to look for an eXIf
                # chunk after them, which would make this a full read
                orientation = Image.Image.getexif(img).get(0x0112, 1)
    except Image.DecompressionBombError:
        raise ImageTooLargeError(_bomb_message(f"'{p}'")) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"'{p}' is not an image file that can be read (corrupt or unsupported format)") from None
    except PermissionError:
        raise BgMattingError(f"cannot read image '{p}': permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageDecodeError(f"'{p}' is corrupt or truncated ({e})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def to_uint(array: np.ndarray, bits: int = 8) -> np.ndarray:
    """Convert a float array in ``[0, 1]`` to ``uint8`` (``bits=8``) or ``uint16`` (``bits=16``), rounding."""
    if array.dtype == np.uint8 and bits == 8 or array.dtype == np.uint16 and bits == 16:
        return array
    if np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"cannot convert {array.dtype} to {bits}-bit; pass float in [0, 1]")
    top = 255 if bits == 8 else 65535
    out = np.rint(np.clip(array, 0.0, 1.0) * top)
    return out.astype(np.uint8 if bits == 8 else np.uint16)


# PNG at zlib level 1: 3 to 5 times faster to write than Pillow's default (6) for 10 to 20% more bytes (an HD
# RGBA photo: 0.29 s and 3.4 MB against 1.36 s and 2.9 MB); writing, not the model, was most of `bgmatting matte`.
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}, "PNG": {"compress_level": 1}}


def write_image(path: str | os.PathLike, array: np.ndarray, bits: int = 8) -> Path:
    """Write ``array`` atomically to ``path`` (format from the suffix).

    Args:
        array: ``(H, W)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA; float in ``[0, 1]`` or ``uint8``.
        bits: 8, or 16 for 16-bit gray PNG/TIFF (``(H, W)`` arrays only).

    The image goes to a temporary file in the same folder first and is renamed into place, so an
    interrupted write leaves either the old file or the complete new one.
    """
    p = Path(path)
    fmt = Image.registered_extensions().get(p.suffix.lower())
    if fmt is None:
        raise BgMattingError(f"cannot write '{p}': unknown image format '{p.suffix}' (use .png, .jpg, .webp or .tif)")
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if bits == 16:
        if array.ndim != 2 or fmt not in ("PNG", "TIFF"):
            raise BgMattingError("16-bit output is only available for gray PNG/TIFF images")
        img = Image.fromarray(to_uint(array, 16))
    elif bits == 8:
        data = to_uint(array, 8)
        if data.ndim == 3 and data.shape[2] == 4 and fmt == "JPEG":
            raise BgMattingError(f"cannot write transparency to JPEG '{p}': use .png or .webp")
        img = Image.fromarray(data)
    else:
        raise ValueError("bits must be 8 or 16")
    try:
        with atomic_path(p) as tmp:
            img.save(tmp, format=fmt, **_SAVE_OPTIONS.get(fmt, {}))
    except OSError as e:
        raise BgMattingError(f"cannot write '{p}': {e.strerror or e}") from None
    return p
