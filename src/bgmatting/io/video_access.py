"""One-call access to a video: its :class:`~.video_reader.VideoInfo`, the times of its frames, the frame at a
time (random access, for datasets), and frames spread over it (sparse sampling by seeking)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..errors import BgMattingError
from .images import DEFAULT_MAX_PIXELS
from .video_formats import require_av
from .video_reader import DEFAULT_SEQUENCE_FPS, Frame, VideoInfo, VideoReader, read_sequence_image


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
        origin, tb = reader.origin, reader.info.time_base
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
            n = len(reader.files)
            picks = sorted({min(n - 1, max(0, math.floor(t * rate))) for t in times})
            return [Frame(read_sequence_image(reader.files[i], mode, max_pixels), i, i / rate, i) for i in picks]
        seen: set[int] = set()
        for t in times:
            frame = reader.keyframe_at(t)
            if frame is None or frame.pts in seen or frame.time < first - 1e-9 or end is not None and frame.time >= end:
                continue
            seen.add(frame.pts)
            frames.append(Frame(frame.image, frame.pts, frame.time, round(frame.time * rate)))
    return frames


def read_frame(path: str | os.PathLike, time: float = 0.0, mode: str = "rgb") -> np.ndarray:
    """The frame shown at ``time`` seconds (the first at or after it; see :func:`frame_times`), upright, uint8."""
    with VideoReader(path, start=time, mode=mode) as reader:
        return next(reader).image

