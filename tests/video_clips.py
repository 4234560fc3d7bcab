"""Test videos written with PyAV (each function imports ``av`` itself: mark its tests with ``needs("av")``)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

H, W = 48, 64


def frame_image(i: int, h: int = H, w: int = W) -> np.ndarray:
    """A smooth background with a white box that moves with ``i`` and a gray 8×8 marker of brightness 20·i."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 200, w).astype(np.uint8)[None]
    img[..., 2] = 100
    x = 20 + 2 * i
    img[14:34, x:x + 14] = 255
    img[:8, :8] = min(255, 20 * i)
    return img


def background_image(h: int = H, w: int = W) -> np.ndarray:
    img = frame_image(0, h, w)
    img[14:34, 20:34] = img[40:41, 20:34]  # without the box
    img[:8, :8] = img[8:9, :8]
    return img


def marker(image: np.ndarray) -> int:
    """The frame index written by :func:`frame_image`, read back from its marker."""
    return round(float(image[2:6, 2:6, :3].mean()) / 20)


def make_video(path: Path, n: int = 12, *, rate: int = 25, pts: list[int] | None = None,
               time_base: Fraction | None = None, audio: str | None = None, audio_seconds: float | None = None,
               rotation: int | None = None, hflip: bool = False, size: tuple[int, int] = (H, W),
               frames: list[np.ndarray] | None = None) -> Path:
    """Write a tiny H.264 (or VP9 for .webm) test video with PyAV directly, optionally with an audio stream."""
    import av

    path = Path(path)
    h, w = size
    tb = time_base or Fraction(1, rate)
    pts = pts if pts is not None else list(range(n))
    c = av.open(str(path), "w")
    s = c.add_stream("libvpx-vp9" if path.suffix == ".webm" else "libx264", rate=rate)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.time_base = tb
    s.codec_context.time_base = tb
    if rotation is not None:
        s.set_display_rotation(rotation, hflip=hflip)
    a = None
    if audio:
        a = c.add_stream(audio, rate=48000 if audio == "libopus" else 16000, layout="mono")
    for i, p in enumerate(pts):
        img = frames[i] if frames is not None else frame_image(i, h, w)
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts, f.time_base = p, tb
        for pk in s.encode(f):
            c.mux(pk)
    for pk in s.encode():
        c.mux(pk)
    if a is not None:
        rate_a = a.codec_context.sample_rate
        total = int(rate_a * (audio_seconds if audio_seconds is not None else float(pts[-1] * tb) + 0.2))
        fmt = a.codec_context.format.name
        step = 960 if audio == "libopus" else 1024
        for k in range(0, total, step):
            t = np.arange(k, k + step) / rate_a
            wave = (0.3 * np.sin(2 * np.pi * 440 * t))[None]
            arr = (wave * 32767).astype(np.int16) if fmt.startswith("s16") else wave.astype(np.float32)
            fr = av.AudioFrame.from_ndarray(arr, format=fmt, layout="mono")
            fr.sample_rate, fr.pts = rate_a, k
            for pk in a.encode(fr):
                c.mux(pk)
        for pk in a.encode():
            c.mux(pk)
    c.close()
    return path


def streams(path: Path) -> dict:
    """Codec names, packet counts and durations (s) of a file's streams."""
    import av

    counts: dict = {}
    with av.open(str(path)) as c:
        for p in c.demux():
            if p.size:
                n, last = counts.get(p.stream.type, (0, None))
                if p.pts is not None:
                    end = float((p.pts + (p.duration or 0)) * p.time_base)
                    last = end if last is None else max(last, end)
                counts[p.stream.type] = (n + 1, last)
        return {s.type: (s.codec_context.name, *counts.get(s.type, (0, None))) for s in c.streams}


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders (dot-names) left in ``folder``."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


def make_cut_video(path: Path, n: int = 50, size: int = 64) -> Path:
    """An mp4 of ``n`` noisy frames with its index at the front (``faststart``), cut after half of its bytes: the
    container still declares ``n`` frames and ``n / 25`` s (a download or copy that stopped half-way)."""
    import av

    path = Path(path)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = size, size, "yuv420p"
        for i in range(n):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), format="rgb24")
            f.pts = i
            for pk in s.encode(f):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_standing_clip(path: Path, n: int = 100, still: int = 40, rate: int = 25,
                       gop: int | None = None) -> tuple[Path, np.ndarray, tuple[slice, slice]]:
    """A magenta box that stands still at the left for the first ``still`` frames, then walks off to the right.

    Returns ``(path, background, where the box stands)``; ``gop``: the keyframe interval (x264's default if None).
    """
    import av

    bg = background_image()
    place = (slice(18, 30), slice(4, 16))
    frames = []
    for i in range(n):
        img = bg.copy()
        x = 4 + 2 * max(0, i - still)
        img[18:30, x:x + 12] = (255, 0, 255)
        frames.append(img)
    path = make_video(path, n, rate=rate, frames=frames)
    if gop is not None:  # re-encode with short keyframe intervals (for seeking)
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=rate, options={"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            for i, img in enumerate(frames):
                f = av.VideoFrame.from_ndarray(img, format="rgb24")
                f.pts = i
                for pk in s.encode(f):
                    c.mux(pk)
            for pk in s.encode():
                c.mux(pk)
    return path, bg, place
