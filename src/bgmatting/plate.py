"""Clean-plate estimation: the background of a video without the subject, when no background shot exists.

:func:`estimate_plate` works in two steps:

1. **Median.** Up to ``max_frames`` frames spread evenly over the video are kept (as uint8, so memory is
   bounded by ``max_frames × H × W × 3`` bytes, about 370 MB for 60 frames of 1080p); with ``align=True``
   each is warped onto the middle one (:class:`~bgmatting.align.BackgroundAligner`), for hand-held footage;
   the per-pixel median of the frames is the first plate. It is right wherever the background shows in more
   than half of the frames.
2. **Refinement** (with a ``matter``). Every kept frame is matted against the current plate (at a reduced
   size: only a coarse mask is needed); where alpha exceeds ``alpha_threshold``, dilated by
   ``dilate`` (a fraction of the image size), the frame shows the subject and is left out; the plate
   becomes the per-pixel median of the remaining samples. Repeated ``iterations`` times, this recovers the
   background wherever it was seen uncovered at least once, even if the subject covered it most of the time.

Pixels never seen uncovered keep the plain median of step 1 (the subject's colours, typically);
:attr:`PlateResult.never_seen_fraction` says how much of the frame that is, and :attr:`PlateResult.coverage`
maps, per pixel, the fraction of the kept frames that showed the background there.

A subject that does not move is the one thing neither step can see: it is in every frame, so it becomes part of
the plate (and a ghost in the matte). :attr:`PlateResult.motion_fraction` measures how much of the picture
changed at all across the kept frames; below :data:`LOW_MOTION` a warning says so. The cure is more of the
video: with ``whole_video=True`` the frames of a ``start``–``end`` range are joined by frames sampled over the
whole file (by seeking, so the cost stays bounded), those of the same scene only.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import BgMattingError
from .io.images import DEFAULT_MAX_PIXELS, check_max_pixels
from .opencv import import_cv2, resize_max
from .options import MAX_PLATE_FRAMES

__all__ = ["PlateResult", "check_plate_outputs", "estimate_plate", "sample_frames", "save_plate"]

DEFAULT_MAX_FRAMES = 60
LOW_MOTION = 0.05
"""Below this fraction of the picture changing across the kept frames, a warning says that a subject standing
still may be part of the plate. A subject that has moved off its first place has changed at least twice its own
area, so this is quiet for any subject above 2.5 % of the frame that moves; it speaks for one that stands still,
or only turns its head."""
SAME_SCENE = 0.5
"""``whole_video``: a frame from outside the range is used only where at least this fraction of it agrees with
the range's median (leaves out other shots, cuts, a camera moved elsewhere)."""
SEQUENTIAL_LIMIT = 1500
"""``whole_video``: a video of at most this many frames is read through (every n-th frame kept); a longer one is
sampled by seeking (about one decoded frame per kept frame)."""
RANGE_SHARE = 0.25
"""``whole_video``: the share of ``max_frames`` taken from the range itself (the rest: from the whole video)."""
_MEDIAN_CHUNK = 1 << 24  # elements of the (frames, rows, W, 3) block sorted at once (bounds temporary memory)
_AGREE_TOLERANCE = 0.08  # without a matter: a frame "shows the background" where it is this close to the plate


@dataclass
class PlateResult:
    """A clean plate and how well it is supported.

    Attributes:
        plate: the background, ``(H, W, 3)`` float32 in [0, 1].
        coverage: ``(H, W)`` float32 in [0, 1]: the fraction of the kept frames in which the pixel was seen as
            background (with a matter: alpha below the threshold after dilation; without one: the frame agrees
            with the plate within 0.08, a heuristic that also counts a subject that never moves).
        never_seen_fraction: the fraction of pixels whose coverage is 0; they hold the plain median of the
            frames instead (often the subject itself).
        frames_used: how many frames were kept.
        frame_indices: their positions in the input (0-based; with ``whole_video``, in the whole video).
        motion_fraction: the fraction of pixels that differ from the plate (by more than 0.08 after a 5×5 blur)
            in at least one kept frame: where anything moved. Low (below :data:`LOW_MOTION`): a subject that
            stood still in every kept frame is in the plate.
        span: seconds from the first kept frame to the last (``None`` when the frames came without times).
        notes: the warnings about this plate (also issued with ``warnings.warn`` unless ``warn=False``).
    """

    plate: np.ndarray
    coverage: np.ndarray
    never_seen_fraction: float
    frames_used: int
    frame_indices: list[int]
    motion_fraction: float = 1.0
    span: float | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- frames

def _frame_array(frame: Any) -> np.ndarray:
    """A frame as uint8 ``(H, W, 3)``: numpy (uint8, or float in [0, 1]), a reader ``Frame`` (``.image``)."""
    image = getattr(frame, "image", frame)
    if hasattr(image, "detach"):  # torch tensor (C, H, W) / (1, C, H, W)
        image = image.detach().cpu()
        image = image[0] if image.ndim == 4 else image
        image = image.permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise BgMattingError(f"video frames must be (H, W, 3) images, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    raise BgMattingError(f"video frames have unsupported dtype {arr.dtype}; use uint8 or float in [0, 1]")


def sample_frames(frames: Iterable[Any], max_frames: int = DEFAULT_MAX_FRAMES,
                  total: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Keep at most ``max_frames`` frames spread evenly over ``frames``, reading it once.

    Args:
        frames: an iterable of ``(H, W, 3)`` frames (uint8 or float in [0, 1]) or of objects with an ``image``
            attribute (a :class:`~bgmatting.io.video.VideoReader`'s frames).
        max_frames: the most frames kept; at most this many are held in memory at any time.
        total: the number of frames, when known: every ``ceil(total / max_frames)``-th is kept. Otherwise
            (or if ``total`` was too small) the stride doubles whenever the buffer fills, so between
            ``max_frames / 2`` and ``max_frames`` frames, evenly spread, are kept.

    Returns:
        ``(stack, indices)``: uint8 ``(N, H, W, 3)`` and the input positions of the kept frames.
    """
    _check_max_frames(max_frames)
    stride = max(1, math.ceil(total / max_frames)) if total else 1
    stack: np.ndarray | None = None
    indices: list[int] = []
    count = 0
    for i, frame in enumerate(frames):
        if i % stride:
            continue
        arr = _frame_array(frame)
        if stack is None:
            stack = np.empty((max_frames, *arr.shape), np.uint8)
        elif arr.shape != stack.shape[1:]:
            raise BgMattingError(f"frame {i} is {arr.shape[1]}x{arr.shape[0]} but the first frame was "
                                 f"{stack.shape[2]}x{stack.shape[1]}; all frames must have one size")
        if count == max_frames:  # full: keep every other frame, double the stride
            keep = list(range(0, count, 2))
            stack[: len(keep)] = stack[keep]
            indices = [indices[k] for k in keep]
            count = len(keep)
            stride *= 2
            if i % stride:
                continue
        stack[count] = arr
        indices.append(i)
        count += 1
    if stack is None or count == 0:
        raise BgMattingError("the video has no frames to estimate a background from")
    return stack[:count], indices


def _check_max_frames(max_frames: Any) -> None:
    if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) \
            or not 1 <= max_frames <= MAX_PLATE_FRAMES:
        raise BgMattingError(f"the number of frames for the plate must be a whole number, at least 1 and at most "
                             f"{MAX_PLATE_FRAMES}, got {max_frames}")


def _read_timed(reader: Any, max_frames: int, progress: bool, desc: str) -> tuple[np.ndarray, list[int], list[float]]:
    """:func:`sample_frames` over a ``VideoReader`` (closed afterwards): ``(stack, indices, times in seconds)``."""
    from tqdm import tqdm

    times: list[float] = []

    def frames():
        for f in reader:
            times.append(f.time)
            yield f

    try:
        try:
            total = reader.count_frames()
        except Exception:  # noqa: BLE001 (only a hint for the stride)
            total = reader.info.frames
        stack, indices = sample_frames(tqdm(frames(), total=total, desc=desc, unit="frame", disable=not progress),
                                       max_frames, total)
    finally:
        reader.close()
    return stack, indices, [times[i] for i in indices]


def _sample_whole_video(path: str | os.PathLike, max_frames: int, start: float | None, end: float | None,
                        progress: bool, notes: list[str], partial: bool,
                        max_pixels: int | None) -> tuple[np.ndarray, list[int], list[float]]:
    """``whole_video``: frames of ``[start, end)`` (:data:`RANGE_SHARE` of them) and of the rest of the video (those
    of the same scene), in time order: ``(stack, indices in the whole video, times)``."""
    from .io.video import VideoReader, sample_video

    n_range = max(1, round(max_frames * RANGE_SHARE))
    stack, _, times = _read_timed(VideoReader(path, start=start, end=end, partial=partial, max_pixels=max_pixels),
                                  n_range, progress, "reading the range")
    with VideoReader(path, max_pixels=max_pixels) as whole:
        total, rate = whole.info.frames, float(whole.info.rate or 25)
    n_rest = max_frames - len(stack)
    if n_rest > 0:  # outside the range, damage is no error: what can be read helps
        if total is not None and total <= SEQUENTIAL_LIMIT:
            rest, _, rest_times = _read_timed(VideoReader(path, partial=True, max_pixels=max_pixels), n_rest,
                                              progress, "reading the video")
        else:
            sampled = sample_video(path, n_rest, max_pixels=max_pixels)
            rest = np.stack([f.image for f in sampled]) if sampled else stack[:0]
            rest_times = [f.time for f in sampled]
        outside = [i for i, t in enumerate(rest_times)
                   if start is not None and t < start or end is not None and t >= end]
        reference = _masked_median(stack, None)[0]
        same = [i for i in outside if _agrees_with(rest[i], reference).mean() >= SAME_SCENE]
        if len(same) < len(outside):
            notes.append(f"{len(outside) - len(same)} of the {len(outside)} frames sampled outside the range show "
                         "another scene (or a moved camera) and were left out of the plate")
        if same:
            stack = np.concatenate([stack, rest[same]])
            times = times + [rest_times[i] for i in same]
    order = np.argsort(times, kind="stable")
    times = [times[i] for i in order]
    return stack[order], [round(t * rate) for t in times], times


def _motion_fraction(stack: np.ndarray, plate: np.ndarray, valid: np.ndarray | None) -> float:
    """The fraction of pixels where some frame of ``stack`` differs from ``plate`` (see :func:`_agrees_with`)."""
    moved = np.zeros(stack.shape[1:3], bool)
    for i in range(len(stack)):
        differs = ~_agrees_with(stack[i], plate)
        moved |= differs if valid is None else differs & valid[i]
    return float(moved.mean())


def _motion_note(motion: float, n: int, span: float | None) -> str:
    over = f" over {span:.1f} s" if span is not None else ""
    return (f"only {100 * motion:.1f}% of the picture changed across the {n} frames{over} the plate was estimated "
            "from: a subject that stands still in all of them is part of the plate and will be missed (a ghost); "
            "estimate it from more of the video (a longer or other range, or the whole video), or shoot the "
            "empty background")


# --------------------------------------------------------------------------------------------- medians

def _masked_median(stack: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel median over the frames of ``stack`` ``(N, H, W, 3)`` uint8 where ``valid`` ``(N, H, W)``.

    Returns ``(median float32 (H, W, 3) in [0, 1], count int (H, W))``; where ``count == 0`` the median is 0.
    Works in row bands so that the temporary memory stays near ``_MEDIAN_CHUNK`` elements.
    """
    n, h, w, _ = stack.shape
    out = np.zeros((h, w, 3), np.float32)
    count = np.full((h, w), n, np.int64) if valid is None else valid.sum(0)
    rows = max(1, _MEDIAN_CHUNK // max(1, n * w * 3))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        block = stack[:, r0:r1]
        if valid is None:
            med = np.median(block, axis=0)
        else:  # frames last and contiguous: torch sorts these short rows faster than numpy
            data = torch.from_numpy(np.ascontiguousarray(np.moveaxis(block, 0, -1))).to(torch.int16)  # (rows, W, 3, n)
            invalid = torch.from_numpy(np.ascontiguousarray(np.moveaxis(~valid[:, r0:r1], 0, -1)))[:, :, None]
            data = data.masked_fill_(invalid, 256).sort(dim=-1).values  # invalid samples after every valid one
            k = torch.from_numpy(count[r0:r1])[..., None, None].expand(-1, -1, 3, 1)  # (rows, W, 3, 1)
            lo = data.gather(-1, (k - 1).clamp(min=0) // 2)[..., 0]
            hi = data.gather(-1, (k // 2).clamp(max=n - 1))[..., 0]
            med = ((lo.float() + hi.float()) / 2).numpy()
            med[count[r0:r1] == 0] = 0
        out[r0:r1] = np.asarray(med, np.float32) / 255.0
    return out, count


# --------------------------------------------------------------------------------------------- alignment

def _align_to_reference(stack: np.ndarray, reference: int) -> np.ndarray:
    """Warp every frame of ``stack`` (in place) onto frame ``reference``; returns the coverage masks ``(N, H, W)``.

    Frames that cannot be aligned stay as they are (one warning says how many).
    """
    from .align import AlignmentWarning, BackgroundAligner

    cv2 = import_cv2()
    aligner = BackgroundAligner(fill="edge", warn=False)
    ref = stack[reference].astype(np.float32) / 255.0
    n, h, w, _ = stack.shape
    valid = np.ones((n, h, w), bool)
    failed = 0
    for i in range(n):
        if i == reference:
            continue
        frame = stack[i].astype(np.float32) / 255.0
        info = aligner.estimate(ref, frame)  # reference → frame: the reference's features are computed once
        if info.method in ("none", "previous"):
            failed += 1
        if info.method == "none":
            continue
        matrix = np.linalg.inv(info.matrix)  # frame → reference
        warped, _ = aligner.warp(frame, ref, matrix)
        stack[i] = np.clip(warped * 255.0 + 0.5, 0, 255).astype(np.uint8)
        cover = cv2.warpPerspective(np.ones((h, w), np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR)
        valid[i] = cover > 0.999
    if failed:
        warnings.warn(f"{failed} of {n - 1} frames could not be aligned to the middle frame and were used as they "
                      "are (or with the previous frame's alignment); if the camera does not move, pass "
                      "align=False (--no-align)", AlignmentWarning, stacklevel=3)
    return valid


# --------------------------------------------------------------------------------------------- masks

def _subject_mask(matter: Any, frame: np.ndarray, plate: np.ndarray, mask_size: int, alpha_threshold: float,
                  dilate: float) -> np.ndarray:
    """Where ``frame`` (uint8) shows the subject against ``plate`` (float): ``(H, W)`` bool, dilated."""
    cv2 = import_cv2()
    h, w = frame.shape[:2]
    small_src = resize_max(frame.astype(np.float32) / 255.0, mask_size)
    small_bgr = resize_max(plate, mask_size)
    pha = np.asarray(matter(small_src, small_bgr).pha, np.float32)
    if pha.shape != small_src.shape[:2]:
        raise BgMattingError(f"the matter returned alpha of shape {pha.shape}, expected {small_src.shape[:2]}")
    mask = (pha > alpha_threshold).astype(np.uint8)
    radius = round(dilate * max(mask.shape))
    if radius > 0 and mask.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.dilate(mask, kernel)
    if mask.shape != (h, w):
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return mask.astype(bool)


def _agrees_with(frame: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """Where ``frame`` (uint8) is within ``_AGREE_TOLERANCE`` of ``plate`` (after a 5×5 box blur of the difference)."""
    cv2 = import_cv2()
    diff = np.abs(frame.astype(np.float32) / 255.0 - plate).max(axis=2)
    return cv2.blur(diff, (5, 5)) < _AGREE_TOLERANCE


# --------------------------------------------------------------------------------------------- public

def estimate_plate(frames: Any, matter: Any = None, *, iterations: int = 2, align: bool = True,
                   max_frames: int = DEFAULT_MAX_FRAMES, start: float | None = None, end: float | None = None,
                   mask_size: int = 512, alpha_threshold: float = 0.05, dilate: float = 0.02,
                   progress: bool = False, whole_video: bool = False, warn: bool = True,
                   partial: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> PlateResult:
    """Estimate the background of a video in which the subject moves (a "clean plate").

    Args:
        frames: a video file or frame folder (path; read with :class:`~bgmatting.io.video.VideoReader` from
            ``start`` to ``end`` seconds), a ``VideoReader``, or any iterable of frames ``(H, W, 3)`` (uint8
            or float in [0, 1], RGB) — read once.
        matter: optional; a :class:`~bgmatting.pipeline.Matter` (or any ``matter(src, bgr)`` returning an
            object with ``pha`` ``(h, w)`` in [0, 1]) used to mask the subject out in the refinement.
        iterations: refinement passes with ``matter`` (0: the plain median).
        align: warp every frame onto the middle kept frame before the median (hand-held camera). The plate is
            then in the view of that frame; align it to each frame when matting (``--align``).
        max_frames: the most frames kept, spread evenly over the video (memory: ``max_frames × H × W × 3`` bytes),
            1 to :data:`~bgmatting.options.MAX_PLATE_FRAMES`.
        start, end: seconds: the range of a video file (or frame folder) to estimate the plate for.
        whole_video: with a path and ``start``/``end``: look beyond the range — a quarter of the frames come from
            the range, the rest are sampled over the whole video (read through up to :data:`SEQUENTIAL_LIMIT`
            frames, else by seeking: about one decoded frame each), and those of the same scene as the range
            (:data:`SAME_SCENE`) join the median. A subject standing still during the range is then seen moving
            elsewhere, and left out of the plate.
        mask_size: longest side at which frames are matted for the subject masks.
        alpha_threshold: alpha above which a pixel belongs to the subject.
        dilate: the subject mask grows by this fraction of the image's longest side (motion blur, hair).
        progress: show progress bars (reading, refinement passes).
        warn: issue :attr:`PlateResult.notes` as warnings (too little motion: :data:`LOW_MOTION`).
        partial: a damaged video file (see :class:`~bgmatting.io.video.VideoReader`) is an error; with
            ``partial``, the frames that can be read are used.
        max_pixels: with a path: refuse a video whose frames have more pixels than this, before decoding them
            (``None``: no limit; default 40 MP, see :data:`~bgmatting.io.images.DEFAULT_MAX_PIXELS`).

    Returns:
        a :class:`PlateResult`.

    Raises:
        BgMattingError: no frames, frames of different sizes, a missing or unreadable video.
    """
    if iterations < 0:
        raise BgMattingError(f"iterations must be 0 or more, got {iterations}")
    if not 0.0 <= alpha_threshold < 1.0:
        raise BgMattingError(f"alpha_threshold must be in [0, 1), got {alpha_threshold}")
    _check_max_frames(max_frames)
    check_max_pixels(max_pixels)
    total = None
    times: list[float] | None = None
    notes: list[str] = []
    from tqdm import tqdm

    if isinstance(frames, (str, os.PathLike)) and whole_video and (start is not None or end is not None):
        stack, indices, times = _sample_whole_video(frames, max_frames, start, end, progress, notes, partial,
                                                    max_pixels)
    elif isinstance(frames, (str, os.PathLike)):
        from .io.video import VideoReader

        stack, indices, times = _read_timed(VideoReader(frames, start=start, end=end, partial=partial,
                                                        max_pixels=max_pixels), max_frames, progress, "reading")
    else:
        if hasattr(frames, "count_frames"):
            try:
                total = frames.count_frames()
            except Exception:  # noqa: BLE001 (only a hint for the stride)
                total = None
        elif hasattr(frames, "__len__"):
            total = len(frames)
        stack, indices = sample_frames(tqdm(frames, total=total, desc="reading", unit="frame", disable=not progress),
                                       max_frames, total)
    span = times[-1] - times[0] if times else None
    n = len(stack)
    valid = _align_to_reference(stack, n // 2) if align and n > 1 else None
    plate, count = _masked_median(stack, valid)
    median = plate
    if matter is None or iterations == 0:
        seen = np.zeros(stack.shape[1:3], np.int64)
        for i in range(n):
            agree = _agrees_with(stack[i], plate)
            seen += agree if valid is None else agree & valid[i]
        coverage = seen.astype(np.float32) / n
        return _finish(PlateResult(plate, coverage, float((seen == 0).mean()), n, indices), stack, valid, span,
                       notes, warn)

    for it in range(iterations):
        background = np.empty((n, *stack.shape[1:3]), bool)
        for i in tqdm(range(n), desc=f"plate pass {it + 1}/{iterations}", unit="frame", disable=not progress):
            background[i] = ~_subject_mask(matter, stack[i], plate, mask_size, alpha_threshold, dilate)
        if valid is not None:
            background &= valid
        refined, count = _masked_median(stack, background)
        never = count == 0
        refined[never] = median[never]
        plate = refined
    coverage = count.astype(np.float32) / n
    return _finish(PlateResult(plate, coverage, float(never.mean()), n, indices), stack, valid, span, notes, warn)


def _finish(result: PlateResult, stack: np.ndarray, valid: np.ndarray | None, span: float | None, notes: list[str],
            warn: bool) -> PlateResult:
    """Fill in the motion, the span and the notes of ``result``; warn."""
    result.motion_fraction = _motion_fraction(stack, result.plate, valid)
    result.span = span
    if result.motion_fraction < LOW_MOTION:
        notes.append(_motion_note(result.motion_fraction, result.frames_used, span))
    result.notes = notes
    if warn:
        for note in notes:
            warnings.warn(note, stacklevel=3)
    return result


def check_plate_outputs(path: str | os.PathLike, coverage_path: str | os.PathLike | None = None, *,
                        overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, to write the plate to ``path`` (and the coverage map to ``coverage_path``) where
    :func:`save_plate` would fail or do harm: an existing file without ``overwrite``, an input (``inputs``), a
    folder, both outputs on one path, a suffix that is not an image format, a folder that cannot be written.

    Raises:
        BgMattingError: with a one-line message that says what to do.
    """
    from .io import check_writable_folder, is_image_path

    outputs = [Path(p) for p in (path, coverage_path) if p is not None]
    if len(outputs) == 2 and os.path.abspath(outputs[0]) == os.path.abspath(outputs[1]):
        raise BgMattingError(f"the plate and the coverage map would both be written to '{outputs[0]}'; give "
                             "them different names")
    protected = {Path(os.path.abspath(p)) for p in inputs}
    for out in outputs:
        if not is_image_path(out):
            raise BgMattingError(f"cannot write '{out}': name it .png (or .jpg, .webp, .tif)")
        where = Path(os.path.abspath(out))
        if where in protected:
            raise BgMattingError(f"output '{out}' would overwrite an input; choose another name")
        if where.parent in protected:  # it would become a frame of the input sequence
            raise BgMattingError(f"output '{out}' would be written among the input frames in '{out.parent}'; "
                                 "choose another folder")
        if out.is_dir():
            raise BgMattingError(f"output '{out}' is a folder; give the name of the image to write")
        if out.exists() and not overwrite:
            raise BgMattingError(f"output '{out}' exists already; pass --overwrite to replace it")
        check_writable_folder(out.parent)


def save_plate(result: PlateResult, path: str | os.PathLike, coverage_path: str | os.PathLike | None = None, *,
               overwrite: bool = False) -> Path:
    """Write the plate (RGB) to ``path`` and, if given, the coverage map to ``coverage_path``.

    The coverage map is gray: white where every kept frame showed the background, black where none did.
    Both are written atomically; an existing file is replaced only with ``overwrite`` (else
    :class:`BgMattingError`, before anything is written; see :func:`check_plate_outputs`). Returns ``path``.
    """
    from .io import write_image

    check_plate_outputs(path, coverage_path, overwrite=overwrite)
    out = write_image(path, result.plate)
    if coverage_path is not None:
        write_image(coverage_path, result.coverage)
    return out
