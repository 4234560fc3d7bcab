"""Background alignment for hand-held footage, and a check that the background shot shows the source's scene.

Background matting compares each frame with a shot of the empty scene, so the two must line up to a pixel or
two. When the camera is hand-held, :class:`BackgroundAligner` warps the background shot onto each frame:

1. both images are scaled down (longest side ``max_size``, 640 px by default) and turned gray;
2. ORB (or SIFT) features are matched with Lowe's ratio test, and a homography is fitted with RANSAC;
3. a homography that is implausible (too few inliers, a flip, a scale change beyond ``max_scale``, strong
   perspective, or a plate that would cover too little of the frame) is rejected; the aligner then tries a
   similarity transform (rotation, scale, shift) from the same matches, then a pure translation (phase
   correlation refined by ECC), which also works on smooth images with few corners;
4. if all of these fail, the last good alignment is kept (for video) or, without one, the unaligned
   background is used, and an :class:`AlignmentWarning` is issued once per aligner;
5. the transform, scaled back to full resolution, warps the full-resolution background onto the frame.

Where the warped background does not reach (the frame shows more than the background shot did), those
pixels are **filled from the source frame itself**: source and background are then equal there, so the model
sees no difference and predicts background (alpha 0). The subject is therefore cut away in that band; the
fraction of the frame the background really covers is reported as ``AlignInfo.coverage``.

:func:`check_background_matches` guards against the most common mistake, passing the *new* background one
wants to see instead of the shot of the empty scene.

OpenCV (``pip install opencv-python-headless``) is imported only when needed.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BgMattingError

__all__ = [
    "MIN_AGREEMENT",
    "AlignInfo",
    "AlignmentWarning",
    "BackgroundAligner",
    "align_background",
    "background_agreement",
    "check_background_matches",
    "check_video_background",
]


class AlignmentWarning(UserWarning):
    """The background shot could not be aligned to a frame; the previous or no alignment was used."""


def import_cv2():
    """Import OpenCV, or raise :class:`BgMattingError` that says how to install it."""
    try:
        import cv2
    except ImportError:
        raise BgMattingError("this feature needs OpenCV; install it with: pip install opencv-python-headless") from None
    return cv2


# --------------------------------------------------------------------------------------------- image helpers

def _as_hwc(image: Any, name: str) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """``image`` as a float32 ``(H, W, 3)`` array in [0, 1], and a function that converts a result back.

    uint8 ``(H, W, 3)`` arrays come back as uint8, other numpy arrays as float32 ``(H, W, 3)``; tensors
    ``(3, H, W)`` / ``(1, 3, H, W)`` come back as tensors of the same shape, dtype and device.
    """
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3:
        if image.dtype == np.float32:
            return image, lambda out: out
        if image.dtype == np.uint8:
            return image.astype(np.float32) * (1 / 255), lambda out: np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)
    import torch

    from .pipeline import to_tensor

    if isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] != 1:
            raise BgMattingError(f"{name}: align one frame at a time, got a batch of {image.shape[0]}")
        batched, dtype, device = image.ndim == 4, image.dtype, image.device
        arr = to_tensor(image, name)[0].permute(1, 2, 0).cpu().numpy()

        def back(out: np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)
            if batched:
                t = t[None]
            if not dtype.is_floating_point:  # uint8 tensors stay uint8
                t = (t * 255).round()
            return t.to(device=device, dtype=dtype)

        return np.ascontiguousarray(arr), back
    t = to_tensor(image, name)
    if t.shape[0] != 1:
        raise BgMattingError(f"{name}: align one image at a time")
    return np.ascontiguousarray(t[0].permute(1, 2, 0).numpy()), lambda out: out


def _scale_matrix(sx: float, sy: float) -> np.ndarray:
    """Pixel-centre-correct map from full-resolution to resized coordinates (``x' = s·(x + 0.5) − 0.5``)."""
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _small_gray(image: np.ndarray, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 gray image with longest side ≤ ``max_size``, and the full → small coordinate matrix."""
    cv2 = import_cv2()
    h, w = image.shape[:2]
    s = min(1.0, max_size / max(h, w))
    sw, sh = max(1, round(w * s)), max(1, round(h * s))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA) if (sh, sw) != (h, w) else image
    gray = cv2.cvtColor(np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    return gray, _scale_matrix(sw / w, sh / h)


def _resize_max(image: np.ndarray, max_size: int) -> np.ndarray:
    cv2 = import_cv2()
    h, w = image.shape[:2]
    s = min(1.0, max_size / max(h, w))
    if s >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------------------------- alignment

@dataclass
class AlignInfo:
    """How one background was aligned to one frame.

    Attributes:
        method: ``'homography'``, ``'similarity'`` or ``'translation'`` (estimated for this frame),
            ``'previous'`` (the last good alignment was reused) or ``'none'`` (the background was not moved;
            only resized when its size differs).
        matrix: ``(3, 3)`` float64 homography from background pixel coordinates ``(x, y, 1)`` to source pixel
            coordinates, at full resolution.
        matches: feature matches that passed the ratio test.
        inliers: matches consistent with the accepted transform (0 for translation / previous / none).
        coverage: fraction of the source frame covered by the warped background, in [0, 1]; the rest was
            filled from the source frame (and will be matted as background).
        reason: why the feature homography was not used (empty when it was).
    """

    method: str
    matrix: np.ndarray
    matches: int = 0
    inliers: int = 0
    coverage: float = 1.0
    reason: str = ""


@dataclass
class _Features:
    gray: np.ndarray
    to_small: np.ndarray
    keypoints: Any
    descriptors: np.ndarray | None


class BackgroundAligner:
    """Warp a background shot onto frames of a hand-held video (or onto one photo).

    A stateful callable: ``aligner(frame_bgr, frame_src) -> aligned_bgr`` can be passed as the ``bgr_transform``
    hook of :func:`bgmatting.video.convert_video`. It remembers the last good alignment (used when a frame
    cannot be aligned), caches the background's features while the background stays the same, warns once
    (:class:`AlignmentWarning`) when it has to fall back, and counts the methods used in :attr:`counts`.

    Args:
        max_size: longest side, in pixels, of the gray images the transform is estimated on.
        features: ``'orb'`` (fast, default) or ``'sift'`` (slower, more accurate on soft textures).
        n_features: features detected per image.
        ratio: Lowe's ratio test threshold for matches.
        ransac_threshold: RANSAC inlier distance in pixels at the working size (``max_size``).
        min_inliers: fewest RANSAC inliers for a homography (a similarity needs half as many).
        max_scale: the largest accepted zoom between background and frame (and 1 / it for zooming out).
        min_coverage: the smallest fraction of the frame the warped background must cover.
        max_shift: the largest accepted translation, as a fraction of the frame size.
        ecc_min_correlation: the correlation the translation (ECC) fallback must reach.
        fill: ``'src'`` (default) fills uncovered pixels from the source frame (→ matted as background);
            ``'edge'`` repeats the background's border pixels instead.
        warn: issue an :class:`AlignmentWarning` the first time a frame cannot be aligned.

    Example:
        >>> aligner = BackgroundAligner()                                    # doctest: +SKIP
        >>> aligned, info = aligner.align(bgr, src)                          # doctest: +SKIP
        >>> convert_video("in.mp4", ..., bgr_transform=BackgroundAligner())   # doctest: +SKIP
    """

    def __init__(self, *, max_size: int = 640, features: str = "orb", n_features: int = 3000, ratio: float = 0.8,
                 ransac_threshold: float = 2.5, min_inliers: int = 15, max_scale: float = 1.5,
                 min_coverage: float = 0.5, max_shift: float = 0.25, ecc_min_correlation: float = 0.6,
                 fill: str = "src", warn: bool = True):
        if features not in ("orb", "sift"):
            raise BgMattingError(f"features must be 'orb' or 'sift', not '{features}'")
        if fill not in ("src", "edge"):
            raise BgMattingError(f"fill must be 'src' or 'edge', not '{fill}'")
        if max_size < 32:
            raise BgMattingError(f"max_size must be at least 32 pixels, got {max_size}")
        if max_scale <= 1.0:
            raise BgMattingError(f"max_scale must be > 1, got {max_scale}")
        self.max_size = int(max_size)
        self.features = features
        self.n_features = int(n_features)
        self.ratio = float(ratio)
        self.ransac_threshold = float(ransac_threshold)
        self.min_inliers = int(min_inliers)
        self.max_scale = float(max_scale)
        self.min_coverage = float(min_coverage)
        self.max_shift = float(max_shift)
        self.ecc_min_correlation = float(ecc_min_correlation)
        self.fill = fill
        self.warn = warn
        self.counts: dict[str, int] = {}
        self.last_info: AlignInfo | None = None
        self._last_good_small: np.ndarray | None = None  # homography at working size (bgr small → src small)
        self._bgr_features: _Features | None = None
        self._detector = None
        self._warned = False

    # ----------------------------------------------------------------------------------------- public

    def reset(self) -> None:
        """Forget the last good alignment and the cached background (e.g. before an unrelated clip)."""
        self._last_good_small = None
        self._bgr_features = None
        self.last_info = None

    def __call__(self, frame_bgr: Any, frame_src: Any) -> Any:
        """The ``bgr_transform`` hook: the background aligned to ``frame_src``, of the type and shape of ``frame_bgr``.

        Args:
            frame_bgr: the background shot: numpy ``(H, W, 3)`` (float in [0, 1] or uint8) or a tensor
                ``(3, H, W)`` / ``(1, 3, H, W)``.
            frame_src: the frame, in any of those forms (its size may differ from the background's).

        Returns:
            the aligned background at the size of ``frame_src``: uint8 ``(H, W, 3)`` for a uint8 array (what
            :func:`~bgmatting.video.convert_video` passes), float32 ``(H, W, 3)`` for other arrays, a tensor
            shaped like ``frame_bgr`` for a tensor.
        """
        b, back = _as_hwc(frame_bgr, "background")
        s, _ = _as_hwc(frame_src, "source frame")
        return back(self._align_arrays(b, s)[0])

    def align(self, bgr: Any, src: Any) -> tuple[np.ndarray, AlignInfo]:
        """Align ``bgr`` to ``src``.

        Args:
            bgr: the background shot, ``(h, w, 3)`` (any image form accepted by :func:`bgmatting.pipeline.to_tensor`).
            src: the frame with the subject, ``(H, W, 3)``.

        Returns:
            ``(aligned, info)``: ``aligned`` float32 ``(H, W, 3)`` in [0, 1] at the size of ``src``;
            ``info`` an :class:`AlignInfo`.
        """
        return self._align_arrays(_as_hwc(bgr, "background")[0], _as_hwc(src, "source frame")[0])

    def _align_arrays(self, bgr: np.ndarray, src: np.ndarray) -> tuple[np.ndarray, AlignInfo]:
        info = self.estimate(bgr, src)
        aligned, info.coverage = self.warp(bgr, src, info.matrix)
        self.last_info = info
        return aligned, info

    def estimate(self, bgr: np.ndarray, src: np.ndarray) -> AlignInfo:
        """Estimate the full-resolution transform from ``bgr`` to ``src`` (float32 ``(H, W, 3)`` arrays)."""
        bf = self._background_features(bgr)
        sf = self._detect(src)
        h_small, method, matches, inliers, reason = self._estimate_small(bf, sf)
        if h_small is None:
            if self._last_good_small is not None:
                h_small, method = self._last_good_small, "previous"
            else:
                h_small, method = None, "none"
            if self.warn and not self._warned:
                self._warned = True
                fallback = "the last good alignment" if method == "previous" else "the background shot unaligned"
                warnings.warn(f"could not align the background shot to a frame ({reason}); using {fallback} for "
                              "such frames (shown once). Alignment needs a background with visible texture and a "
                              "camera that stays near where the background was shot.", AlignmentWarning, stacklevel=3)
        else:
            self._last_good_small = h_small
        self.counts[method] = self.counts.get(method, 0) + 1
        if h_small is None:
            sh, sw = src.shape[:2]
            bh, bw = bgr.shape[:2]
            matrix = np.diag([sw / bw, sh / bh, 1.0])  # plain resize (identity for equal sizes)
        else:
            matrix = np.linalg.inv(sf.to_small) @ h_small @ bf.to_small
            matrix /= matrix[2, 2]
        return AlignInfo(method, matrix, matches, inliers, 1.0, reason)

    def warp(self, bgr: np.ndarray, src: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, float]:
        """Warp ``bgr`` with ``matrix`` (background → source pixels) to the size of ``src``; fill the uncovered part.

        Returns ``(aligned float32 (H, W, 3), covered fraction)``.
        """
        cv2 = import_cv2()
        H, W = src.shape[:2]
        if bgr.shape[:2] == (H, W) and np.allclose(matrix, np.eye(3), atol=1e-9):
            return bgr.copy(), 1.0
        m = matrix.astype(np.float64)
        out = cv2.warpPerspective(bgr, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        cover = cv2.warpPerspective(np.ones(bgr.shape[:2], np.float32), m, (W, H), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        covered = float(np.count_nonzero(cover > 0.5)) / cover.size
        if self.fill == "src" and float(cover.min()) < 1.0:
            out = cv2.blendLinear(out, np.ascontiguousarray(src, dtype=np.float32), cover, 1.0 - cover)
        return out, covered

    # ----------------------------------------------------------------------------------------- internals

    def _make_detector(self):
        cv2 = import_cv2()
        if self._detector is None:
            if self.features == "sift":
                self._detector = cv2.SIFT_create(nfeatures=self.n_features)
            else:
                self._detector = cv2.ORB_create(nfeatures=self.n_features, fastThreshold=10, edgeThreshold=15,
                                                patchSize=15)
        return self._detector

    def _detect(self, image: np.ndarray, gray: np.ndarray | None = None,
                to_small: np.ndarray | None = None) -> _Features:
        if gray is None:
            gray, to_small = _small_gray(image, self.max_size)
        keypoints, descriptors = self._make_detector().detectAndCompute(gray, None)
        return _Features(gray, to_small, keypoints, descriptors)

    def _background_features(self, bgr: np.ndarray) -> _Features:
        gray, to_small = _small_gray(bgr, self.max_size)
        cached = self._bgr_features
        if cached is not None and cached.gray.shape == gray.shape and np.array_equal(cached.gray, gray):
            return cached
        self._bgr_features = self._detect(bgr, gray, to_small)
        return self._bgr_features

    def _match(self, bf: _Features, sf: _Features) -> tuple[np.ndarray, np.ndarray]:
        cv2 = import_cv2()
        if bf.descriptors is None or sf.descriptors is None or len(bf.keypoints) < 2 or len(sf.keypoints) < 2:
            return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
        norm = cv2.NORM_L2 if self.features == "sift" else cv2.NORM_HAMMING
        pairs = cv2.BFMatcher(norm).knnMatch(bf.descriptors, sf.descriptors, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.ratio * p[1].distance]
        pb = np.float32([bf.keypoints[m.queryIdx].pt for m in good]).reshape(-1, 2)
        ps = np.float32([sf.keypoints[m.trainIdx].pt for m in good]).reshape(-1, 2)
        return pb, ps

    def _estimate_small(self, bf: _Features, sf: _Features):
        """``(homography at working size or None, method, matches, inliers, reason)``."""
        cv2 = import_cv2()
        pb, ps = self._match(bf, sf)
        n = len(pb)
        reasons = []
        if n >= max(8, self.min_inliers):
            hom, mask = cv2.findHomography(pb, ps, cv2.RANSAC, self.ransac_threshold, maxIters=2000,
                                           confidence=0.995)
            inl = int(mask.sum()) if mask is not None else 0
            if hom is None or inl < self.min_inliers:
                reasons.append(f"only {inl} of {n} feature matches agree on a homography")
            else:
                bad = self._implausible(hom, bf.gray.shape, sf.gray.shape)
                if bad is None:
                    return hom, "homography", n, inl, ""
                reasons.append(f"the homography is implausible ({bad})")
            aff, mask = cv2.estimateAffinePartial2D(pb, ps, method=cv2.RANSAC,
                                                    ransacReprojThreshold=self.ransac_threshold)
            inl = int(mask.sum()) if mask is not None else 0
            if aff is not None and inl >= max(6, self.min_inliers // 2):
                sim = np.vstack([aff, [0.0, 0.0, 1.0]])
                if self._implausible(sim, bf.gray.shape, sf.gray.shape) is None:
                    return sim, "similarity", n, inl, reasons[0]
        else:
            reasons.append(f"too few matching features ({n})")
        trans, why = self._estimate_translation(bf.gray, sf.gray)
        if trans is not None:
            return trans, "translation", n, 0, reasons[0]
        return None, "none", n, 0, f"{reasons[0]}; {why}"

    def _implausible(self, hom: np.ndarray, bgr_shape: tuple[int, int], src_shape: tuple[int, int]) -> str | None:
        """Why the homography (working size) cannot be a camera shake, or ``None`` when it is plausible."""
        if not np.all(np.isfinite(hom)):
            return "not finite"
        bh, bw = bgr_shape[:2]
        sh, sw = src_shape[:2]
        corners = np.array([[0, 0, 1], [bw, 0, 1], [bw, bh, 1], [0, bh, 1]], np.float64).T
        mapped = hom @ corners
        if np.any(mapped[2] <= 1e-6):
            return "the horizon passes through the image"
        q = (mapped[:2] / mapped[2]).T  # (4, 2)
        edges = np.roll(q, -1, axis=0) - q
        cross = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
        if not (np.all(cross > 0) or np.all(cross < 0)):
            return "folded or mirrored"
        if np.all(cross < 0):
            return "mirrored"
        area = 0.5 * abs(np.sum(q[:, 0] * np.roll(q[:, 1], -1) - np.roll(q[:, 0], -1) * q[:, 1]))
        ratio = area / (bw * bh) / ((sw / bw) * (sh / bh))
        if not 1.0 / self.max_scale ** 2 <= ratio <= self.max_scale ** 2:
            return f"scale change {ratio ** 0.5:.2f}x"
        lengths = np.hypot(edges[:, 0], edges[:, 1])
        for i in (0, 1):
            a, b = lengths[i], lengths[i + 2]
            if min(a, b) / max(a, b) < 1.0 / self.max_scale:
                return "strong perspective"
        centre = hom @ np.array([bw / 2, bh / 2, 1.0])
        shift = np.abs(centre[:2] / centre[2] - np.array([sw / 2, sh / 2])) / np.array([sw, sh])
        if np.any(shift > self.max_shift):
            return f"shift of {100 * shift.max():.0f}% of the frame"
        cv2 = import_cv2()
        cover = cv2.warpPerspective(np.ones((bh, bw), np.uint8), hom, (sw, sh), flags=cv2.INTER_NEAREST)
        if cover.mean() < self.min_coverage:
            return f"the background would cover only {100 * cover.mean():.0f}% of the frame"
        return None

    def _estimate_translation(self, bgr_gray: np.ndarray, src_gray: np.ndarray) -> tuple[np.ndarray | None, str]:
        """A translation from phase correlation refined by ECC, at working size; ``(None, why)`` when it fails."""
        cv2 = import_cv2()
        if bgr_gray.shape != src_gray.shape:
            return None, "no translation fallback for images of different sizes"
        if float(bgr_gray.std()) < 2.0 or float(src_gray.std()) < 2.0:
            return None, "the images have no texture"
        b = bgr_gray.astype(np.float32)
        s = src_gray.astype(np.float32)
        b -= b.mean()
        s -= s.mean()
        window = cv2.createHanningWindow((b.shape[1], b.shape[0]), cv2.CV_32F)
        (dx, dy), _response = cv2.phaseCorrelate(b, s, window)  # s(x) ≈ b(x − d)
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-5)
        best_cc, warp = -1.0, None
        # ECC from no motion and from the phase-correlation estimate; the better correlation wins, so a wrong
        # phase-correlation peak (common with a large subject) cannot beat the near-identity of a small move
        for start in ((0.0, 0.0), (dx, dy)):
            init = np.array([[1, 0, -start[0]], [0, 1, -start[1]]], np.float32)  # src coords → bgr coords
            try:
                cc, found = cv2.findTransformECC(s, b, init, cv2.MOTION_TRANSLATION, criteria, None, 5)
            except cv2.error:
                continue
            if np.isfinite(cc) and cc > best_cc:
                best_cc, warp = float(cc), found
        if warp is None:
            return None, "the translation search did not converge"
        if best_cc < self.ecc_min_correlation:
            return None, f"the best translation correlates only {best_cc:.2f}"
        tx, ty = -float(warp[0, 2]), -float(warp[1, 2])
        h, w = b.shape
        if abs(tx) > self.max_shift * w or abs(ty) > self.max_shift * h:
            return None, "the best translation is too large"
        return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]]), ""


def align_background(bgr: Any, src: Any, **options) -> tuple[np.ndarray, AlignInfo]:
    """Align one background shot to one photo (what ``bgmatting matte --align`` does).

    Args:
        bgr: the shot of the empty scene, ``(h, w, 3)`` numpy (float in [0, 1] or uint8), PIL image or tensor.
        src: the photo with the subject, ``(H, W, 3)``, taken from about the same position.
        **options: :class:`BackgroundAligner` options.

    Returns:
        ``(aligned, info)``: ``aligned`` float32 ``(H, W, 3)`` in [0, 1], the background warped onto ``src``
        (pixels it does not cover are copied from ``src``, so they are matted as background); ``info`` an
        :class:`AlignInfo`. When no alignment can be found the background is returned unaligned, with an
        :class:`AlignmentWarning`.
    """
    return BackgroundAligner(**options).align(bgr, src)


# --------------------------------------------------------------------------------------------- background check

# Tuned on 600 synthetic pairs (procedural backgrounds; subjects covering 60 % of the frame with every BGMv2
# perturbation at once — shadow, noise, colour jitter, misalignment — or 10–60 % with BGMv2's probabilities)
# and 300 unrelated pairs: genuine pairs scored at least 0.17 (median about 0.5), while about 85 % of unrelated
# ones scored below 0.08. Flat walls of similar colours cannot be told apart from a colour drift, so such
# mistakes may pass: the check stops clear mismatches only.
MIN_AGREEMENT = 0.08
_CHECK_SIZE = 128  # longest side of the compared images
_WINDOW = 5.0  # Gaussian sigma of the local windows (pixels at _CHECK_SIZE)
_FLAT = 0.015  # local standard deviation of band-passed gray below which a window has no texture
_NCC = 0.5  # local normalised cross-correlation for textured windows to agree
# Flat windows compare mean colours as (log luma, chroma Cb, Cr), after one global change (the most common
# difference among flat windows), which must be plausible for an exposure / white-balance drift:
_MAX_GAIN = 0.5  # |log luma ratio| of the global change, at most (×0.6–1.65) ...
_MAX_TINT = 0.12  # ... and its chroma shift, at most (Cb, Cr in [-0.5, 0.5]); else flat windows disagree
_CHROMA_TOLERANCE = 0.04  # a window's chroma may differ from the global change by this much ...
_BRIGHTNESS_TOLERANCE = 0.15  # ... its log luma ratio be this much brighter ...
_SHADOW = 0.6  # ... or this much darker (a shadow of the subject: up to 45 % darker)
_CHROMA_SCALE = 2.0  # chroma is scaled by this to share one cluster radius with log luma
_MAX_SHIFT = 0.06  # the global shift searched, as a fraction of the size


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return import_cv2().GaussianBlur(x, (0, 0), sigma)


def _densest(points: np.ndarray, radius: float) -> np.ndarray:
    """The mode of ``points`` ``(N, 3)``: the mean of the largest cluster within ``radius`` (Chebyshev) of a point."""
    dist = np.abs(points[:, None, :] - points[None, :, :]).max(2)
    centre = points[int(np.argmax((dist < radius).sum(1)))]
    near = points[np.abs(points - centre).max(1) < radius]
    return np.median(near, axis=0)


def _colour_features(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB → ``(H, W, 3)`` (log luma, Cb, Cr scaled by ``_CHROMA_SCALE``), BT.601."""
    y = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    cb = (rgb[..., 2] - y) * 0.564
    cr = (rgb[..., 0] - y) * 0.713
    return np.stack([np.log(y + 0.05), cb * _CHROMA_SCALE, cr * _CHROMA_SCALE], axis=2)


def _agreement_maps(src: np.ndarray, bgr: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel agreement (bool, at ``_CHECK_SIZE``) of two same-size float32 ``(H, W, 3)`` images.

    The background is compared as it is and shifted by the global translation that phase correlation finds
    (bounded by ``_MAX_SHIFT``); the better of the two counts, so a small camera move does not matter and an
    unrelated image gains little. See :func:`_agreement_at`.
    """
    cv2 = import_cv2()
    s = _blur(_resize_max(src, _CHECK_SIZE), 1.0)
    b = _blur(_resize_max(bgr, _CHECK_SIZE), 1.0)
    if valid is not None:
        valid = cv2.resize(valid.astype(np.float32), (s.shape[1], s.shape[0]), interpolation=cv2.INTER_AREA) > 0.99
    h, w = s.shape[:2]
    best = _agreement_at(s, b, valid)
    if min(h, w) >= 8:
        gs, gb = s.mean(2), b.mean(2)
        window = cv2.createHanningWindow((w, h), cv2.CV_32F)
        (dx, dy), _ = cv2.phaseCorrelate(gb - _blur(gb, 4.0), gs - _blur(gs, 4.0), window)
        if 0.5 <= max(abs(dx), abs(dy)) and abs(dx) <= _MAX_SHIFT * w and abs(dy) <= _MAX_SHIFT * h:
            moved = cv2.warpAffine(b, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REFLECT)
            other = _agreement_at(s, moved, valid)
            if other.mean() > best.mean():
                best = other
    return best


def _agreement_at(s: np.ndarray, b: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Agreement of blurred images at ``_CHECK_SIZE``.

    A textured window agrees when its band-passed gray correlates (NCC > ``_NCC``, best of ±1 pixel) with
    the background's (shadows and exposure do not matter there), or when its mean colour agrees (below) and
    the correlation is positive (fine patterns shifted by a pixel or two). A window flat in both images
    agrees when its mean colour matches after one global, bounded colour change (the most common difference
    among flat windows) and allowing for a shadow.
    """
    cv2 = import_cv2()
    h, w = s.shape[:2]
    gs, gb = s.mean(2), b.mean(2)
    ds, db = gs - _blur(gs, 4.0), gb - _blur(gb, 4.0)  # band-pass: no gradients, no noise
    var_s = _blur(ds * ds, _WINDOW)
    padded = cv2.copyMakeBorder(db, 1, 1, 1, 1, cv2.BORDER_REFLECT)
    ncc = np.full((h, w), -1.0, np.float32)
    for oy in range(3):
        for ox in range(3):
            d = padded[oy:oy + h, ox:ox + w]
            cov, var_b = _blur(ds * d, _WINDOW), _blur(d * d, _WINDOW)
            ncc = np.maximum(ncc, cov / np.sqrt(var_s * var_b + 1e-12))
    textured = (np.sqrt(var_s) > _FLAT) | (np.sqrt(_blur(db * db, _WINDOW)) > _FLAT)
    fs, fb = _colour_features(_blur(s, _WINDOW)), _colour_features(_blur(b, _WINDOW))
    diff = fs - fb  # (log luma ratio, chroma shift × _CHROMA_SCALE)
    flat = ~textured if valid is None else ~textured & valid
    sample = diff[flat] if flat.sum() >= 50 else diff.reshape(-1, 3)
    change = _densest(sample[:: max(1, len(sample) // 600)], radius=_CHROMA_TOLERANCE * _CHROMA_SCALE)
    if abs(change[0]) > _MAX_GAIN or np.abs(change[1:]).max() > _MAX_TINT * _CHROMA_SCALE:
        colour_ok = np.zeros((h, w), bool)  # no plausible exposure / white-balance change explains the colours
    else:
        d = diff - change
        colour_ok = (np.abs(d[..., 1:]).max(2) < _CHROMA_TOLERANCE * _CHROMA_SCALE) \
            & (d[..., 0] > -_SHADOW) & (d[..., 0] < _BRIGHTNESS_TOLERANCE)
    agree = np.where(textured, (ncc > _NCC) | (colour_ok & (ncc > 0.0)), colour_ok)
    return agree if valid is None else agree & valid


def background_agreement(src: Any, bgr: Any, *, align: bool = False) -> float:
    """The fraction of the frame where ``bgr`` looks like the scene behind the subject of ``src``.

    Both images are compared at 128 pixels (longest side), blurred: windows with texture by local correlation
    (insensitive to shadows and exposure), flat windows by colour after a bounded global colour correction.
    The subject itself does not agree, so a genuine pair scores about the visible fraction of the background
    (minus shadows and changed areas); an unrelated image scores near 0.

    Args:
        src: the frame with the subject, ``(H, W, 3)`` (numpy float in [0, 1] or uint8, PIL image, tensor).
        bgr: the background shot (same aspect ratio; any size).
        align: also compare ``bgr`` aligned to ``src`` (hand-held camera; only the part it covers counts) and
            return the better agreement.

    Returns:
        agreement in [0, 1].
    """
    from .pipeline import check_background_size

    s, _ = _as_hwc(src, "source image")
    b, _ = _as_hwc(bgr, "background image")
    check_background_size(b.shape[:2], s.shape[:2], tolerance=0.02)
    s = _resize_max(s, 4 * _CHECK_SIZE)
    b = _resize_max(b, 4 * _CHECK_SIZE)
    if b.shape[:2] != s.shape[:2]:
        b = import_cv2().resize(b, (s.shape[1], s.shape[0]), interpolation=import_cv2().INTER_AREA)
    agreement = float(_agreement_maps(s, b).mean())
    if align:
        aligner = BackgroundAligner(max_size=4 * _CHECK_SIZE, fill="edge", warn=False)
        info = aligner.estimate(b, s)
        if info.method != "none":
            cv2 = import_cv2()
            moved, _ = aligner.warp(b, s, info.matrix)
            cover = cv2.warpPerspective(np.ones(b.shape[:2], np.float32), info.matrix, (s.shape[1], s.shape[0]))
            agreement = max(agreement, float(_agreement_maps(s, moved, cover > 0.99).mean()))
    return agreement


def _mismatch_message(agreement: float, what: str) -> str:
    return (f"the background image does not show the scene of the {what} (only {100 * agreement:.0f}% of the frame "
            "matches). --bgr must be a shot of the same scene without the subject, taken from the same camera "
            "position (e.g. a frame of the empty scene); to put the subject on a new background, pass that image "
            "or colour with --target-bgr instead. If the camera moved between the shots, use --align; to skip "
            "this check, use --no-bgr-check.")


def check_background_matches(src: Any, bgr: Any, *, align: bool = False, min_agreement: float = MIN_AGREEMENT) -> float:
    """Raise :class:`BgMattingError` when ``bgr`` is clearly not a shot of the scene behind ``src``.

    The most common mistake is to pass the *new* background one wants (``--target-bgr``) as the background
    shot (``--bgr``). Genuine pairs pass despite a moved camera (a few percent), exposure and white-balance
    drift, noise, shadows and a subject covering up to about 60 % of the frame; see
    :func:`background_agreement`.

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
        raise BgMattingError(_mismatch_message(agreement, "source image"))
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
    raise BgMattingError(_mismatch_message(best, "video"))
