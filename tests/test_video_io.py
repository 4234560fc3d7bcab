"""Video reading and writing: formats with alpha, timestamps (VFR), rotation metadata, audio, atomic writes, errors."""

from __future__ import annotations

import os
import stat
import warnings
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from bgmatting import BgMattingError
from bgmatting.io import video as vio
from bgmatting.io import video_formats
from bgmatting.io.video import (
    FORMATS,
    Orientation,
    VideoReader,
    VideoWriter,
    frame_times,
    parse_time,
    plan_audio,
    probe_video,
    read_frame,
)

from helpers import needs, optional
from video_clips import H, W, frame_image, leftovers, make_cut_video, make_standing_clip, make_video, marker, streams

av = optional("av")


# --------------------------------------------------------------------------------------------- formats

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("channels", [1, 3, 4])
@needs("av")
def test_each_format_decodes_back(tmp_path, fmt, channels):
    if channels == 4 and fmt not in vio.ALPHA_FORMATS:
        with pytest.raises(BgMattingError, match="no alpha"):
            VideoWriter(tmp_path / "x.mp4", (H, W), format=fmt, channels=4)
        return
    path = tmp_path / ("out" + vio.FORMAT_SUFFIXES[fmt])
    alpha = np.tile(np.linspace(0, 255, W).astype(np.uint8)[None], (H, 1))
    with VideoWriter(path, (H, W), format=fmt, channels=channels, rate=25) as w:
        for i in range(5):
            img = frame_image(i)
            if channels == 1:
                img = img[..., 0]
            elif channels == 4:
                img = np.concatenate([img, alpha[..., None]], axis=2)
            w.write(img, pts=i)
    assert path.exists() and leftovers(tmp_path) == []
    with VideoReader(path, mode="rgba") as r:
        got = list(r)
        assert r.info.size == (H, W)
    assert len(got) == 5
    assert [marker(f.image) for f in got] == [0, 1, 2, 3, 4]
    assert np.allclose([f.time for f in got], [i / 25 for i in range(5)], atol=1e-3)
    ref = frame_image(3)
    if channels == 1:
        ref = np.repeat(ref[..., :1], 3, axis=2)
    assert np.abs(got[3].image[..., :3].astype(int) - ref).mean() < 6
    if channels == 4:  # alpha survives, roughly (lossy codecs)
        assert np.abs(got[3].image[..., 3].astype(int) - alpha).max() <= 6
    else:
        assert (got[3].image[..., 3] == 255).all()


@needs("av")
def test_prores_keeps_more_than_8_bits(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, W).astype(np.uint16)[None], (H, 1))
    img = np.stack([ramp] * 4, axis=2)
    with VideoWriter(tmp_path / "a.mov", (H, W), channels=4) as w:
        w.write(img)
    with av.open(str(tmp_path / "a.mov")) as c:
        f = next(c.decode(video=0))
        assert f.format.name.startswith("yuva444p1")
        a16 = f.to_ndarray(format="rgba64le")[..., 3].astype(int)
    assert np.abs(a16 - ramp).max() < 600  # ~10-bit or better


@needs("av")
def test_odd_size_h264_is_padded_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="even width and height"):
        w = VideoWriter(tmp_path / "odd.mp4", (47, 63))
    w.write(frame_image(0, 47, 63))
    w.close()
    assert probe_video(tmp_path / "odd.mp4").size == (48, 64)


@needs("av")
def test_writer_checks_frames_and_timestamps(tmp_path):
    w = VideoWriter(tmp_path / "a.mp4", (H, W))
    with pytest.raises(ValueError, match="does not fit"):
        w.write(np.zeros((H, W + 2, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        w.write(np.zeros((H, W, 3), np.float32))
    w.write(frame_image(0), pts=5)
    with pytest.raises(ValueError, match="pts must increase"):
        w.write(frame_image(1), pts=5)
    w.abort()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- atomic writes

@pytest.mark.parametrize("fmt", ["mp4", "png"])
@needs("av")
def test_abort_and_exceptions_leave_no_file(tmp_path, fmt):
    path = tmp_path / ("a" + vio.FORMAT_SUFFIXES[fmt])
    with pytest.raises(KeyboardInterrupt), VideoWriter(path, (H, W), format=fmt) as w:
        w.write(frame_image(0))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    # an existing output is left as it was by an aborted overwrite
    with VideoWriter(path, (H, W), format=fmt) as w:
        w.write(frame_image(0))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(RuntimeError), VideoWriter(path, (H, W), format=fmt, overwrite=True) as w:
        w.write(frame_image(1))
        w.write(frame_image(2))
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    with VideoReader(path) as r:
        assert [marker(f.image) for f in r] == [0]


@needs("av")
def test_existing_output_needs_overwrite(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"old")
    with pytest.raises(BgMattingError, match="--overwrite"):
        VideoWriter(tmp_path / "a.mp4", (H, W))
    with VideoWriter(tmp_path / "a.mp4", (H, W), overwrite=True) as w:
        w.write(frame_image(0))
    assert probe_video(tmp_path / "a.mp4").codec == "h264"
    assert leftovers(tmp_path) == []


@needs("av")
def test_empty_writer_is_not_kept(tmp_path):
    w = VideoWriter(tmp_path / "a.webm", (H, W))
    with pytest.raises(BgMattingError, match="no frame"):
        w.close()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- reading

@needs("av")
def test_frame_count_is_counted_not_trusted(tmp_path):
    path = make_video(tmp_path / "a.mp4", 14)
    with VideoReader(path) as r:
        assert r.count_frames() == 14
        assert len(list(r)) == 14
    assert len(frame_times(path)) == 14


@needs("av")
def test_frames_as_float_and_tensor(tmp_path):
    with VideoReader(make_video(tmp_path / "a.mp4", 2)) as r:
        f = next(r)
    assert f.as_float().dtype == np.float32 and f.as_float().shape == (H, W, 3) and f.as_float().max() <= 1
    t = f.as_tensor()
    assert t.shape == (1, 3, H, W) and np.allclose(t[0].permute(1, 2, 0).numpy(), f.as_float())


@needs("av")
def test_variable_frame_rate_timestamps_pass_through(tmp_path):
    pts = [0, 40, 80, 200, 240, 400, 410, 420, 700, 800]  # ms
    src = make_video(tmp_path / "vfr.mp4", pts=pts, time_base=Fraction(1, 1000))
    with VideoReader(src) as r:
        frames = list(r)
        info = r.info
    assert np.allclose([f.time for f in frames], np.array(pts) / 1000, atol=1e-4)
    out = tmp_path / "copy.webm"
    with VideoWriter(out, info.size, rate=info.rate, time_base=info.time_base) as w:
        for f in frames:
            w.write(f.image, f.pts - info.first_pts)
    with VideoReader(out) as r:
        assert np.allclose([f.time for f in r], np.array(pts) / 1000, atol=1e-3)
    assert np.allclose(frame_times(out), np.array(pts) / 1000, atol=1e-3)


@needs("av")
def test_frame_times_and_read_frame_give_random_access(tmp_path):
    pts = [0, 40, 80, 200, 240, 400, 410, 420]
    path = make_video(tmp_path / "vfr.mp4", pts=pts, time_base=Fraction(1, 1000))
    times = frame_times(path)
    assert np.allclose(times, np.array(pts) / 1000, atol=1e-4)
    assert [marker(read_frame(path, t)) for t in times[::-1]] == list(range(len(pts)))[::-1]


@needs("av")
def test_start_and_end_seek(tmp_path):
    path = make_video(tmp_path / "a.mp4", 20)
    with VideoReader(path, start=0.2, end=0.4) as r:
        got = list(r)
        assert r.count_frames() == 5
    assert [marker(f.image) for f in got] == [5, 6, 7, 8, 9]
    assert got[0].time == pytest.approx(0.2) and got[0].index == 0
    assert marker(read_frame(path, 0.52)) == 13  # first frame at or after
    with pytest.raises(BgMattingError, match="no frames between"):
        VideoReader(path, start=5.0)
    with pytest.raises(BgMattingError, match="must come after"):
        VideoReader(path, start=0.4, end=0.2)


def test_image_sequence_folder_is_a_video(tmp_path):
    seq = tmp_path / "seq"
    seq.mkdir()
    for i in (1, 2, 10, 3):  # natural order: 1, 2, 3, 10
        Image.fromarray(frame_image(i)).save(seq / f"f{i}.png")
    with VideoReader(seq, fps=10) as r:
        assert r.info.sequence and r.info.rate == 10 and r.info.size == (H, W)
        assert [marker(f.image) for f in r] == [1, 2, 3, 10]
    with VideoReader(seq, fps=10, start=0.1, end=0.3) as r:
        got = list(r)
        assert [marker(f.image) for f in got] == [2, 3] and got[0].pts == 1
    Image.fromarray(frame_image(0, 20, 20)).save(seq / "f11.png")
    with pytest.raises(BgMattingError, match="same size"):
        list(VideoReader(seq))


# --------------------------------------------------------------------------------------------- rotation

@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_orientation_from_rotation_matches_numpy(k):
    img = np.arange(6 * 4 * 3).reshape(6, 4, 3)
    o = Orientation.from_rotation(90 * k)
    assert np.array_equal(o.apply(img), np.rot90(img, k))
    assert o.size((6, 4)) == np.rot90(img, k).shape[:2]
    # the same from FFmpeg's display matrix of that counter-clockwise rotation (16.16 fixed point)
    c, s = round(np.cos(np.pi / 2 * k)), round(np.sin(np.pi / 2 * k))
    matrix = [c << 16, -s << 16, 0, s << 16, c << 16, 0, 0, 0, 1 << 30]
    assert Orientation.from_matrix(matrix) == o


def test_orientation_mirrors():
    img = np.arange(12).reshape(3, 4)
    assert np.array_equal(Orientation.from_matrix([-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30]).apply(img), img[:, ::-1])
    assert np.array_equal(Orientation.from_matrix([65536, 0, 0, 0, -65536, 0, 0, 0, 1 << 30]).apply(img), img[::-1])
    assert np.array_equal(Orientation.from_matrix([0, 65536, 0, 65536, 0, 0, 0, 0, 1 << 30]).apply(img), img.T)


@pytest.mark.parametrize("rotation,hflip", [(90, False), (-90, False), (180, False), (90, True)])
@needs("av")
def test_phone_rotation_metadata_is_honoured(tmp_path, rotation, hflip):
    if not hasattr(av.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display matrix")
    path = make_video(tmp_path / "phone.mp4", 3, rotation=rotation, hflip=hflip)
    expected = np.rot90(frame_image(1), rotation // 90)
    if hflip:
        expected = expected[:, ::-1]
    with VideoReader(path) as r:
        assert r.info.size == expected.shape[:2]
        got = list(r)[1].image
    assert np.abs(got.astype(int) - expected).mean() < 4


# --------------------------------------------------------------------------------------------- audio

@needs("av")
def test_aac_audio_is_copied_into_mp4_and_mov(tmp_path):
    src = make_video(tmp_path / "a.mp4", 12, audio="aac")
    original = streams(src)["audio"]
    for fmt, name in (("mp4", "o.mp4"), ("mov-prores4444", "o.mov")):
        plan = plan_audio(src, fmt)
        assert plan.mode == "copy" and plan.codec == "aac"
        with VideoReader(src) as r, VideoWriter(tmp_path / name, r.info.size, rate=r.info.rate,
                                                time_base=r.info.time_base, audio=plan) as w:
            for f in r:
                w.write(f.image, f.pts)
        codec, packets, end = streams(tmp_path / name)["audio"]
        assert (codec, packets) == original[:2]
        assert end == pytest.approx(original[2], abs=0.03)


@needs("av")
def test_audio_into_webm_is_transcoded_to_opus_and_png_drops_it(tmp_path):
    if not vio.has_encoder("libopus"):
        pytest.skip("no libopus encoder")
    src = make_video(tmp_path / "a.mp4", 12, audio="aac")
    with pytest.warns(UserWarning, match="re-encoded as opus"):
        plan = plan_audio(src, "webm-alpha")
    with VideoReader(src) as r, VideoWriter(tmp_path / "o.webm", r.info.size, rate=r.info.rate,
                                            time_base=r.info.time_base, audio=plan) as w:
        for f in r:
            w.write(f.image, f.pts)
    codec, packets, end = streams(tmp_path / "o.webm")["audio"]
    assert codec == "opus" and packets > 10
    assert end == pytest.approx(streams(src)["audio"][2], abs=0.05)
    with pytest.warns(UserWarning, match="PNG sequences carry no audio"):
        assert plan_audio(src, "png").mode == "none"
    assert plan_audio(make_video(tmp_path / "silent.mp4", 2), "mp4").mode == "none"


@needs("av")
def test_opus_audio_is_copied_into_webm(tmp_path):
    if not vio.has_encoder("libopus"):
        pytest.skip("no libopus encoder")
    src = make_video(tmp_path / "a.webm", 6, audio="libopus")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_audio(src, "webm-alpha")
    assert plan.mode == "copy" and plan.codec == "opus"


# --------------------------------------------------------------------------------------------- errors

@needs("av")
def test_clear_errors_for_bad_inputs(tmp_path):
    with pytest.raises(BgMattingError, match="does not exist"):
        VideoReader(tmp_path / "missing.mp4")
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(BgMattingError, match="not a video file"):
        VideoReader(tmp_path / "notes.mp4")
    Image.fromarray(frame_image(0)).save(tmp_path / "photo.png")
    with pytest.raises(BgMattingError, match="is an image"):
        VideoReader(tmp_path / "photo.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BgMattingError, match="no image"):
        VideoReader(tmp_path / "empty")
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    for name in ("zero.mp4", "noise.mp4"):
        with pytest.raises(BgMattingError, match="not a video file"):
            VideoReader(tmp_path / name)


@needs("av")
def test_a_cut_off_video_is_an_error_or_read_as_far_as_it_goes(tmp_path):
    cut = make_cut_video(tmp_path / "cut.mp4")
    with pytest.raises(BgMattingError, match=r"damaged or cut short: it ends after \d+ of its 50 frames"):
        with VideoReader(cut) as reader:
            list(reader)
    with VideoReader(cut, partial=True) as reader:
        n = len(list(reader))
        assert 0 < n < 40 and reader.damage.startswith(f"it ends after {n} of its 50 frames")
        assert reader.probe_end() == f"its frames stop at {n * 0.04:.2f} s of 2.00 s"
    with VideoReader(cut, start=0.1, end=0.3, partial=True) as reader:  # a range in the part that is there
        assert len(list(reader)) == 5 and reader.damage is None and reader.probe_end() is None
    with pytest.raises(BgMattingError, match="no frame could be read after 1.9 s"):
        VideoReader(cut, start=1.9)


@needs("av")
def test_whole_videos_are_not_taken_for_cut_ones(tmp_path):
    """Declared lengths are slightly off in ordinary files: a long last frame (VFR, GIF), B-frames, audio; and
    MPEG-TS seeks land on any packet, possibly after the last keyframe."""
    vfr = make_video(tmp_path / "vfr.mp4", 6, pts=[0, 1, 2, 3, 4, 30], time_base=Fraction(1, 25))
    gif = [Image.fromarray(frame_image(i)) for i in range(8)]
    gif[0].save(tmp_path / "e.gif", save_all=True, append_images=gif[1:], duration=[40] * 7 + [1000])
    clips = [make_video(tmp_path / "a.mp4", 12, audio="aac"), vfr, make_video(tmp_path / "b.webm", 12, audio="libopus"),
             make_video(tmp_path / "c.ts", 12), tmp_path / "e.gif"]
    for path in clips:
        for kwargs in ({}, {"start": 0.1}, {"start": 0.1, "end": 0.3}):
            with VideoReader(path, **kwargs) as reader:
                assert reader.probe_end() is None
                assert len(list(reader)) > 0 and reader.damage is None


@needs("av")
def test_a_decoding_error_stops_a_partial_reader(tmp_path):
    path = make_video(tmp_path / "a.mp4", 12)
    with pytest.raises(BgMattingError, match="cannot be decoded after"):
        with VideoReader(path) as reader:
            reader._packets = _failing(reader._packets, 5)
            list(reader)
    with VideoReader(path, partial=True) as reader:
        reader._packets = _failing(reader._packets, 5)
        frames = list(reader)
        assert 0 < len(frames) < 12 and reader.damage.startswith(f"decoding failed after {len(frames)} frames")


def _failing(packets, after: int):
    for i, p in enumerate(packets):
        if i == after:
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
        yield p


@needs("av")
def test_sample_video_seeks_to_keyframes_spread_over_the_video(tmp_path):
    path, _, _ = make_standing_clip(tmp_path / "clip.mp4", n=100, gop=10)
    frames = vio.sample_video(path, 10)
    times = [f.time for f in frames]
    assert len(frames) == 10 and times == sorted(times) and times[0] < 0.4 and times[-1] > 3.5
    assert all(abs(f.index - round(f.time * 25)) == 0 and f.image.shape == (H, W, 3) for f in frames)
    ranged = vio.sample_video(path, 4, start=1.0, end=2.0)
    assert ranged and all(1.0 <= f.time < 2.0 for f in ranged)


@pytest.mark.parametrize("preset,settings", [(None, b"subme=7"), ("ultrafast", b"subme=0"), ("veryslow", b"subme=10")])
@needs("av")
def test_h264_preset_reaches_the_encoder(tmp_path, preset, settings):
    with VideoWriter(tmp_path / "a.mp4", (H, W), rate=25, preset=preset) as wr:
        for i in range(3):
            wr.write(frame_image(i))
    assert wr.preset == (preset or "medium")
    assert settings in (tmp_path / "a.mp4").read_bytes()  # libx264 writes its settings into the stream
    assert len(list(VideoReader(tmp_path / "a.mp4"))) == 3


@needs("av")
def test_preset_is_checked_and_only_for_h264(tmp_path):
    with pytest.raises(BgMattingError, match="--preset must be one of ultrafast, .*got 'quick'"):
        VideoWriter(tmp_path / "a.mp4", (H, W), preset="quick")
    with pytest.warns(UserWarning, match="--preset has no effect with --format png"):
        assert vio.check_preset("png", "fast") is None
    assert vio.check_preset("webm-alpha", None) is None and vio.check_preset("mp4", "fast") == "fast"
    assert list(tmp_path.iterdir()) == []


@needs("av")
def test_clear_errors_for_bad_formats(tmp_path, monkeypatch):
    with pytest.raises(BgMattingError, match="unknown video format 'avi'"):
        VideoWriter(tmp_path / "a.avi", (H, W), format="avi")
    with pytest.raises(BgMattingError, match="writes '.webm' files"):
        VideoWriter(tmp_path / "a.mp4", (H, W), format="webm-alpha")
    with pytest.raises(BgMattingError, match="--crf for mp4"):
        VideoWriter(tmp_path / "a.mp4", (H, W), crf=99)
    monkeypatch.setattr(video_formats, "has_encoder", lambda name: name != "prores_ks")
    with pytest.raises(BgMattingError, match="no 'prores_ks' encoder.*--format mp4"):
        VideoWriter(tmp_path / "a.mov", (H, W))
    assert "mov-prores4444" not in vio.available_formats()
    assert list(tmp_path.iterdir()) == []


def test_missing_pyav_is_explained(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "av":
            raise ImportError("no av")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(BgMattingError, match="pip install av"):
        vio.require_av()


@pytest.mark.parametrize("text,seconds", [("12.5", 12.5), ("1:02.5", 62.5), ("01:02:03", 3723.0), (".5", 0.5),
                                          (3, 3.0), (None, None)])
def test_parse_time(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["abc", "-1", "1:2:3:4"])
def test_parse_time_rejects(text):
    with pytest.raises(BgMattingError, match="time"):
        parse_time(text)


@needs("av")
def test_written_videos_and_frame_folders_have_ordinary_permissions(tmp_path):
    """Their temporary files come from ``tempfile`` (mode 0600 / 0700); what appears has the umask's modes."""
    old = os.umask(0o027)
    try:
        for fmt, name in (("mp4", "v.mp4"), ("png", "frames")):
            with VideoWriter(tmp_path / name, (H, W), format=fmt, channels=3, rate=25) as w:
                w.write(frame_image(0), pts=0)
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == (0o640 if fmt == "mp4" else 0o750)
    finally:
        os.umask(old)
