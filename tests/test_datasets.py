"""Tests for bgmatting.data.datasets on tiny folder trees built in tmp_path."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bgmatting.data import datasets
from bgmatting.data.augment import BackgroundAugment, PairAugment
from bgmatting.data.datasets import (
    BackgroundImageDataset,
    BackgroundVideoDataset,
    ImageMatteDataset,
    MattingSampleDataset,
    PhotoMatteDataset,
    VideoMatteDataset,
    composite_subjects,
)
from bgmatting.errors import BgMattingError
from bgmatting.io import write_image

S = 16


def _rgb(value, h=S, w=S):
    return np.full((h, w, 3), value, dtype=np.float32)


def _gray(value, h=S, w=S):
    return np.full((h, w), value, dtype=np.float32)


def _videomatte(root: Path, clips=None, split="train"):
    """``clips``: {clip: number of frames}. Frame i of clip c has fgr gray (i+1)/10 and a PNG matte of 0.5."""
    clips = clips or {"clip_a": 3, "clip_b": 2}
    for clip, n in clips.items():
        for i in range(n):
            write_image(root / split / "fgr" / clip / f"{i:05d}.jpg", _rgb((i + 1) / 10))
            write_image(root / split / "pha" / clip / f"{i:05d}.png", _gray(0.5))
    return root


# ---------------------------------------------------------------------------------------------------------------
# VideoMatte


def test_videomatte_pairs_and_shapes(tmp_path):
    ds = VideoMatteDataset(_videomatte(tmp_path))
    assert len(ds) == 5
    assert ds.clips == ["clip_a", "clip_b"]
    s = ds[2]
    assert set(s) == {"fgr", "pha"}
    assert s["fgr"].shape == (3, S, S) and s["pha"].shape == (1, S, S)
    assert s["fgr"].dtype == torch.float32 and s["pha"].dtype == torch.float32
    assert abs(s["fgr"].mean().item() - 0.3) < 0.02  # third frame of clip_a
    assert abs(s["pha"].mean().item() - 0.5) < 0.01


def test_videomatte_natural_frame_order(tmp_path):
    for i in (1, 2, 10):
        write_image(tmp_path / "test" / "fgr" / "c" / f"f{i}.jpg", _rgb(i / 10))
        write_image(tmp_path / "test" / "pha" / "c" / f"f{i}.jpg", _gray(1.0))
    ds = VideoMatteDataset(tmp_path, split="test")
    assert [round(ds[k]["fgr"].mean().item(), 1) for k in range(3)] == [0.1, 0.2, 1.0]


def test_videomatte_sequences(tmp_path):
    ds = VideoMatteDataset(_videomatte(tmp_path, {"a": 5, "b": 2}), seq_len=2)
    assert len(ds) == 3  # a: [0,1], [2,3] (frame 4 left over); b: [0,1]
    s = ds[1]
    assert s["fgr"].shape == (2, 3, S, S) and s["pha"].shape == (2, 1, S, S)
    assert abs(s["fgr"][0].mean().item() - 0.3) < 0.02 and abs(s["fgr"][1].mean().item() - 0.4) < 0.02
    with pytest.raises(BgMattingError, match="no clip .* has 6 frames"):
        VideoMatteDataset(tmp_path, seq_len=6)
    with pytest.raises(ValueError):
        VideoMatteDataset(tmp_path, seq_len=0)


def test_videomatte_transform(tmp_path):
    ds = VideoMatteDataset(_videomatte(tmp_path), transform=PairAugment(8, train=False))
    s = ds[0]
    assert s["fgr"].shape == (3, 8, 8) and s["pha"].shape == (1, 8, 8)


def test_videomatte_missing_partner(tmp_path):
    _videomatte(tmp_path)
    (tmp_path / "train" / "pha" / "clip_a" / "00001.png").unlink()
    write_image(tmp_path / "train" / "pha" / "clip_c" / "00000.png", _gray(1.0))
    with pytest.raises(BgMattingError) as e:
        VideoMatteDataset(tmp_path)
    msg = str(e.value)
    assert "1 foreground(s)" in msg and "'clip_a/00001'" in msg
    assert "1 alpha matte(s)" in msg and "'clip_c/00000'" in msg


def test_mismatch_lists_only_the_first_few(tmp_path):
    _videomatte(tmp_path, {"a": 8})
    for f in (tmp_path / "train" / "pha" / "a").iterdir():
        f.unlink()
    write_image(tmp_path / "train" / "pha" / "a" / "00000.png", _gray(1.0))
    with pytest.raises(BgMattingError, match=r"7 foreground\(s\).*'a/00001'.*'a/00005' \(and 2 more\)"):
        VideoMatteDataset(tmp_path)


def test_videomatte_layout_errors(tmp_path):
    _videomatte(tmp_path)
    with pytest.raises(BgMattingError, match=r"split folder .*validation' does not exist \(found: train\)"):
        VideoMatteDataset(tmp_path, split="validation")
    with pytest.raises(BgMattingError, match="does not exist"):
        VideoMatteDataset(tmp_path / "nowhere")
    write_image(tmp_path / "train" / "fgr" / "loose.jpg", _rgb(0.5))
    write_image(tmp_path / "train" / "pha" / "loose.jpg", _gray(0.5))
    with pytest.raises(BgMattingError, match=r"wrong folder depth.*'loose'.*<clip>/<frame>"):
        VideoMatteDataset(tmp_path)


def test_videomatte_empty_and_missing_pha(tmp_path):
    (tmp_path / "train" / "fgr").mkdir(parents=True)
    (tmp_path / "train" / "pha").mkdir(parents=True)
    with pytest.raises(BgMattingError, match="no image files.*expected the layout"):
        VideoMatteDataset(tmp_path)
    write_image(tmp_path / "train" / "fgr" / "c" / "0.jpg", _rgb(0.5))
    (tmp_path / "train" / "pha").rmdir()
    with pytest.raises(BgMattingError, match="alpha matte folder .*pha' does not exist"):
        VideoMatteDataset(tmp_path)


def test_duplicate_names_with_different_suffix(tmp_path):
    write_image(tmp_path / "fgr" / "x.jpg", _rgb(0.5))
    write_image(tmp_path / "fgr" / "x.png", _rgb(0.5))
    write_image(tmp_path / "pha" / "x.png", _gray(0.5))
    with pytest.raises(BgMattingError, match="same name but a different suffix.*'x.png'"):
        ImageMatteDataset(tmp_path)


def test_size_mismatch_reported_on_read(tmp_path):
    write_image(tmp_path / "fgr" / "x.jpg", _rgb(0.5))
    write_image(tmp_path / "pha" / "x.png", _gray(0.5, h=8))
    ds = ImageMatteDataset(tmp_path)
    with pytest.raises(BgMattingError, match="is 16x16 but its alpha matte .* is 16x8"):
        ds[0]


# ---------------------------------------------------------------------------------------------------------------
# PhotoMatte and image mattes


def test_photomatte_rgba(tmp_path):
    rgba = np.zeros((S, S, 4), dtype=np.float32)
    rgba[..., 0] = 1.0
    rgba[:, S // 2 :, 3] = 1.0
    write_image(tmp_path / "a.png", rgba)
    write_image(tmp_path / "sub" / "b.png", rgba)
    ds = PhotoMatteDataset(tmp_path)
    assert len(ds) == 2
    s = ds[0]
    assert s["fgr"].shape == (3, S, S) and s["pha"].shape == (1, S, S)
    assert s["pha"][0, :, : S // 2].max() == 0 and s["pha"][0, :, S // 2 :].min() == 1
    assert s["fgr"][0, :, S // 2 :].min() == 1 and s["fgr"][1:, :, S // 2 :].max() == 0


def test_photomatte_rejects_formats_without_alpha(tmp_path):
    write_image(tmp_path / "a.png", np.ones((S, S, 4), dtype=np.float32))
    write_image(tmp_path / "b.jpg", _rgb(0.5))
    with pytest.raises(BgMattingError, match=r"1 image\(s\).*cannot hold an alpha channel: 'b.jpg'.*ImageMatteDataset"):
        PhotoMatteDataset(tmp_path)
    with pytest.raises(BgMattingError, match="does not exist"):
        PhotoMatteDataset(tmp_path / "missing")


def test_image_matte_nested_and_mixed_suffixes(tmp_path):
    write_image(tmp_path / "fgr" / "people" / "p1.jpg", _rgb(0.2))
    write_image(tmp_path / "pha" / "people" / "p1.png", _gray(1.0))
    write_image(tmp_path / "fgr" / "objects" / "o1.png", _rgb(0.6))
    write_image(tmp_path / "pha" / "objects" / "o1.jpg", _gray(0.0))
    ds = ImageMatteDataset(tmp_path)
    assert len(ds) == 2
    means = sorted(round(ds[i]["fgr"].mean().item(), 1) for i in range(2))
    assert means == [0.2, 0.6]


def test_image_matte_mismatch(tmp_path):
    write_image(tmp_path / "fgr" / "a.jpg", _rgb(0.2))
    write_image(tmp_path / "pha" / "b.png", _gray(1.0))
    with pytest.raises(BgMattingError, match=r"'a'.*'b'.*paired by relative path without suffix"):
        ImageMatteDataset(tmp_path)
    with pytest.raises(BgMattingError, match=r"foreground folder .* does not exist.*\{fgr,pha\}"):
        ImageMatteDataset(tmp_path / "pha")


# ---------------------------------------------------------------------------------------------------------------
# Backgrounds


def test_background_images_one_and_many_roots(tmp_path):
    write_image(tmp_path / "a" / "1.jpg", _rgb(0.1))
    write_image(tmp_path / "a" / "deep" / "2.png", _rgb(0.2))
    write_image(tmp_path / "b" / "3.jpg", _rgb(0.3))
    assert len(BackgroundImageDataset(tmp_path / "a")) == 2
    ds = BackgroundImageDataset([tmp_path / "a", str(tmp_path / "b")], transform=BackgroundAugment(8, train=False))
    assert len(ds) == 3
    s = ds[2]
    assert set(s) == {"bgr"} and s["bgr"].shape == (3, 8, 8)
    with pytest.raises(BgMattingError, match="background folder .*missing' does not exist"):
        BackgroundImageDataset([tmp_path / "a", tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BgMattingError, match="no image files"):
        BackgroundImageDataset(tmp_path / "empty")


def test_background_video_frame_folders(tmp_path):
    for clip, n in {"c1": 2, "c2": 3}.items():
        for i in range(n):
            write_image(tmp_path / clip / f"{i}.jpg", _rgb(0.1 * (i + 1)))
    (tmp_path / "notes.txt").write_text("ignored")
    ds = BackgroundVideoDataset(tmp_path)
    assert len(ds) == 5
    s = ds[4]
    assert s["bgr"].shape == (3, S, S) and abs(s["bgr"].mean().item() - 0.3) < 0.02


def test_background_video_layout_errors(tmp_path):
    with pytest.raises(BgMattingError, match="does not exist"):
        BackgroundVideoDataset(tmp_path / "missing")
    with pytest.raises(BgMattingError, match="no clips found"):
        BackgroundVideoDataset(tmp_path)
    (tmp_path / "empty_clip").mkdir()
    with pytest.raises(BgMattingError, match="no image files .*empty_clip"):
        BackgroundVideoDataset(tmp_path)
    (tmp_path / "empty_clip").rmdir()
    write_image(tmp_path / "c" / "deeper" / "0.jpg", _rgb(0.5))
    with pytest.raises(BgMattingError, match="sub-folders of a clip: 'c/deeper/0.jpg'"):
        BackgroundVideoDataset(tmp_path)
    write_image(tmp_path / "loose.jpg", _rgb(0.5))
    with pytest.raises(BgMattingError, match=r"lie directly in .*'loose.jpg'.*BackgroundImageDataset"):
        BackgroundVideoDataset(tmp_path)


def test_background_video_files_without_pyav(tmp_path, monkeypatch):
    def no_av():
        raise BgMattingError("reading and writing video needs PyAV: pip install av")

    monkeypatch.setattr(datasets, "require_av", no_av)
    write_image(tmp_path / "c" / "0.jpg", _rgb(0.5))
    (tmp_path / "clip.mp4").write_bytes(b"not really a video")
    with pytest.raises(BgMattingError, match=r"'clip.mp4'.*pip install av.*ffmpeg"):
        BackgroundVideoDataset(tmp_path)


def test_background_video_files_with_pyav(tmp_path):
    av = pytest.importorskip("av")
    levels = [0.1, 0.5, 0.9, 0.3]
    with av.open(str(tmp_path / "clip.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = S, S, "yuv420p"
        for v in levels:
            frame = av.VideoFrame.from_ndarray(np.full((S, S, 3), round(v * 255), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    ds = BackgroundVideoDataset(tmp_path)
    assert len(ds) == len(levels)
    for i in (3, 0, 2, 1):  # out of order: each sample seeks
        bgr = ds[i]["bgr"]
        assert bgr.shape == (3, S, S)
        assert abs(bgr.mean().item() - levels[i]) < 0.05


# ---------------------------------------------------------------------------------------------------------------
# Pairing foregrounds with backgrounds


@pytest.fixture
def pair_sets(tmp_path):
    mattes = VideoMatteDataset(_videomatte(tmp_path / "vm", {"a": 4}))
    for i in range(6):
        write_image(tmp_path / "bg" / f"{i}.png", _rgb(i / 10))
    return mattes, BackgroundImageDataset(tmp_path / "bg")


def _bgr_id(sample):
    return round(sample["bgr"].mean().item() * 10)


def test_sample_dataset_keys_and_len(pair_sets):
    ds = MattingSampleDataset(*pair_sets)
    assert len(ds) == 4
    s = ds[0]
    assert set(s) == {"fgr", "pha", "bgr"}
    assert s["fgr"].shape == (3, S, S) and s["pha"].shape == (1, S, S) and s["bgr"].shape == (3, S, S)


def test_sample_dataset_seeded_is_reproducible(pair_sets):
    ds = MattingSampleDataset(*pair_sets, transform_pair=PairAugment(8), transform_bgr=BackgroundAugment(8), seed=7)
    state = torch.get_rng_state()
    first = [ds[i] for i in range(4)]
    again = [ds[i] for i in (3, 2, 1, 0)][::-1]
    assert torch.equal(state, torch.get_rng_state())
    for a, b in zip(first, again):
        for k in a:
            assert torch.equal(a[k], b[k])
    assert first[0]["fgr"].shape == (3, 8, 8) and first[0]["bgr"].shape == (3, 8, 8)
    ids7 = [_bgr_id(MattingSampleDataset(*pair_sets, seed=7)[i]) for i in range(4)]
    ids8 = [_bgr_id(MattingSampleDataset(*pair_sets, seed=8)[i]) for i in range(4)]
    assert ids7 != ids8  # the seed matters


def test_composite_subjects_equals_compositing_one_then_the_other():
    g = torch.Generator().manual_seed(0)
    f1, f2, bgr = (torch.rand(3, 6, 6, generator=g) for _ in range(3))
    a1, a2 = (torch.rand(1, 6, 6, generator=g) for _ in range(2))
    a1[:, :2] = 0  # neither subject there: any fgr is fine
    a2[:, :2] = 0
    fgr, pha = composite_subjects(f1, a1, f2, a2)
    both = a2 * f2 + (1 - a2) * (a1 * f1 + (1 - a1) * bgr)
    assert torch.allclose(pha * fgr + (1 - pha) * bgr, both, atol=1e-5)
    assert torch.equal(pha[:, :2], torch.zeros_like(pha[:, :2]))
    with pytest.raises(ValueError, match="differ in size"):
        composite_subjects(f1, a1, f2[:, :3], a2[:, :3])


def test_sample_dataset_adds_a_second_subject(pair_sets):
    mattes, backgrounds = pair_sets
    plain = MattingSampleDataset(mattes, backgrounds, seed=7)
    extra = MattingSampleDataset(mattes, backgrounds, seed=7, extra_p=1.0)
    never = MattingSampleDataset(mattes, backgrounds, seed=7, extra_p=0.0)
    a, b, c = plain[0], extra[0], never[0]
    assert torch.equal(a["pha"], c["pha"])
    assert (b["pha"] >= a["pha"] - 1e-6).all() and not torch.equal(a["pha"], b["pha"])


def test_sample_dataset_pastes_a_subject_into_the_background(pair_sets):
    mattes, backgrounds = pair_sets
    plain = MattingSampleDataset(mattes, backgrounds, seed=7)[1]
    scene = MattingSampleDataset(mattes, backgrounds, seed=7, background_subject_p=1.0)[1]
    # the same subject and target; the background now holds another subject (a matte composited into it)
    assert torch.equal(plain["fgr"], scene["fgr"]) and torch.equal(plain["pha"], scene["pha"])
    assert not torch.equal(plain["bgr"], scene["bgr"])
    pasted = [m["pha"] * m["fgr"] + (1 - m["pha"]) * plain["bgr"] for m in (mattes[k] for k in range(len(mattes)))]
    assert any(torch.allclose(scene["bgr"], x.clamp(0, 1), atol=1e-6) for x in pasted)
    assert torch.equal(MattingSampleDataset(mattes, backgrounds, seed=7, background_subject_p=0.0)[1]["bgr"],
                       plain["bgr"])
    with pytest.raises(ValueError, match="differ in size"):
        MattingSampleDataset(mattes, backgrounds, transform_bgr=lambda b: b[:, :3, :3],
                             background_subject_p=1.0)[0]


def test_sample_dataset_unseeded_uses_global_rng(pair_sets):
    ds = MattingSampleDataset(*pair_sets)
    torch.manual_seed(0)
    a = [_bgr_id(ds[0]) for _ in range(20)]
    torch.manual_seed(0)
    assert a == [_bgr_id(ds[0]) for _ in range(20)]
    assert len(set(a)) > 1  # a fresh background each time


def test_sample_dataset_batches(pair_sets):
    ds = MattingSampleDataset(*pair_sets, transform_pair=PairAugment(8), transform_bgr=BackgroundAugment(12), seed=0)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["fgr"].shape == (2, 3, 8, 8) and batch["pha"].shape == (2, 1, 8, 8)
    assert batch["bgr"].shape == (2, 3, 12, 12)


def test_sample_dataset_empty_backgrounds(pair_sets):
    with pytest.raises(BgMattingError, match="background dataset is empty"):
        MattingSampleDataset(pair_sets[0], [])
