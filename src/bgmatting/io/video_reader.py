"""Video reading: :class:`VideoReader` streams the frames of a video file (or of a folder of images, taken as an
image sequence) as ``(H, W, 3)`` ``uint8`` RGB arrays with their timestamps.

It never trusts the frame count that a container states (that is only an estimate, :attr:`VideoInfo.frames`),
turns phone videos upright (:mod:`.orientation`), and seeks for ``start``/``end``. A damaged file (it fails to
decode, or its stream ends well short of the length its container declares: :mod:`.video_damage`) is an error,
or with ``partial=True`` is read as far as it goes (:attr:`VideoReader.damage` says what was wrong).
Decoding honours the source's colour tags (untagged video is read as BT.601, FFmpeg's default).
"""

from __future__ import annotations

import math
import os
import re
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BgMattingError
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
)
from .orientation import Orientation, frame_orientation
from .video_damage import declared_end, expected_end, shortfall
from .video_formats import require_av

DEFAULT_SEQUENCE_FPS = 25
"""Frame rate of an image-sequence folder read without ``fps``."""
MAX_SEQUENCE_FPS = 1_000_000
"""The highest frame rate an image-sequence folder may be given (beyond it, timestamps overflow the encoders)."""

_PROBE_BACKOFF = (0.0, 2.0, 10.0, 60.0)  # seconds before the end's last frames where VideoReader.probe_end looks


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


_READ_MODES = {"rgb": "rgb24", "rgba": "rgba", "gray": "gray"}  # reader mode -> PyAV pixel format
_PIL_MODES = {"rgb": "RGB", "rgba": "RGBA", "gray": "L"}  # reader mode -> PIL mode


def read_sequence_image(path: Path, mode: str, max_pixels: int | None) -> np.ndarray:
    """One frame of an image sequence as a :class:`VideoReader` of ``mode`` yields it (uint8)."""
    return to_uint(read_image(path, mode=_PIL_MODES[mode], max_pixels=max_pixels))


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
            what its container declares (a download or copy cut off: see
            :data:`~.video_damage.SHORT_TOLERANCE`). ``False`` (default): raise :class:`BgMattingError` there;
            ``True``: stop there, as at the end, and say why in :attr:`damage`. In a folder of frames, a frame
            that cannot be decoded (corrupt or truncated) is such damage: with ``partial=True`` the sequence
            stops before it.
        max_pixels: refuse a video whose frames have more pixels (width × height) than this, from the size its
            stream (or first image) declares, before any frame is decoded (``None``: no limit; default
            :data:`~bgmatting.io.images.DEFAULT_MAX_PIXELS`, 40 MP). Every frame of a folder is checked.

    The first frame is decoded when the reader is made (so :attr:`info` knows the upright size); errors the
    user can cause — missing file, not a video, no video stream, no frame in the range — raise
    :class:`BgMattingError` then. Use as an iterator of :class:`Frame`, once; close it (or use ``with``).
    After the iteration, :attr:`damage` is ``None`` for a whole video, else what was wrong (one line).

    Attributes (besides :attr:`info`): ``origin``, the ``pts`` of time 0 (video files only); ``files``, the image
    files of the range, in order (image sequences only).

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
        self.files = files[first:stop]
        self._first_index = first
        self.info = VideoInfo(self.path, image_size(self.files[0], max_pixels=self.max_pixels), rate, 1 / rate,
                              len(self.files), len(files) / rate, "image sequence", sequence=True, first_pts=first)
        self._open = True

    def _next_sequence_frame(self) -> Frame | None:
        i = self._index
        if i >= len(self.files):
            return None
        f, size = self.files[i], self.info.size
        try:
            image = read_sequence_image(f, self.mode, self.max_pixels)
        except ImageDecodeError as e:  # a damaged frame: as a damaged stream in a file
            if not self.partial:
                raise
            self.damage = f"frame {i + 1} of {len(self.files)} cannot be read: {e}"
            self.files = self.files[:i]
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
        self.origin = stream.start_time if stream.start_time is not None else 0
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
        self._declared_end = declared_end(c, stream, tb, rate)
        if stream.frames and self.start is None and self.end is None:
            self._exact_count = stream.frames
        if estimate is not None and duration and (self.start is not None or self.end is not None):
            span = min(self.end if self.end is not None else duration, duration) - (self.start or 0.0)
            estimate = max(0, round(estimate * span / duration))
        self._start_pts = None if self.start is None else self.origin + round(self.start / tb)
        self._end_pts = None if self.end is None else self.origin + round(self.end / tb)
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
                              start_time=float(self.origin * tb))

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
                pts = self.origin if prev is None else prev + self._step
            elif prev is not None and pts <= prev:  # broken or duplicate timestamps: keep them increasing
                pts = prev + 1
            if self._start_pts is not None and pts < self._start_pts:
                continue
            if self._end_pts is not None and pts >= self._end_pts:
                self._drained, self._decoded, self._at_end = True, deque(), True
                return None
            self._prev_pts = pts
            length = frame.duration if getattr(frame, "duration", None) and frame.duration > 0 else self._step
            self._reached = float((pts + length - self.origin) * self._tb)
            if self._orientation is None:
                self._orientation = frame_orientation(frame, self._stream)
            kwargs = {}
            if frame.color_range == 2:  # full-range ("JPEG") Y'CbCr, common on phones
                kwargs["src_color_range"] = 2
            image = self._orientation.apply(frame.to_ndarray(format=_READ_MODES[self.mode], **kwargs))
            return Frame(image, int(pts), float((pts - self.origin) * self._tb), self._index)

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

    @property
    def _interval(self) -> float:
        """Seconds per frame at the nominal rate."""
        return float(self._step * self._tb)

    def _expected(self) -> tuple[float, float, float] | None:
        """See :func:`~.video_damage.expected_end`."""
        return expected_end(self._declared_end, self.start, self.end, self._interval)

    def _shortfall(self) -> str | None:
        """Why the stream, now ended, is too short for what the container declares (``None`` if it is not)."""
        return shortfall(None if self._at_end else self._expected(), self._reached, self._index, self._exact_count,
                         self.start, self._interval)

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
        at = max(origin, expected - tolerance - 8 * self._interval)
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
                if tail.keyframe_at(at - back) is not None:
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

    def keyframe_at(self, time: float) -> Frame | None:
        """Seek to the keyframe at or before ``time`` (seconds from the start) and decode it, ignoring ``start``
        and ``end``; ``None`` if that fails. Video files only; the reader is moved there."""
        av = require_av()
        c, stream = self._container, self._stream
        try:
            c.seek(self.origin + round(time / self._tb), stream=stream, backward=True, any_frame=False)
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
            return len(self.files)
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

