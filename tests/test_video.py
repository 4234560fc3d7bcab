"""`convert_video`: outputs and formats, timing and audio, backgrounds, interrupts, bounded queues, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bgmatting import BgMattingError, Matter, MattingRefine
from bgmatting import video as vmod
from bgmatting.cli import main
from bgmatting.io import video_formats as vio
from bgmatting.io.video import VideoReader, VideoWriter
from bgmatting.outputs import output_image
from bgmatting.results import TENSOR_OUTPUTS
from bgmatting.tensors import tensor_to_uint
from bgmatting.video import VideoReport, convert_video, plan_video_outputs
from bgmatting.workers import ModelWorkers

from helpers import needs, optional, randomize_
from video_clips import (
    H,
    W,
    background_image,
    frame_image,
    leftovers,
    make_cut_video,
    make_standing_clip,
    make_video,
    marker,
    streams,
)

av = optional("av")


class StubMatter:
    """Alpha = 1 where the source differs from the background, else 0; records the batches it saw."""

    device = torch.device("cpu")

    def __init__(self, fail_at: int | None = None, exc: type[BaseException] = KeyboardInterrupt, delay: float = 0.0):
        self.batches: list[int] = []
        self.fail_at, self.exc, self.delay = fail_at, exc, delay
        self.calls, self.calls_lock = 0, threading.Lock()  # counted under a lock: parallel workers share the stub

    def forward_tensors(self, src, bgr):
        assert src.shape == bgr.shape and src.dtype == torch.float32 and 0 <= src.min() and src.max() <= 1
        with self.calls_lock:
            call, self.calls = self.calls, self.calls + 1
        if call == self.fail_at:  # exactly one call fails, however the workers interleave
            raise self.exc()
        time.sleep(self.delay)
        self.batches.append(src.shape[0])
        diff = (src - bgr).abs().mean(1, keepdim=True)
        pha = (diff > 0.15).float()
        return {"pha": pha, "fgr": src, "err": diff.clamp(0, 1), "ref": torch.zeros_like(pha)}


def expected_alpha(i: int) -> np.ndarray:
    """The stub's alpha for frame ``i`` of :func:`frame_image` over :func:`background_image` (the box)."""
    a = np.zeros((H, W), np.uint8)
    a[14:34, 20 + 2 * i:34 + 2 * i] = 255
    if i > 0:
        a[:8, :8] = 255 if 20 * i > 40 else a[:8, :8]
    return a


def read_all(path: Path, mode: str = "rgba") -> list:
    with VideoReader(path, mode=mode) as r:
        return list(r)


@pytest.fixture
def clip(tmp_path):
    """12 frames at 25 fps with AAC audio, and the background still."""
    src = make_video(tmp_path / "clip.mp4", 12, audio="aac")
    Image.fromarray(background_image()).save(tmp_path / "plate.png")
    return src, tmp_path / "plate.png"


def box_error(image: np.ndarray, i: int) -> float:
    """Mean absolute error of a decoded alpha against the box of frame ``i`` (marker corner excluded)."""
    a = image.astype(int)
    exp = expected_alpha(i).astype(int)
    return float(np.abs(a[8:] - exp[8:]).mean())


# --------------------------------------------------------------------------------------------- outputs

@needs("av")
def test_every_output_as_mp4_keeps_frames_timing_and_audio(clip, tmp_path):
    src, plate = clip
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="composited over #00ff00"):
        report = convert_video(StubMatter(), src, plate, out, outputs="com,pha,fgr,err,ref", batch=5, progress=False)
    assert isinstance(report, VideoReport) and report.frames == 12 and report.format == "mp4"
    assert set(report.outputs) == {"com", "pha", "fgr", "err", "ref"}
    assert sorted(p.name for p in out.iterdir()) == ["com.mp4", "err.mp4", "fgr.mp4", "pha.mp4", "ref.mp4"]
    times = [f.time for f in read_all(src)]
    for path in report.outputs.values():
        frames = read_all(path)
        assert len(frames) == 12 and frames[0].image.shape == (H, W, 4)
        assert np.allclose([f.time for f in frames], times, atol=1e-3)
    assert box_error(read_all(out / "pha.mp4", "gray")[5].image, 5) < 8
    com = read_all(out / "com.mp4", "rgb")[5].image.astype(int)
    assert np.abs(com[40, 2] - [0, 255, 0]).max() < 12  # background replaced by green
    assert np.abs(com[20, 35] - 255).max() < 12  # the box kept
    assert report.audio == "copied (aac)"
    assert streams(out / "com.mp4")["audio"][:2] == streams(src)["audio"][:2]
    assert "audio" in streams(out / "fgr.mp4") and "audio" not in streams(out / "pha.mp4")
    assert leftovers(out) == []


@pytest.mark.parametrize("fmt", ["mov-prores4444", "webm-alpha", "png"])
@needs("av")
def test_alpha_formats_keep_transparency(clip, tmp_path, fmt):
    src, plate = clip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # audio notices (webm transcodes, png drops)
        report = convert_video(StubMatter(), src, plate, tmp_path / "out", outputs=["com", "pha"], format=fmt,
                               progress=False)
    com = report.outputs["com"]
    assert com == tmp_path / "out" / ("com" + vio.FORMAT_SUFFIXES[fmt])
    frames = read_all(com)
    assert len(frames) == 12
    for i, f in enumerate(frames):  # the box moves frame by frame: each frame in its place
        assert box_error(f.image[..., 3], i) < 8
    rgb, alpha = frames[7].image[..., :3].astype(int), frames[7].image[..., 3]
    assert rgb[alpha == 0].max() < 8  # no colour where fully transparent
    assert np.abs(rgb - frame_image(7))[alpha == 255].mean() < 8  # the subject keeps its colour
    if fmt != "png":
        assert streams(com)["audio"][0] == ("aac" if fmt == "mov-prores4444" else "opus")


@needs("av")
def test_one_output_into_a_named_file_with_a_progress_bar(clip, tmp_path, capsys):
    src, plate = clip
    report = convert_video(StubMatter(), src, plate, tmp_path / "alpha.webm", outputs="pha")
    assert report.outputs == {"pha": tmp_path / "alpha.webm"} and report.format == "webm-alpha"
    assert len(read_all(tmp_path / "alpha.webm")) == 12
    assert "12/12" in capsys.readouterr().err  # tqdm: frames done / estimated total


def test_output_rule():
    assert plan_video_outputs("o", ["com", "pha"]) == ("mp4", {"com": Path("o/com.mp4"), "pha": Path("o/pha.mp4")})
    assert plan_video_outputs("o", ["com"], "png") == ("png", {"com": Path("o/com")})
    assert plan_video_outputs("x.mov", ["com"]) == ("mov-prores4444", {"com": Path("x.mov")})
    with pytest.raises(BgMattingError, match="give an output folder"):
        plan_video_outputs("x.mp4", ["com", "pha"])
    with pytest.raises(BgMattingError, match="does not write '.mp4'"):
        plan_video_outputs("x.mp4", ["com"], "webm-alpha")
    with pytest.raises(BgMattingError, match="cannot write '.avi'"):
        plan_video_outputs("x.avi", ["com"])
    with pytest.raises(BgMattingError, match="unknown video format"):
        plan_video_outputs("o", ["com"], "gif")


@needs("av")
def test_real_model_runs_with_a_partial_last_batch(clip, tmp_path):
    src, plate = clip
    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=320))
    matter = Matter(model, device="cpu")
    report = convert_video(matter, src, plate, tmp_path / "pha.mp4", outputs="pha", batch=5, end=0.32,
                           progress=False)
    assert report.frames == 8
    assert len(read_all(tmp_path / "pha.mp4")) == 8


@needs("av")
def test_a_real_matter_makes_only_the_outputs_written(clip, tmp_path, monkeypatch):
    src, plate = clip
    matter = Matter(randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=320)), device="cpu")
    asked, forward = [], matter.forward_tensors

    def spy(s, b, outputs=TENSOR_OUTPUTS):
        asked.append(set(outputs))
        return forward(s, b, outputs=outputs)

    monkeypatch.setattr(matter, "forward_tensors", spy)
    convert_video(matter, src, plate, tmp_path / "out", outputs="com,err", target_bgr="#0000ff", end=0.16,
                  progress=False)
    assert asked and all(a == {"pha", "fgr", "err"} for a in asked)
    assert len(read_all(tmp_path / "out" / "err.mp4")) == len(read_all(tmp_path / "out" / "com.mp4")) == 4


# --------------------------------------------------------------------------------------------- timing & audio

@needs("av")
def test_variable_frame_rate_and_trimming(tmp_path):
    pts = [0, 40, 80, 200, 240, 400, 410, 420, 700, 800, 840, 1000]  # ms
    src = make_video(tmp_path / "vfr.mp4", pts=pts, time_base=Fraction(1, 1000), audio="aac", audio_seconds=1.2)
    plate = tmp_path / "plate.png"
    Image.fromarray(background_image()).save(plate)
    report = convert_video(StubMatter(), src, plate, tmp_path / "full", outputs="fgr", progress=False)
    assert np.allclose([f.time for f in read_all(report.outputs["fgr"])], np.array(pts) / 1000, atol=1e-3)
    # --start/--end: frames in [0.2, 0.75), shifted to start at 0; the audio follows
    report = convert_video(StubMatter(), src, plate, tmp_path / "cut", outputs="fgr", start="0.2", end=0.75,
                           progress=False)
    frames = read_all(report.outputs["fgr"])
    assert [marker(f.image) for f in frames] == [3, 4, 5, 6, 7, 8]
    assert np.allclose([f.time for f in frames], np.array([200, 240, 400, 410, 420, 700]) / 1000 - 0.2, atol=1e-3)
    codec, _, end = streams(report.outputs["fgr"])["audio"]
    assert codec == "aac" and end == pytest.approx(0.55, abs=0.07)


@needs("av")
def test_rotated_phone_video_comes_out_upright(tmp_path):
    if not hasattr(av.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display matrix")
    src = make_video(tmp_path / "phone.mp4", 4, rotation=-90)
    plate = tmp_path / "plate.png"
    Image.fromarray(np.rot90(background_image(), -1).copy()).save(plate)  # the background shot upright too
    report = convert_video(StubMatter(), src, plate, tmp_path / "pha.mp4", outputs="pha", progress=False)
    assert report.size == (W, H)
    frames = read_all(report.outputs["pha"], "gray")
    assert frames[0].image.shape == (W, H)
    assert np.abs(frames[2].image.astype(int) - np.rot90(expected_alpha(2), -1))[:, :-8].mean() < 8


# --------------------------------------------------------------------------------------------- backgrounds

@needs("av")
def test_background_video_is_matched_frame_by_frame(tmp_path):
    src = make_video(tmp_path / "clip.mp4", 10)
    # the "empty scene" video holds the source frames themselves, so alpha must be 0 everywhere
    bgr = make_video(tmp_path / "empty.mp4", 10)
    report = convert_video(StubMatter(), src, bgr, tmp_path / "pha.mp4", outputs="pha", progress=False)
    assert report.background == "video, frame by frame"
    assert max(f.image.max() for f in read_all(tmp_path / "pha.mp4", "gray")) < 30


@needs("av")
def test_shorter_background_video_becomes_its_median(tmp_path):
    src = make_video(tmp_path / "clip.mp4", 10)
    bgr = make_video(tmp_path / "empty.mp4", 3, frames=[background_image()] * 2 + [frame_image(9)])
    with pytest.warns(UserWarning, match="median"):
        report = convert_video(StubMatter(), src, bgr, tmp_path / "pha.mp4", outputs="pha", progress=False)
    assert report.background.startswith("median") and any("median" in n for n in report.notes)
    frames = read_all(tmp_path / "pha.mp4", "gray")
    assert len(frames) == 10 and box_error(frames[4].image, 4) < 8


@needs("av")
def test_background_of_another_size_is_resized_but_another_view_refused(clip, tmp_path):
    src, _ = clip
    Image.fromarray(background_image()).resize((W * 2, H * 2)).save(tmp_path / "big.png")
    with pytest.warns(UserWarning, match="background 128x96 is resized to the source size 64x48"):
        report = convert_video(StubMatter(), src, tmp_path / "big.png", tmp_path / "pha.mp4", outputs="pha",
                               progress=False)
    assert box_error(read_all(report.outputs["pha"], "gray")[3].image, 3) < 10
    Image.fromarray(background_image()[:, :40]).save(tmp_path / "narrow.png")
    with pytest.raises(BgMattingError, match="same view"):
        convert_video(StubMatter(), src, tmp_path / "narrow.png", tmp_path / "x", progress=False)


@pytest.mark.parametrize("kind", ["colour", "image", "video"])
@needs("av")
def test_target_background(clip, tmp_path, kind):
    src, plate = clip
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 0] = 255
    if kind == "colour":
        target = "#ff0000"
    elif kind == "image":
        target = tmp_path / "red.png"
        Image.fromarray(red).save(target)
    else:  # 3 frames of red: looped over the 12 frames of the source
        target = make_video(tmp_path / "red.mp4", 3, frames=[red] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "composited over green" notice
        report = convert_video(StubMatter(), src, plate, tmp_path / "com.webm", target_bgr=target, progress=False,
                               audio=False)
    frames = read_all(report.outputs["com"])
    assert len(frames) == 12
    for f in (frames[1], frames[11]):
        assert np.abs(f.image[40, 2].astype(int) - [255, 0, 0, 255]).max() < 20  # opaque red background
        assert np.abs(f.image[20, 27 + 2 * f.index].astype(int) - 255).max() < 20  # the white box kept


@needs("av")
def test_bgr_transform_hook_sees_every_frame(clip, tmp_path):
    src, plate = clip
    seen = []

    def align(bgr, frame):
        assert bgr.shape == frame.shape == (H, W, 3) and bgr.dtype == frame.dtype == np.uint8
        seen.append(marker(frame))
        return frame  # the "aligned" background equals the frame: nothing is foreground

    convert_video(StubMatter(), src, plate, tmp_path / "pha.mp4", outputs="pha", bgr_transform=align,
                  progress=False)
    assert seen == list(range(12))
    assert max(f.image.max() for f in read_all(tmp_path / "pha.mp4", "gray")) < 30


# --------------------------------------------------------------------------------------------- interrupts & safety

@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
@needs("av")
def test_interrupted_run_leaves_no_file(clip, tmp_path, exc):
    src, plate = clip
    out = tmp_path / "out"
    with pytest.raises(exc):
        convert_video(StubMatter(fail_at=1, exc=exc), src, plate, out, outputs="com,pha", batch=2, progress=False,
                      format="webm-alpha", audio=False)
    assert not out.exists()  # the folder made for the outputs goes with them
    # with --overwrite, an interrupted run leaves the previous outputs as they were
    convert_video(StubMatter(), src, plate, out, outputs="com,pha", format="webm-alpha", progress=False, audio=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(exc):
        convert_video(StubMatter(fail_at=2, exc=exc), src, plate, out, outputs="com,pha", batch=2, overwrite=True,
                      format="webm-alpha", progress=False, audio=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [t for t in threading.enumerate() if t.name.startswith("bgmatting-")]


@needs("av")
def test_ctrl_c_in_a_real_process_leaves_no_file(clip, tmp_path):
    """SIGINT lands wherever the main thread is (model, queues); the outputs of the run are deleted."""
    src = make_video(tmp_path / "long.mp4", 40)
    plate = clip[1]
    out = tmp_path / "out"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import signal, sys, time, torch
        from bgmatting.video import convert_video

        # as in a shell's foreground job (a background job, e.g. CI started with '&', inherits SIGINT ignored)
        signal.signal(signal.SIGINT, signal.default_int_handler)

        class Slow:
            device = torch.device("cpu")
            calls = 0

            def forward_tensors(self, s, b):
                Slow.calls += 1
                if Slow.calls == 3:
                    print("matting", flush=True)
                time.sleep(0.05)
                pha = torch.full_like(s[:, :1], 0.5)
                return {{"pha": pha, "fgr": s, "err": pha, "ref": pha}}

        try:
            convert_video(Slow(), {str(src)!r}, {str(plate)!r}, {str(out)!r}, outputs="com,pha", batch=1,
                          format="webm-alpha", progress=False)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
        print("finished", flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().strip() == "matting"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, (stdout, stderr)
    assert stdout.strip() == "interrupted"
    assert not out.exists()


@needs("av")
def test_writer_failure_stops_the_run(clip, tmp_path, monkeypatch):
    src, plate = clip

    def broken(self, image, pts=None):
        raise BgMattingError("disk full")

    monkeypatch.setattr(VideoWriter, "write", broken)
    with pytest.raises(BgMattingError, match="disk full"):
        convert_video(StubMatter(), src, plate, tmp_path / "out", outputs="pha", progress=False)
    assert not (tmp_path / "out").exists()


@needs("av")
def test_existing_outputs_and_inputs_are_protected(clip, tmp_path):
    src, plate = clip
    out = tmp_path / "out"
    out.mkdir()
    (out / "pha.mp4").write_bytes(b"keep")
    with pytest.raises(BgMattingError, match="pass --overwrite"):
        convert_video(StubMatter(), src, plate, out, outputs="com,pha", progress=False)
    assert (out / "pha.mp4").read_bytes() == b"keep" and not (out / "com.mp4").exists()
    with pytest.raises(BgMattingError, match="would overwrite an input"):
        convert_video(StubMatter(), src, plate, src, outputs="com", overwrite=True, progress=False)


@needs("av")
def test_queues_are_bounded(tmp_path, monkeypatch):
    """The reader and the writer never run more than their queues ahead of the model, whatever the length."""
    src = make_video(tmp_path / "long.mp4", 40)
    plate = tmp_path / "plate.png"
    Image.fromarray(background_image()).save(plate)
    batch = 2
    state = {"read": 0, "matted": 0, "written": 0, "ahead": 0, "behind": 0}
    matter = StubMatter(delay=0.01)
    forward = matter.forward_tensors

    def counting_forward(s, b):
        state["ahead"] = max(state["ahead"], state["read"] - state["matted"])
        out = forward(s, b)
        state["matted"] += s.shape[0]
        return out

    def count_read(bgr, frame):
        state["read"] += 1
        return bgr

    real_write = VideoWriter.write

    def slow_write(self, image, pts=None):
        state["behind"] = max(state["behind"], state["matted"] - state["written"])
        time.sleep(0.005)
        real_write(self, image, pts)
        state["written"] += 1

    monkeypatch.setattr(VideoWriter, "write", slow_write)
    matter.forward_tensors = counting_forward
    convert_video(matter, src, plate, tmp_path / "pha.mp4", outputs="pha", batch=batch, bgr_transform=count_read,
                  progress=False)
    assert state["written"] == state["matted"] == 40
    # queue + the frame in the reader's hand + the batch being gathered
    assert state["ahead"] <= vmod.QUEUE_BATCHES * batch + 1 + batch
    # queue + the batch in the writer's hand + the batch just matted
    assert state["behind"] <= (vmod.QUEUE_BATCHES + 2) * batch


# --------------------------------------------------------------------------------------------- errors

@needs("av")
def test_every_check_happens_before_the_model_is_made(clip, tmp_path):
    src, plate = clip

    def no_model():
        raise AssertionError("the model must not be made when the arguments are wrong")

    (tmp_path / "text.mp4").write_text("hello")
    cases = [
        ({"src": tmp_path / "missing.mp4"}, "does not exist"),
        ({"src": tmp_path / "text.mp4"}, "not a video file"),
        ({"src": plate}, "is an image"),
        ({"bgr": tmp_path / "nope.png"}, "background .* does not exist"),
        ({"outputs": "com,alpha"}, "unknown video output"),
        ({"format": "avi"}, "unknown video format"),
        ({"crf": 80}, "--crf"),
        ({"batch": 0}, "batch"),
        ({"start": 1.0, "end": 0.5}, "must come after"),
        ({"start": 9.0}, "no frames between"),
        ({"target_bgr": tmp_path / "missing.jpg"}, "does not exist"),
        ({"target_bgr": "#12"}, "not a colour"),
    ]
    for kwargs, message in cases:
        args = {"src": src, "bgr": plate, "out": tmp_path / "out"}
        args.update(kwargs)
        with pytest.raises(BgMattingError, match=message):
            convert_video(no_model, args.pop("src"), args.pop("bgr"), args.pop("out"), progress=False, **args)
    assert not (tmp_path / "out").exists()


@needs("av")
def test_missing_encoder_is_reported_before_matting(clip, tmp_path, monkeypatch):
    src, plate = clip
    monkeypatch.setattr(vio, "has_encoder", lambda name: name != "libvpx-vp9")
    with pytest.raises(BgMattingError, match="no 'libvpx-vp9' encoder"):
        convert_video(lambda: pytest.fail("model made"), src, plate, tmp_path / "a.webm", progress=False)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("high_bit", [False, True])
def test_to_numpy_rounds_into_contiguous_rows_and_leaves_its_input(channels, high_bit):
    x = torch.tensor([-0.5, 0.0, 0.2, 1 / 510, 0.5, 1.0, 1.5]).repeat(2, channels, 3, 1)  # (2, C, 3, 7)
    x[:, -1] += 0.25
    before = x.clone()
    got = tensor_to_uint(x, high_bit)
    top = 65535 if high_bit else 255
    want = np.rint(np.clip(before.permute(0, 2, 3, 1).numpy(), 0, 1) * top)
    assert got.dtype == (np.uint16 if high_bit else np.uint8) and got.flags.c_contiguous
    assert got.shape == (2, 3, 7, channels) and np.array_equal(got, want)
    assert torch.equal(x, before)


def test_composite_output_is_alpha_blend():
    gen = torch.Generator().manual_seed(0)
    res = {"pha": torch.rand(2, 1, 5, 6, generator=gen), "fgr": torch.rand(2, 3, 5, 6, generator=gen)}
    for target in (torch.rand(2, 3, 5, 6, generator=gen), torch.tensor([0.0, 1.0, 0.5]).view(1, 3, 1, 1)):
        want = res["pha"] * res["fgr"] + (1 - res["pha"]) * target
        got = output_image("com", res, target)
        assert got.shape == (2, 3, 5, 6) and float((got - want).abs().max()) < 1e-6
    assert torch.equal(output_image("com", res, None), torch.cat([res["fgr"], res["pha"]], dim=1))


class JitteryMatter(StubMatter):
    """The stub, thread-safe: its first ``workers`` calls wait for each other (they must run at the same time),
    and the later ones take a different time per batch, so that later batches can finish first."""

    def __init__(self, workers: int):
        super().__init__()
        self.lock, self.threads = threading.Lock(), set()
        self.together = threading.Barrier(workers, timeout=20)

    def forward_tensors(self, src, bgr):
        with self.lock:
            self.threads.add(threading.get_ident())
            n = len(self.batches)
            self.batches.append(src.shape[0])
        if n < self.together.parties:
            self.together.wait()  # BrokenBarrierError unless the calls overlap
        time.sleep(0.03 if n % 2 == 0 else 0.0)
        return StubMatter().forward_tensors(src, bgr)


@needs("av")
def test_parallel_workers_keep_the_frame_order_and_the_thread_count(clip, tmp_path):
    src, plate = clip
    threads_before = torch.get_num_threads()
    one = convert_video(StubMatter(), src, plate, tmp_path / "one", outputs="pha", format="png", batch=2,
                        progress=False)
    stub = JitteryMatter(workers=3)
    three = convert_video(stub, src, plate, tmp_path / "three", outputs="pha", format="png", batch=2, workers=3,
                          progress=False)
    assert one.frames == three.frames == 12 and len(stub.threads) == 3
    for a, b in zip(read_all(tmp_path / "one" / "pha", "gray"), read_all(tmp_path / "three" / "pha", "gray")):
        assert np.array_equal(a.image, b.image)  # lossless frames, in the source's order
    assert torch.get_num_threads() == threads_before
    with pytest.raises(KeyboardInterrupt):  # an error in one worker stops the run and leaves nothing
        convert_video(StubMatter(fail_at=3), src, plate, tmp_path / "broken", outputs="pha", format="png", batch=2,
                      workers=2, progress=False)
    assert not (tmp_path / "broken").exists() and torch.get_num_threads() == threads_before


@needs("av")
def test_a_real_matter_on_the_cpu_gets_two_workers_with_the_same_result(clip, tmp_path, monkeypatch):
    src, plate = clip
    matter = Matter(randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=320)), device="cpu")
    seen = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # a 4-thread machine
    real_set = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real_set(min(n, 2))))
    assert ModelWorkers(None, matter, torch.device("cpu")).workers == 2
    assert ModelWorkers(None, StubMatter(), torch.device("cpu")).workers == 1  # not known to be thread-safe
    assert ModelWorkers(None, matter, torch.device("cuda")).workers == 1
    with pytest.raises(BgMattingError, match="--workers 2: parallel model calls are for the CPU"):
        ModelWorkers(2, matter, torch.device("cuda"))
    for w in (1, None):
        convert_video(matter, src, plate, tmp_path / f"w{w}", outputs="pha", format="png", workers=w, end=0.32,
                      progress=False)
    assert seen == [2, 4]  # 4 threads shared by 2 workers, then given back
    for a, b in zip(read_all(tmp_path / "w1" / "pha", "gray"), read_all(tmp_path / "wNone" / "pha", "gray")):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1  # float rounding of 1 vs 2 threads
    with pytest.raises(BgMattingError, match="workers must be a positive integer"):
        convert_video(matter, src, plate, tmp_path / "x", workers=0, progress=False)


@needs("av")
def test_default_batch_on_the_cpu_is_one_frame(clip, tmp_path):
    src, plate = clip
    stub = StubMatter()
    convert_video(stub, src, plate, tmp_path / "pha.mp4", outputs="pha", progress=False)
    assert stub.batches == [1] * 12
    with pytest.raises(BgMattingError, match="batch must be a positive integer"):
        convert_video(stub, src, plate, tmp_path / "x.mp4", outputs="pha", batch=0, progress=False)


# --------------------------------------------------------------------------------------------- hostile input

def _plate_64(path: Path) -> Path:
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)
    return path


def _cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bgmatting", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@needs("av")
def test_a_cut_off_source_is_an_error_unless_kept(tmp_path):
    cut, plate = make_cut_video(tmp_path / "cut.mp4"), _plate_64(tmp_path / "plate.png")
    out = tmp_path / "out" / "deep" / "pha.mp4"
    with pytest.raises(BgMattingError, match="cut.mp4' is damaged or cut short: .*pass --keep-partial"):
        convert_video(lambda: pytest.fail("model made"), cut, plate, out, outputs="pha", progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    with pytest.warns(UserWarning, match=r"cut short: it ends after (\d+) of its 50 frames .*hold the \1 frames"):
        report = convert_video(StubMatter(), cut, plate, out, outputs="pha", keep_partial=True, check_bgr=False,
                               progress=False)
    assert 0 < report.frames < 40 and len(read_all(out, "gray")) == report.frames
    assert any("of its 50 frames" in note for note in report.notes) and leftovers(out.parent) == []


@needs("av")
def test_damage_found_when_the_stream_ends_removes_what_was_written(tmp_path, monkeypatch):
    cut, plate = make_cut_video(tmp_path / "cut.mp4"), _plate_64(tmp_path / "plate.png")
    monkeypatch.setattr(VideoReader, "probe_end", lambda self: None)  # the quick look misses it
    stub = StubMatter()
    with pytest.raises(BgMattingError, match=r"ends after \d+ of its 50 frames .*nothing was written.*--keep-partial"):
        convert_video(stub, cut, plate, tmp_path / "out" / "x", outputs="com,pha", format="png", check_bgr=False,
                      progress=False)
    assert sum(stub.batches) > 0  # it was matted, then deleted
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@needs("av")
@pytest.mark.slow
def test_cli_reports_damaged_and_garbage_sources_in_one_line(tmp_path, tiny_weights):
    cut, plate = make_cut_video(tmp_path / "cut.mp4"), _plate_64(tmp_path / "plate.png")
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(1).bytes(30_000))
    (tmp_path / "text.mp4").write_text("these are notes, not a video\n")
    for name, message in [("cut.mp4", "damaged or cut short"), ("zero.mp4", "not a video file"),
                          ("noise.mp4", "not a video file"), ("text.mp4", "not a video file")]:
        proc = _cli("video", tmp_path / name, "--bgr", plate, "-o", tmp_path / "out" / "deep" / "x.mp4",
                    "--weights", tiny_weights, "--device", "cpu", "-q")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("bgmatting: error: ") and message in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1
        assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    out = tmp_path / "kept" / "x.mp4"
    proc = _cli("video", cut, "--bgr", plate, "-o", out, "--outputs", "pha", "--weights", tiny_weights, "--device",
                "cpu", "--no-bgr-check", "--keep-partial", "-q")
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "cut short" in line]
    assert len(warned) == 1 and warned[0].startswith("bgmatting: warning: ") and "of its 50 frames" in warned[0]
    n = int(warned[0].split("it ends after ")[1].split()[0])
    assert len(read_all(out, "gray")) == n and leftovers(out.parent) == []


@needs("av")
def test_failed_checks_leave_no_output_folder(tmp_path, tiny_weights, capsys):
    src, plate = make_video(tmp_path / "clip.mp4", 4), tmp_path / "plate.png"
    Image.fromarray(background_image()).save(plate)
    out = tmp_path / "out" / "deep"
    for bad in (["--device", "nonsense"], ["--precision", "fp16", "--device", "cpu", "--backend", "graph"],
                ["--weights", plate], ["--target-bgr", "#zz0000"]):
        assert main(["video", str(src), "--bgr", str(plate), "-o", str(out), "--format", "png", "-q", "--weights",
                     tiny_weights, *map(str, bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bgmatting: error: ") and err.count("\n") == 1, err
        assert not (tmp_path / "out").exists()


@needs("av")
def test_sigterm_removes_the_outputs_and_exits_143(tmp_path, tiny_weights):
    """`timeout`, a container stop or a job scheduler send SIGTERM: the run cleans up as for Ctrl-C."""
    src, plate = make_video(tmp_path / "long.mp4", 300), tmp_path / "plate.png"
    Image.fromarray(background_image()).save(plate)
    out = tmp_path / "out" / "deep"
    proc = subprocess.Popen([sys.executable, "-m", "bgmatting", "video", str(src), "--bgr", str(plate), "-o",
                             str(out), "--outputs", "com,pha", "--weights", tiny_weights, "--device", "cpu",
                             "--no-bgr-check", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out.exists() and any(".tmp" in p.name for p in out.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("bgmatting: terminated") and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


class PlateStub(StubMatter):
    """A stub that also estimates plates: ``matter(src, bgr).pha`` as the stub's alpha (numpy, any size)."""

    def __call__(self, src, bgr):
        from types import SimpleNamespace

        return SimpleNamespace(pha=(np.abs(src - bgr).mean(axis=2) > 0.15).astype(np.float32))


@needs("av")
def test_auto_background_looks_beyond_the_range(tmp_path):
    """Over 0-1.6 s the subject stands still (it would be part of a plate made from the range alone); it walks
    off later, so the plate made from the whole video shows the empty place and the subject is matted there."""
    pytest.importorskip("cv2")
    src, bg, place = make_standing_clip(tmp_path / "clip.mp4")
    out = tmp_path / "pha.mp4"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert_video(PlateStub(), src, "auto", out, outputs="pha", start=0.0, end=1.6, progress=False)
    assert not [w for w in caught if "changed across" in str(w.message)]
    frames = read_all(out, "gray")
    assert len(frames) == 40
    assert all(f.image[place].mean() > 200 for f in frames)  # the standing subject is matted
    assert all(f.image[40:].mean() < 30 for f in frames)  # and the floor is not
