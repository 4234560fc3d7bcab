"""Does the background shot show the source's scene? A check against the most common mistake: passing the *new*
background one wants to see (``--target-bgr``) as the shot of the empty scene (``--bgr``).

:func:`background_agreement` measures how much of the frame shows that the two are the same scene;
:func:`check_background_matches` (an image) and :func:`check_video_background` (a video's first frames) raise
:class:`~bgmatting.BgMattingError` below :data:`MIN_AGREEMENT`. OpenCV is imported only when needed.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .align import BackgroundAligner
from .errors import BgMattingError
from .opencv import blur, import_cv2, resize_max
from .tensors import as_hwc, check_background_size

__all__ = ["MIN_AGREEMENT", "background_agreement", "check_background_matches", "check_video_background"]

# Chosen with benchmarks/bgr_check.py on real photographs; the margins it found: benchmarks/results/bgr-check.md.
MIN_AGREEMENT = 0.08
_CHECK_SIZE = 192  # longest side, in pixels, of the compared images
_BANDS = ((0.0, 2.0, 2.5), (2.0, 6.0, 6.0))  # structure levels: band-pass (Gaussian sigmas), window sigma
_TEXTURE = (0.008, 0.005)  # band-passed local std of the background shot above which it has texture (per level)
_NCC = (0.8, 0.9)  # local correlation a textured window must reach to match (per level)
_ONE_DIRECTION = (0.8, 0.9)  # structure-tensor coherence above which a window's texture is one-directional, and
# the correlation such a window must reach
_CONTRADICTED = 0.7  # coarse-level correlation below which structure contradicts a colour-only match
_MIN_CORE = 0.015  # fraction of the frame that must match by structure before colours are trusted
_RING = 6  # pixels around the structural match that may join it by colour alone (the subject's outline)
_RESIDUAL = 0.03  # colour residual of a matching pixel after the global colour change (raised with noise)
_SHADOW = 0.55  # a shadow of the subject darkens the source down to this fraction ...
_BRIGHTER = 1.08  # ... and the source may be this much brighter than the corrected background shot
_FLAT_WEIGHT = 0.15  # weight of colour-only agreement between flat areas with no structural match
_MAX_GAIN = 0.4  # |log brightness ratio| of the global change assumed for flat-only agreement, at most ...
_MAX_TINT = 0.12  # ... and the largest per-channel deviation from it (log ratio)
_TINT_TOLERANCE = 0.04  # a flat pixel's per-channel log ratio may deviate from that change by this much
_DARK = 0.03  # added before taking logs, so that noise in dark areas does not dominate
_MAX_SHIFT = 0.06  # the global shift searched, as a fraction of the size
_MAX_COLOUR_GAIN = 3.0  # the fitted colour change may scale grey levels by 1/3-3 (not invert them)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _check_images(src: Any, bgr: Any, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source and background as float32 ``(h, w, 3)`` arrays of the same size, longest side ≤ ``max_size``."""
    cv2 = import_cv2()

    def load(image: Any, name: str) -> np.ndarray:
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
            return resize_max(image, max_size).astype(np.float32) * (1 / 255)  # resize first: much faster
        return resize_max(as_hwc(image, name)[0], max_size)

    s, b = load(src, "source image"), load(bgr, "background image")
    sh, sw = (src.shape[:2] if isinstance(src, np.ndarray) else s.shape[:2])
    bh, bw = (bgr.shape[:2] if isinstance(bgr, np.ndarray) else b.shape[:2])
    check_background_size((bh, bw), (sh, sw), tolerance=0.02)
    if b.shape[:2] != s.shape[:2]:
        b = cv2.resize(b, (s.shape[1], s.shape[0]), interpolation=cv2.INTER_AREA)
    return s, b


def _lts_fit(features: np.ndarray, target: np.ndarray, residual: np.ndarray, keep: float) -> np.ndarray:
    """Least squares ``target ≈ features @ A`` refitted on the ``keep`` best-fitting fraction (trimmed squares)."""
    a = None
    for _ in range(4):
        chosen = residual <= np.quantile(residual, keep)
        a = np.linalg.lstsq(features[chosen], target[chosen], rcond=None)[0]
        residual = np.abs(target - features @ a)
        if residual.ndim == 2:
            residual = residual.max(1)
    return a


def _affine_colour(src: np.ndarray, bgr: np.ndarray, where: np.ndarray | None, keep: float,
                   out_channels: int) -> np.ndarray:
    """``bgr`` mapped by the affine colour change (``(3 + 1) × out_channels``) that best predicts ``src``
    at ``where``."""
    x = bgr.reshape(-1, 3)
    y = src.reshape(-1, out_channels)
    if where is not None:
        x, y = x[where.reshape(-1)], y[where.reshape(-1)]
    step = max(1, len(x) // 3000)
    x, y = x[::step], y[::step]
    ones = np.ones((len(x), 1), np.float32)
    first = np.abs(y - (x @ _LUMA[:, None] if out_channels == 1 else x)).max(1)
    a = _lts_fit(np.hstack([x, ones]), y, first, keep)
    grey_gain = a[:3].sum(0)  # how each output channel follows a grey level: an exposure change keeps it positive
    if not (np.all(np.isfinite(a)) and np.all(grey_gain > 1 / _MAX_COLOUR_GAIN)
            and np.all(grey_gain < _MAX_COLOUR_GAIN)):
        a = np.vstack([_LUMA[:, None] if out_channels == 1 else np.eye(3, dtype=np.float32),
                       np.zeros((1, out_channels), np.float32)])  # no plausible colour change: none
    flat = bgr.reshape(-1, 3)
    return (np.hstack([flat, np.ones((len(flat), 1), np.float32)]) @ a).astype(np.float32).reshape(
        bgr.shape[:2] + ((out_channels,) if out_channels > 1 else ()))


def _band_correlation(gs: np.ndarray, gb: np.ndarray, lo: float, hi: float, window: float):
    """Local normalised cross-correlation of two band-passed gray images (best of ±1 pixel), and local stds."""
    cv2 = import_cv2()
    ds, db = blur(gs, lo) - blur(gs, hi), blur(gb, lo) - blur(gb, hi)
    h, w = gs.shape
    var_s = blur(ds * ds, window)
    padded = cv2.copyMakeBorder(db, 1, 1, 1, 1, cv2.BORDER_REFLECT)
    ncc = np.full((h, w), -1.0, np.float32)
    for oy in range(3):
        for ox in range(3):
            d = padded[oy:oy + h, ox:ox + w]
            ncc = np.maximum(ncc, blur(ds * d, window) / np.sqrt(var_s * blur(d * d, window) + 1e-12))
    return ncc, np.sqrt(var_s), np.sqrt(blur(db * db, window))


def _connected_to(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Pixels of ``seed | allowed`` connected (8-neighbourhood) to a ``seed`` pixel."""
    count, labels = import_cv2().connectedComponents((seed | allowed).astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[np.unique(labels[seed])] = True
    keep[0] = False
    return keep[labels]


def _agreement_of(s: np.ndarray, b: np.ndarray, valid: np.ndarray | None, maps: dict | None = None) -> float:
    """Agreement of a source and a background shot already aligned, at ``_CHECK_SIZE``
    (see :func:`background_agreement`).

    ``maps``, when given, receives the intermediate maps (for inspection).
    """
    cv2 = import_cv2()
    # 1. structure: band-passed gray at two scales; the background shot's gray is the linear mix of its channels
    #    that best predicts the source's (trimmed least squares), so exposure and white balance do not matter
    gs = s @ _LUMA
    gb = _affine_colour(gs, b, valid, 0.3, 1)
    (lo1, hi1, w1), (lo2, hi2, w2) = _BANDS
    ncc1, s1, b1 = _band_correlation(gs, gb, lo1, hi1, w1)
    ncc2, s2, b2 = _band_correlation(gs, gb, lo2, hi2, w2)
    noise = max(float(np.percentile(s1, 10)), float(np.percentile(b1, 10)))  # the flattest windows show the noise
    floor1 = max(_TEXTURE[0], 1.5 * noise)
    tex1, tex2 = b1 > floor1, b2 > _TEXTURE[1]
    # windows whose texture runs in one direction (stripes, straight edges) match unrelated stripes easily: they
    # must correlate better
    smooth = blur(gb, 1.0)
    gx, gy = cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = blur(gx * gx, w1), blur(gy * gy, w1), blur(gx * gy, w1)
    oriented = np.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy) > _ONE_DIRECTION[0] * (jxx + jyy + 1e-12)
    core1 = tex1 & (ncc1 > np.where(oriented, _ONE_DIRECTION[1], _NCC[0]))
    core2 = ~tex1 & tex2 & (ncc2 > _NCC[1])
    if valid is not None:
        core1 &= valid
        core2 &= valid
    # 2. colour: the global colour change, fitted where the structure matches, must predict the source's pixels
    #    up to noise and a shadow (any darkening down to _SHADOW of the brightest part)
    ps, pb = blur(s, 0.7), blur(b, 0.7)
    residual_tolerance = max(_RESIDUAL, 5 * noise)
    core = core1 | core2
    pixel_ok = np.zeros(core.shape, bool)
    if core.sum() >= 20:
        predicted = _affine_colour(ps, pb, core, 0.5, 3)
        gain = (ps * predicted).sum(2) / ((predicted * predicted).sum(2) + 1e-6)
        high = max(_BRIGHTER, 1.05 * float(np.percentile(gain[core], 95)))
        gain = np.clip(gain, min(_SHADOW, high * _SHADOW), high)
        pixel_ok = np.abs(ps - gain[..., None] * predicted).max(2) < residual_tolerance
        if valid is not None:
            pixel_ok &= valid
    core = core1 | (core2 & pixel_ok)  # a coarse-level match alone is weak: its colours must agree too
    flat = ~tex1 & (s1 < floor1)  # no fine structure in either image
    grown = np.zeros_like(core)
    if core.mean() >= _MIN_CORE:
        # 3. the rest of the background joins by colour when connected to the structural match: the pixels next to
        #    it (the subject's outline, where windows mix subject and background) and flat areas whose coarse
        #    structure does not contradict it
        near = cv2.dilate(core.astype(np.uint8), np.ones((2 * _RING + 1,) * 2, np.uint8)).astype(bool)
        uncontradicted = flat & ~(tex2 & (ncc2 < _CONTRADICTED) & (s2 < 2 * b2))
        grown = _connected_to(core, pixel_ok & (near | uncontradicted)) & ~core
    # 4. flat areas anywhere, by colour after a bounded global change (the change most flat pixels show): weak
    flat_ok = np.zeros_like(core)
    if valid is not None:
        flat &= valid
    if flat.sum() > 30:
        ratio = np.log(ps + _DARK) - np.log(pb + _DARK)
        change = np.median(ratio[flat], axis=0)
        bright = float(change @ _LUMA)
        if abs(bright) <= _MAX_GAIN and float(np.abs(change - bright).max()) <= _MAX_TINT:
            d = ratio - change
            dl = d @ _LUMA
            flat_ok = flat & ~core & ~grown & (np.abs(d - dl[..., None]).max(2) < _TINT_TOLERANCE) \
                & (dl > np.log(_SHADOW)) & (dl < np.log(_BRIGHTER))
    if maps is not None:
        maps.update(ncc1=ncc1, ncc2=ncc2, tex1=tex1, tex2=tex2, core1=core1, core2=core2, core=core, grown=grown,
                    flat=flat, flat_ok=flat_ok, pixel_ok=pixel_ok, noise=noise)
    return float((core | grown).mean() + _FLAT_WEIGHT * flat_ok.mean())


def _flow_aligned(s: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """``b`` moved by the affine motion that dense optical flow finds between the two (small moves only), or None."""
    cv2 = import_cv2()
    h, w = s.shape[:2]
    gs = np.clip(s @ _LUMA * 255 + 0.5, 0, 255).astype(np.uint8)
    gb = np.clip(b @ _LUMA * 255 + 0.5, 0, 255).astype(np.uint8)
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(gs, gb, None)  # gs(p) ≈ gb(p + flow(p))
    g = gs.astype(np.float32)
    edges = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))
    chosen = edges > np.median(edges)
    if chosen.sum() < 10:
        return None
    yy, xx = np.nonzero(chosen)
    step = max(1, len(xx) // 1500)
    p0 = np.stack([xx[::step], yy[::step]], 1).astype(np.float32)
    p1 = p0 + flow[yy[::step], xx[::step]]
    m, _ = cv2.estimateAffine2D(p0.reshape(-1, 1, 2), p1.reshape(-1, 1, 2), method=cv2.RANSAC,
                                ransacReprojThreshold=0.7, maxIters=500)
    if m is None or not np.all(np.isfinite(m)):
        return None
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64)
    moved = corners @ m[:, :2].T + m[:, 2] - corners
    if np.abs(m[:, :2] - np.eye(2)).max() > 0.06 or np.abs(moved).max() > 0.08 * max(w, h):
        return None
    return cv2.warpAffine(b, m.astype(np.float32), (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def _agreement(src: np.ndarray, bgr: np.ndarray, valid: np.ndarray | None = None, search: bool = True) -> float:
    """The best agreement of ``bgr`` with ``src`` as it is and (``search``) shifted by phase correlation and moved by
    the affine motion that optical flow finds."""
    cv2 = import_cv2()
    s, b = resize_max(src, _CHECK_SIZE), resize_max(bgr, _CHECK_SIZE)
    h, w = s.shape[:2]
    if valid is not None:
        valid = cv2.resize(valid.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0.99
    best = _agreement_of(s, b, valid)
    if search and min(h, w) >= 16:
        candidates = []
        gs, gb = s.mean(2), b.mean(2)
        window = cv2.createHanningWindow((w, h), cv2.CV_32F)
        (dx, dy), _ = cv2.phaseCorrelate(gb - blur(gb, 4.0), gs - blur(gs, 4.0), window)
        if 0.5 <= max(abs(dx), abs(dy)) and abs(dx) <= _MAX_SHIFT * w and abs(dy) <= _MAX_SHIFT * h:
            candidates.append(cv2.warpAffine(b, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h),
                                             borderMode=cv2.BORDER_REFLECT))
        moved = _flow_aligned(s, b)
        if moved is not None:
            candidates.append(moved)
        for other in candidates:
            best = max(best, _agreement_of(s, other, valid))
    return best


def background_agreement(src: Any, bgr: Any, *, align: bool = False) -> float:
    """How much of the frame shows that ``bgr`` is a shot of the scene behind the subject of ``src``.

    Both images are compared at 192 pixels (longest side), as they are, shifted by the global translation that
    phase correlation finds and moved by the affine motion that dense optical flow finds (the best counts):

    1. **structure**: where the background shot has texture, the band-passed gray of both images must correlate
       strongly in local windows (normalised cross-correlation above 0.8 for fine detail, 0.9 for coarse
       structure, best of ±1 pixel); the background's gray is first mixed from its channels to best predict the
       source's, so exposure, white balance and shadows do not matter. An unrelated photo matches this way only
       in scattered specks;
    2. **colour**: one global affine colour change, fitted where the structure matches, must then predict the
       source's pixels up to the noise and a shadow; only where the structure matches over at least 1.5 % of
       the frame, pixels connected to that match join it: those next to it (the subject's outline) and flat
       areas whose coarse structure does not contradict it;
    3. flat areas elsewhere whose colours agree after a bounded global change count with weight 0.15 only
       (a plain wall is all one can compare there, and any similar wall would match).

    A genuine pair therefore scores about the visible fraction of the background (an empty scene 0.9-1.0; with
    a close-up covering 70 % of the frame still about 0.16 or more), an unrelated image near 0.

    Args:
        src: the frame with the subject, ``(H, W, 3)`` (numpy float in [0, 1] or uint8, PIL image, tensor).
        bgr: the background shot (same aspect ratio; any size).
        align: also compare ``bgr`` aligned to ``src`` with :class:`BackgroundAligner` (hand-held camera; only
            the part it covers counts) and return the better agreement.

    Returns:
        agreement in [0, 1].
    """
    s, b = _check_images(src, bgr, 4 * 128)
    agreement = _agreement(s, b)
    if align:
        aligner = BackgroundAligner(max_size=4 * 128, fill="edge", warn=False)
        info = aligner.estimate(b, s)
        if info.method != "none":
            cv2 = import_cv2()
            moved, _ = aligner.warp(b, s, info.matrix)
            cover = cv2.warpPerspective(np.ones(b.shape[:2], np.float32), info.matrix, (s.shape[1], s.shape[0]))
            agreement = max(agreement, _agreement(s, moved, cover > 0.99, search=False))
    return agreement


def _mismatch_message(agreement: float, what: str, aligned: bool = False) -> str:
    skip = "To skip" if aligned else "If the camera moved between the shots, use --align; to skip"
    return (f"the background image does not show the scene of the {what} (only {100 * agreement:.0f}% of the frame "
            "matches). --bgr must be a shot of the same scene without the subject, taken from the same camera "
            "position (e.g. a frame of the empty scene); to put the subject on a new background, pass that image "
            f"or colour with --target-bgr instead. {skip} this check, use --no-bgr-check.")


def check_background_matches(src: Any, bgr: Any, *, align: bool = False, min_agreement: float = MIN_AGREEMENT) -> float:
    """Raise :class:`BgMattingError` when ``bgr`` is clearly not a shot of the scene behind ``src``.

    The most common mistake is to pass the *new* background one wants (``--target-bgr``) as the background
    shot (``--bgr``). Genuine pairs pass despite a moved camera (a few percent; more with ``align``), exposure
    and white-balance drift, noise, shadows and a subject covering up to about 70 % of the frame, while
    unrelated photographs, even of similar-looking scenes, fail; see :func:`background_agreement`.

    Args:
        src: the image with the subject, ``(H, W, 3)``.
        bgr: the background shot, same aspect ratio.
        align: align the background first (for ``--align``, hand-held shots).
        min_agreement: the smallest accepted :func:`background_agreement`.

    Returns:
        the agreement, when it is high enough.
    """
    agreement = background_agreement(src, bgr, align=align)
    if agreement < min_agreement:
        raise BgMattingError(_mismatch_message(agreement, "source image", align))
    return agreement


def check_video_background(frames: Any, bgr: Any, *, align: bool = False, max_frames: int = 3,
                           min_agreement: float = MIN_AGREEMENT) -> float:
    """:func:`check_background_matches` for a video: the best agreement over its first ``max_frames`` frames.

    Args:
        frames: an iterable of frames ``(H, W, 3)`` or of objects with an ``image`` attribute (only the first
            ``max_frames`` are read), e.g. a :class:`~bgmatting.io.video.VideoReader`; or a single frame.
        bgr: the background shot.
        align: align the background to each frame first.

    Returns:
        the best agreement, when it is high enough; raises :class:`BgMattingError` otherwise (also when
        ``frames`` is empty).
    """
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]
    best = -1.0
    for frame in itertools.islice(frames, max_frames):
        frame = getattr(frame, "image", frame)  # a VideoReader's Frame
        best = max(best, background_agreement(frame, bgr, align=align))
        if best >= min_agreement:
            return best
    if best < 0:
        raise BgMattingError("the video has no frames to compare with the background")
    raise BgMattingError(_mismatch_message(best, "video", align))
