"""Background alignment (homography, fallbacks, one warning, uncovered fill) and the background-shot check."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bgmatting import BgMattingError
from bgmatting.align import AlignmentWarning, BackgroundAligner, align_background
from bgmatting.scene import MIN_AGREEMENT, background_agreement, check_background_matches, check_video_background

from helpers import needs, optional

cv2 = optional("cv2")

H, W = 192, 256


def nchw(image: np.ndarray) -> torch.Tensor:
    """An HxWxC float array as a 1xCxHxW float tensor."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()


def textured(seed: int, h: int = H, w: int = W, shapes: int = 70) -> np.ndarray:
    """Rectangles and discs of random colours on a random base: plenty of corners for the features."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32) + rng.uniform(0.2, 0.8, 3).astype(np.float32)
    for _ in range(shapes):
        c = tuple(float(v) for v in rng.uniform(0, 1, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(5, w // 4)), y + int(rng.integers(5, h // 4))), c, -1)
        else:
            cv2.circle(img, (x, y), int(rng.integers(3, h // 8)), c, -1)
    return np.clip(img + rng.normal(0, 0.01, img.shape).astype(np.float32), 0, 1)


def blob(h: int = H, w: int = W, cy: float = 0.55, cx: float = 0.45, ry: float = 0.3, rx: float = 0.15) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy * h) / (ry * h)) ** 2 + ((xx - cx * w) / (rx * w)) ** 2 < 1


# A hand-held move: slight zoom, rotation, shift and perspective (background pixels → source pixels).
MOVE = np.array([[1.02, 0.012, 7.0], [-0.015, 0.99, -5.0], [3e-5, -2e-5, 1.0]])


def hand_held_pair(seed: int = 0):
    bgr = textured(seed)
    src = cv2.warpPerspective(bgr, MOVE, (W, H), borderMode=cv2.BORDER_REFLECT)
    subject = blob()
    src[subject] = (0.9, 0.2, 0.1)
    inside = cv2.warpPerspective(np.ones((H, W), np.float32), MOVE, (W, H)) > 0.999
    return bgr, src, subject, inside


def corner_error(matrix: np.ndarray, true: np.ndarray, h: int, w: int) -> float:
    """The farthest (in pixels) that ``matrix`` puts a corner of an ``h`` x ``w`` image from where ``true`` does."""
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], float).T
    est, ref = matrix @ corners, true @ corners
    return float(np.abs(est[:2] / est[2] - ref[:2] / ref[2]).max())


@pytest.mark.parametrize("features", ["orb", "sift"])
@needs("cv2")
def test_homography_recovers_a_hand_held_move(features):
    bgr, src, subject, inside = hand_held_pair()
    aligned, info = align_background(bgr, src, features=features)
    assert info.method == "homography" and info.inliers >= 15 and info.reason == ""
    assert aligned.shape == src.shape and aligned.dtype == np.float32
    background = inside & ~subject
    unaligned_err = np.abs(bgr - src)[background].mean()
    aligned_err = np.abs(aligned - src)[background].mean()
    assert aligned_err < 0.02 and aligned_err < unaligned_err / 8
    # the matrix maps background pixels to source pixels like the true move does
    assert corner_error(info.matrix, MOVE, H, W) < 1.5


@needs("cv2")
def test_uncovered_pixels_repeat_the_border_so_a_subject_at_the_edge_stays():
    bgr = textured(1)
    shift = np.array([[1.0, 0, 12.0], [0, 1.0, 0], [0, 0, 1.0]])  # the camera turned: 12 px on the left are new
    src = cv2.warpPerspective(bgr, shift, (W, H), borderMode=cv2.BORDER_CONSTANT, borderValue=(0.3, 0.9, 0.3))
    subject = blob(cx=0.1, rx=0.12)  # a person cut off by the left edge of the picture
    src[subject] = (0.9, 0.2, 0.1)
    aligned, info = align_background(bgr, src)
    assert info.method in ("homography", "similarity")
    assert info.coverage == pytest.approx(1 - 12 / W, abs=0.01)
    band = np.zeros((H, W), bool)
    band[:, :10] = True
    # the band repeats the shot's first column: the subject there still differs from it, so it stays foreground
    np.testing.assert_allclose(aligned[:, :10], np.repeat(aligned[:, 12:13], 10, axis=1), atol=0.02)
    assert np.abs(aligned - src)[band & subject].mean() > 0.3
    assert np.abs(aligned[:, 16:] - src[:, 16:])[~subject[:, 16:]].mean() < 0.02
    copied, _ = BackgroundAligner(fill="src").align(bgr, src)
    np.testing.assert_allclose(copied[:, :10], src[:, :10], atol=1e-4)  # the other option: src == bgr → alpha 0


def crowded_pair(seed: int, h: int = 288, w: int = 384):
    """Texture only in the middle of a soft background (a sharp subject before a blurred scene), moved by a
    similarity (0.8°, 1 % zoom, a small shift), each shot with its own noise: every feature crowds into the middle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    soft = np.stack([0.5 + 0.3 * np.sin(xx / 60 + c) * np.cos(yy / 45 - c) for c in (0.0, 1.0, 2.0)], -1)
    middle = (((yy - h / 2) / (0.22 * h)) ** 2 + ((xx - w / 2) / (0.22 * w)) ** 2 < 1).astype(np.float32)
    middle = cv2.GaussianBlur(middle, (0, 0), 3)[..., None]
    bgr = (soft * (1 - middle) + textured(seed, h, w, shapes=120) * middle).astype(np.float32)
    move = np.vstack([cv2.getRotationMatrix2D((w / 2, h / 2), 0.8, 1.01), [0, 0, 1]])
    move[:2, 2] += (3.0, -2.0)
    src = cv2.warpPerspective(bgr, move, (w, h), borderMode=cv2.BORDER_REFLECT)
    return bgr, np.clip(src + rng.normal(0, 0.02, src.shape), 0, 1).astype(np.float32), move


@needs("cv2")
def test_crowded_features_give_a_similarity_not_a_false_homography():
    # a homography fitted to the middle alone tilts and zooms the soft rest (2-5 px off at the corners, matted as
    # foreground); the similarity fits the frame as well and keeps the corners within a pixel or so
    errors = []
    for seed in range(6):
        bgr, src, move = crowded_pair(seed)
        _, info = align_background(bgr, src)
        assert info.method == "similarity" and "as well as the homography" in info.reason
        errors.append(corner_error(info.matrix, move, *bgr.shape[:2]))
    assert np.mean(errors) < 1.2, errors


@needs("cv2")
def test_flat_images_fall_back_with_exactly_one_warning():
    flat = np.full((H, W, 3), 0.5, np.float32)
    src = flat.copy()
    src[blob()] = (0.9, 0.2, 0.1)
    aligner = BackgroundAligner()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out = aligner(flat, src)
            np.testing.assert_array_equal(out, flat)  # the unaligned plate
    msgs = [w for w in caught if issubclass(w.category, AlignmentWarning)]
    assert len(msgs) == 1 and "no texture" in str(msgs[0].message)
    assert aligner.counts == {"none": 3} and aligner.last_info.method == "none"


@needs("cv2")
def test_failed_frames_keep_the_last_good_alignment():
    bgr, src, _, _ = hand_held_pair(2)
    aligner = BackgroundAligner()
    _, info = aligner.align(bgr, src)
    assert info.method == "homography"
    flat = np.full_like(src, 0.5)
    with pytest.warns(AlignmentWarning, match="last good alignment"):
        _, again = aligner.align(bgr, flat)
    assert again.method == "previous"
    np.testing.assert_allclose(again.matrix, info.matrix)
    assert aligner.counts == {"homography": 1, "previous": 1}
    aligner.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert aligner.align(bgr, flat)[1].method == "none"


@needs("cv2")
def test_direct_refinement_places_the_similarity_to_a_tenth_of_a_pixel():
    # feature matches alone leave the corners 0.3-2 px off (what the model then mattes as an edge of foreground)
    refined, unrefined = [], []
    for seed in range(3):
        bgr, src, move = crowded_pair(seed)
        refined.append(corner_error(align_background(bgr, src)[1].matrix, move, *bgr.shape[:2]))
        unrefined.append(corner_error(align_background(bgr, src, refine=False)[1].matrix, move, *bgr.shape[:2]))
    assert max(refined) < 0.15 and max(unrefined) > 0.3, (refined, unrefined)


@needs("cv2")
def test_direct_refinement_places_a_homography_to_a_tenth_of_a_pixel():
    refined, unrefined = [], []
    for seed in range(4):
        bgr, src, _, _ = hand_held_pair(seed)
        info = align_background(bgr, src)[1]
        assert info.method == "homography"
        refined.append(corner_error(info.matrix, MOVE, H, W))
        unrefined.append(corner_error(align_background(bgr, src, refine=False)[1].matrix, MOVE, H, W))
    assert max(refined) < 0.15 and max(unrefined) > 0.5, (refined, unrefined)


def dusk_pair(seed: int, h: int = 288, w: int = 384):
    """A dark, soft, low-contrast scene (no corners for the features, little for a translation search) moved by a
    hand-held similarity (0.6-1°, 0.6-1 % zoom, a few pixels), a subject over a third of the middle."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.uniform(0, 1, (h // 24, w // 24, 3)).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_CUBIC)
    bgr = np.clip(0.04 + 0.10 * cv2.GaussianBlur(base, (0, 0), 6) + rng.normal(0, 0.004, (h, w, 3)), 0, 1)
    bgr = bgr.astype(np.float32)
    turn, zoom = rng.choice([-1, 1]) * rng.uniform(0.6, 1), 1 + rng.choice([-1, 1]) * rng.uniform(0.006, 0.01)
    move = np.vstack([cv2.getRotationMatrix2D((w / 2, h / 2), turn, zoom), [0, 0, 1]])
    move[:2, 2] += rng.uniform(-4, 4, 2)
    src = cv2.warpPerspective(bgr, move, (w, h), borderMode=cv2.BORDER_REFLECT)
    src = np.clip(src + rng.normal(0, 0.004, src.shape), 0, 1).astype(np.float32)
    src[blob(h, w, cx=0.5, rx=0.2, ry=0.35)] = (0.8, 0.3, 0.2)
    return bgr, src, move


@needs("cv2")
@pytest.mark.parametrize("seed", range(3))
def test_a_scene_without_features_is_aligned_directly(seed):
    bgr, src, move = dusk_pair(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, info = align_background(bgr, src)
    assert not [w for w in caught if issubclass(w.category, AlignmentWarning)]
    assert info.method == "similarity" and "direct image alignment" in info.reason
    assert corner_error(info.matrix, move, *bgr.shape[:2]) < 0.3
    with pytest.warns(AlignmentWarning, match="could not align"):
        _, old = align_background(bgr, src, refine=False)  # without it: features and translation both fail
    assert old.method == "none" and corner_error(old.matrix, move, *bgr.shape[:2]) > 5


@needs("cv2")
def test_degenerate_homographies_are_rejected():
    aligner = BackgroundAligner()
    shape = (100, 100)
    assert aligner._implausible(np.eye(3), shape, shape) is None
    assert "mirrored" in aligner._implausible(np.diag([-1.0, 1, 1]) + [[0, 0, 100], [0, 0, 0], [0, 0, 0]], shape, shape)
    assert "scale" in aligner._implausible(np.diag([3.0, 3, 1]), shape, shape)
    assert "scale" in aligner._implausible(np.diag([1e-4, 1e-4, 1]), shape, shape)  # det near 0
    assert "perspective" in aligner._implausible(np.array([[1, 0, 0], [0, 1, 0], [0.006, 0, 1.0]]), shape, shape)
    assert "shift" in aligner._implausible(np.array([[1, 0, 40], [0, 1, 0], [0, 0, 1.0]]), shape, shape)
    assert aligner._implausible(np.full((3, 3), np.nan), shape, shape) == "not finite"


@needs("cv2")
def test_translation_fallback_on_smooth_images():
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(cv2.resize(rng.uniform(0, 1, (6, 8, 3)).astype(np.float32), (W + 40, H + 40),
                                         interpolation=cv2.INTER_CUBIC), (0, 0), 8)
    bgr, src = smooth[20:20 + H, 20:20 + W].copy(), smooth[27:27 + H, 15:15 + W].copy()  # moved by (5, -7)
    aligned, info = align_background(bgr, src)
    assert info.method == "translation"
    assert np.abs(info.matrix[:2, 2] - [5, -7]).max() < 1.5
    inner = (slice(10, -10), slice(10, -10))
    assert np.abs(aligned - src)[inner].mean() < np.abs(bgr - src)[inner].mean() / 4


@needs("cv2")
def test_hook_keeps_type_and_caches_background_features():
    bgr, src, _, _ = hand_held_pair(3)
    aligner = BackgroundAligner()
    b8, s8 = np.round(bgr * 255).astype(np.uint8), np.round(src * 255).astype(np.uint8)
    out = aligner(b8, s8)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    features = aligner._bgr_features
    aligner(b8, s8)
    assert aligner._bgr_features is features  # same background: features reused
    t = torch.from_numpy(bgr).permute(2, 0, 1)[None]
    out_t = aligner(t, torch.from_numpy(src).permute(2, 0, 1))
    assert isinstance(out_t, torch.Tensor) and out_t.shape == t.shape and out_t.dtype == t.dtype
    np.testing.assert_allclose(out_t[0].permute(1, 2, 0).numpy(), out.astype(np.float32) / 255, atol=0.01)
    # a background of another size (same aspect ratio) comes back at the source's size
    half = cv2.resize(bgr, (W // 2, H // 2), interpolation=cv2.INTER_AREA)
    aligned, info = aligner.align(half, src)
    assert aligned.shape == src.shape and info.method == "homography"


def test_aligner_options_are_checked():
    with pytest.raises(BgMattingError, match="features"):
        BackgroundAligner(features="akaze")
    with pytest.raises(BgMattingError, match="fill"):
        BackgroundAligner(fill="black")


# --------------------------------------------------------------------------------------------- background check

def genuine_pair(seed: int, coverage: float = 0.6):
    """A textured background, a subject covering ``coverage`` of the frame, and all BGMv2 perturbations."""
    from bgmatting.data.perturb import make_pair

    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    bgr = textured(seed + 100, shapes=40)
    pha = np.zeros((H, W), np.float32)
    # half an ellipse standing on the bottom edge, sized to cover ``coverage`` of the frame
    ry = 0.95
    pha[blob(cy=1.0, cx=0.5, ry=ry, rx=2 * coverage / (np.pi * ry))] = 1
    pha = cv2.GaussianBlur(pha, (0, 0), 1.5)
    fgr = np.clip(rng.uniform(0, 1, (H // 8, W // 8, 3)).repeat(8, 0).repeat(8, 1), 0, 1).astype(np.float32)
    src, shot = make_pair(nchw(fgr), nchw(pha[..., None]), nchw(bgr), generator=g, shadow_p=1, noise_p=1, colour_p=1,
                          misalign_p=1)
    return src[0].permute(1, 2, 0).numpy(), shot[0].permute(1, 2, 0).numpy(), float((pha > 0.5).mean())


@pytest.mark.parametrize("seed", range(4))
@needs("cv2")
def test_genuine_pairs_pass_the_check(seed):
    src, bgr, covered = genuine_pair(seed)
    assert covered > 0.5
    assert check_background_matches(src, bgr) > 0.2
    assert check_background_matches(src, bgr, align=True) > 0.2


@needs("cv2")
def test_identical_and_unoccluded_pairs_agree_fully():
    img = textured(5)
    assert background_agreement(img, img) == pytest.approx(1.0)
    assert background_agreement((img * 255).astype(np.uint8), img) > 0.99


@pytest.mark.parametrize("seed", [0, 1, 3, 5])
@needs("cv2")
def test_unrelated_images_fail_the_check(seed):
    src, _, _ = genuine_pair(seed, coverage=0.3)
    other = textured(seed + 500, shapes=40)  # the "new background" the user wants
    assert background_agreement(src, other) < 0.02
    with pytest.raises(BgMattingError, match="--bgr must be a shot of the same scene without the subject") as e:
        check_background_matches(src, other)
    assert "--target-bgr" in str(e.value)
    with pytest.raises(BgMattingError, match="same camera position"):
        check_background_matches(src, other, align=True)


@needs("cv2")
def test_flat_colour_instead_of_a_background_fails():
    src, _, _ = genuine_pair(7, coverage=0.3)
    green = np.zeros_like(src) + np.array([0.0, 1.0, 0.0], np.float32)
    with pytest.raises(BgMattingError, match="--target-bgr"):
        check_background_matches(src, green)


@needs("cv2")
def test_check_needs_the_same_view():
    with pytest.raises(BgMattingError, match="aspect ratio"):
        check_background_matches(np.zeros((100, 200, 3), np.float32), np.zeros((100, 100, 3), np.float32))


@needs("cv2")
def test_video_check_uses_the_first_frames():
    src, bgr, _ = genuine_pair(1)
    other = textured(900, shapes=40)
    assert check_video_background(iter([src, src]), bgr) > 0.15
    read = []

    def frames():
        for i in range(10):
            read.append(i)
            yield src
    with pytest.raises(BgMattingError, match="scene of the video"):
        check_video_background(frames(), other, max_frames=2)
    assert read == [0, 1]  # only the first frames are read
    # a subject covering the first frame entirely: a later frame passes
    assert check_video_background([np.full_like(src, 0.5), src], bgr) > 0.15
    with pytest.raises(BgMattingError, match="no frames"):
        check_video_background([], bgr)


# --------------------------------------------------------------------------------------------- on real photos

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def photo(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(EXAMPLES / name)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255


@pytest.fixture(scope="module")
def street():
    """A real frame (people on a lawn and a road, 768x576) and the shot of the empty scene."""
    return photo("src.jpg"), photo("bgr.jpg")


def close_up(src: np.ndarray, bgr: np.ndarray, seed: int, coverage: float, texture: np.ndarray | None = None):
    """A subject covering ``coverage`` of the real scene, with every BGMv2 perturbation at once.

    The subject shows ``texture``, by default a real-photo one: the frame upside down, tinted.
    """
    from bgmatting.data.perturb import make_pair

    h, w = bgr.shape[:2]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] + 0.5
    ry = 0.98
    rx = 2 * coverage / (np.pi * ry)
    pha = ((((yy / h - 1) / ry) ** 2 + ((xx / w - rng.uniform(0.35, 0.65)) / rx) ** 2) < 1).astype(np.float32)
    pha = cv2.GaussianBlur(pha, (0, 0), 2)[..., None]
    texture = src[::-1] if texture is None else texture
    fgr = np.clip(texture * rng.uniform(0.6, 1.1, 3).astype(np.float32), 0, 1)
    s, shot = make_pair(nchw(fgr), nchw(pha), nchw(bgr), generator=torch.Generator().manual_seed(seed), shadow_p=1,
                        noise_p=1, colour_p=1, misalign_p=1)
    return s[0].permute(1, 2, 0).numpy(), shot[0].permute(1, 2, 0).numpy(), float((pha > 0.5).mean())


@needs("cv2")
def test_real_pair_agrees(street):
    src, bgr = street
    assert background_agreement(src, bgr) > 0.85
    assert check_background_matches(src, bgr, align=True) > 0.85
    as_uint8 = (src * 255 + 0.5).astype(np.uint8), (bgr * 255 + 0.5).astype(np.uint8)
    assert background_agreement(*as_uint8) == pytest.approx(background_agreement(src, bgr), abs=0.02)


@pytest.mark.parametrize("seed", range(3))
@needs("cv2")
def test_real_close_ups_pass_with_a_margin(street, seed):
    src, shot, covered = close_up(*street, seed, coverage=0.7)
    assert covered > 0.65
    assert check_background_matches(src, shot) > 2 * MIN_AGREEMENT
    assert check_background_matches(src, shot, align=True) > 2 * MIN_AGREEMENT


@needs("cv2")
def test_real_hand_held_move_passes_with_align(street):
    src, bgr = street
    h, w = bgr.shape[:2]
    move = cv2.getRotationMatrix2D((w / 2, h / 2), 1.5, 1.02)
    move[:, 2] += (0.035 * w, -0.025 * h)
    moved = cv2.warpAffine(bgr, move, (w, h), borderMode=cv2.BORDER_REFLECT)
    assert check_background_matches(src, moved, align=True) > 0.5


def mistakes(bgr: np.ndarray) -> dict[str, np.ndarray]:
    """Images one might pass instead of the shot of the empty scene: other views of similar content, textures and
    colours like the scene's (lawn, sky), a plain colour."""
    h, w = bgr.shape[:2]
    rng = np.random.default_rng(0)
    lawn = bgr[int(0.6 * h):, : w // 2].reshape(-1, 3).mean(0)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.5)[..., None]
    rows = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    return {
        "mirrored scene": bgr[:, ::-1],
        "upside-down scene": bgr[::-1],
        "zoomed-in part": cv2.resize(bgr[: h * 3 // 5, w // 5: w * 4 // 5], (w, h), interpolation=cv2.INTER_CUBIC),
        "another part": cv2.resize(bgr[h // 3:, w // 3:], (w, h), interpolation=cv2.INTER_CUBIC),
        "grass texture": np.clip(lawn * (1 + 0.25 * noise), 0, 1),
        "lawn colour": np.zeros_like(bgr) + lawn,
        "sky gradient": np.clip(np.float32([0.55, 0.65, 0.8]) * (1 - 0.4 * rows) + np.zeros((1, w, 1), np.float32),
                                0, 1),
        "synthetic shapes": cv2.resize(textured(11), (w, h), interpolation=cv2.INTER_LINEAR),
    }


@pytest.mark.parametrize("name", ["mirrored scene", "upside-down scene", "zoomed-in part", "another part",
                                  "grass texture", "lawn colour", "sky gradient", "synthetic shapes"])
@needs("cv2")
def test_real_mistakes_fail_with_a_margin(street, name):
    src, bgr = street
    other = np.ascontiguousarray(mistakes(bgr)[name], dtype=np.float32)
    assert background_agreement(src, other) < MIN_AGREEMENT / 4
    with pytest.raises(BgMattingError, match="--bgr must be a shot of the same scene"):
        check_background_matches(src, other)
    with pytest.raises(BgMattingError, match="--target-bgr"):
        check_background_matches(src, other, align=True)
    shapes = cv2.resize(textured(12), (src.shape[1], src.shape[0]), interpolation=cv2.INTER_LINEAR)
    close, _, _ = close_up(src, bgr, 5, coverage=0.3, texture=shapes)  # the same mistakes behind another subject
    assert background_agreement(close, other) < MIN_AGREEMENT / 4


@needs("cv2")
def test_real_pairs_separate_clearly(street):
    """Every genuine pair above, every mistake below, with a wide gap around the threshold."""
    src, bgr = street
    genuine = [background_agreement(src, bgr)]
    genuine += [background_agreement(*close_up(src, bgr, seed, coverage=0.7)[:2]) for seed in (3, 4)]
    mistaken = [background_agreement(src, np.ascontiguousarray(m, dtype=np.float32)) for m in mistakes(bgr).values()]
    assert min(genuine) > 2 * MIN_AGREEMENT and max(mistaken) < MIN_AGREEMENT / 4
    assert min(genuine) > 8 * max(mistaken)


@pytest.mark.parametrize("noise", [0.0, 0.02])
@needs("cv2")
def test_an_aligned_pair_is_kept_as_it_is(street, noise):
    src, bgr = street
    rng = np.random.default_rng(0)
    if noise:  # each shot its own sensor noise, and the background shot 10 % brighter
        src = np.clip(src + rng.normal(0, noise, src.shape), 0, 1).astype(np.float32)
        bgr = np.clip(bgr * 1.1 + rng.normal(0, noise, bgr.shape), 0, 1).astype(np.float32)
    aligner = BackgroundAligner()
    aligned, info = aligner.align(bgr, src)
    assert info.method == "none" and info.reason
    np.testing.assert_array_equal(aligned, bgr)
    assert aligner.counts == {"none": 1}


@needs("cv2")
def test_a_small_real_misalignment_is_still_corrected(street):
    src, bgr = street
    h, w = bgr.shape[:2]
    move = cv2.getRotationMatrix2D((w / 2, h / 2), 0.8, 1.01)
    move[:, 2] += (0.01 * w, -0.008 * h)
    moved = cv2.warpAffine(bgr, move, (w, h), borderMode=cv2.BORDER_REFLECT)
    aligned, info = align_background(moved, src)
    assert info.method in ("homography", "similarity")
    inner = (slice(h // 10, -h // 10), slice(w // 10, -w // 10))
    assert np.abs(aligned - src)[inner].mean() < 0.5 * np.abs(moved - src)[inner].mean()
