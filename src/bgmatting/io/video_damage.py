"""Damage detection for video files: whether a stream that has ended is shorter than its container declares
(a download or copy cut off)."""

from __future__ import annotations

import re
from fractions import Fraction

SHORT_TOLERANCE = (2, 0.05)
"""A video file is taken as cut short when its stream ends more than ``max(2 frames, 5 %)`` of the declared
length (time, and frame count where the container counts its frames) before its container says it does: declared
lengths are slightly off in ordinary files (variable frame rate, B-frames, a longer last frame), never by that."""


def declared_end(container, stream, tb: Fraction, rate: Fraction | None) -> float | None:
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


def expected_end(declared: float | None, start: float | None, end: float | None,
                 interval: float) -> tuple[float, float, float] | None:
    """``(end, span, tolerance)`` in seconds: where the container says the range ``[start, end)`` ends, its
    length, and how much earlier the stream may end (see :data:`SHORT_TOLERANCE`; ``interval``: seconds per
    frame); ``None`` when the container declares nothing (``declared`` is ``None``)."""
    if declared is None:
        return None
    expected = declared if end is None else min(end, declared)
    span = expected - (start or 0.0)
    return expected, span, max(SHORT_TOLERANCE[0] * interval, SHORT_TOLERANCE[1] * span)


def shortfall(expectation: tuple[float, float, float] | None, reached: float, frames: int,
              exact_count: int | None, start: float | None, interval: float) -> str | None:
    """Why a stream that ended is too short for what its container declares (``None`` if it is not).

    Args:
        expectation: from :func:`expected_end` (``None``: nothing to compare with).
        reached: seconds from the stream's start to the end of the last frame read.
        frames: how many frames were read.
        exact_count: the frame count the container declares, where it counts them, else ``None``.
        start: seconds where reading began (``None``: the start).
        interval: seconds per frame at the nominal rate.
    """
    if expectation is None:
        return None
    expected, span, tolerance = expectation
    if span <= 0 or expected - reached <= tolerance:
        return None
    if exact_count is not None:  # a long last frame (VFR) is no damage when every frame is there
        if exact_count - frames <= max(SHORT_TOLERANCE[0], SHORT_TOLERANCE[1] * exact_count):
            return None
    declared = exact_count or (round(span / interval) if interval > 0 else None)
    of = f" of {'its' if exact_count else 'about'} {declared}" if declared else ""
    return f"it ends after {frames}{of} frames ({reached - (start or 0.0):.2f} s of {span:.2f} s)"
