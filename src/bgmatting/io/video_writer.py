"""Video writing: :class:`VideoWriter` encodes frames into one of the :data:`~.video_formats.FORMATS`.

Timestamps are passed through (``pts`` in the caller's ``time_base``), so variable-frame-rate sources keep their
timing. Writes are atomic: the file (or PNG folder) is written under a temporary name in the destination folder
and renamed on a clean :meth:`VideoWriter.close`; :meth:`VideoWriter.abort` (called on any exception, Ctrl-C
included) deletes it, so an interrupted run leaves the previous file (if any) or nothing, never a broken one.
RGB is converted to Y'CbCr with BT.709 (limited range) and tagged so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from contextlib import ExitStack, suppress
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import BgMattingError
from .atomic import atomic_path, current_umask, removing_new_folders
from .audio import AudioMuxer, AudioPlan
from .images import write_image
from .video_formats import (
    ALPHA_FORMATS,
    CONTAINERS,
    ENCODERS,
    FORMAT_SUFFIXES,
    PIX_FMT,
    check_crf,
    check_format,
    check_preset,
    format_from_path,
    require_av,
)

_FRAME_FORMATS = {(np.dtype(np.uint8), 3): "rgb24", (np.dtype(np.uint8), 4): "rgba",
                  (np.dtype(np.uint16), 3): "rgb48le", (np.dtype(np.uint16), 4): "rgba64le"}


def _default_permissions(path: Path, folder: bool = False) -> None:
    """Give a file made by ``tempfile`` (mode 0600/0700) the permissions of an ordinary new file or folder."""
    try:
        os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())
    except OSError:
        pass


class VideoWriter:
    """Encode frames into a video file (or a PNG folder), atomically, with optional audio from a source.

    Args:
        path: the output file (``.mp4``, ``.mov``, ``.webm``), or the folder of a ``png`` sequence.
        size: ``(H, W)`` of the frames to write.
        format: one of :data:`~.video_formats.FORMATS`, or ``'auto'`` (from the suffix of ``path``; a folder → ``png``).
        channels: 1 (gray), 3 (RGB) or 4 (RGBA, alpha formats only).
        rate: the nominal frame rate (default 25).
        time_base: the unit of the ``pts`` given to :meth:`write` (default ``1 / rate``); pass the source's to
            keep its timestamps, variable frame rate included.
        crf: quality for ``mp4`` (0–51, default 18) and ``webm-alpha`` (0–63, default 24); lower is better.
        preset: the libx264 preset of ``mp4``, one of :data:`X264_PRESETS` (default ``medium``).
        audio: an :class:`AudioPlan` (from :func:`plan_audio`) whose audio is copied into the file.
        audio_offset: the source time (seconds) that becomes time 0 of the output (the first frame's time).
        overwrite: replace an existing file or folder at ``path`` (on a clean close only).

    Frames: ``(H, W)`` / ``(H, W, C)`` numpy arrays, uint8 or uint16 (full 16-bit range; kept at 10 bit by
    ProRes), with ``pts`` increasing. H.264 needs even sizes: odd ones are padded by one pixel (edge replicated)
    with a warning. Use as a context manager: a clean exit closes (renames into place), an exception aborts.
    """

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], *, format: str = "auto", channels: int = 3,
                 rate: float | Fraction | None = None, time_base: Fraction | None = None, crf: int | None = None,
                 preset: str | None = None, audio: AudioPlan | None = None, audio_offset: float = 0.0,
                 overwrite: bool = False):
        self.path = Path(path)
        if format == "auto":
            format = format_from_path(self.path) or "png"
        self.format = check_format(format)
        expected = FORMAT_SUFFIXES[format]
        if expected and self.path.suffix.lower() != expected:
            raise BgMattingError(f"--format {format} writes '{expected}' files, but the output is '{self.path}'")
        if channels not in (1, 3, 4):
            raise ValueError(f"channels must be 1, 3 or 4, not {channels}")
        if channels == 4 and format not in ALPHA_FORMATS:
            raise BgMattingError(f"--format {format} has no alpha channel; use one of {', '.join(ALPHA_FORMATS)}")
        if self.path.exists() and not overwrite:
            raise BgMattingError(f"output '{self.path}' exists already; pass --overwrite to replace it")
        if self.path.exists() and (self.path.is_dir() != (format == "png")):
            raise BgMattingError(f"output '{self.path}' exists and is a {'folder' if self.path.is_dir() else 'file'}; "
                                 "remove it or choose another output")
        self.size = (int(size[0]), int(size[1]))
        self.channels = channels
        self.rate = Fraction(rate if rate else 25).limit_denominator(1_000_000)
        self.time_base = Fraction(time_base) if time_base else 1 / self.rate
        self.crf = check_crf(format, crf)
        self.preset = check_preset(format, preset)
        self.frames = 0
        self._last_pts: int | None = None
        self._audio: AudioMuxer | None = None
        self._closed = False
        self._stack = ExitStack()
        h, w = self.size
        self._pad = (h % 2, w % 2) if format == "mp4" else (0, 0)
        if any(self._pad):
            warnings.warn(f"H.264 needs an even width and height: {w}x{h} is padded to "
                          f"{w + self._pad[1]}x{h + self._pad[0]} (use --format mov-prores4444, webm-alpha or png for "
                          "the exact size)", stacklevel=2)
        try:
            if format == "png":
                self._open_folder(audio)
            else:
                self._open_container(audio, audio_offset)
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------ setup
    def _open_folder(self, audio) -> None:
        parent = self.path.parent
        self._stack.enter_context(removing_new_folders(parent))  # made here, removed again by abort() if empty
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent))
        except OSError as e:
            raise BgMattingError(f"cannot write to folder '{parent}': {e.strerror or e}") from None
        if audio is not None and audio.mode != "none":
            warnings.warn("PNG sequences carry no audio; it is dropped", stacklevel=3)

    def _open_container(self, audio, audio_offset) -> None:
        av = require_av()
        try:
            self._tmp = self._stack.enter_context(atomic_path(self.path))
            options = {"movflags": "+faststart"} if self.format == "mp4" else {}
            self._container = av.open(str(self._tmp), "w", format=CONTAINERS[self.format], options=options)
        except av.error.FFmpegError as e:
            raise BgMattingError(f"cannot write '{self.path}': {e}") from None
        h, w = self.size
        pix_fmt = PIX_FMT[(self.format, self.channels == 4)]
        options = {}
        if self.format == "mp4":
            options = {"crf": str(self.crf), "preset": self.preset}
        elif self.format == "webm-alpha":
            options = {"crf": str(self.crf), "b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"}
        elif self.format == "mov-prores4444":
            options = {"profile": "4444", "vendor": "apl0", "bits_per_mb": "8000"}
            if self.channels == 4:
                options["alpha_bits"] = "16"
        stream = self._stream = self._container.add_stream(ENCODERS[self.format], rate=self.rate, options=options)
        stream.width, stream.height = w + self._pad[1], h + self._pad[0]
        stream.pix_fmt = pix_fmt
        stream.time_base = self.time_base
        cc = stream.codec_context
        cc.time_base = self.time_base
        cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = 1, 1, 1, 1  # BT.709, limited range
        if audio is not None and audio.mode != "none":
            try:
                self._audio = AudioMuxer(audio, self._container, audio_offset)
            except Exception as e:  # noqa: BLE001 (any PyAV failure: keep the video, lose the audio)
                warnings.warn(f"the audio of '{audio.source}' is dropped: {e}", stacklevel=3)
                self._audio = None
        self._pix_fmt = pix_fmt

    # ------------------------------------------------------------------ frames
    def write(self, image: np.ndarray, pts: int | None = None) -> None:
        """Encode one frame.

        Args:
            image: ``(H, W)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA (straight alpha); uint8 or uint16;
                ``(H, W)`` must equal ``size`` and the channels ``channels`` (gray is accepted for RGB).
            pts: timestamp in ``time_base`` units, increasing; ``None`` → the next one at the nominal rate.
        """
        if self._closed:
            raise ValueError("write() on a closed VideoWriter")
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        c = 1 if image.ndim == 2 else image.shape[2]
        if image.shape[:2] != self.size or c not in (1, self.channels) or c == 1 and self.channels == 4:
            raise ValueError(f"frame of shape {image.shape} does not fit a {self.size} writer with "
                             f"{self.channels} channel(s)")
        if image.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"frames must be uint8 or uint16, not {image.dtype}")
        if pts is None:
            pts = 0 if self._last_pts is None else self._last_pts + max(1, round(1 / (self.rate * self.time_base)))
        pts = int(pts)
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"pts must increase: {pts} after {self._last_pts}")
        if self.format == "png":
            out = self._tmp / f"{self.frames:06d}.png"
            write_image(out, image if image.dtype == np.uint8 else (image >> 8).astype(np.uint8))
        else:
            self._encode(image, pts)
        self._last_pts = pts
        self.frames += 1

    def _encode(self, image: np.ndarray, pts: int) -> None:
        av = require_av()
        if any(self._pad):
            pad = [(0, self._pad[0]), (0, self._pad[1])] + ([(0, 0)] if image.ndim == 3 else [])
            image = np.pad(image, pad, mode="edge")
        if image.ndim == 2:  # via RGB: swscale rounds gray → Y'CbCr less exactly
            image = np.repeat(image[..., None], 3, axis=2)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image),
                                           format=_FRAME_FORMATS[(image.dtype, image.shape[2])])
        frame = frame.reformat(format=self._pix_fmt, dst_colorspace=1, dst_color_range=1)
        frame.pts = pts
        frame.time_base = self.time_base
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.mux_ahead_of(float(pts * self.time_base))
        except av.error.FFmpegError as e:
            raise BgMattingError(f"cannot encode '{self.path}': {e}") from None

    # ------------------------------------------------------------------ end
    def close(self) -> Path:
        """Flush the encoder, add the rest of the audio, and move the file into place; returns its path.

        A writer with no frame written is aborted instead (raises :class:`BgMattingError`).
        """
        if self._closed:
            return self.path
        if self.frames == 0:
            self.abort()
            raise BgMattingError(f"no frame was written to '{self.path}'")
        av = require_av()
        try:
            if self.format == "png":
                self._replace_folder()
                self._stack.close()
            else:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                if self._audio is not None:
                    self._audio.finish()
                self._container.close()
                _default_permissions(self._tmp)
                self._stack.close()  # rename the temporary file into place
        except av.error.FFmpegError as e:
            self.abort()
            raise BgMattingError(f"cannot finish '{self.path}': {e}") from None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def _replace_folder(self) -> None:
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old", dir=self.path.parent))
            os.replace(self.path, old / "x")
        _default_permissions(self._tmp, folder=True)
        os.replace(self._tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Stop and delete what was written (the temporary file or folder); ``path`` is left untouched."""
        if self._closed:
            return
        self._closed = True
        # a half-open container may refuse to close cleanly; it is deleted anyway
        with suppress(Exception):
            if self._audio is not None:
                self._audio.close()
        with suppress(Exception):
            if getattr(self, "_container", None) is not None:
                self._container.close()
        if self.format == "png":
            tmp = getattr(self, "_tmp", None)
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        # leave the ExitStack through an exception: atomic_path deletes the temporary file, and the folders made
        # for the output go again if nothing else was written into them
        err = BgMattingError("aborted")
        self._stack.__exit__(type(err), err, None)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
