"""Background alignment for hand-held footage.

Background matting compares each frame with a shot of the empty scene, so the two must line up to a pixel or
two. When the camera is hand-held, :class:`BackgroundAligner` warps the background shot onto each frame:

1. both images are scaled down (longest side ``max_size``, 640 px by default) and turned gray;
2. ORB (or SIFT) features are matched with Lowe's ratio test, and a homography and a similarity transform
   (rotation, scale, shift) are fitted with RANSAC; the homography is used only when it matches the frame's
   structure at fine and coarse scales clearly better than the similarity does: fitted to features that crowd
   into part of the picture (a sharp subject before a soft background), its extra freedom extrapolates into
   a false zoom or tilt elsewhere, which the model would matte as foreground;
3. a homography that is implausible (too few inliers, a flip, a scale change beyond ``max_scale``, strong
   perspective, or a plate that would cover too little of the frame) is rejected; the aligner then tries a
   similarity transform (rotation, scale, shift) from the same matches, then a pure translation (phase
   correlation refined by ECC), which also works on smooth images with few corners;
   the transform chosen is then refined by direct image alignment (robust Lucas-Kanade on the gray
   levels, with a gain and offset for exposure, the subject weighted out): features place a transform to a pixel
   or two, this to a few hundredths; where features and translation both fail (dark, soft or repetitive
   backgrounds), the same direct alignment, started from no move at all, finds the similarity (``refine=False``
   turns both off);
4. if all of these fail, the last good alignment is kept (for video) or, without one, the unaligned
   background is used, and an :class:`AlignmentWarning` is issued once per aligner;
5. a background shot that already lines up is kept as it is: when the transform moves no corner by half a
   pixel, or warping does not bring the shots' structure (band-passed gray levels) clearly closer together,
   the method is ``'none'`` (a tripod shot is not resampled through a transform with estimation error);
6. otherwise the transform, scaled back to full resolution, warps the full-resolution background onto the frame.

Where the warped background does not reach (the frame shows more than the background shot did), the shot's
border pixels are repeated (``fill='edge'``, the default): a subject that reaches that edge of the frame (a person
cut off by the bottom of the picture, the common case) then still differs from the background there and stays
foreground, and a narrow band of background is filled with what is next to it. ``fill='src'`` copies the frame
itself instead, so that the band is matted as background, subject included. The fraction of the frame the
background really covers is reported as ``AlignInfo.coverage``.

OpenCV (``pip install opencv-python-headless``) is imported only when needed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BgMattingError
from .opencv import blur, import_cv2
from .tensors import as_hwc

__all__ = ["AlignInfo", "AlignmentWarning", "BackgroundAligner", "align_background"]


class AlignmentWarning(UserWarning):
    """The background shot could not be aligned to a frame; the previous or no alignment was used."""


# --------------------------------------------------------------------------------------------- image helpers

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
            filled as ``fill`` says (the shot's border repeated, by default).
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
        fill: ``'edge'`` (default) repeats the background's border pixels where the warped shot does not reach,
            so that a subject reaching that edge of the frame stays foreground; ``'src'`` fills those pixels from
            the source frame instead (→ matted as background, subject included).
        refine: refine each estimate by direct image alignment (robust Lucas-Kanade on the gray levels, in the
            estimate's own model) to a fraction of a pixel, and, where features fail (repetitive or faint
            texture), find a similarity from no move at all that way; ``False`` keeps the feature estimate.
        warn: issue an :class:`AlignmentWarning` the first time a frame cannot be aligned.

    Example:
        >>> aligner = BackgroundAligner()                                    # doctest: +SKIP
        >>> aligned, info = aligner.align(bgr, src)                          # doctest: +SKIP
        >>> convert_video("in.mp4", ..., bgr_transform=BackgroundAligner())   # doctest: +SKIP
    """

    def __init__(self, *, max_size: int = 640, features: str = "orb", n_features: int = 3000, ratio: float = 0.8,
                 ransac_threshold: float = 2.5, min_inliers: int = 15, max_scale: float = 1.5,
                 min_coverage: float = 0.5, max_shift: float = 0.25, ecc_min_correlation: float = 0.6,
                 fill: str = "edge", refine: bool = True, warn: bool = True):
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
        self.refine = bool(refine)
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
        b, back = as_hwc(frame_bgr, "background")
        s, _ = as_hwc(frame_src, "source frame")
        return back(self._align_arrays(b, s)[0])

    def align(self, bgr: Any, src: Any) -> tuple[np.ndarray, AlignInfo]:
        """Align ``bgr`` to ``src``.

        Args:
            bgr: the background shot, ``(h, w, 3)`` (any image form accepted by :func:`bgmatting.tensors.to_tensor`).
            src: the frame with the subject, ``(H, W, 3)``.

        Returns:
            ``(aligned, info)``: ``aligned`` float32 ``(H, W, 3)`` in [0, 1] at the size of ``src``;
            ``info`` an :class:`AlignInfo`.
        """
        return self._align_arrays(as_hwc(bgr, "background")[0], as_hwc(src, "source frame")[0])

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
        """``(homography at working size or None, method, matches, inliers, reason)``: from feature matches
        (homography or similarity), else a translation (phase correlation and ECC), else (``refine``) a similarity
        found by direct image alignment from no move at all. Each estimate is refined by direct image alignment
        (:func:`_refine`, in its own model) when ``refine`` is on."""
        hom, method, matches, inliers, reason = self._estimate_features(bf, sf)
        if hom is None and self.refine and _textured(bf.gray, sf.gray):
            dense = self._refined(bf, sf, np.eye(3), "similarity", keep=False)
            if dense is not None:
                return dense, "similarity", matches, 0, f"{reason}; the similarity comes from direct image alignment"
        return hom, method, matches, inliers, reason

    def _refined(self, bf: _Features, sf: _Features, estimate: np.ndarray, model: str, keep: bool = True):
        """``estimate`` refined by :func:`_refine` when ``refine`` is on and the result is plausible and matches the
        frame's structure at least as well; else ``estimate`` (``keep``) or ``None``."""
        if not self.refine:
            return estimate if keep else None
        refined = _refine(bf.gray, sf.gray, estimate, model)
        if refined is None or self._implausible(refined, bf.gray.shape, sf.gray.shape) is not None:
            return estimate if keep else None
        if keep:
            new, old = _mismatches(bf.gray, sf.gray, (refined, estimate), _FINE)
            return refined if new <= old else estimate
        return refined

    def _estimate_features(self, bf: _Features, sf: _Features):
        """``(homography at working size or None, method, matches, inliers, reason)`` from feature matches
        (homography or similarity), else a translation (phase correlation and ECC)."""
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
                if bad is not None:
                    reasons.append(f"the homography is implausible ({bad})")
            sim, sim_inl = self._similarity(pb, ps, bf, sf)
            if sim is not None:
                sim = self._refined(bf, sf, sim, "similarity")
            if not reasons:  # a plausible homography: kept only when it fits clearly better than the similarity
                if sim is None or _homography_fits_better(bf.gray, sf.gray, hom, sim):
                    return self._refined(bf, sf, hom, "homography"), "homography", n, inl, ""
                return sim, "similarity", n, sim_inl, "a similarity fits the frame as well as the homography"
            if sim is not None:
                return sim, "similarity", n, sim_inl, reasons[0]
        else:
            reasons.append(f"too few matching features ({n})")
        trans, why = self._estimate_translation(bf.gray, sf.gray)
        if trans is not None:
            return self._refined(bf, sf, trans, "translation"), "translation", n, 0, reasons[0]
        return None, "none", n, 0, f"{reasons[0]}; {why}"

    def _similarity(self, pb: np.ndarray, ps: np.ndarray, bf: _Features, sf: _Features):
        """``(similarity at working size, inliers)`` fitted with RANSAC, or ``(None, inliers)`` when too few
        matches agree on one or it is implausible."""
        cv2 = import_cv2()
        aff, mask = cv2.estimateAffinePartial2D(pb, ps, method=cv2.RANSAC,
                                                ransacReprojThreshold=self.ransac_threshold)
        inl = int(mask.sum()) if mask is not None else 0
        if aff is None or inl < max(6, self.min_inliers // 2):
            return None, inl
        sim = np.vstack([aff, [0.0, 0.0, 1.0]])
        return (sim, inl) if self._implausible(sim, bf.gray.shape, sf.gray.shape) is None else (None, inl)

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
        if not _textured(bgr_gray, src_gray):
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


def _textured(bgr_gray: np.ndarray, src_gray: np.ndarray) -> bool:
    """Whether both gray images (uint8 levels) vary enough for an image-based alignment to mean anything."""
    return min(float(bgr_gray.std()), float(src_gray.std())) >= 2.0


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


_FINE = ((1.0, 4.0),)  # difference-of-Gaussians bands (sigmas, working-size pixels): edges and texture
_FINE_AND_COARSE = ((1.0, 4.0), (4.0, 16.0))  # and the soft gradients of an out-of-focus background
_HOMOGRAPHY_MARGIN = 0.95  # a homography replaces the similarity only when its mismatch is below this fraction


def _band(gray: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The band-pass (difference of Gaussians, sigmas ``lo`` < ``hi`` pixels) of a gray image: structure, not
    exposure. Bands from 4 px up are computed at a quarter of the size (the same band, 16x fewer pixels)."""
    cv2 = import_cv2()
    g = gray.astype(np.float32) / 255.0
    step = 4 if lo >= 4 else 1
    if step > 1:
        h, w = g.shape[:2]
        g = cv2.resize(g, (max(1, w // step), max(1, h // step)), interpolation=cv2.INTER_AREA)
    return blur(g, lo / step) - blur(g, hi / step)


def _mismatch(src_structure: np.ndarray, bgr_structure: np.ndarray, valid: np.ndarray) -> float:
    """Mean absolute structural difference over the best-matching ``_KEEP_FRACTION`` of the ``valid`` pixels."""
    d = np.abs(src_structure - bgr_structure)[valid]
    if d.size == 0:
        return float("inf")
    k = max(1, int(d.size * _KEEP_FRACTION))
    return float(np.partition(d, k - 1)[:k].mean())


def _mismatches(bgr_gray: np.ndarray, src_gray: np.ndarray, warps, bands) -> list[float]:
    """The structural mismatch (:func:`_mismatch`, summed over ``bands``) between the frame and the background
    shot moved by each of ``warps`` (working size), over the pixels that every warp covers."""
    cv2 = import_cv2()
    h, w = src_gray.shape[:2]
    ones = np.ones(bgr_gray.shape[:2], np.float32)
    moved, valid = [], np.ones((h, w), np.uint8)
    for m in warps:
        moved.append(cv2.warpPerspective(bgr_gray, m, (w, h), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REPLICATE))
        valid &= cv2.warpPerspective(ones, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0) > 0.999
    totals = [0.0] * len(moved)
    for lo, hi in bands:
        s = _band(src_gray, lo, hi)
        v = (valid if s.shape == valid.shape else
             cv2.resize(valid, (s.shape[1], s.shape[0]), interpolation=cv2.INTER_NEAREST)).astype(bool)
        for i, g in enumerate(moved):
            totals[i] += _mismatch(s, _band(g, lo, hi), v)
    return totals


def _warp_helps(bgr_gray: np.ndarray, src_gray: np.ndarray, warp: np.ndarray, unwarped: np.ndarray) -> bool:
    """Whether warping the background shot (working size, ``warp``) matches the frame clearly better in structure
    than leaving it where it is (``unwarped``, the plain resize), over the pixels both cover. A shot that already
    lines up is then kept as it is, instead of being resampled through a transform with a little estimation error.
    """
    warped, kept = _mismatches(bgr_gray, src_gray, (warp, unwarped), _FINE)
    return warped < _KEEP_MARGIN * kept


def _homography_fits_better(bgr_gray: np.ndarray, src_gray: np.ndarray, hom: np.ndarray, sim: np.ndarray) -> bool:
    """Whether the homography matches the frame clearly better than the similarity, at fine and coarse scales."""
    h, s = _mismatches(bgr_gray, src_gray, (hom, sim), _FINE_AND_COARSE)
    return h < _HOMOGRAPHY_MARGIN * s


_REFINE_PARAMS = {"translation": 2, "similarity": 4, "homography": 8}


def _refine(bgr_gray: np.ndarray, src_gray: np.ndarray, init: np.ndarray, model: str, levels: int = 4,
            iterations: int = 25, finest: int = 1) -> np.ndarray | None:
    """Refine a transform (working size, background → frame) by direct image alignment.

    Robust Gauss-Newton (Lucas-Kanade) on the gray levels, coarse to fine over a Gaussian pyramid, with Tukey
    weights (scale from the median absolute residual) so that the subject, which the background shot does not
    show, drops out of the fit. ``model`` is ``'translation'``, ``'similarity'`` or ``'homography'``. A gain and an
    offset of the gray levels are fitted beside the move (an exposure change is not a move). Feature matches place
    a transform to within a pixel or two (a few on repetitive textures); this places it to a fraction of a pixel,
    and from the identity it finds the small moves of a hand-held camera where features fail.

    The finest level fitted is ``finest`` (1: half the working size, where the result is within a few hundredths
    of a pixel of level 0's at two thirds of the time). Returns the refined ``(3, 3)`` matrix, or ``None`` when the
    images differ in size or the iteration fails (too few usable pixels, a singular system, a non-finite result).
    """
    cv2 = import_cv2()
    n = _REFINE_PARAMS[model]
    if bgr_gray.shape != src_gray.shape or min(src_gray.shape[:2]) < 16:
        return None
    h0, w0 = src_gray.shape[:2]
    centre, half = np.array([(w0 - 1) / 2.0, (h0 - 1) / 2.0]), max(w0, h0) / 2.0
    norm = np.array([[1 / half, 0, -centre[0] / half], [0, 1 / half, -centre[1] / half], [0, 0, 1.0]])
    try:
        warp = norm @ np.linalg.inv(init) @ np.linalg.inv(norm)  # frame → background, normalised coordinates
    except np.linalg.LinAlgError:
        return None
    warp /= warp[2, 2]

    gain, offset = 1.0, 0.0
    bgr_pyr, src_pyr = [bgr_gray.astype(np.float32)], [src_gray.astype(np.float32)]
    for _ in range(levels - 1):
        if min(src_pyr[-1].shape) < 32:
            break
        bgr_pyr.append(cv2.pyrDown(bgr_pyr[-1]))
        src_pyr.append(cv2.pyrDown(src_pyr[-1]))
    for level in range(len(src_pyr) - 1, min(finest, len(src_pyr) - 1) - 1, -1):
        f = float(2 ** level)
        b = blur(bgr_pyr[level], 1.0)
        s = blur(src_pyr[level], 1.0)
        gx = cv2.Sobel(b, cv2.CV_32F, 1, 0, ksize=3) * (half / (8.0 * f))  # d/du in normalised units
        gy = cv2.Sobel(b, cv2.CV_32F, 0, 1, ksize=3) * (half / (8.0 * f))
        yy, xx = np.mgrid[0:s.shape[0], 0:s.shape[1]].astype(np.float32)
        u = (xx * f - centre[0]) / half
        v = (yy * f - centre[1]) / half
        for _ in range(iterations):
            d = warp[2, 0] * u + warp[2, 1] * v + warp[2, 2]
            wu = (warp[0, 0] * u + warp[0, 1] * v + warp[0, 2]) / d
            wv = (warp[1, 0] * u + warp[1, 1] * v + warp[1, 2]) / d
            mx = ((wu * half + centre[0]) / f).astype(np.float32)
            my = ((wv * half + centre[1]) / f).astype(np.float32)
            sampled = cv2.remap(b, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
            valid = np.isfinite(sampled)
            if np.count_nonzero(valid) < 4 * n:
                return None
            sampled = np.where(valid, sampled, 0.0).astype(np.float32)
            r = gain * sampled + offset - s
            c = 4.685 * 1.4826 * float(np.median(np.abs(r[valid]))) + 1e-4
            weight = np.where(valid & (np.abs(r) < c), (1.0 - (r / c) ** 2) ** 2, 0.0).astype(np.float32)
            ix = cv2.remap(gx, mx, my, cv2.INTER_LINEAR) * gain
            iy = cv2.remap(gy, mx, my, cv2.INTER_LINEAR) * gain
            if model == "translation":
                jac = [ix, iy]
            elif model == "similarity":  # x' = (1 + a) u - b v + tx, y' = b u + (1 + a) v + ty
                jac = [ix * u + iy * v, iy * u - ix * v, ix, iy]
            else:  # x' = (h00 u + h01 v + h02) / d, y' = (h10 u + h11 v + h12) / d, d = h20 u + h21 v + 1
                ixd, iyd = ix / d, iy / d
                proj = -(ixd * wu + iyd * wv)
                jac = [ixd * u, ixd * v, ixd, iyd * u, iyd * v, iyd, proj * u, proj * v]
            j = np.stack([a.ravel() for a in jac] + [sampled.ravel(), np.ones(r.size, np.float32)], 1)
            jw = j * weight.ravel()[:, None]
            try:
                step = -np.linalg.solve(jw.T @ j + 1e-6 * np.eye(n + 2), jw.T @ r.ravel())
            except np.linalg.LinAlgError:
                return None
            if not np.all(np.isfinite(step)):
                return None
            gain, offset = gain + step[n], offset + step[n + 1]
            step = step[:n]
            if model == "translation":
                delta = np.array([[0, 0, step[0]], [0, 0, step[1]], [0, 0, 0.0]])
            elif model == "similarity":
                delta = np.array([[step[0], -step[1], step[2]], [step[1], step[0], step[3]], [0, 0, 0.0]])
            else:
                delta = np.append(step, 0.0).reshape(3, 3)
            warp = warp + delta
            warp /= warp[2, 2]
            if np.abs(step).max() * half / f < 0.01:  # under a hundredth of a pixel at this level
                break
    try:
        out = np.linalg.inv(norm) @ np.linalg.inv(warp) @ norm
    except np.linalg.LinAlgError:
        return None
    out /= out[2, 2]
    return out if np.all(np.isfinite(out)) else None


def align_background(bgr: Any, src: Any, **options) -> tuple[np.ndarray, AlignInfo]:
    """Align one background shot to one photo (what ``bgmatting matte --align`` does).

    Args:
        bgr: the shot of the empty scene, ``(h, w, 3)`` numpy (float in [0, 1] or uint8), PIL image or tensor.
        src: the photo with the subject, ``(H, W, 3)``, taken from about the same position.
        **options: :class:`BackgroundAligner` options.

    Returns:
        ``(aligned, info)``: ``aligned`` float32 ``(H, W, 3)`` in [0, 1], the background warped onto ``src``
        (where it does not reach, its border pixels are repeated; ``fill='src'`` copies ``src`` there); ``info`` an
        :class:`AlignInfo`. When no alignment can be found the background is returned unaligned, with an
        :class:`AlignmentWarning`.
    """
    return BackgroundAligner(**options).align(bgr, src)
