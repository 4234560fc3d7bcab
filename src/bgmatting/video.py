"""Matte a video: stream frames from the source through a :class:`~bgmatting.Matter` into video files.

:func:`convert_video` is what ``bgmatting video`` runs. Three threads share the work so that decoding,
matting and encoding overlap and memory stays flat whatever the length of the video:

    reader thread ──(queue of ≤ 2·batch frames)──▶ main thread: batches of ``batch`` frames through the model
                 ──(queue of ≤ 2 batches)──▶ writer thread: one encoder per output

Every check — inputs exist and are videos or images, the background shows the same view, the encoders exist,
outputs do not exist (or ``overwrite``), the output folder is writable — happens before the model is made and
before the first frame is matted. Outputs are written under temporary names and renamed when the run finishes
cleanly; on an error or Ctrl-C (KeyboardInterrupt) they are deleted, so a run leaves complete files or none —
and the output folders it made are removed again when they are left empty.

A damaged source — one that fails to decode, or whose stream ends well short of what its container declares (a
download or copy cut off) — is an error too, found before the model is made when the end of the video cannot be
read (:meth:`~bgmatting.io.video.VideoReader.probe_end`), else when the stream ends; ``keep_partial`` keeps what
could be read instead, with a warning.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import BgMattingError
from .io.atomic import check_writable_folder, removing_new_folders
from .io.images import DEFAULT_MAX_PIXELS, check_max_pixels, is_image_path, read_image, to_uint
from .io.video import (
    ALPHA_FORMATS,
    FORMAT_SUFFIXES,
    FORMATS,
    VIDEO_SUFFIXES,
    AudioPlan,
    Frame,
    VideoReader,
    VideoWriter,
    check_crf,
    check_format,
    check_preset,
    format_from_path,
    parse_time,
    plan_audio,
)
from .options import MAX_BATCH, VIDEO_OUTPUT_KINDS
from .outputs import output_image, parse_outputs
from .pipeline import Matter
from .tensors import check_background_size, cover_resize, parse_colour, tensor_to_uint, to_tensor
from .workers import ModelWorkers

DEFAULT_TARGET = "#00ff00"
"""The colour ``com`` is composited over in formats without alpha when no ``target_bgr`` is given."""

MEDIAN_FRAMES = 15
"""Frames (evenly spaced) whose per-pixel median replaces a background video shorter than the source."""

QUEUE_BATCHES = 2
"""Each queue holds at most this many batches (the reader's ``QUEUE_BATCHES · batch`` frames)."""

BgrTransform = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class VideoReport:
    """What :func:`convert_video` did.

    Attributes:
        outputs: output kind → the file (or PNG folder) written.
        format: the output format (one of :data:`bgmatting.io.video.FORMATS`).
        frames: frames matted (= frames in each output).
        size: ``(H, W)`` of the outputs.
        seconds: wall-clock time of the run, model loading excluded.
        audio: what happened to the source's audio (``'copied (aac)'``, ``'none'``, …).
        background: how the background was used (``'still image'``, ``'video, frame by frame'``, …).
        notes: the notices given during the run (also issued as warnings).
    """

    outputs: dict[str, Path]
    format: str
    frames: int
    size: tuple[int, int]
    seconds: float
    audio: str
    background: str
    notes: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Frames matted per second."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------- planning

def parse_video_outputs(outputs: str | Iterable[str]) -> list[str]:
    """``'com,pha'`` → ``['com', 'pha']``, checked against :data:`~bgmatting.options.VIDEO_OUTPUT_KINDS`."""
    return parse_outputs(outputs, VIDEO_OUTPUT_KINDS, "video output")


def plan_video_outputs(out: str | os.PathLike, kinds: Sequence[str],
                       format: str = "auto") -> tuple[str, dict[str, Path]]:
    """Where each output goes, and in which format.

    Rule: when ``out`` ends in ``.mp4``, ``.mov`` or ``.webm`` it is the file of the one requested output (the
    format follows the suffix). Otherwise ``out`` is a folder holding ``<kind>.mp4`` / ``.mov`` / ``.webm`` per
    output, or a ``<kind>/`` folder of PNG frames; ``format='auto'`` is then ``mp4``.

    Returns:
        ``(format, {kind: path})``.
    """
    out = Path(out)
    if format != "auto" and format not in FORMATS:
        raise BgMattingError(f"unknown video format '{format}'; choose from auto, {', '.join(FORMATS)}")
    implied = format_from_path(out)
    if implied is not None and not out.is_dir():
        if len(kinds) > 1:
            raise BgMattingError(f"'{out}' names one file but {len(kinds)} outputs were requested "
                                 f"({','.join(kinds)}); give an output folder, or request one output")
        if format not in ("auto", implied):
            raise BgMattingError(f"--format {format} does not write '{out.suffix}' files; name the output "
                                 f"'{out.with_suffix(FORMAT_SUFFIXES[format] or '')}' or use --format {implied}")
        return implied, {kinds[0]: out}
    if out.suffix.lower() in VIDEO_SUFFIXES and not out.is_dir():
        raise BgMattingError(f"cannot write '{out.suffix}' files; name the output .mp4, .mov or .webm, "
                             "or give a folder")
    if out.exists() and not out.is_dir():
        raise BgMattingError(f"output '{out}' exists and is not a folder")
    fmt = "mp4" if format == "auto" else format
    return fmt, {k: out / (k + FORMAT_SUFFIXES[fmt]) for k in kinds}


def _check_outputs(paths: dict[str, Path], inputs: Sequence[Path], overwrite: bool) -> None:
    resolved = {p.resolve() for p in inputs}
    existing = []
    for path in paths.values():
        if path.resolve() in resolved:
            raise BgMattingError(f"output '{path}' would overwrite an input; choose another output")
        if path.exists():
            existing.append(str(path))
    if existing and not overwrite:
        raise BgMattingError(f"output(s) exist already: {', '.join(existing)}; pass --overwrite to replace them")
    check_writable_folder(next(iter(paths.values())).parent)


# --------------------------------------------------------------------------------------------- sources

def _resize_uint8(image: np.ndarray, size: tuple[int, int], cover: bool = False) -> np.ndarray:
    """Resize an ``(h, w, 3)`` uint8 image to ``size`` (stretch of the same aspect, or cover-and-crop)."""
    if image.shape[:2] == tuple(size):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    if cover:
        t = cover_resize(t, size)
    else:
        t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return to_uint(t[0].permute(1, 2, 0).clamp(0, 1).numpy())


def _is_path_like(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


class _Frames:
    """A per-frame supply of uint8 RGB images at the source size: a still, or a video (optionally looped)."""

    def __init__(self, size: tuple[int, int], still: np.ndarray | None = None, reader: VideoReader | None = None,
                 reopen: Callable[[], VideoReader] | None = None, cover: bool = False):
        self.size, self.still, self.reader, self.reopen, self.cover = size, still, reader, reopen, cover
        self._last: np.ndarray | None = None
        self.ran_out = False

    def next(self) -> np.ndarray:
        if self.still is not None:
            return self.still
        frame = next(self.reader, None)
        if frame is None:
            if self.reopen is None:  # the packet count promised more frames than were decoded: hold the last one
                self.ran_out = True
                return self._last
            self.reader.close()  # loop
            self.reader = self.reopen()
            frame = next(self.reader)
        self._last = _resize_uint8(frame.image, self.size, self.cover)
        return self._last

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def _load_image(x: Any, what: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    if _is_path_like(x):
        return to_uint(read_image(x, max_pixels=max_pixels))
    return to_uint(to_tensor(x, what)[0].permute(1, 2, 0).numpy())


def _median_background(reader: VideoReader, count: int) -> np.ndarray:
    wanted = set(np.linspace(0, count - 1, min(count, MEDIAN_FRAMES)).round().astype(int).tolist())
    frames = [f.image for f in reader if f.index in wanted]
    return np.median(np.stack(frames), axis=0).round().astype(np.uint8)


def _open_background(bgr: Any, src: VideoReader, start, end, fps, notes: list[str],
                     partial: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[_Frames, str]:
    size = src.info.size
    if _is_path_like(bgr) and not Path(bgr).exists():
        raise BgMattingError(f"background '{bgr}' does not exist")
    if not _is_path_like(bgr) or Path(bgr).is_file() and is_image_path(bgr):
        image = _load_image(bgr, "background", max_pixels)
        _check_view(image.shape[:2], size, "background", notes)
        return _Frames(size, still=_resize_uint8(image, size)), "still image"
    reader = VideoReader(bgr, start=start, end=end, fps=fps, partial=partial, max_pixels=max_pixels)
    try:
        _check_view(reader.info.size, size, "background video", notes)
        n_bgr, n_src = reader.count_frames(), src.count_frames()
        if n_bgr >= n_src:
            return _Frames(size, reader=reader), "video, frame by frame"
        _notice(notes, f"the background video has {n_bgr} frames but the source has {n_src}: the per-pixel median "
                       f"of {min(n_bgr, MEDIAN_FRAMES)} of its frames is used as a still background")
        still = _median_background(reader, n_bgr)
    except BaseException:
        reader.close()
        raise
    reader.close()
    return _Frames(size, still=_resize_uint8(still, size)), f"median of a shorter video ({n_bgr} frames)"


def _check_view(bgr_size: tuple[int, int], src_size: tuple[int, int], what: str, notes: list[str]) -> None:
    """Same view (aspect ratio) or BgMattingError; a notice when the size differs."""
    try:
        check_background_size(bgr_size, src_size)
    except BgMattingError as e:
        raise BgMattingError(str(e).replace("background", what, 1)) from None
    if tuple(bgr_size) != tuple(src_size):
        _notice(notes, f"{what} {bgr_size[1]}x{bgr_size[0]} is resized to the source size {src_size[1]}x{src_size[0]}")


def _open_target(target: Any, size: tuple[int, int], fps, partial: bool = False,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor | None, _Frames | None, str]:
    """``target_bgr`` → (constant ``(1, 3, H|1, W|1)`` tensor, or a per-frame supply, description)."""
    if target is None:
        return None, None, ""
    if _is_path_like(target):
        p = Path(target)
        if is_image_path(p) and not p.is_dir():
            if not p.exists():
                raise BgMattingError(f"target background '{p}' does not exist")
            image = cover_resize(torch.from_numpy(read_image(p, max_pixels=max_pixels)).permute(2, 0, 1)[None], size)
            return image, None, f"image {p.name}"
        if p.exists():
            def reopen() -> VideoReader:
                return VideoReader(p, fps=fps, partial=partial, max_pixels=max_pixels)
            return None, _Frames(size, reader=reopen(), reopen=reopen, cover=True), f"video {p.name} (looped)"
        if p.suffix.lower() in VIDEO_SUFFIXES:
            raise BgMattingError(f"target background '{p}' does not exist")
        colour = parse_colour(str(target))
        return torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1), None, f"colour {target}"
    if isinstance(target, (tuple, list)) and len(target) == 3 and all(np.isscalar(v) for v in target):
        return torch.tensor([float(v) for v in target], dtype=torch.float32).view(1, 3, 1, 1), None, "colour"
    image = torch.from_numpy(_load_image(target, "target background")).permute(2, 0, 1)[None].float() / 255.0
    return cover_resize(image, size), None, "image"


def _notice(notes: list[str], message: str) -> None:
    notes.append(message)
    warnings.warn(message, stacklevel=3)


# --------------------------------------------------------------------------------------------- threads

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put, waiting while the queue is full; give up (False) once ``stop`` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _read_loop(src: VideoReader, bgr: _Frames, target: _Frames | None, transform: BgrTransform | None,
               out: queue.Queue, stop: threading.Event) -> None:
    try:
        for frame in src:
            if stop.is_set():
                return
            b = bgr.next()
            if transform is not None:
                b = transform(b, frame.image)
                b = to_uint(np.asarray(b)) if np.asarray(b).dtype != np.uint8 else np.asarray(b)
                if b.shape != frame.image.shape:
                    raise BgMattingError(f"bgr_transform returned shape {b.shape}; expected {frame.image.shape}")
            t = target.next() if target is not None else None
            if not _put(out, (frame, b, t), stop):
                return
        _put(out, _END, stop)
    except BaseException as e:  # noqa: BLE001 (handed to the main thread, which raises it)
        _put(out, _Failure(e), stop)


def _write_loop(inp: queue.Queue, writers: dict[str, VideoWriter], stop: threading.Event, errors: list,
                progress) -> None:
    try:
        while True:
            try:
                item = inp.get(timeout=0.05)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if item is _END:
                return
            pts, arrays = item
            for i, p in enumerate(pts):
                if stop.is_set():
                    return
                for kind, writer in writers.items():
                    writer.write(arrays[kind][i], p)
            progress.update(len(pts))
    except BaseException as e:  # noqa: BLE001
        errors.append(e)


# --------------------------------------------------------------------------------------------- convert

def _auto_plate(src: Path, matter: Any, align: bool, frames: int, start, end, progress: bool,
                notes: list[str], partial: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``bgr='auto'``: the clean plate of ``src`` as uint8 RGB, estimated with the help of the whole video (a
    subject standing still during ``start``–``end`` may move elsewhere)."""
    from .plate import estimate_plate

    plate = estimate_plate(src, matter, align=align, max_frames=frames, start=start, end=end, progress=progress,
                           whole_video=True, warn=False, partial=partial, max_pixels=max_pixels)
    for note in plate.notes:
        _notice(notes, note)
    if plate.never_seen_fraction > 0.01:
        _notice(notes, f"{100 * plate.never_seen_fraction:.1f}% of the background was never seen uncovered in "
                       f"'{src.name}'; the subject may not be matted well there")
    return (plate.plate * 255).round().astype(np.uint8)


def convert_video(matter: Any, src: str | os.PathLike, bgr: Any, out: str | os.PathLike, *,
                  outputs: str | Sequence[str] = ("com",), target_bgr: Any = None, format: str = "auto",
                  crf: int | None = None, preset: str | None = None, batch: int | None = None,
                  workers: int | None = None, start: float | str | None = None,
                  end: float | str | None = None, fps: float | None = None, overwrite: bool = False,
                  audio: bool = True, progress: bool = True, bgr_transform: BgrTransform | None = None,
                  check_bgr: bool = True, align: bool = False, plate_frames: int = 60,
                  keep_partial: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> VideoReport:
    """Matte a video and write the requested outputs as videos (or PNG sequences): what ``bgmatting video`` does.

    Args:
        matter: the :class:`~bgmatting.Matter` (or any object with ``forward_tensors(src, bgr)`` and ``device``);
            a model (``nn.Module``), weights path or zoo name, or ``None`` for the default model (a CPU/GPU
            :class:`~bgmatting.Matter` is made for it); or a function that makes one — called only after every
            check has passed.
        src: the video with the subject (any file FFmpeg reads), or a folder of frames (an image sequence).
            Phone videos are turned upright from their rotation metadata.
        bgr: the background without the subject: an image (path, or array/PIL/tensor as
            :func:`~bgmatting.tensors.to_tensor` takes), or a video / frame folder of the empty scene read from
            the same ``start`` and paired frame by frame. A background video with fewer frames than the source is
            replaced by the per-pixel median of its frames (a still), with a notice. Same aspect ratio as the
            source; another size is resized. ``'auto'``: no background shot: a clean plate is estimated from the
            video itself (:func:`bgmatting.plate.estimate_plate` over ``plate_frames`` frames, refined with the
            model) — from the whole video, not only ``start``–``end``, so that a subject standing still there is
            seen moving elsewhere — with a warning when part of the background was never seen uncovered, or
            when too little moved across the frames (a subject that never moves is part of the plate).
        out: a ``.mp4``/``.mov``/``.webm`` file for one output, else a folder receiving ``<kind>.<ext>`` per
            output (``<kind>/000000.png``… for ``png``); see :func:`plan_video_outputs`.
        outputs: any of ``com`` (composite), ``pha`` (alpha, gray), ``fgr`` (foreground, RGB), ``err`` (error
            map, gray), ``ref`` (refined patches, gray); a list or ``'com,pha'``.
        target_bgr: what ``com`` is composited over: an image (path or array), a video (path; looped or cut to
            the source's length, scaled to cover the frame), a colour (``'#RRGGBB'``, ``'r,g,b'`` or an RGB tuple
            in [0, 1]). ``None``: with an alpha format (``mov-prores4444``, ``webm-alpha``, ``png``) ``com`` keeps
            its transparency (straight alpha); with ``mp4`` it goes over :data:`DEFAULT_TARGET` (green), with
            a notice.
        format: ``'auto'`` (from the suffix of ``out``, else ``mp4``), ``'mp4'`` (H.264), ``'mov-prores4444'``,
            ``'webm-alpha'`` (VP9) or ``'png'``.
        crf: quality for mp4 (0–51, default 18) and webm-alpha (0–63, default 24); lower is better and larger.
        preset: libx264's speed for mp4, ``'ultrafast'`` … ``'veryslow'`` (default ``'medium'``): a faster one
            frees CPU time for the model at the cost of a larger file.
        batch: frames per model call (at most :data:`~bgmatting.options.MAX_BATCH`); ``None``: 4 on a GPU, 1 on a
            CPU (where two workers with one frame each run fastest, with less memory; measurements in the README).
        workers: model calls that run at the same time, each on its share of the threads (CPU only): on a CPU,
            two single-threaded calls get more done than one call on two threads. ``None``: 2 for a
            :class:`Matter` on a CPU with 2 threads or more, else 1 (other objects may not be thread-safe).
        start, end: seconds (or ``'MM:SS'``, ``'HH:MM:SS.ms'``) of the source to matte, ``end`` exclusive.
            The output starts at time 0.
        fps: the frame rate of image-sequence inputs (default 25); video files keep their own timing.
        overwrite: replace existing outputs (inputs are never overwritten).
        audio: copy the source's audio into the ``com`` and ``fgr`` outputs (remuxed without re-encoding when
            the container takes the codec, else transcoded; dropped with a warning when impossible or for png).
        progress: show a progress bar (frames, fps, ETA) on stderr.
        bgr_transform: ``f(bgr, src) -> bgr`` called for every frame, in order, in the reader thread, with
            ``(H, W, 3)`` uint8 RGB arrays at the source size; returns the background to use for that frame
            (uint8, or float in [0, 1]) — the hook for aligning a background to hand-held footage.
        check_bgr: before any work, compare a still background with the first frames and stop with an
            explanation when it does not show the same scene (the most common mistake: passing the new background
            as ``bgr`` instead of ``target_bgr``); see :func:`bgmatting.scene.check_video_background`.
        align: align the background to each frame (hand-held footage): uses a
            :class:`~bgmatting.align.BackgroundAligner` as ``bgr_transform`` unless one is given.
        keep_partial: a damaged source (it fails to decode, or ends well short of the length its container
            declares; see :data:`bgmatting.io.video.SHORT_TOLERANCE`) is an error and nothing is written; with
            ``keep_partial`` the frames that could be read are matted and kept, with a warning saying how many.
            Damaged background and target videos are likewise errors, or (with ``keep_partial``) hold their last
            frame. In a folder of frames, a frame that cannot be decoded is such damage (the frames before it are
            kept).
        max_pixels: refuse any input — the source's frames (from the size its stream declares, before decoding),
            a background or target image or video, every frame of a folder — with more pixels than this
            (``None``: no limit; default 40 MP, see :data:`~bgmatting.io.images.DEFAULT_MAX_PIXELS`).

    Returns:
        a :class:`VideoReport`.

    Raises:
        BgMattingError: a missing or unreadable input, a background of another view, an existing output without
            ``overwrite``, a missing encoder, an unwritable output folder, bad options — all before any frame is
            matted; a source damaged in the middle, when its stream ends. On any error or KeyboardInterrupt, the
            outputs of this run are deleted (none is left half-written), with the folders made for them, and the
            exception propagates.

    Timestamps are kept (variable frame rate included), so each output plays in sync with the source.
    """
    from tqdm import tqdm

    notes: list[str] = []
    if matter is None or isinstance(matter, (str, os.PathLike, torch.nn.Module)):
        model = matter
        matter = lambda: Matter(model)  # noqa: E731  (made after the checks)
    kinds = parse_video_outputs(outputs)
    if batch is not None and (not isinstance(batch, (int, np.integer)) or isinstance(batch, bool)
                              or not 1 <= batch <= MAX_BATCH):
        raise BgMattingError(f"batch must be a positive integer, at most {MAX_BATCH}, got {batch}")
    ModelWorkers.check(workers)
    check_max_pixels(max_pixels)
    start, end = parse_time(start), parse_time(end)
    if start is not None and end is not None and end <= start:
        raise BgMattingError(f"--end ({end:g} s) must come after --start ({start:g} s)")
    fmt, paths = plan_video_outputs(out, kinds, format)
    check_format(fmt)
    crf, preset = check_crf(fmt, crf), check_preset(fmt, preset)
    src_path = Path(src)
    if not src_path.exists():
        raise BgMattingError(f"source video '{src_path}' does not exist")
    inputs = [src_path] + [Path(x) for x in (bgr, target_bgr) if _is_path_like(x) and Path(x).exists()]
    _check_outputs(paths, inputs, overwrite)

    closers: list[Callable[[], None]] = []
    writers: dict[str, VideoWriter] = {}
    finished = False
    stop = threading.Event()
    threads: list[threading.Thread] = []
    bar = None
    with removing_new_folders(next(iter(paths.values())).parent):  # made when written; gone on failure
        try:
            reader = VideoReader(src_path, start=start, end=end, fps=fps, partial=True,  # damage: judged below
                                 max_pixels=max_pixels)
            closers.append(reader.close)
            info = reader.info
            size = info.size
            damage = None if keep_partial else reader.probe_end()
            if damage is not None:
                raise BgMattingError(f"video '{src_path}' is damaged or cut short: {damage}; repair or re-export it, "
                                     "or pass --keep-partial to matte the frames that can be read")
            if isinstance(bgr, str) and bgr == "auto":
                if not isinstance(matter, Matter) and not hasattr(matter, "forward_tensors"):
                    matter = matter()
                bgr = _auto_plate(src_path, matter, align, plate_frames, start, end, progress, notes, keep_partial,
                                  max_pixels)
                check_bgr = False
            bgr_frames, bgr_desc = _open_background(bgr, reader, start, end, fps, notes, partial=keep_partial,
                                                    max_pixels=max_pixels)
            closers.append(bgr_frames.close)
            if check_bgr and bgr_frames.still is not None:
                from .scene import check_video_background

                with VideoReader(src_path, start=start, end=end, fps=fps, max_pixels=max_pixels) as first:
                    check_video_background(first, bgr_frames.still, align=align)
            if align and bgr_transform is None:
                from .align import BackgroundAligner

                bgr_transform = BackgroundAligner()
            composite = "com" in kinds and (target_bgr is not None or fmt not in ALPHA_FORMATS)
            if target_bgr is not None and "com" not in kinds:
                _notice(notes, "--target-bgr only changes the 'com' output, which was not requested")
                target_bgr = None
            if composite and target_bgr is None:
                _notice(notes, f"{fmt} has no alpha channel: 'com' is composited over {DEFAULT_TARGET} (green); pass "
                               "--target-bgr, or use --format mov-prores4444, webm-alpha or png for transparency")
                target_bgr = DEFAULT_TARGET
            target_const, target_frames, _ = _open_target(target_bgr if composite else None, size, fps,
                                                          partial=keep_partial, max_pixels=max_pixels)
            if target_frames is not None:
                closers.append(target_frames.close)

            # audio: into com and fgr only (mattes need none)
            audio_plan = AudioPlan("none")
            if audio and not info.sequence and any(k in kinds for k in ("com", "fgr")):
                first_time = float(info.first_pts * info.time_base)
                audio_plan = plan_audio(src_path, fmt, start=first_time if start is not None else None,
                                        end=info.start_time + end if end is not None else None, warn=False)
                if audio_plan.mode == "transcode":
                    _notice(notes, f"the audio of '{src_path.name}' ({info.audio}) cannot go into {fmt} as it is; "
                                   f"it is re-encoded as {audio_plan.codec.removeprefix('lib')}")
                elif audio_plan.reason:
                    _notice(notes, f"the audio of '{src_path.name}' is dropped: {audio_plan.reason}")
            if not isinstance(matter, Matter) and not hasattr(matter, "forward_tensors"):
                matter = matter()
            device = torch.device(getattr(matter, "device", "cpu"))
            calls = ModelWorkers(workers, matter, device)
            batch = batch or (1 if device.type == "cpu" else 4)

            channels = {"com": 3 if composite else 4, "fgr": 3, "pha": 1, "err": 1, "ref": 1}
            high_bit = fmt == "mov-prores4444"
            offset = float(info.first_pts * info.time_base)
            for kind, path in paths.items():
                writers[kind] = VideoWriter(path, size, format=fmt, channels=channels[kind], rate=info.rate,
                                            time_base=info.time_base, crf=crf, preset=preset, overwrite=overwrite,
                                            audio=audio_plan if kind in ("com", "fgr") else None, audio_offset=offset)

            bgr_still = None
            if bgr_frames.still is not None and bgr_transform is None:
                bgr_still = torch.from_numpy(bgr_frames.still).permute(2, 0, 1)[None].to(device).float().div_(255.0)
            if target_const is not None:
                target_const = target_const.to(device)

            total = reader.count_frames() if bgr_frames.reader is not None else info.frames
            bar = tqdm(total=total, desc="matting", unit="frame", disable=not progress, dynamic_ncols=True)
            in_q: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES * batch)
            out_q: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
            errors: list[BaseException] = []
            threads = [
                threading.Thread(target=_read_loop, name="bgmatting-reader", daemon=True,
                                 args=(reader, bgr_frames, target_frames, bgr_transform, in_q, stop)),
                threading.Thread(target=_write_loop, name="bgmatting-writer", daemon=True,
                                 args=(out_q, writers, stop, errors, bar)),
            ]
            t0 = time.perf_counter()
            for t in threads:
                t.start()

            def send(item) -> None:  # to the writer thread; raises what made it fail
                while True:
                    if errors:
                        raise errors[0]
                    try:
                        out_q.put(item, timeout=0.05)
                        return
                    except queue.Full:
                        continue

            def run(frames: list[tuple[Frame, np.ndarray, np.ndarray | None]]) -> tuple[list[int], dict]:
                s = _batch_tensor([f.image for f, _, _ in frames], device)
                b = bgr_still.expand(len(frames), -1, -1, -1) if bgr_still is not None else \
                    _batch_tensor([x for _, x, _ in frames], device)
                res = matter.forward_tensors(s, b, outputs=needed) if isinstance(matter, Matter) else \
                    matter.forward_tensors(s, b)
                tgt = target_const if target_frames is None else _batch_tensor([x for _, _, x in frames], device)
                arrays = {k: tensor_to_uint(output_image(k, res, tgt if composite else None), high_bit) for k in kinds}
                return [f.pts - info.first_pts for f, _, _ in frames], arrays

            def submit(frames) -> None:  # to the model's workers; what they have done goes on to the writer, in order
                for item in calls.submit(run, frames):
                    send(item)

            needed = {x for k in kinds for x in (("pha", "fgr") if k == "com" else (k,))}  # model outputs to make
            closers.append(calls.close)  # cancels the batches not started, gives the threads back
            calls.start()
            n = 0
            pending: list = []
            while True:
                try:
                    item = in_q.get(timeout=0.05)
                except queue.Empty:
                    if errors:
                        raise errors[0] from None
                    continue
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                pending.append(item)
                if len(pending) == batch:
                    submit(pending)
                    n += len(pending)
                    pending = []
            if pending:
                submit(pending)
                n += len(pending)
            for item in calls.drain():
                send(item)
            send(_END)
            threads[1].join()
            if errors:
                raise errors[0]
            if reader.damage is not None:
                if not keep_partial:
                    raise BgMattingError(f"video '{src_path}' is damaged or cut short: {reader.damage}; nothing was "
                                         f"written: repair or re-export it, or pass --keep-partial to keep the {n} "
                                         "frames that could be read")
                _notice(notes, f"video '{src_path.name}' is damaged or cut short: {reader.damage}; the outputs hold "
                               f"the {n} frames that could be read (--keep-partial)")
            if bgr_frames.ran_out:
                why = f" (it is damaged or cut short: {bgr_frames.reader.damage})" if bgr_frames.reader.damage else ""
                _notice(notes, f"the background video ended before the source{why}; its last frame was used for "
                               "the rest")
            for w in writers.values():
                w.close()
            finished = True
            seconds = time.perf_counter() - t0
        finally:
            if not finished:
                stop.set()
            for t in threads:
                t.join()
            if not finished:
                for w in writers.values():
                    w.abort()
            if bar is not None:
                bar.close()
            for close in reversed(closers):
                close()
    return VideoReport(outputs=dict(paths), format=fmt, frames=n, size=size, seconds=seconds,
                       audio=audio_plan.describe(), background=bgr_desc, notes=notes)


def _batch_tensor(images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` arrays → ``(B, 3, H, W)`` float32 in [0, 1] on ``device``."""
    t = torch.from_numpy(np.stack(images)).to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2).float().div_(255.0)

