"""Clean-plate estimation: median, matter refinement, coverage, never-seen pixels, bounded sampling, alignment."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from bgmatting import BgMattingError
from bgmatting import plate as plate_module
from bgmatting.plate import _masked_median, estimate_plate, sample_frames, save_plate

from helpers import needs
from video_clips import make_cut_video, make_standing_clip, make_video

H, W, T = 48, 64, 21
SQUARE = np.array([1.0, 0.0, 1.0], np.float32)  # magenta: not a colour of the background
TOP, SIZE = 14, 18


def background(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A green/grey texture (no magenta), quantised to uint8 levels so frames round-trip exactly."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, (h // 4 + 1, w // 4 + 1, 1)).repeat(4, 0).repeat(4, 1)[:h, :w]
    img = np.concatenate([base * 0.5, base, base * 0.6], axis=2) + rng.uniform(-0.05, 0.05, (h, w, 3))
    return np.round(np.clip(img, 0, 1) * 255).astype(np.float32) / 255


def left(t: int) -> int:
    """The square's left edge in frame ``t``: it moves from x=10 to x=20, so columns 20..27 are always covered."""
    return 10 + t // 2


def square_alpha(t: int) -> np.ndarray:
    pha = np.zeros((H, W), np.float32)
    pha[TOP:TOP + SIZE, left(t):left(t) + SIZE] = 1
    return pha


def video(bg: np.ndarray) -> list[np.ndarray]:
    frames = []
    for t in range(T):
        f = bg.copy()
        f[square_alpha(t) > 0] = SQUARE
        frames.append(f)
    return frames


class SquareMatter:
    """A fake matter: alpha 1 where the source shows the magenta square (the true alpha), 0 elsewhere."""

    def __init__(self):
        self.calls = 0

    def __call__(self, src, bgr):
        self.calls += 1
        assert src.shape == bgr.shape
        return SimpleNamespace(pha=(np.abs(src - SQUARE).max(axis=2) < 0.02).astype(np.float32))


@needs("cv2")
def test_median_recovers_background_uncovered_in_most_frames():
    bg = background()
    frames = video(bg)
    result = estimate_plate(frames, align=False)
    covered = np.mean([square_alpha(t) for t in range(T)], axis=0)
    seen_most = covered < 0.5
    assert result.plate.shape == (H, W, 3) and result.plate.dtype == np.float32
    assert np.abs(result.plate - bg)[seen_most].max() < 1e-6
    # where the square was there more than half the time, the median is the square
    assert np.abs(result.plate - SQUARE)[covered > 0.5].max() < 1e-6
    assert result.frames_used == T and result.frame_indices == list(range(T))
    # without a matter, coverage counts frames that agree with the plate (a heuristic)
    assert result.coverage.shape == (H, W) and result.coverage.dtype == np.float32
    assert result.coverage[0, 0] == 1.0


@needs("cv2")
def test_matter_refinement_recovers_pixels_covered_most_of_the_time():
    bg = background()
    matter = SquareMatter()
    result = estimate_plate(video(bg), matter, align=False, iterations=2, dilate=0.0)
    assert matter.calls == 2 * T
    alphas = np.stack([square_alpha(t) for t in range(T)])
    seen = (alphas == 0).sum(0)
    assert np.abs(result.plate - bg)[seen > 0].max() < 1e-6  # seen uncovered once is enough
    np.testing.assert_allclose(result.coverage, seen / T, atol=1e-6)
    always = seen == 0
    assert always.sum() == SIZE * (left(0) + SIZE - left(T - 1))  # rows × always-covered columns
    assert result.never_seen_fraction == pytest.approx(always.mean())
    # never-seen pixels hold the plain median (here the square)
    assert np.abs(result.plate - SQUARE)[always].max() < 1e-6


@needs("cv2")
def test_dilated_mask_keeps_edges_out():
    bg = background()
    frames = video(bg)
    # blur the square's edges in the frames: the fake matter only sees the solid core, the dilation the rest
    for t, f in enumerate(frames):
        edge = np.zeros((H, W), bool)
        x = left(t) + SIZE
        edge[TOP:TOP + SIZE, x:x + 1] = True
        f[edge] = 0.5 * SQUARE + 0.5 * f[edge]
    plain = estimate_plate(frames, SquareMatter(), align=False, dilate=0.0)
    grown = estimate_plate(frames, SquareMatter(), align=False, dilate=0.05)
    # without dilation the half-blended edge leaks into the plate where it was the only sample left ...
    assert np.abs(plain.plate - bg)[plain.coverage > 0].max() > 0.2
    # ... with it, every pixel still counted as seen is exact, and the rest is reported as never seen
    assert np.abs(grown.plate - bg)[grown.coverage > 0].max() < 1e-6
    assert (grown.coverage <= plain.coverage + 1e-6).all()
    assert grown.never_seen_fraction > plain.never_seen_fraction


def test_sample_frames_is_bounded_and_spread():
    frames = (np.full((4, 5, 3), i % 256, np.uint8) for i in range(1000))  # a generator: length unknown
    stack, indices = sample_frames(frames, max_frames=60)
    assert 30 <= len(indices) <= 60 and stack.shape == (len(indices), 4, 5, 3)
    steps = np.diff(indices)
    assert (steps == steps[0]).all() and indices[0] == 0 and indices[-1] >= 1000 - steps[0]
    assert [int(s[0, 0, 0]) for s in stack] == [i % 256 for i in indices]
    # with the total known, exactly every k-th frame
    stack, indices = sample_frames([np.zeros((2, 2, 3), np.float32)] * 100, max_frames=30, total=100)
    assert indices == list(range(0, 100, 4)) and stack.dtype == np.uint8
    # a short video keeps every frame
    assert sample_frames([np.zeros((2, 2, 3), np.uint8)] * 5, max_frames=60)[1] == [0, 1, 2, 3, 4]


@needs("cv2")
def test_estimate_plate_limits_frames():
    bg = background()
    result = estimate_plate(video(bg) * 5, align=False, max_frames=10)  # 105 frames
    assert result.frames_used <= 10 and result.frame_indices[0] == 0


@pytest.mark.parametrize("chunk", [None, 7 * 6 * 3 * 2])  # one band, or bands of 2 rows
def test_masked_median_matches_numpy(chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(plate_module, "_MEDIAN_CHUNK", chunk)
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    valid = rng.random((7, 5, 6)) < 0.6
    valid[:, 0, 0] = False
    med, count = _masked_median(stack, valid)
    for y in range(5):
        for x in range(6):
            k = valid[:, y, x]
            assert count[y, x] == k.sum()
            if k.any():
                np.testing.assert_allclose(med[y, x], np.median(stack[k, y, x], axis=0) / 255, atol=1e-6)
    assert (med[0, 0] == 0).all()
    plain, _ = _masked_median(stack, None)
    np.testing.assert_allclose(plain, np.median(stack, axis=0) / 255, atol=1e-6)


def test_hand_held_frames_are_aligned_to_the_middle_frame():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    h, w = 120, 160
    big = np.zeros((h + 40, w + 40, 3), np.float32) + 0.4
    for _ in range(50):  # shapes with corners for the features
        c = tuple(float(v) for v in rng.uniform(0, 0.8, 3) * [0.6, 1, 0.7])
        x, y = int(rng.integers(0, w + 40)), int(rng.integers(0, h + 40))
        cv2.rectangle(big, (x, y), (x + int(rng.integers(4, 30)), y + int(rng.integers(4, 30))), c, -1)
    shifts = [(20 + round(4 * np.sin(t)), 20 + round(3 * np.cos(t))) for t in range(T)]
    frames = []
    for t, (dx, dy) in enumerate(shifts):
        f = big[dy:dy + h, dx:dx + w].copy()
        x = 20 + 3 * t
        f[40:80, x:x + 30] = SQUARE
        frames.append(f)
    mid = T // 2
    dx, dy = shifts[mid]
    truth = big[dy:dy + h, dx:dx + w]
    unaligned = estimate_plate(frames, SquareMatter(), align=False, dilate=0.02)
    aligned = estimate_plate(frames, SquareMatter(), align=True, dilate=0.02)
    inner = (slice(8, h - 8), slice(8, w - 8))
    err_unaligned = np.abs(unaligned.plate - truth)[inner].mean()
    err_aligned = np.abs(aligned.plate - truth)[inner].mean()
    assert err_aligned < 0.01 < err_unaligned
    assert err_aligned < err_unaligned / 4


@needs("cv2")
def test_video_file_and_coverage_map(tmp_path):
    av = pytest.importorskip("av")
    from bgmatting.io import read_image

    bg = background(64, 96)
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv444p"
        s.options = {"crf": "0"}
        for t in range(12):
            f = bg.copy()
            f[10:40, 5 + 6 * t:35 + 6 * t] = SQUARE
            frame = av.VideoFrame.from_ndarray(np.round(f * 255).astype(np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    result = estimate_plate(path, SquareMatter(), align=False, dilate=0.0)
    assert result.frames_used == 12
    assert np.abs(result.plate - bg).mean() < 0.02
    out = save_plate(result, tmp_path / "plate.png", tmp_path / "cov.png")
    assert read_image(out).shape == (64, 96, 3)
    cov = read_image(tmp_path / "cov.png", mode="L")
    np.testing.assert_allclose(cov, result.coverage, atol=1 / 255)


def test_errors():
    with pytest.raises(BgMattingError, match="no frames"):
        estimate_plate([], align=False)
    with pytest.raises(BgMattingError, match="one size"):
        estimate_plate([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], align=False)
    with pytest.raises(BgMattingError, match="does not exist"):
        estimate_plate("/nonexistent/clip.mp4")
    with pytest.raises(BgMattingError, match="at least 1"):
        sample_frames([np.zeros((4, 4, 3), np.uint8)], max_frames=0)


# --------------------------------------------------------------------------------------------- a subject standing still

def _standing_clip(tmp_path, **kwargs):
    pytest.importorskip("av")

    path, bg, place = make_standing_clip(tmp_path / "clip.mp4", **kwargs)
    return path, bg.astype(np.float32) / 255, place


def _error(plate: np.ndarray, bg: np.ndarray, place) -> float:
    return float(np.abs(plate[place] - bg[place]).mean())


@pytest.mark.parametrize("matter", [None, SquareMatter], ids=["median", "refined"])
@needs("cv2")
def test_a_subject_standing_still_is_warned_about_and_the_whole_video_shows_the_place(tmp_path, matter):
    path, bg, place = _standing_clip(tmp_path)  # stands still from 0 to 1.6 s, then walks off
    with pytest.warns(UserWarning, match=r"only 0\.\d% of the picture changed across the 20 frames over 1\.[45] s"):
        ranged = estimate_plate(path, matter and matter(), align=False, max_frames=20, start=0, end=1.6)
    assert ranged.motion_fraction < plate_module.LOW_MOTION and ranged.notes
    assert _error(ranged.plate, bg, place) > 0.3  # the subject is in the plate
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: enough moved
        whole = estimate_plate(path, matter and matter(), align=False, max_frames=20, start=0, end=1.6,
                               whole_video=True)
    assert whole.motion_fraction > 0.1 and whole.notes == []
    assert _error(whole.plate, bg, place) < 0.03
    assert whole.span > 3 and whole.frame_indices == sorted(whole.frame_indices) and whole.frame_indices[-1] > 60


@needs("cv2")
def test_a_long_video_is_sampled_by_seeking(tmp_path, monkeypatch):
    from bgmatting.io.video import VideoReader

    path, bg, place = _standing_clip(tmp_path, gop=5)
    monkeypatch.setattr(plate_module, "SEQUENTIAL_LIMIT", 50)  # the 100 frames count as a long video
    decoded = []
    next_av_frame = VideoReader._next_av_frame

    def counting(self):
        decoded.append(self.start)
        return next_av_frame(self)

    monkeypatch.setattr(VideoReader, "_next_av_frame", counting)
    result = estimate_plate(path, align=False, max_frames=20, start=0, end=1.6, whole_video=True)
    assert _error(result.plate, bg, place) < 0.03 and result.notes == []
    assert result.frame_indices[-1] > 80
    # the range (40 frames) is read through; of the rest of the video (100 frames), about one frame per seek
    assert len(decoded) < 40 + 3 * 15


@needs("cv2")
def test_frames_of_another_scene_are_left_out(tmp_path):
    pytest.importorskip("av")

    bg = (background(48, 64) * 255).round().astype(np.uint8)
    other = np.ascontiguousarray(255 - bg[::-1])  # a cut to another shot after 1.6 s
    frames = [bg.copy() for _ in range(40)] + [other.copy() for _ in range(60)]
    for f in frames[:40]:
        f[18:30, 4:16] = (255, 0, 255)
    path = make_video(tmp_path / "cut.mp4", 100, frames=frames)
    with pytest.warns(UserWarning) as caught:
        result = estimate_plate(path, align=False, max_frames=20, start=0, end=1.6, whole_video=True)
    messages = [str(w.message) for w in caught]
    assert any("show another scene" in m for m in messages) and any("changed across" in m for m in messages)
    assert np.abs(result.plate - bg / 255)[32:].mean() < 0.03  # not a mix of the two shots (box left aside)


def test_plate_command_leaves_no_folder_behind(tmp_path, capsys):
    pytest.importorskip("av")
    from bgmatting.cli import main

    path, _, _ = _standing_clip(tmp_path)
    cut = make_cut_video(tmp_path / "cut.mp4")
    out = tmp_path / "out" / "deep" / "plate.png"
    assert main(["plate", str(path), "-o", str(out), "--device", "nonsense", "-q"]) == 2
    assert "unknown device" in capsys.readouterr().err
    assert main(["plate", str(cut), "-o", str(out), "--no-refine", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bgmatting: error: ") and "damaged or cut short" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@needs("cv2")
def test_damage_outside_the_range_does_not_stop_the_whole_video_plate(tmp_path):
    pytest.importorskip("av")

    cut = make_cut_video(tmp_path / "cut.mp4")  # 2 s declared, frames until about 0.9 s
    with pytest.raises(BgMattingError, match="damaged or cut short"):
        estimate_plate(cut, align=False, max_frames=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noise frames: "another scene"
        result = estimate_plate(cut, align=False, max_frames=8, start=0, end=0.4, whole_video=True)
    assert result.frames_used >= 2 and result.plate.shape == (64, 64, 3)
