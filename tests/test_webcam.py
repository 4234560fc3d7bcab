"""Live matting, headless: a video file as the camera, simulated keys, composites after `b`, fps text, errors."""

from __future__ import annotations

import numpy as np
import pytest

from bgmatting import BgMattingError, Matter, MattingRefine
from bgmatting.results import MatteResult
from bgmatting.webcam import HINT, WebcamSession, parse_camera, parse_size, run

from helpers import needs, optional

cv2 = optional("cv2")

H, W, N = 48, 64, 10
EMPTY = 3  # frames before the subject walks in


def scene(t: int) -> np.ndarray:
    """uint8 RGB frame ``t``: a soft gradient; from frame ``EMPTY`` on, a red square that moves right."""
    yy, xx = np.mgrid[:H, :W]
    img = np.stack([40 + xx, 90 + yy, 140 + 0 * xx], axis=2).astype(np.uint8)
    if t >= EMPTY:
        x = 8 + 4 * t
        img[12:36, x:x + 16] = (220, 30, 30)
    return img


@pytest.fixture(scope="module")
def camera_file(tmp_path_factory):
    """A tiny MJPG video written with OpenCV, used as the camera."""
    path = tmp_path_factory.mktemp("webcam") / "camera.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    assert writer.isOpened()
    for t in range(N):
        writer.write(cv2.cvtColor(scene(t), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


class StubMatter:
    """Alpha 1 where the frame differs clearly from the background; the foreground is the frame."""

    def __init__(self):
        self.calls = 0

    def __call__(self, src, bgr):
        self.calls += 1
        src = src.astype(np.float32) / 255 if src.dtype == np.uint8 else src
        pha = (np.abs(src - bgr).max(axis=2) > 0.25).astype(np.float32)
        return MatteResult(pha=pha, fgr=src, err=np.zeros_like(pha), ref=np.zeros_like(pha))


@needs("cv2")
def test_headless_session_with_keys(camera_file):
    stub = StubMatter()
    shown = []
    session = run(camera_file, lambda: stub, target="#0000ff", display=False, keys={1: "b"}, on_frame=shown.append)
    assert session.frames == N and len(shown) == N
    assert session.composites == N - 2 == stub.calls  # frames 2.. are composites (b pressed after frame 1)
    assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in shown)
    # before the background: the raw frame with the hint drawn at the bottom
    raw = scene(0)
    middle = slice(18, 28)  # between the fps (top) and the hint (bottom)
    assert np.abs(shown[0][middle].astype(int) - raw[middle]).mean() < 3  # MJPG is lossy
    assert np.abs(shown[0][H - 14:].astype(int) - raw[H - 14:]).max() > 100  # the hint
    assert np.abs(shown[0][:14].astype(int) - raw[:14]).max() > 100  # the fps
    # after: background replaced by blue, the red subject kept
    last = shown[-1]
    x = 8 + 4 * (N - 1)
    assert np.abs(last[15:33, x + 2:x + 14].astype(int) - (220, 30, 30)).mean() < 25
    assert np.abs(last[15:33, 0:x - 4].astype(int) - (0, 0, 255)).mean() < 10
    # the frame rate is measured and drawn
    assert session.fps > 0 and session.overlay[0].endswith(" fps")
    assert session.background is not None and session.background.shape == (H, W, 3)


@needs("cv2")
def test_q_quits_and_max_frames(camera_file):
    session = run(camera_file, StubMatter, display=False, keys={4: "q"})
    assert session.frames == 5 and not session.running
    session = run(str(camera_file), StubMatter, display=False, max_frames=3)
    assert session.frames == 3 and session.composites == 0


@needs("cv2")
def test_fps_text_is_drawn():
    frame = scene(0)
    with_fps = WebcamSession(StubMatter(), show_fps=True).process(frame.copy())
    without = WebcamSession(StubMatter(), show_fps=False).process(frame.copy())
    top = (slice(0, 16), slice(0, W))
    assert np.abs(with_fps[top].astype(int) - without[top]).max() > 100
    s = WebcamSession(StubMatter())
    s.process(frame)
    assert s.overlay == ["0.0 fps", HINT]
    assert s.process(frame) is not None and s.fps > 0


@needs("cv2")
def test_keys_and_codes():
    s = WebcamSession(StubMatter())
    assert s.handle_key("b") is False  # no frame yet: nothing to capture
    assert s.background is None
    s.process(scene(0))
    assert s.handle_key(ord("B")) and s.background is not None
    assert not s.handle_key("x") and s.running
    assert s.handle_key(27) and not s.running  # Escape


@needs("cv2")
def test_image_target_and_size(camera_file, tmp_path):
    from bgmatting.io import write_image

    target = np.zeros((30, 40, 3), np.float32)
    target[..., 1] = 1.0
    write_image(tmp_path / "target.png", target)
    shown = []
    session = run(camera_file, StubMatter, target=str(tmp_path / "target.png"), size=(24, 32), display=False,
                  keys={0: "b"}, on_frame=shown.append, max_frames=4)
    assert session.composites == 3 and shown[-1].shape == (24, 32, 3)
    assert np.abs(shown[-1][8:16, :4].astype(int) - (0, 255, 0)).mean() < 10  # left: background → green image


@needs("cv2")
def test_real_model_runs(camera_file):
    model = MattingRefine("mobilenetv2", refine_sample_pixels=320)
    shown = []
    session = run(camera_file, Matter(model, device="cpu"), display=False, keys={0: "b"}, max_frames=4,
                  on_frame=shown.append)
    assert session.composites == 3
    assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in shown)


@needs("cv2")
def test_camera_errors(tmp_path):
    with pytest.raises(BgMattingError, match="cannot open camera 57"):
        run(57, StubMatter, display=False)
    with pytest.raises(BgMattingError, match="neither a camera index"):
        run(tmp_path / "missing.mp4", StubMatter, display=False)
    for huge in ("9" * 50, "10000", 2 ** 40, -1):  # OpenCV's VideoCapture raised a TypeError for the first
        with pytest.raises(BgMattingError, match="out of range"):
            run(huge, StubMatter, display=False)
    (tmp_path / "text.avi").write_text("not a video")
    with pytest.raises(BgMattingError, match="cannot read|gave no frame"):
        run(tmp_path / "text.avi", StubMatter, display=False)
    loaded = []
    with pytest.raises(BgMattingError):
        run(57, lambda: loaded.append(1), display=False)
    assert loaded == []  # the model is not loaded when the camera is missing


@needs("cv2")
def test_display_needs_gui(camera_file):
    from bgmatting.webcam import _gui_available

    if _gui_available():
        pytest.skip("this OpenCV can show windows")
    with pytest.raises(BgMattingError, match="opencv-python"):
        run(camera_file, StubMatter, display=True)


def test_parse_arguments():
    assert parse_camera("0") == 0 and parse_camera(2) == 2
    assert parse_size("1280x720") == (720, 1280) and parse_size(None) is None
    for bad in ("1280", "axb", "0x10", "12x-3"):
        with pytest.raises(BgMattingError, match="WIDTHxHEIGHT"):
            parse_size(bad)
