"""Live matting from a webcam (``bgmatting webcam``): press ``b`` to capture the background, ``q`` to quit.

:class:`WebcamSession` holds the state and turns each camera frame into the frame to show: the raw frame with a
hint until a background has been captured, then the composite over the chosen colour or image, with the frame
rate drawn in a corner. :func:`run` reads an OpenCV capture (a camera index or a video file used as a camera),
shows the frames in a window, and passes key presses to the session; with ``display=False`` it runs without a
window (tests, scripts), keys coming from ``keys``.

Frames are ``(H, W, 3)`` uint8 RGB throughout (OpenCV's BGR is converted at the capture and the window).
Showing a window needs an OpenCV build with GUI support (``pip install opencv-python``, not ``-headless``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BgMattingError
from .opencv import import_cv2

__all__ = ["WebcamSession", "open_camera", "parse_camera", "parse_size", "run"]

KEY_BACKGROUND = "b"
KEY_QUIT = ("q", "\x1b")  # q or Escape
HINT = "press B with nobody in view to capture the background - Q quits"
HINT_CAPTURED = "B: new background  Q: quit"


# --------------------------------------------------------------------------------------------- arguments

MAX_CAMERA_INDEX = 9999


def parse_camera(spec: str | int | os.PathLike) -> int | Path:
    """``--camera``: a camera index (``0``, ``1``, …) or a video file used as a camera."""
    text = str(spec).strip()
    if isinstance(spec, int) or (text.isascii() and text.isdigit()):
        index = int(text)
        if not 0 <= index <= MAX_CAMERA_INDEX:  # OpenCV takes a C int; larger values fail inside VideoCapture
            raise BgMattingError(f"camera index {index} is out of range (0 to {MAX_CAMERA_INDEX})")
        return index
    path = Path(text)
    if not path.is_file():
        raise BgMattingError(f"camera '{text}' is neither a camera index (0, 1, ...) nor an existing video file")
    return path


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``--size WxH`` (e.g. ``1280x720``) → ``(H, W)``; ``None`` stays ``None``."""
    if text is None:
        return None
    parts = str(text).lower().replace(" ", "").split("x")
    if len(parts) == 2 and all(p.isdigit() and int(p) > 0 for p in parts):
        return int(parts[1]), int(parts[0])
    raise BgMattingError(f"'{text}' is not a frame size; use WIDTHxHEIGHT, e.g. 1280x720")


@contextlib.contextmanager
def _quiet(cv2):
    """Silence OpenCV's own log messages (below errors) where the build allows it."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None or not hasattr(log, "setLogLevel"):
        yield
        return
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        log.setLogLevel(level)


def open_camera(camera: int | str | os.PathLike = 0, size: tuple[int, int] | None = None):
    """Open an OpenCV capture for a camera index or a video file; ``size`` ``(H, W)`` is requested from cameras.

    Raises :class:`BgMattingError` when it cannot be opened.
    """
    cv2 = import_cv2()
    source = parse_camera(camera)
    with _quiet(cv2):  # OpenCV logs warnings about missing cameras; the error below says it better
        cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not cap.isOpened():
        cap.release()
        if isinstance(source, int):
            raise BgMattingError(f"cannot open camera {source}: no camera has that index, or another program uses "
                                 "it; pass --camera N for another camera, or a video file")
        raise BgMattingError(f"cannot read '{source}' as a video with OpenCV")
    if size is not None and isinstance(source, int):
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[1])
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[0])
    return cap


# --------------------------------------------------------------------------------------------- session

def _key_name(key: int | str) -> str:
    if isinstance(key, str):
        return key[:1].lower()
    if key < 0:
        return ""
    return chr(key & 0xFF).lower()


class WebcamSession:
    """The state of a live matting session: the captured background, the target, the frame rate.

    Args:
        matter: a :class:`~bgmatting.pipeline.Matter`, or any ``matter(src, bgr)`` returning a
            :class:`~bgmatting.results.MatteResult`.
        target: what replaces the background: ``'#RRGGBB'`` / ``'r,g,b'`` / an image path (as ``--target-bgr``),
            an RGB tuple in [0, 1], or an image array; ``None`` shows the subject over black.
        show_fps: draw the frame rate in the top-left corner.

    Attributes:
        background: the captured background, float32 ``(H, W, 3)`` in [0, 1], or ``None``.
        running: False once quit was requested.
        frames, composites: frames processed, and how many of them were composites.
        fps: the frame rate, smoothed over recent frames.
        overlay: the text drawn on the last frame (lines).
    """

    def __init__(self, matter: Any, target: Any = (0.0, 1.0, 0.0), *, show_fps: bool = True):
        self.matter = matter
        if isinstance(target, str):
            from .outputs import load_target

            target = load_target(target)
        self.target = (0.0, 0.0, 0.0) if target is None else target
        self.show_fps = show_fps
        self.background: np.ndarray | None = None
        self.running = True
        self.frames = 0
        self.composites = 0
        self.fps = 0.0
        self.overlay: list[str] = []
        self._last_frame: np.ndarray | None = None
        self._last_time: float | None = None
        self._target_cache: tuple[tuple[int, int], Any] | None = None

    def capture_background(self, frame: np.ndarray | None = None) -> None:
        """Use ``frame`` (default: the last frame processed) as the background from now on."""
        frame = self._last_frame if frame is None else frame
        if frame is None:
            return
        self.background = np.asarray(frame, np.float32) / 255.0 if frame.dtype == np.uint8 else frame.astype(np.float32)

    def handle_key(self, key: int | str) -> bool:
        """React to a key (a character or an OpenCV key code): ``b`` captures the background, ``q``/Esc quits.

        Returns whether the key did something.
        """
        name = _key_name(key)
        if name == KEY_BACKGROUND:
            self.capture_background()
            return self._last_frame is not None
        if name in KEY_QUIT:
            self.running = False
            return True
        return False

    def _target_for(self, size: tuple[int, int]) -> Any:
        if isinstance(self.target, (tuple, list)):
            return tuple(self.target)
        if self._target_cache is None or self._target_cache[0] != size:
            from .tensors import cover_resize, to_tensor

            t = cover_resize(to_tensor(self.target, "target background"), size)
            self._target_cache = (size, np.ascontiguousarray(t[0].permute(1, 2, 0).numpy()))
        return self._target_cache[1]

    def process(self, frame: np.ndarray) -> np.ndarray:
        """Turn one camera frame (uint8 ``(H, W, 3)`` RGB) into the frame to show (uint8 ``(H, W, 3)`` RGB)."""
        frame = np.ascontiguousarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise BgMattingError(f"webcam frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        self._last_frame = frame
        now = time.perf_counter()
        if self._last_time is not None:
            rate = 1.0 / max(now - self._last_time, 1e-6)
            self.fps = rate if self.fps == 0.0 else 0.9 * self.fps + 0.1 * rate
        self._last_time = now
        self.frames += 1
        if self.background is not None and self.background.shape[:2] != frame.shape[:2]:
            self.background = None  # the camera changed its resolution: capture again
        if self.background is None:
            out = frame.copy()
            lines = [HINT]
        else:
            result = self.matter(frame, self.background)
            com = result.composite(self._target_for(frame.shape[:2]))
            out = np.clip(com * 255.0 + 0.5, 0, 255).astype(np.uint8)
            self.composites += 1
            lines = [HINT_CAPTURED]
        if self.show_fps:
            lines.insert(0, f"{self.fps:.1f} fps")
        self.overlay = lines
        return self._draw(out, lines)

    def _draw(self, image: np.ndarray, lines: list[str]) -> np.ndarray:
        cv2 = import_cv2()
        h, w = image.shape[:2]
        scale = max(0.3, min(1.0, w / 1280 * 0.9))
        thick = max(1, round(scale * 2))
        font = cv2.FONT_HERSHEY_SIMPLEX
        (_, th), _ = cv2.getTextSize("Ag", font, scale, thick)
        y_first = th + 6
        for i, line in enumerate(lines):
            # the fps goes top-left, the key hint bottom-left
            y = y_first if (self.show_fps and i == 0) else h - 8 - (len(lines) - 1 - i) * (th + 8)
            for colour, t in (((0, 0, 0), thick + 2), ((255, 255, 255), thick)):
                cv2.putText(image, line, (6, y), font, scale, colour, t, cv2.LINE_AA)
        return image


# --------------------------------------------------------------------------------------------- loop

def _gui_available() -> bool:
    cv2 = import_cv2()
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return "NONE" not in line.upper()
    return True


def run(camera: int | str | os.PathLike, matter: Any, *, target: Any = (0.0, 1.0, 0.0),
        size: tuple[int, int] | None = None, display: bool = True, max_frames: int | None = None,
        keys: Mapping[int, str] | None = None, on_frame: Callable[[np.ndarray], None] | None = None,
        window: str = "bgmatting webcam") -> WebcamSession:
    """Run live matting until ``q`` (or the end of a video file, or ``max_frames``).

    Args:
        camera: a camera index or a video file used as a camera (see :func:`parse_camera`).
        matter: a :class:`~bgmatting.pipeline.Matter`, or a function without arguments that makes one (or
            any ``matter(src, bgr)`` returning a :class:`~bgmatting.results.MatteResult`), called after the
            camera opened, so that a missing camera is reported before a model is loaded.
        target: the new background, as for :class:`WebcamSession`.
        size: ``(H, W)``: requested from a camera; frames of another size are resized to it.
        display: show a window (needs OpenCV with GUI support) and read keys from it.
        max_frames: stop after this many frames.
        keys: ``{frame index: key}``: keys pressed after that frame was processed (scripted / headless use).
        on_frame: called with every frame shown (uint8 ``(H, W, 3)`` RGB), e.g. to record it.

    Returns:
        the :class:`WebcamSession` (frames processed, composites, fps, background).

    Raises:
        BgMattingError: the camera cannot be opened or gives no frame, or no window can be shown.
    """
    cv2 = import_cv2()
    if display and not _gui_available():
        raise BgMattingError("this OpenCV cannot show windows (opencv-python-headless is installed); install "
                             "opencv-python for the webcam window")
    cap = open_camera(camera, size)
    try:
        from .pipeline import Matter

        if not isinstance(matter, Matter):
            matter = matter()  # a factory: the model is loaded only once the camera works
        session = WebcamSession(matter, target)
        if display:
            cv2.namedWindow(window, cv2.WINDOW_NORMAL)
        index = 0
        while session.running and (max_frames is None or index < max_frames):
            ok, bgr = cap.read()
            if not ok or bgr is None:
                if index == 0:
                    raise BgMattingError(f"camera {camera} gave no frame")
                break  # the end of a video file
            frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if size is not None and frame.shape[:2] != tuple(size):
                frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            shown = session.process(frame)
            if on_frame is not None:
                on_frame(shown)
            if display:
                cv2.imshow(window, cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))
                key = cv2.waitKey(1)
                if key != -1:
                    session.handle_key(key)
                if cv2.getWindowProperty(window, cv2.WND_PROP_VISIBLE) < 1:
                    session.running = False  # the window was closed
            if keys and index in keys:
                session.handle_key(keys[index])
            index += 1
        return session
    finally:
        cap.release()
        if display:
            cv2.destroyAllWindows()
