"""Output video formats and codecs: which formats exist, which this PyAV build can encode, and the checks of
the user's format, CRF and preset choices.

- ``mp4``: H.264 (``libx264``, ``yuv420p``, ``crf``); no alpha; gray mattes are written as luma.
- ``mov-prores4444``: ProRes 4444 (``prores_ks``), 10 bit, alpha in ``yuva444p10le``.
- ``webm-alpha``: VP9 (``libvpx-vp9``, ``crf``), alpha in ``yuva420p``.
- ``png``: a folder of RGBA / RGB / gray PNG frames ``000000.png``, ``000001.png``, …
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import BgMattingError

FORMATS = ("mp4", "mov-prores4444", "webm-alpha", "png")
"""Output formats of :class:`VideoWriter` (and ``bgmatting video --format``)."""

ALPHA_FORMATS = ("mov-prores4444", "webm-alpha", "png")
"""Formats that keep transparency."""

FORMAT_SUFFIXES = {"mp4": ".mp4", "mov-prores4444": ".mov", "webm-alpha": ".webm", "png": ""}
"""The file suffix of each format (``png`` writes a folder)."""

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mts", ".m2ts", ".ts", ".mpg", ".mpeg",
                  ".wmv", ".flv", ".3gp", ".ogv", ".gif")
"""Suffixes recognised as video files (any file PyAV opens is read; this is for messages and guessing)."""

DEFAULT_CRF = {"mp4": 18, "webm-alpha": 24}
CRF_RANGE = {"mp4": (0, 51), "webm-alpha": (0, 63)}
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
"""libx264's presets for ``mp4``, fastest first: a faster one encodes sooner into a larger file at the same CRF."""
DEFAULT_PRESET = "medium"

CONTAINERS = {"mp4": "mp4", "mov-prores4444": "mov", "webm-alpha": "webm"}
ENCODERS = {"mp4": "libx264", "mov-prores4444": "prores_ks", "webm-alpha": "libvpx-vp9"}
PIX_FMT = {  # (format, has alpha) -> encoder pixel format
    ("mp4", False): "yuv420p",
    ("mov-prores4444", False): "yuv444p10le", ("mov-prores4444", True): "yuva444p10le",
    ("webm-alpha", False): "yuv420p", ("webm-alpha", True): "yuva420p",
}


def require_av():
    """The ``av`` (PyAV) module; raises :class:`BgMattingError` with the install command when it is missing."""
    try:
        import av
    except ImportError:
        raise BgMattingError("reading and writing video needs PyAV: pip install av") from None
    return av


def has_encoder(name: str) -> bool:
    """Whether this PyAV build can encode with codec ``name`` (e.g. ``'libx264'``)."""
    av = require_av()
    if name not in av.codecs_available:
        return False
    try:
        av.Codec(name, "w")
    except Exception:  # noqa: BLE001 (PyAV raises several types for "no such encoder")
        return False
    return True


def available_formats() -> list[str]:
    """The entries of :data:`FORMATS` whose encoder this PyAV build has."""
    return [f for f in FORMATS if f == "png" or has_encoder(ENCODERS[f])]


def check_known_format(format: str) -> str:
    """Raise :class:`BgMattingError` unless ``format`` is one of :data:`FORMATS` (its encoder is not checked)."""
    if format not in FORMATS:
        raise BgMattingError(f"unknown video format '{format}'; choose from {', '.join(FORMATS)}")
    return format


def check_format(format: str) -> str:
    """Raise :class:`BgMattingError` unless ``format`` is one of :data:`FORMATS` and its encoder exists."""
    check_known_format(format)
    if format != "png" and not has_encoder(ENCODERS[format]):
        others = [f for f in available_formats() if f != format]
        raise BgMattingError(f"this PyAV build has no '{ENCODERS[format]}' encoder, which --format {format} needs; "
                             f"install the PyPI wheel (pip install --force-reinstall av) or use --format "
                             f"{' or '.join(others) or 'png'}")
    return format


def format_from_path(path: str | os.PathLike) -> str | None:
    """The format implied by an output path's suffix (``.mp4``, ``.mov``, ``.webm``), or ``None`` for a folder."""
    suffix = Path(path).suffix.lower()
    for fmt, s in FORMAT_SUFFIXES.items():
        if s and suffix == s:
            return fmt
    return None


def check_crf(format: str, crf: int | None) -> int | None:
    """The CRF to use for ``format`` (its default when ``crf`` is None); ``None`` for formats without one."""
    if format not in CRF_RANGE:
        if crf is not None:
            warnings.warn(f"--crf has no effect with --format {format}", stacklevel=2)
        return None
    if crf is None:
        return DEFAULT_CRF[format]
    lo, hi = CRF_RANGE[format]
    if not isinstance(crf, (int, np.integer)) or not lo <= crf <= hi:
        raise BgMattingError(f"--crf for {format} must be an integer from {lo} (best) to {hi}, got {crf}")
    return int(crf)


def check_preset(format: str, preset: str | None) -> str | None:
    """The libx264 preset for ``format`` (:data:`DEFAULT_PRESET` when ``preset`` is None); ``None`` for the
    formats other than ``mp4``, which have none (a warning if one was given)."""
    if format != "mp4":
        if preset is not None:
            warnings.warn(f"--preset has no effect with --format {format}", stacklevel=2)
        return None
    if preset is None:
        return DEFAULT_PRESET
    if preset not in X264_PRESETS:
        raise BgMattingError(f"--preset must be one of {', '.join(X264_PRESETS)}, got '{preset}'")
    return preset

