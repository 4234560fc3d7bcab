"""Video reading and writing (PyAV): the one place where video files are opened or written.

Reading — :class:`VideoReader` streams the frames of a video file (or of a folder of images, taken as an image
sequence) as ``(H, W, 3)`` ``uint8`` RGB arrays with their timestamps. It never trusts the frame count that a
container states (that is only an estimate, :attr:`VideoInfo.frames`), turns phone videos upright from their
display matrix (or their old ``rotate`` tag), and seeks for ``start``/``end``. A damaged file — it fails to decode,
or its stream ends well short of the length its container declares (a download cut off) — is an error, or with
``partial=True`` is read as far as it goes (:attr:`VideoReader.damage` says what was wrong).
:func:`sample_video` picks frames spread over a long video by seeking, at a cost that does not grow with its length.

Writing — :class:`VideoWriter` encodes frames into one of :data:`FORMATS`:

- ``mp4``: H.264 (``libx264``, ``yuv420p``, ``crf``); no alpha; gray mattes are written as luma.
- ``mov-prores4444``: ProRes 4444 (``prores_ks``), 10 bit, alpha in ``yuva444p10le``.
- ``webm-alpha``: VP9 (``libvpx-vp9``, ``crf``), alpha in ``yuva420p``.
- ``png``: a folder of RGBA / RGB / gray PNG frames ``000000.png``, ``000001.png``, …

Timestamps are passed through (``pts`` in the caller's ``time_base``), so variable-frame-rate sources keep
their timing. The audio of a source file can be copied into the output (:func:`plan_audio`): its packets are
remuxed without re-encoding when the container takes the codec, transcoded (AAC for mp4/mov, Opus for webm)
when it does not, and dropped with a warning when neither is possible.

Writes are atomic: the file (or PNG folder) is written under a temporary name in the destination folder and
renamed on a clean :meth:`VideoWriter.close`. :meth:`VideoWriter.abort` — called on any exception, Ctrl-C
included — deletes it, so an interrupted run leaves the previous file (if any) or nothing, never a broken one.

Colours: RGB is converted to Y'CbCr with BT.709 (limited range) and tagged so; decoding honours the source's
tags (untagged video is read as BT.601, FFmpeg's default).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import warnings
from collections import deque
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import BgMattingError
from .atomic import atomic_path, removing_new_folders
from .images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    check_max_pixels,
    check_pixels,
    image_size,
    is_image_path,
    list_images,
    read_image,
    to_uint,
    write_image,
)

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
DEFAULT_SEQUENCE_FPS = 25
"""Frame rate of an image-sequence folder read without ``fps``."""
MAX_SEQUENCE_FPS = 1_000_000
"""The highest frame rate an image-sequence folder may be given (beyond it, timestamps overflow the encoders)."""

_PROBE_BACKOFF = (0.0, 2.0, 10.0, 60.0)  # seconds before the end's last frames where VideoReader.probe_end looks

SHORT_TOLERANCE = (2, 0.05)
"""A video file is taken as cut short when its stream ends more than ``max(2 frames, 5 %)`` of the declared
length (time, and frame count where the container counts its frames) before its container says it does: declared
lengths are slightly off in ordinary files (variable frame rate, B-frames, a longer last frame), never by that."""

_CONTAINERS = {"mp4": "mp4", "mov-prores4444": "mov", "webm-alpha": "webm"}
_ENCODERS = {"mp4": "libx264", "mov-prores4444": "prores_ks", "webm-alpha": "libvpx-vp9"}
_PIX_FMT = {  # (format, has alpha) -> encoder pixel format
    ("mp4", False): "yuv420p",
    ("mov-prores4444", False): "yuv444p10le", ("mov-prores4444", True): "yuva444p10le",
    ("webm-alpha", False): "yuv420p", ("webm-alpha", True): "yuva420p",
}
# Audio codecs each container takes as they are (packets copied), and the codec used when transcoding.
_AUDIO_COPY = {
    "mp4": {"aac", "mp3", "alac", "flac", "opus", "ac3", "eac3"},
    "mov-prores4444": {"aac", "mp3", "alac", "flac", "opus", "ac3", "eac3", "pcm_s16le", "pcm_s16be", "pcm_s24le",
                       "pcm_s24be", "pcm_s32le", "pcm_f32le"},
    "webm-alpha": {"opus", "vorbis"},
}
_AUDIO_TRANSCODE = {"mp4": "aac", "mov-prores4444": "aac", "webm-alpha": "libopus"}
_AUDIO_LEAD = 0.5  # seconds of audio muxed ahead of the video, so the muxer can interleave


# --------------------------------------------------------------------------------------------- PyAV & codecs

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
    return [f for f in FORMATS if f == "png" or has_encoder(_ENCODERS[f])]


def check_format(format: str) -> str:
    """Raise :class:`BgMattingError` unless ``format`` is one of :data:`FORMATS` and its encoder exists."""
    if format not in FORMATS:
        raise BgMattingError(f"unknown video format '{format}'; choose from {', '.join(FORMATS)}")
    if format != "png" and not has_encoder(_ENCODERS[format]):
        others = [f for f in available_formats() if f != format]
        raise BgMattingError(f"this PyAV build has no '{_ENCODERS[format]}' encoder, which --format {format} needs; "
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


def parse_time(text: str | float | None) -> float | None:
    """``'12.5'``, ``'1:02.5'`` or ``'01:02:03.5'`` → seconds (``None`` stays ``None``)."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(?:(?:(\d+):)?(\d+):)?(\d+(?:\.\d*)?|\.\d+)\s*", str(text))
        if not m:
            raise BgMattingError(f"'{text}' is not a time; use seconds (12.5), MM:SS or HH:MM:SS(.ms)")
        h, mnt, s = m.groups()
        value = int(h or 0) * 3600 + int(mnt or 0) * 60 + float(s)
    if not math.isfinite(value) or value < 0:
        raise BgMattingError(f"time must be a non-negative number of seconds, got {text}")
    return value


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.as_posix())]


# --------------------------------------------------------------------------------------------- orientation

class Orientation(NamedTuple):
    """How to turn decoded frames upright: transpose, then flip rows (vertical) and/or columns (horizontal).

    The eight combinations express every rotation by a multiple of 90° and every mirror.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @classmethod
    def from_matrix(cls, matrix: Sequence[int]) -> Orientation:
        """From FFmpeg's display matrix (9 ``int32``, 16.16 fixed point), as FFmpeg's own auto-rotation reads it.

        The matrix maps a stored pixel ``(x, y)`` to ``(a·x + c·y, b·x + d·y)`` on screen, with
        ``a, b, c, d = m[0], m[1], m[3], m[4]``; rotations other than multiples of 90° are rounded to one.
        """
        a, b, c, d = (int(matrix[i]) for i in (0, 1, 3, 4))
        if abs(a) + abs(d) >= abs(b) + abs(c):  # x stays horizontal
            return cls(False, d < 0, a < 0)
        return cls(True, b < 0, c < 0)  # x becomes vertical: screen row = b·x, screen column = c·y

    @classmethod
    def from_rotation(cls, degrees_ccw: float) -> Orientation:
        """From a counter-clockwise rotation in degrees (rounded to a multiple of 90°)."""
        k = round(degrees_ccw / 90.0) % 4
        return cls(*[(False, False, False), (True, True, False), (False, True, True), (True, False, True)][k])

    @property
    def is_identity(self) -> bool:
        return not any(self)

    def size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The displayed ``(H, W)`` of a stored frame of ``size``."""
        return (size[1], size[0]) if self.transpose else tuple(size)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Turn a stored ``(H, W[, C])`` frame upright (a contiguous copy unless nothing changes)."""
        if self.is_identity:
            return image
        if self.transpose:
            image = image.swapaxes(0, 1)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)

    def describe(self) -> str:
        names = {(False, False, False): "none", (True, True, False): "rotated 90° counter-clockwise",
                 (False, True, True): "rotated 180°", (True, False, True): "rotated 90° clockwise",
                 (False, False, True): "mirrored", (False, True, False): "flipped vertically",
                 (True, False, False): "transposed", (True, True, True): "anti-transposed"}
        return names[tuple(self)]


def _frame_orientation(frame, stream) -> Orientation:
    """The orientation from a decoded frame's display matrix, else the stream's ``rotate`` tag (clockwise°)."""
    for sd in frame.side_data:
        if getattr(sd.type, "name", str(sd.type)) == "DISPLAYMATRIX":
            m = np.frombuffer(bytes(sd), dtype="<i4")
            if m.size >= 5:
                return Orientation.from_matrix(m)
    tag = stream.metadata.get("rotate")
    if tag:
        try:
            return Orientation.from_rotation(-float(tag))
        except ValueError:
            pass
    return Orientation()


# --------------------------------------------------------------------------------------------- reading

@dataclass
class VideoInfo:
    """What a :class:`VideoReader` knows before decoding everything.

    Attributes:
        path: the file or image-sequence folder.
        size: ``(H, W)`` of the frames as yielded (upright, rotation applied).
        rate: the average frame rate (frames per second), ``None`` if unknown.
        time_base: the unit of :attr:`Frame.pts` (seconds per tick).
        frames: the number of frames between ``start`` and ``end`` as the container states it — an estimate
            (``None`` if unknown); count them with :meth:`VideoReader.count_frames`.
        duration: seconds, as the container states it (estimate, whole video), or ``None``.
        codec: the video codec (``'png'`` etc. for sequences).
        orientation: how stored frames are turned upright.
        audio: the codec of the first audio stream, or ``None``.
        sequence: True for an image-sequence folder.
        first_pts: the ``pts`` of the first frame the reader yields.
        start_time: the source-clock seconds of time 0 (the stream's start); ``Frame.time + start_time`` and
            ``pts · time_base`` are on the same clock as the file's audio.
    """

    path: Path
    size: tuple[int, int]
    rate: Fraction | None
    time_base: Fraction
    frames: int | None
    duration: float | None
    codec: str
    orientation: Orientation = field(default_factory=Orientation)
    audio: str | None = None
    sequence: bool = False
    first_pts: int = 0
    start_time: float = 0.0


@dataclass
class Frame:
    """One decoded frame.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB (``(H, W, 4)`` RGBA / ``(H, W)`` gray with those reader modes), upright.
        pts: presentation timestamp in :attr:`VideoInfo.time_base` units, as stored in the source.
        time: seconds from the start of the video (its first frame, or the stream's start time).
        index: 0-based position among the frames this reader yielded.
    """

    image: np.ndarray
    pts: int
    time: float
    index: int

    def as_float(self) -> np.ndarray:
        """The image as float32 in [0, 1], same shape."""
        return self.image.astype(np.float32) / 255.0

    def as_tensor(self):
        """The image as a ``(1, C, H, W)`` float32 tensor in [0, 1] (gray gives ``C = 1``)."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(self.image))
        t = t[..., None] if t.ndim == 2 else t
        return t.permute(2, 0, 1)[None].float().div_(255.0)


_READ_MODES = {"rgb": "rgb24", "rgba": "rgba", "gray": "gray"}


def _declared_end(container, stream, tb: Fraction, rate: Fraction | None) -> float | None:
    """Seconds from the video stream's start to its end as the file declares it (``None`` if it does not)."""
    if stream.duration:
        return float(stream.duration * tb)
    tag = stream.metadata.get("DURATION")  # Matroska / WebM, per stream
    if tag:
        m = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", tag.strip())
        if m:
            return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    if stream.frames and rate:
        return float(stream.frames / rate)
    if container.duration and len(container.streams) == 1:  # the container's length is the video's alone
        start = container.start_time or 0
        return (container.duration + start) / 1_000_000 - float((stream.start_time or 0) * tb)
    return None


class VideoReader:
    """Stream the frames of a video file, or of a folder of images (an image sequence), in display order.

    Args:
        path: a video file that FFmpeg reads (mp4, mov, mkv, webm, avi, …) or a folder of images (natural order:
            ``2.png`` before ``10.png``; sub-folders are not read).
        start: seconds from the start of the video of the first frame to yield (seeks; the first frame at or
            after ``start``). ``None`` → from the first frame.
        end: seconds: frames at or after ``end`` are not yielded (exclusive). ``None`` → to the last frame.
        mode: ``'rgb'`` → ``(H, W, 3)``, ``'rgba'`` → ``(H, W, 4)`` (alpha decoded where the codec carries it,
            VP9 alpha in WebM included; else 255), ``'gray'`` → ``(H, W)``; always uint8.
        fps: the frame rate of an image sequence (default :data:`DEFAULT_SEQUENCE_FPS`); ignored for files.
        partial: what to do with a damaged file — one that fails to decode, or whose stream ends well short of
            what its container declares (a download or copy cut off: see :data:`SHORT_TOLERANCE`). ``False``
            (default): raise :class:`BgMattingError` there; ``True``: stop there, as at the end, and say why in
            :attr:`damage`. In a folder of frames, a frame that cannot be decoded (corrupt or truncated) is such
            damage: with ``partial=True`` the sequence stops before it.
        max_pixels: refuse a video whose frames have more pixels (width × height) than this, from the size its
            stream (or first image) declares, before any frame is decoded (``None``: no limit; default
            :data:`~bgmatting.io.images.DEFAULT_MAX_PIXELS`, 40 MP). Every frame of a folder is checked.

    The first frame is decoded when the reader is made (so :attr:`info` knows the upright size); errors the
    user can cause — missing file, not a video, no video stream, no frame in the range — raise
    :class:`BgMattingError` then. Use as an iterator of :class:`Frame`, once; close it (or use ``with``).
    After the iteration, :attr:`damage` is ``None`` for a whole video, else what was wrong (one line).

    Example:
        >>> with VideoReader("clip.mp4", start=2.0) as reader:      # doctest: +SKIP
        ...     for frame in reader:
        ...         frame.image.shape, frame.time
    """

    def __init__(self, path: str | os.PathLike, *, start: float | None = None, end: float | None = None,
                 mode: str = "rgb", fps: float | Fraction | None = None, partial: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        if mode not in _READ_MODES:
            raise ValueError(f"mode must be one of {sorted(_READ_MODES)}, not {mode!r}")
        check_max_pixels(max_pixels)
        self.path = Path(path)
        self.max_pixels = max_pixels
        self.start = parse_time(start)
        self.end = parse_time(end)
        self.mode = mode
        self.partial = partial
        self.damage: str | None = None
        self._declared_end: float | None = None  # seconds from the stream's start that the container declares
        self._exact_count: int | None = None  # frames the container declares, when they are counted in it
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise BgMattingError(f"end ({self.end:g} s) must come after start ({self.start:g} s)")
        self._container = None
        self._peeked: Frame | None = None  # the first frame, decoded when the reader is made
        self._index = 0  # frames yielded so far
        self._open = False
        if not self.path.exists():
            raise BgMattingError(f"video '{self.path}' does not exist")
        if self.path.is_dir():
            self._open_sequence(fps)
        elif is_image_path(self.path):
            raise BgMattingError(f"'{self.path}' is an image, not a video; use `bgmatting matte` for images, or put "
                                 "the frames of an image sequence in a folder")
        else:
            self._open_file()

    # ------------------------------------------------------------------ image sequences
    def _open_sequence(self, fps) -> None:
        files = [f for f in list_images(self.path) if f.parent == self.path]
        if not files:
            raise BgMattingError(f"folder '{self.path}' holds no image directly (frames of an image sequence must "
                                 "lie in the folder itself)")
        files.sort(key=lambda f: _natural_key(f.relative_to(self.path)))
        if fps is not None and not (isinstance(fps, (int, float, Fraction, np.integer, np.floating))
                                    and 0 < fps <= MAX_SEQUENCE_FPS):
            raise BgMattingError(f"frame rate must be a positive number of at most {MAX_SEQUENCE_FPS} frames per "
                                 f"second, got {fps}")
        rate = Fraction(fps if fps is not None else DEFAULT_SEQUENCE_FPS).limit_denominator(1001)
        if rate <= 0:
            raise BgMattingError(f"frame rate must be positive, got {fps}")
        first = 0 if self.start is None else math.ceil(self.start * rate - 1e-9)
        stop = len(files) if self.end is None else min(len(files), math.ceil(self.end * rate - 1e-9))
        if first >= stop:
            raise BgMattingError(f"image sequence '{self.path}' has no frame between {self.start or 0:g} s and "
                                 f"{self.end if self.end is not None else len(files) / rate:g} s "
                                 f"({len(files)} frames at {float(rate):g} fps)")
        self._files = files[first:stop]
        self._first_index = first
        self.info = VideoInfo(self.path, image_size(self._files[0], max_pixels=self.max_pixels), rate, 1 / rate,
                              len(self._files), len(files) / rate, "image sequence", sequence=True, first_pts=first)
        self._open = True

    def _next_sequence_frame(self) -> Frame | None:
        i = self._index
        if i >= len(self._files):
            return None
        f, size = self._files[i], self.info.size
        try:
            image = to_uint(read_image(f, mode={"rgb": "RGB", "rgba": "RGBA", "gray": "L"}[self.mode],
                                       max_pixels=self.max_pixels))
        except ImageDecodeError as e:  # a damaged frame: as a damaged stream in a file
            if not self.partial:
                raise
            self.damage = f"frame {i + 1} of {len(self._files)} cannot be read: {e}"
            self._files = self._files[:i]
            return None
        if image.shape[:2] != size:
            raise BgMattingError(f"frame '{f}' is {image.shape[1]}x{image.shape[0]} but the first frame of the "
                                 f"sequence is {size[1]}x{size[0]}; all frames must have the same size")
        pts = self._first_index + i
        return Frame(image, pts, float(pts * self.info.time_base), i)

    # ------------------------------------------------------------------ files
    def _open_file(self) -> None:
        av = require_av()
        try:
            self._container = av.open(str(self.path), metadata_errors="ignore")
        except (av.error.InvalidDataError, av.error.DemuxerNotFoundError):
            raise BgMattingError(f"'{self.path}' is not a video file that FFmpeg can read (corrupt, cut short or an "
                                 "unsupported format)") from None
        except av.error.EOFError:  # the file ends inside its header or index (e.g. an mp4 cut before its moov)
            raise BgMattingError(f"video '{self.path}' is damaged or cut short: it ends before its header could be "
                                 "read; repair or re-export it") from None
        except av.error.FFmpegError as e:
            raise BgMattingError(f"cannot open video '{self.path}': {e}") from None
        except OSError as e:
            raise BgMattingError(f"cannot open video '{self.path}': {e.strerror or e}") from None
        c = self._container
        if not c.streams.video:
            self.close()
            raise BgMattingError(f"'{self.path}' has no video stream (an audio file, or a video cut short or "
                                 "damaged?)")
        stream = self._stream = c.streams.video[0]
        try:
            if stream.codec_context is None:  # e.g. an mp4 cut inside its index: the stream's parameters are lost
                raise BgMattingError(f"video '{self.path}' is damaged or cut short: its video stream has no codec "
                                     "parameters; repair or re-export it")
            # from the stream's parameters, before a frame is decoded (rotation does not change the count)
            check_pixels((stream.codec_context.height, stream.codec_context.width), f"video '{self.path}'",
                         self.max_pixels)
        except BgMattingError:
            self.close()
            raise
        stream.thread_type = "AUTO"
        tb = stream.time_base or Fraction(1, 90000)
        self._origin = stream.start_time if stream.start_time is not None else 0
        self._decoder = stream.codec_context
        if self.mode == "rgba" and stream.codec_context.name in ("vp8", "vp9") \
                and stream.metadata.get("alpha_mode") == "1":
            name = "libvpx-vp9" if stream.codec_context.name == "vp9" else "libvpx"
            if name in av.codecs_available:  # FFmpeg's native VP8/VP9 decoders ignore the alpha layer
                self._decoder = av.CodecContext.create(name, "r")
        rate = stream.average_rate or stream.guessed_rate or None
        rate = Fraction(rate) if rate else None
        duration = None
        if stream.duration is not None:
            duration = float(stream.duration * tb)
        elif c.duration is not None:
            duration = c.duration / 1_000_000
        estimate = stream.frames or None
        if estimate is None and duration and rate:
            estimate = round(duration * rate)
        self._declared_end = _declared_end(c, stream, tb, rate)
        if stream.frames and self.start is None and self.end is None:
            self._exact_count = stream.frames
        if estimate is not None and duration and (self.start is not None or self.end is not None):
            span = min(self.end if self.end is not None else duration, duration) - (self.start or 0.0)
            estimate = max(0, round(estimate * span / duration))
        self._start_pts = None if self.start is None else self._origin + round(self.start / tb)
        self._end_pts = None if self.end is None else self._origin + round(self.end / tb)
        sought = False
        if self._start_pts is not None:
            try:
                c.seek(self._start_pts, stream=stream, backward=True, any_frame=False)
                sought = True
            except (av.error.FFmpegError, OverflowError):  # unseekable (or past any timestamp): decode and skip
                c, stream = self._reopen()
        # decoding state (an explicit state machine rather than generators, so that closing from any thread,
        # or the garbage collector, never meets a generator half-way through)
        self._tb = tb
        self._step = max(1, round(1 / (rate * tb))) if rate else 1
        self._orientation: Orientation | None = None
        self._open = True
        for attempt in range(2):
            self._packets = c.demux(stream)
            self._decoded: deque = deque()
            self._drained = False
            self._prev_pts: int | None = None
            self._reached: float = self.start or 0.0  # seconds from the stream's start: the end of the last frame
            self._at_end = False  # stopped at ``end``, not at the end of the stream
            self._demuxed = 0  # packets read
            try:
                first = self._next_file_frame()
            except BaseException:
                self.close()
                raise
            if first is not None or not sought or not self._demuxed or self.damage is not None or attempt:
                break  # (no packet at all after the seek: the file ends before ``start``, or was cut short)
            # packets, but no frame: the seek landed after the last keyframe before ``start`` (MPEG-TS seeks to any
            # packet); decode from the start and skip
            c, stream = self._reopen()
        if first is None:
            self.close()
            if self.damage is not None or self._shortfall() is not None:
                raise BgMattingError(f"video '{self.path}' is damaged or cut short: no frame could be read"
                                     + (f" after {self.start:g} s" if self.start else "")
                                     + (f" ({self.damage})" if self.damage else ""))
            where = "" if self.start is None and self.end is None else \
                f" between {self.start or 0:g} s and {self.end if self.end is not None else 'the end'}" \
                + (" s" if self.end is not None else "")
            hint = "" if where else " (is it cut short or damaged?)"
            raise BgMattingError(f"video '{self.path}' has no frames{where}{hint}")
        self._peeked = first
        audio = c.streams.audio[0].codec_context.name if c.streams.audio else None
        self.info = VideoInfo(self.path, first.image.shape[:2], rate, tb, estimate, duration,
                              stream.codec_context.name, self._orientation, audio, first_pts=first.pts,
                              start_time=float(self._origin * tb))

    def _reopen(self):
        """Open the file again, at its start (after a seek that failed); returns ``(container, stream)``."""
        av = require_av()
        custom = self._decoder is not self._stream.codec_context
        self._container.close()
        self._container = c = av.open(str(self.path), metadata_errors="ignore")
        self._stream = stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        if not custom:
            self._decoder = stream.codec_context
        else:
            self._decoder.flush_buffers()
        return c, stream

    def _next_av_frame(self):
        """The next decoded PyAV frame, or ``None`` at the end of the stream."""
        av = require_av()
        stream, decoder = self._stream, self._decoder
        try:
            while not self._decoded:
                if self._drained:
                    return None
                packet = next(self._packets, None)
                self._demuxed += packet is not None
                if packet is None:
                    self._drained = True
                    if decoder is not stream.codec_context:
                        self._decoded.extend(decoder.decode(None))
                elif decoder is stream.codec_context:
                    self._decoded.extend(packet.decode())  # an empty packet at the end flushes the decoder
                elif packet.size:
                    self._decoded.extend(decoder.decode(packet))
        except av.error.FFmpegError as e:
            if not self.partial:
                raise BgMattingError(f"video '{self.path}' cannot be decoded after {self._index} frames (damaged "
                                     f"file?): {e}") from None
            self.damage = f"decoding failed after {self._index} frames: {e}"
            self._drained, self._decoded = True, deque()
            return None
        return self._decoded.popleft()

    def _next_file_frame(self) -> Frame | None:
        while True:
            frame = self._next_av_frame()
            if frame is None:
                return None
            prev = self._prev_pts
            pts = frame.pts if frame.pts is not None else getattr(frame, "dts", None)
            if pts is None:  # no timestamp at all: continue at the nominal rate
                pts = self._origin if prev is None else prev + self._step
            elif prev is not None and pts <= prev:  # broken or duplicate timestamps: keep them increasing
                pts = prev + 1
            if self._start_pts is not None and pts < self._start_pts:
                continue
            if self._end_pts is not None and pts >= self._end_pts:
                self._drained, self._decoded, self._at_end = True, deque(), True
                return None
            self._prev_pts = pts
            length = frame.duration if getattr(frame, "duration", None) and frame.duration > 0 else self._step
            self._reached = float((pts + length - self._origin) * self._tb)
            if self._orientation is None:
                self._orientation = _frame_orientation(frame, self._stream)
            kwargs = {}
            if frame.color_range == 2:  # full-range ("JPEG") Y'CbCr, common on phones
                kwargs["src_color_range"] = 2
            image = self._orientation.apply(frame.to_ndarray(format=_READ_MODES[self.mode], **kwargs))
            return Frame(image, int(pts), float((pts - self._origin) * self._tb), self._index)

    # ------------------------------------------------------------------ public
    def __iter__(self) -> VideoReader:
        return self

    def __next__(self) -> Frame:
        """The next :class:`Frame`; ``StopIteration`` after the last one (or once closed)."""
        if not self._open:
            raise StopIteration
        if self._peeked is not None:
            frame, self._peeked = self._peeked, None
        else:
            frame = self._next_sequence_frame() if self.info.sequence else self._next_file_frame()
        if frame is None:
            if not self.info.sequence:
                self._check_whole()
            raise StopIteration
        self._index += 1
        return frame

    def _expected(self) -> tuple[float, float, float] | None:
        """``(end, span, tolerance)`` in seconds: where the container says the range ends, its length, and how
        much earlier the stream may end (see :data:`SHORT_TOLERANCE`); ``None`` when nothing is declared."""
        if self._declared_end is None:
            return None
        expected = self._declared_end if self.end is None else min(self.end, self._declared_end)
        span = expected - (self.start or 0.0)
        interval = float(self._step * self._tb)
        return expected, span, max(SHORT_TOLERANCE[0] * interval, SHORT_TOLERANCE[1] * span)

    def _shortfall(self) -> str | None:
        """Why the stream, now ended, is too short for what the container declares (``None`` if it is not)."""
        expectation = None if self._at_end else self._expected()
        if expectation is None:
            return None
        expected, span, tolerance = expectation
        interval = float(self._step * self._tb)
        if span <= 0 or expected - self._reached <= tolerance:
            return None
        if self._exact_count is not None:  # a long last frame (VFR) is no damage when every frame is there
            if self._exact_count - self._index <= max(SHORT_TOLERANCE[0], SHORT_TOLERANCE[1] * self._exact_count):
                return None
        declared = self._exact_count or (round(span / interval) if interval > 0 else None)
        of = f" of {'its' if self._exact_count else 'about'} {declared}" if declared else ""
        return (f"it ends after {self._index}{of} frames ({self._reached - (self.start or 0.0):.2f} s of "
                f"{span:.2f} s)")

    def _check_whole(self) -> None:
        """At the end of the stream: set :attr:`damage`, or raise, when the video was cut short."""
        if self.damage is None:
            self.damage = self._shortfall()
            if self.damage is not None and not self.partial:
                raise BgMattingError(f"video '{self.path}' is damaged or cut short: {self.damage}; repair or "
                                     "re-export it")

    def probe_end(self) -> str | None:
        """Look for a cut-off file before reading it through: decode the last frames of the range (seeking there,
        so at most about a keyframe interval is decoded) and say what is wrong with the video (as :attr:`damage`
        would), or ``None`` when its end is there. This reader is not moved.
        """
        expectation = None if self.info.sequence else self._expected()
        if expectation is None:
            return None
        expected, span, tolerance = expectation
        origin = self.start or 0.0
        at = max(origin, expected - tolerance - 8 * float(self._step * self._tb))
        # from the keyframe before ``at`` to the end, every frame counts (a long last one included); where a seek
        # lands after the last keyframe (MPEG-TS seeks to any packet), a little further back, or from the start
        tail = VideoReader(self.path, end=self.end, mode="gray", partial=True, max_pixels=self.max_pixels)
        try:
            for back in _PROBE_BACKOFF:
                if at - back <= 0.0:  # from the first frame (decoded when a reader is made), without seeking
                    tail.close()
                    tail = VideoReader(self.path, end=self.end, mode="gray", partial=True,
                                       max_pixels=self.max_pixels)
                    break
                if tail._keyframe_at(at - back) is not None:
                    break
                tail.damage = None
            else:
                return f"it declares {span:.2f} s but no frame can be read after {at - back:.2f} s into the video"
            while tail._next_file_frame() is not None:
                pass
            if tail.damage is not None:
                return tail.damage
            reached = tail._reached
        finally:
            tail.close()
        if expected - reached <= tolerance:
            return None
        return f"its frames stop at {reached - origin:.2f} s of {span:.2f} s"

    def _keyframe_at(self, time: float) -> Frame | None:
        """Seek to the keyframe at or before ``time`` (seconds) and decode it; ``None`` if that fails."""
        av = require_av()
        c, stream = self._container, self._stream
        try:
            c.seek(self._origin + round(time / self._tb), stream=stream, backward=True, any_frame=False)
        except (av.error.FFmpegError, OverflowError):
            return None
        self._decoder.flush_buffers()
        self._packets = c.demux(stream)
        self._decoded, self._drained, self._prev_pts, self._peeked, self._demuxed = deque(), False, None, None, 0
        bounds, self._start_pts, self._end_pts = (self._start_pts, self._end_pts), None, None
        try:
            return self._next_file_frame()
        except BgMattingError:  # damaged there: no sample
            return None
        finally:
            self._start_pts, self._end_pts = bounds

    def count_frames(self) -> int:
        """The number of frames this reader yields in ``[start, end)``, counted from the packets (no decoding).

        Exact for ordinary files; for files whose packets lack timestamps it counts every packet.
        """
        if self.info.sequence:
            return len(self._files)
        av = require_av()
        with av.open(str(self.path), metadata_errors="ignore") as c:
            stream = c.streams.video[0]
            n = 0
            for p in c.demux(stream):
                if not p.size:
                    continue
                if p.pts is not None and (self._start_pts is not None and p.pts < self._start_pts
                                          or self._end_pts is not None and p.pts >= self._end_pts):
                    continue
                n += 1
        return n

    def close(self) -> None:
        """Release the file; iteration stops."""
        self._open = False
        self._peeked = None
        self._packets = None
        self._decoded = deque()
        if self._container is not None:
            try:
                self._container.close()
            finally:
                self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        h, w = self.info.size
        return f"VideoReader('{self.path}', {w}x{h}, {float(self.info.rate or 0):g} fps)"


def probe_video(path: str | os.PathLike, **kwargs) -> VideoInfo:
    """The :class:`VideoInfo` of a video file or image-sequence folder (decodes one frame)."""
    with VideoReader(path, **kwargs) as reader:
        return reader.info


def frame_times(path: str | os.PathLike) -> list[float]:
    """The time (seconds from the start) of every frame of a video file, in order, from its packets (no decoding).

    Pair with :func:`read_frame` for random access (datasets).
    """
    av = require_av()
    p = Path(path)
    with VideoReader(p) as reader:  # the checks and their messages
        if reader.info.sequence:
            return [float(i * reader.info.time_base) for i in range(reader.count_frames())]
        origin, tb = reader._origin, reader.info.time_base
    try:
        with av.open(str(p), metadata_errors="ignore") as c:
            stream = c.streams.video[0]
            pts = [pkt.pts for pkt in c.demux(stream) if pkt.size]
    except av.error.FFmpegError as e:
        raise BgMattingError(f"cannot read video '{p}': {e}") from None
    if any(t is None for t in pts):
        raise BgMattingError(f"video '{p}' has frames without timestamps, so frames cannot be looked up; "
                             "extract its frames into a folder (ffmpeg -i clip.mp4 clip/%05d.png)")
    return [float((t - origin) * tb) for t in sorted(pts)]


def sample_video(path: str | os.PathLike, count: int, *, start: float | None = None, end: float | None = None,
                 mode: str = "rgb", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[Frame]:
    """About ``count`` frames spread evenly over ``[start, end)`` of a video, read by seeking (sparse sampling).

    For each of ``count`` evenly spaced times, the keyframe at or before it is decoded: one seek and about one
    decoded frame each, so the cost does not grow with the length of the video. A keyframe reached twice is kept
    once, so fewer than ``count`` frames come back when keyframes are further apart than the times. For an image
    sequence, the frames at those times. :attr:`Frame.index` is the frame's position in the whole video, estimated
    from its time and the frame rate; :attr:`Frame.time` is exact. ``max_pixels``: as for :class:`VideoReader`.
    """
    frames: list[Frame] = []
    with VideoReader(path, mode=mode, max_pixels=max_pixels) as reader:
        info = reader.info
        rate = float(info.rate or DEFAULT_SEQUENCE_FPS)
        first = start or 0.0
        last = end if end is not None else (info.duration if info.duration else (info.frames or 1) / rate)
        if info.duration:
            last = min(last, info.duration)
        if last <= first or count < 1:
            return frames
        times = [first + (k + 0.5) * (last - first) / count for k in range(count)]
        if info.sequence:
            n = len(reader._files)
            picks = sorted({min(n - 1, max(0, math.floor(t * rate))) for t in times})
            return [Frame(to_uint(read_image(reader._files[i], mode={"rgb": "RGB", "rgba": "RGBA", "gray": "L"}[mode],
                                             max_pixels=max_pixels)),
                          i, i / rate, i) for i in picks]
        seen: set[int] = set()
        for t in times:
            frame = reader._keyframe_at(t)
            if frame is None or frame.pts in seen or frame.time < first - 1e-9 or end is not None and frame.time >= end:
                continue
            seen.add(frame.pts)
            frames.append(Frame(frame.image, frame.pts, frame.time, round(frame.time * rate)))
    return frames


def read_frame(path: str | os.PathLike, time: float = 0.0, mode: str = "rgb") -> np.ndarray:
    """The frame shown at ``time`` seconds (the first at or after it; see :func:`frame_times`), upright, uint8."""
    with VideoReader(path, start=time, mode=mode) as reader:
        return next(reader).image


# --------------------------------------------------------------------------------------------- audio

@dataclass
class AudioPlan:
    """What happens to the audio of ``source`` in an output of ``format`` (see :func:`plan_audio`).

    Attributes:
        mode: ``'copy'`` (packets remuxed), ``'transcode'`` (re-encoded to ``codec``) or ``'none'``.
        source: the file whose first audio stream is used.
        codec: the source's codec (``copy``) or the encoder (``transcode``).
        reason: for ``'none'``, why (``''`` when the source has no audio).
        start, end: source-clock seconds (see :attr:`VideoInfo.start_time`) of the audio to keep; ``None`` for
            no limit.
    """

    mode: str
    source: Path | None = None
    codec: str | None = None
    reason: str = ""
    start: float | None = None
    end: float | None = None

    def describe(self) -> str:
        if self.mode == "copy":
            return f"copied ({self.codec})"
        if self.mode == "transcode":
            return f"transcoded to {self.codec.removeprefix('lib')}"
        return f"none ({self.reason})" if self.reason else "none"


def plan_audio(source: str | os.PathLike, format: str, start: float | None = None,
               end: float | None = None, warn: bool = True) -> AudioPlan:
    """Decide how the first audio stream of ``source`` goes into an output of ``format``.

    Copy when the container takes the codec (AAC/MP3/ALAC/FLAC/Opus/AC-3 into mp4 and mov, PCM into mov, Opus
    and Vorbis into webm); otherwise transcode to AAC (mp4, mov) or Opus (webm) when this PyAV build has the
    encoder; otherwise (and always for ``png``) drop it, with a warning when ``warn``.
    """
    p = Path(source)
    if p.is_dir():
        return AudioPlan("none", reason="image sequences have no audio")
    av = require_av()
    try:
        with av.open(str(p), metadata_errors="ignore") as c:
            codec = c.streams.audio[0].codec_context.name if c.streams.audio else None
    except (av.error.FFmpegError, OSError):
        codec = None
    if codec is None:
        return AudioPlan("none")

    def drop(reason: str) -> AudioPlan:
        if warn:
            warnings.warn(f"the audio of '{p.name}' is dropped: {reason}", stacklevel=3)
        return AudioPlan("none", p, codec, reason)

    if format == "png":
        return drop("PNG sequences carry no audio")
    if format not in _AUDIO_COPY:
        raise BgMattingError(f"unknown video format '{format}'; choose from {', '.join(FORMATS)}")
    if codec in _AUDIO_COPY[format]:
        return AudioPlan("copy", p, codec, start=start, end=end)
    encoder = _AUDIO_TRANSCODE[format]
    if has_encoder(encoder):
        if warn:
            warnings.warn(f"the audio of '{p.name}' ({codec}) cannot go into {format} as it is; it is re-encoded "
                          f"as {encoder.removeprefix('lib')}", stacklevel=3)
        return AudioPlan("transcode", p, encoder, start=start, end=end)
    return drop(f"{format} cannot hold {codec} and this PyAV build has no {encoder} encoder")


class _AudioMuxer:
    """Copies (or transcodes) the audio of a plan into an output container, a little ahead of the video."""

    def __init__(self, plan: AudioPlan, output, video_offset: float):
        av = require_av()
        self.plan = plan
        self.output = output
        self.offset = video_offset  # source seconds that become 0 in the output
        self.input = av.open(str(plan.source), metadata_errors="ignore")
        self.istream = self.input.streams.audio[0]
        self.tb = self.istream.time_base
        ctx = self.istream.codec_context
        if plan.mode == "copy":
            self.ostream = output.add_stream_from_template(self.istream)
        else:
            rate = ctx.sample_rate or 48000
            if plan.codec == "libopus":
                rate = min((r for r in (8000, 12000, 16000, 24000, 48000) if r >= rate), default=48000)
            layout = "mono" if len(ctx.layout.channels) == 1 else "stereo"
            self.ostream = output.add_stream(plan.codec, rate=rate, layout=layout)
            self.ostream.codec_context.time_base = Fraction(1, rate)
            self.resampler = None
            self.next_pts = None
        self.packets = self.input.demux(self.istream)
        self.pending = None  # a packet read but not yet due
        self.done = False

    def _next(self):
        if self.pending is None and not self.done:
            for p in self.packets:
                if p.dts is None or p.pts is None:
                    continue
                t = float(p.pts * self.tb)
                if self.plan.start is not None and t < self.plan.start:
                    continue
                if self.plan.end is not None and t >= self.plan.end:
                    break
                self.pending = p
                return p
            self.done = True
        return self.pending

    def mux_until(self, t: float) -> None:
        """Mux the audio whose (source) time is before ``t`` seconds."""
        while True:
            p = self._next()
            if p is None or float(p.pts * self.tb) >= t:
                return
            self.pending = None
            shift = round(self.offset / self.tb)
            if self.plan.mode == "copy":
                p.pts -= shift
                p.dts -= shift
                p.stream = self.ostream
                self.output.mux(p)
            else:
                for frame in p.decode():
                    self._encode(frame, float(p.pts * self.tb) - self.offset)

    def _encode(self, frame, out_time: float | None) -> None:
        av = require_av()
        cc = self.ostream.codec_context
        if self.resampler is None:
            self.resampler = av.AudioResampler(format=cc.format, layout=cc.layout, rate=cc.sample_rate,
                                               frame_size=cc.frame_size or None)
        if self.next_pts is None and frame is not None:
            self.next_pts = round(max(0.0, out_time or 0.0) * cc.sample_rate)
        for f in self.resampler.resample(frame):
            f.pts = self.next_pts
            f.time_base = Fraction(1, cc.sample_rate)
            self.next_pts += f.samples
            for packet in self.ostream.encode(f):
                self.output.mux(packet)

    def finish(self) -> None:
        """Mux the rest (up to the plan's end), flush the encoder, close the input."""
        try:
            self.mux_until(math.inf)
            if self.plan.mode == "transcode" and self.next_pts is not None:
                self._encode(None, None)
                for packet in self.ostream.encode(None):
                    self.output.mux(packet)
        finally:
            self.input.close()

    def close(self) -> None:
        self.input.close()


# --------------------------------------------------------------------------------------------- writing

_FRAME_FORMATS = {(np.dtype(np.uint8), 3): "rgb24", (np.dtype(np.uint8), 4): "rgba",
                  (np.dtype(np.uint16), 3): "rgb48le", (np.dtype(np.uint16), 4): "rgba64le"}


def _default_permissions(path: Path, folder: bool = False) -> None:
    """Give a file made by ``tempfile`` (mode 0600/0700) the permissions of an ordinary new file or folder."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, (0o777 if folder else 0o666) & ~umask)
    except OSError:
        pass


class VideoWriter:
    """Encode frames into a video file (or a PNG folder), atomically, with optional audio from a source.

    Args:
        path: the output file (``.mp4``, ``.mov``, ``.webm``), or the folder of a ``png`` sequence.
        size: ``(H, W)`` of the frames to write.
        format: one of :data:`FORMATS`, or ``'auto'`` (from the suffix of ``path``; a folder → ``png``).
        channels: 1 (gray), 3 (RGB) or 4 (RGBA, alpha formats only).
        rate: the nominal frame rate (default 25).
        time_base: the unit of the ``pts`` given to :meth:`write` (default ``1 / rate``); pass the source's to
            keep its timestamps, variable frame rate included.
        crf: quality for ``mp4`` (0–51, default 18) and ``webm-alpha`` (0–63, default 24); lower is better.
        preset: the libx264 preset of ``mp4``, one of :data:`X264_PRESETS` (default ``medium``).
        audio: an :class:`AudioPlan` (from :func:`plan_audio`) whose audio is copied into the file.
        audio_offset: the source time (seconds) that becomes time 0 of the output (the first frame's time).
        overwrite: replace an existing file or folder at ``path`` (on a clean close only).

    Frames: ``(H, W)`` / ``(H, W, C)`` numpy arrays, uint8 or uint16 (full 16-bit range; kept at 10 bit by
    ProRes), with ``pts`` increasing. H.264 needs even sizes: odd ones are padded by one pixel (edge replicated)
    with a warning. Use as a context manager: a clean exit closes (renames into place), an exception aborts.
    """

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], *, format: str = "auto", channels: int = 3,
                 rate: float | Fraction | None = None, time_base: Fraction | None = None, crf: int | None = None,
                 preset: str | None = None, audio: AudioPlan | None = None, audio_offset: float = 0.0, overwrite: bool = False):
        self.path = Path(path)
        if format == "auto":
            format = format_from_path(self.path) or "png"
        self.format = check_format(format)
        expected = FORMAT_SUFFIXES[format]
        if expected and self.path.suffix.lower() != expected:
            raise BgMattingError(f"--format {format} writes '{expected}' files, but the output is '{self.path}'")
        if channels not in (1, 3, 4):
            raise ValueError(f"channels must be 1, 3 or 4, not {channels}")
        if channels == 4 and format not in ALPHA_FORMATS:
            raise BgMattingError(f"--format {format} has no alpha channel; use one of {', '.join(ALPHA_FORMATS)}")
        if self.path.exists() and not overwrite:
            raise BgMattingError(f"output '{self.path}' exists already; pass --overwrite to replace it")
        if self.path.exists() and (self.path.is_dir() != (format == "png")):
            raise BgMattingError(f"output '{self.path}' exists and is a {'folder' if self.path.is_dir() else 'file'}; "
                                 "remove it or choose another output")
        self.size = (int(size[0]), int(size[1]))
        self.channels = channels
        self.rate = Fraction(rate if rate else 25).limit_denominator(1_000_000)
        self.time_base = Fraction(time_base) if time_base else 1 / self.rate
        self.crf = check_crf(format, crf)
        self.preset = check_preset(format, preset)
        self.frames = 0
        self._last_pts: int | None = None
        self._audio: _AudioMuxer | None = None
        self._closed = False
        self._stack = ExitStack()
        h, w = self.size
        self._pad = (h % 2, w % 2) if format == "mp4" else (0, 0)
        if any(self._pad):
            warnings.warn(f"H.264 needs an even width and height: {w}x{h} is padded to "
                          f"{w + self._pad[1]}x{h + self._pad[0]} (use --format mov-prores4444, webm-alpha or png for "
                          "the exact size)", stacklevel=2)
        try:
            if format == "png":
                self._open_folder(audio)
            else:
                self._open_container(audio, audio_offset)
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------ setup
    def _open_folder(self, audio) -> None:
        parent = self.path.parent
        self._stack.enter_context(removing_new_folders(parent))  # made here, removed again by abort() if empty
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent))
        except OSError as e:
            raise BgMattingError(f"cannot write to folder '{parent}': {e.strerror or e}") from None
        if audio is not None and audio.mode != "none":
            warnings.warn("PNG sequences carry no audio; it is dropped", stacklevel=3)

    def _open_container(self, audio, audio_offset) -> None:
        av = require_av()
        try:
            self._tmp = self._stack.enter_context(atomic_path(self.path))
            options = {"movflags": "+faststart"} if self.format == "mp4" else {}
            self._container = av.open(str(self._tmp), "w", format=_CONTAINERS[self.format], options=options)
        except av.error.FFmpegError as e:
            raise BgMattingError(f"cannot write '{self.path}': {e}") from None
        h, w = self.size
        pix_fmt = _PIX_FMT[(self.format, self.channels == 4)]
        options = {}
        if self.format == "mp4":
            options = {"crf": str(self.crf), "preset": self.preset}
        elif self.format == "webm-alpha":
            options = {"crf": str(self.crf), "b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"}
        elif self.format == "mov-prores4444":
            options = {"profile": "4444", "vendor": "apl0", "bits_per_mb": "8000"}
            if self.channels == 4:
                options["alpha_bits"] = "16"
        stream = self._stream = self._container.add_stream(_ENCODERS[self.format], rate=self.rate, options=options)
        stream.width, stream.height = w + self._pad[1], h + self._pad[0]
        stream.pix_fmt = pix_fmt
        stream.time_base = self.time_base
        cc = stream.codec_context
        cc.time_base = self.time_base
        cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = 1, 1, 1, 1  # BT.709, limited range
        if audio is not None and audio.mode != "none":
            try:
                self._audio = _AudioMuxer(audio, self._container, audio_offset)
            except Exception as e:  # noqa: BLE001 (any PyAV failure: keep the video, lose the audio)
                warnings.warn(f"the audio of '{audio.source}' is dropped: {e}", stacklevel=3)
                self._audio = None
        self._pix_fmt = pix_fmt

    # ------------------------------------------------------------------ frames
    def write(self, image: np.ndarray, pts: int | None = None) -> None:
        """Encode one frame.

        Args:
            image: ``(H, W)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (straight alpha); uint8 or uint16;
                ``(H, W)`` must equal ``size`` and the channels ``channels`` (gray is accepted for RGB).
            pts: timestamp in ``time_base`` units, increasing; ``None`` → the next one at the nominal rate.
        """
        if self._closed:
            raise ValueError("write() on a closed VideoWriter")
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        c = 1 if image.ndim == 2 else image.shape[2]
        if image.shape[:2] != self.size or c not in (1, self.channels) or c == 1 and self.channels == 4:
            raise ValueError(f"frame of shape {image.shape} does not fit a {self.size} writer with "
                             f"{self.channels} channel(s)")
        if image.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"frames must be uint8 or uint16, not {image.dtype}")
        if pts is None:
            pts = 0 if self._last_pts is None else self._last_pts + max(1, round(1 / (self.rate * self.time_base)))
        pts = int(pts)
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"pts must increase: {pts} after {self._last_pts}")
        if self.format == "png":
            out = self._tmp / f"{self.frames:06d}.png"
            write_image(out, image if image.dtype == np.uint8 else (image >> 8).astype(np.uint8))
        else:
            self._encode(image, pts)
        self._last_pts = pts
        self.frames += 1

    def _encode(self, image: np.ndarray, pts: int) -> None:
        av = require_av()
        if any(self._pad):
            pad = [(0, self._pad[0]), (0, self._pad[1])] + ([(0, 0)] if image.ndim == 3 else [])
            image = np.pad(image, pad, mode="edge")
        if image.ndim == 2:  # via RGB: swscale rounds gray → Y'CbCr less exactly
            image = np.repeat(image[..., None], 3, axis=2)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=_FRAME_FORMATS[(image.dtype, image.shape[2])])
        frame = frame.reformat(format=self._pix_fmt, dst_colorspace=1, dst_color_range=1)
        frame.pts = pts
        frame.time_base = self.time_base
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.mux_until(self._audio.offset + float(pts * self.time_base) + _AUDIO_LEAD)
        except av.error.FFmpegError as e:
            raise BgMattingError(f"cannot encode '{self.path}': {e}") from None

    # ------------------------------------------------------------------ end
    def close(self) -> Path:
        """Flush the encoder, add the rest of the audio, and move the file into place; returns its path.

        A writer with no frame written is aborted instead (raises :class:`BgMattingError`).
        """
        if self._closed:
            return self.path
        if self.frames == 0:
            self.abort()
            raise BgMattingError(f"no frame was written to '{self.path}'")
        av = require_av()
        try:
            if self.format == "png":
                self._replace_folder()
                self._stack.close()
            else:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                if self._audio is not None:
                    self._audio.finish()
                self._container.close()
                _default_permissions(self._tmp)
                self._stack.close()  # rename the temporary file into place
        except av.error.FFmpegError as e:
            self.abort()
            raise BgMattingError(f"cannot finish '{self.path}': {e}") from None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def _replace_folder(self) -> None:
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old", dir=self.path.parent))
            os.replace(self.path, old / "x")
        _default_permissions(self._tmp, folder=True)
        os.replace(self._tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Stop and delete what was written (the temporary file or folder); ``path`` is left untouched."""
        if self._closed:
            return
        self._closed = True
        # a half-open container may refuse to close cleanly; it is deleted anyway
        with suppress(Exception):
            if self._audio is not None:
                self._audio.close()
        with suppress(Exception):
            if getattr(self, "_container", None) is not None:
                self._container.close()
        if self.format == "png":
            tmp = getattr(self, "_tmp", None)
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        # leave the ExitStack through an exception: atomic_path deletes the temporary file, and the folders made
        # for the output go again if nothing else was written into them
        err = BgMattingError("aborted")
        self._stack.__exit__(type(err), err, None)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
