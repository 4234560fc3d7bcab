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
5. a background shot that already lines up is kept as it is: when the transform moves no corner by half a
   pixel, or warping does not bring the shots' structure (band-passed gray levels) clearly closer together,
   the method is ``'none'`` (a tripod shot is not resampled through a transform with estimation error);
6. otherwise the transform, scaled back to full resolution, warps the full-resolution background onto the frame.

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
        sh, sw = src.shape[:2]
        bh, bw = bgr.shape[:2]
        resize = np.diag([sw / bw, sh / bh, 1.0])  # plain resize (identity for equal sizes)
        if h_small is not None:
            matrix = np.linalg.inv(sf.to_small) @ h_small @ bf.to_small
            matrix /= matrix[2, 2]
            # a shot that already lines up is kept as it is (a warp resamples it, with some estimation error);
            # a reused alignment is not judged on a frame that could not be aligned
            unwarped_small = sf.to_small @ resize @ np.linalg.inv(bf.to_small)
            if method != "previous":
                if _moves_at_most(matrix, resize, (bh, bw), _KEEP_MOVE):
                    h_small, reason = None, "the transform moves no corner by half a pixel"
                elif not _warp_helps(bf.gray, sf.gray, h_small, unwarped_small):
                    h_small, reason = None, "the background shot lines up with the frame better unwarped"
            if h_small is None:
                method = "none"
                self._last_good_small = unwarped_small
        self.counts[method] = self.counts.get(method, 0) + 1
        return AlignInfo(method, resize if h_small is None else matrix, matches, inliers, 1.0, reason)

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


_KEEP_MOVE = 0.5  # pixels at full resolution: a transform that moves no corner further is no move at all
_KEEP_MARGIN = 0.9  # a warp is used only when it brings the structural mismatch below this fraction of the unwarped
_KEEP_FRACTION = 0.6  # the mismatch is the mean over this best-matching fraction of pixels (the subject is the rest)


def _moves_at_most(matrix: np.ndarray, other: np.ndarray, shape: tuple[int, int], pixels: float) -> bool:
    """Whether the two transforms map every corner of an image of ``shape`` (h, w) within ``pixels`` of each other."""
    h, w = shape
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64).T
    a, b = matrix @ corners, other @ corners
    if np.any(np.abs(a[2]) < 1e-12):
        return False
    return bool(np.max(np.hypot(*(a[:2] / a[2] - b[:2] / b[2]))) <= pixels)


def _structure(gray: np.ndarray) -> np.ndarray:
    """Band-pass (difference of Gaussians) of a gray image: edges and texture, not exposure."""
    g = gray.astype(np.float32) / 255.0
    return _blur(g, 1.0) - _blur(g, 4.0)


def _mismatch(src_structure: np.ndarray, bgr_structure: np.ndarray, valid: np.ndarray) -> float:
    """Mean absolute structural difference over the best-matching ``_KEEP_FRACTION`` of the ``valid`` pixels."""
    d = np.abs(src_structure - bgr_structure)[valid]
    if d.size == 0:
        return float("inf")
    k = max(1, int(d.size * _KEEP_FRACTION))
    return float(np.partition(d, k - 1)[:k].mean())


def _warp_helps(bgr_gray: np.ndarray, src_gray: np.ndarray, warp: np.ndarray, unwarped: np.ndarray) -> bool:
    """Whether warping the background shot (working size, ``warp``) matches the frame clearly better in structure
    than leaving it where it is (``unwarped``, the plain resize), over the pixels both cover. A shot that already
    lines up is then kept as it is, instead of being resampled through a transform with a little estimation error.
    """
    cv2 = import_cv2()
    h, w = src_gray.shape[:2]
    s = _structure(src_gray)
    ones = np.ones(bgr_gray.shape[:2], np.float32)
    scores, covers = [], []
    for m in (warp, unwarped):
        moved = cv2.warpPerspective(bgr_gray, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        covers.append(cv2.warpPerspective(ones, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0) > 0.999)
        scores.append(_structure(moved))
    valid = covers[0] & covers[1]
    return _mismatch(s, scores[0], valid) < _KEEP_MARGIN * _mismatch(s, scores[1], valid)


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

# Chosen with benchmarks/bgr_check.py on real photographs: people and synthetic subjects pasted over the 42
# background photos of the offline corpus with every BGMv2 perturbation at once (subjects covering 5-70 % of the
# frame, 384-768 px frames, hand-held moves of 2-5 % checked with align=True), each source also compared with
# every other background of the corpus as the mistaken shot. Over two seeds (340 genuine, 12 200 mistaken
# pairs) genuine pairs scored at least 0.114 (close-ups covering 60-70 %; examples/ 0.92), mistaken ones at
# most 0.051 but one, 0.128: two smooth, similar blue-grey skies. Such scenes share too little structure to be
# told apart; plain walls count only a little (``_FLAT_WEIGHT``), so a plain-wall mistake passes only where
# the source shows little but that wall.
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


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return import_cv2().GaussianBlur(x, (0, 0), sigma) if sigma > 0 else x


def _check_images(src: Any, bgr: Any, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source and background as float32 ``(h, w, 3)`` arrays of the same size, longest side ≤ ``max_size``."""
    from .pipeline import check_background_size

    cv2 = import_cv2()

    def load(image: Any, name: str) -> np.ndarray:
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
            return _resize_max(image, max_size).astype(np.float32) * (1 / 255)  # resize first: much faster
        return _resize_max(_as_hwc(image, name)[0], max_size)

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
    """``bgr`` mapped by the affine colour change (``(3 + 1) × out_channels``) that best predicts ``src`` at ``where``."""
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
    if not (np.all(np.isfinite(a)) and np.all(grey_gain > 1 / _MAX_COLOUR_GAIN) and np.all(grey_gain < _MAX_COLOUR_GAIN)):
        a = np.vstack([_LUMA[:, None] if out_channels == 1 else np.eye(3, dtype=np.float32),
                       np.zeros((1, out_channels), np.float32)])  # no plausible colour change: none
    flat = bgr.reshape(-1, 3)
    return (np.hstack([flat, np.ones((len(flat), 1), np.float32)]) @ a).astype(np.float32).reshape(
        bgr.shape[:2] + ((out_channels,) if out_channels > 1 else ()))


def _band_correlation(gs: np.ndarray, gb: np.ndarray, lo: float, hi: float, window: float):
    """Local normalised cross-correlation of two band-passed gray images (best of ±1 pixel), and local stds."""
    cv2 = import_cv2()
    ds, db = _blur(gs, lo) - _blur(gs, hi), _blur(gb, lo) - _blur(gb, hi)
    h, w = gs.shape
    var_s = _blur(ds * ds, window)
    padded = cv2.copyMakeBorder(db, 1, 1, 1, 1, cv2.BORDER_REFLECT)
    ncc = np.full((h, w), -1.0, np.float32)
    for oy in range(3):
        for ox in range(3):
            d = padded[oy:oy + h, ox:ox + w]
            ncc = np.maximum(ncc, _blur(ds * d, window) / np.sqrt(var_s * _blur(d * d, window) + 1e-12))
    return ncc, np.sqrt(var_s), np.sqrt(_blur(db * db, window))


def _connected_to(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Pixels of ``seed | allowed`` connected (8-neighbourhood) to a ``seed`` pixel."""
    count, labels = import_cv2().connectedComponents((seed | allowed).astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[np.unique(labels[seed])] = True
    keep[0] = False
    return keep[labels]


def _agreement_of(s: np.ndarray, b: np.ndarray, valid: np.ndarray | None, maps: dict | None = None) -> float:
    """Agreement of a source and a background shot already aligned, at ``_CHECK_SIZE`` (see :func:`background_agreement`).

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
    smooth = _blur(gb, 1.0)
    gx, gy = cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    jxx, jyy, jxy = _blur(gx * gx, w1), _blur(gy * gy, w1), _blur(gx * gy, w1)
    oriented = np.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy) > _ONE_DIRECTION[0] * (jxx + jyy + 1e-12)
    core1 = tex1 & (ncc1 > np.where(oriented, _ONE_DIRECTION[1], _NCC[0]))
    core2 = ~tex1 & tex2 & (ncc2 > _NCC[1])
    if valid is not None:
        core1 &= valid
        core2 &= valid
    # 2. colour: the global colour change, fitted where the structure matches, must predict the source's pixels
    #    up to noise and a shadow (any darkening down to _SHADOW of the brightest part)
    ps, pb = _blur(s, 0.7), _blur(b, 0.7)
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
    s, b = _resize_max(src, _CHECK_SIZE), _resize_max(bgr, _CHECK_SIZE)
    h, w = s.shape[:2]
    if valid is not None:
        valid = cv2.resize(valid.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0.99
    best = _agreement_of(s, b, valid)
    if search and min(h, w) >= 16:
        candidates = []
        gs, gb = s.mean(2), b.mean(2)
        window = cv2.createHanningWindow((w, h), cv2.CV_32F)
        (dx, dy), _ = cv2.phaseCorrelate(gb - _blur(gb, 4.0), gs - _blur(gs, 4.0), window)
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


def _mismatch_message(agreement: float, what: str) -> str:
    return (f"the background image does not show the scene of the {what} (only {100 * agreement:.0f}% of the frame "
            "matches). --bgr must be a shot of the same scene without the subject, taken from the same camera "
            "position (e.g. a frame of the empty scene); to put the subject on a new background, pass that image "
            "or colour with --target-bgr instead. If the camera moved between the shots, use --align; to skip "
            "this check, use --no-bgr-check.")


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
