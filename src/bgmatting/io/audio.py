"""Audio passthrough: the audio of a source file copied (or transcoded) into a written video.

Packets are remuxed without re-encoding when the container takes the codec, transcoded (AAC for mp4/mov, Opus
for webm) when it does not, and dropped with a warning when neither is possible.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from .video_formats import check_known_format, has_encoder, require_av

# Audio codecs each container takes as they are (packets copied), and the codec used when transcoding.
_AUDIO_COPY = {
    "mp4": {"aac", "mp3", "alac", "flac", "opus", "ac3", "eac3"},
    "mov-prores4444": {"aac", "mp3", "alac", "flac", "opus", "ac3", "eac3", "pcm_s16le", "pcm_s16be", "pcm_s24le",
                       "pcm_s24be", "pcm_s32le", "pcm_f32le"},
    "webm-alpha": {"opus", "vorbis"},
}
_AUDIO_TRANSCODE = {"mp4": "aac", "mov-prores4444": "aac", "webm-alpha": "libopus"}
_AUDIO_LEAD = 0.5  # seconds of audio muxed ahead of the video, so the muxer can interleave


@dataclass
class AudioPlan:
    """What happens to the audio of ``source`` in an output of ``format`` (see :func:`plan_audio`).

    Attributes:
        mode: ``'copy'`` (packets remuxed), ``'transcode'`` (re-encoded to ``codec``) or ``'none'``.
        source: the file whose first audio stream is used.
        codec: the source's codec (``copy``) or the encoder (``transcode``).
        reason: for ``'none'``, why (``''`` when the source has no audio).
        start, end: source-clock seconds (see :attr:`~.video_reader.VideoInfo.start_time`) of the audio to keep;
            ``None`` for no limit.
    """

    mode: str
    source: Path | None = None
    codec: str | None = None
    reason: str = ""
    start: float | None = None
    end: float | None = None

    def describe(self) -> str:
        if self.mode == "copy":
            return f"copied ({self.codec})"
        if self.mode == "transcode":
            return f"transcoded to {self.codec.removeprefix('lib')}"
        return f"none ({self.reason})" if self.reason else "none"


def plan_audio(source: str | os.PathLike, format: str, start: float | None = None,
               end: float | None = None, warn: bool = True) -> AudioPlan:
    """Decide how the first audio stream of ``source`` goes into an output of ``format``.

    Copy when the container takes the codec (AAC/MP3/ALAC/FLAC/Opus/AC-3 into mp4 and mov, PCM into mov, Opus
    and Vorbis into webm); otherwise transcode to AAC (mp4, mov) or Opus (webm) when this PyAV build has the
    encoder; otherwise (and always for ``png``) drop it, with a warning when ``warn``.
    """
    p = Path(source)
    if p.is_dir():
        return AudioPlan("none", reason="image sequences have no audio")
    av = require_av()
    try:
        with av.open(str(p), metadata_errors="ignore") as c:
            codec = c.streams.audio[0].codec_context.name if c.streams.audio else None
    except (av.error.FFmpegError, OSError):
        codec = None
    if codec is None:
        return AudioPlan("none")

    def drop(reason: str) -> AudioPlan:
        if warn:
            warnings.warn(f"the audio of '{p.name}' is dropped: {reason}", stacklevel=3)
        return AudioPlan("none", p, codec, reason)

    if format == "png":
        return drop("PNG sequences carry no audio")
    check_known_format(format)
    if codec in _AUDIO_COPY[format]:
        return AudioPlan("copy", p, codec, start=start, end=end)
    encoder = _AUDIO_TRANSCODE[format]
    if has_encoder(encoder):
        if warn:
            warnings.warn(f"the audio of '{p.name}' ({codec}) cannot go into {format} as it is; it is re-encoded "
                          f"as {encoder.removeprefix('lib')}", stacklevel=3)
        return AudioPlan("transcode", p, encoder, start=start, end=end)
    return drop(f"{format} cannot hold {codec} and this PyAV build has no {encoder} encoder")


class AudioMuxer:
    """Copies (or transcodes) the audio of a plan into an output container, a little ahead of the video."""

    def __init__(self, plan: AudioPlan, output, video_offset: float):
        av = require_av()
        self.plan = plan
        self.output = output
        self.offset = video_offset  # source seconds that become 0 in the output
        self.input = av.open(str(plan.source), metadata_errors="ignore")
        self.istream = self.input.streams.audio[0]
        self.tb = self.istream.time_base
        ctx = self.istream.codec_context
        if plan.mode == "copy":
            self.ostream = output.add_stream_from_template(self.istream)
        else:
            rate = ctx.sample_rate or 48000
            if plan.codec == "libopus":
                rate = min((r for r in (8000, 12000, 16000, 24000, 48000) if r >= rate), default=48000)
            layout = "mono" if len(ctx.layout.channels) == 1 else "stereo"
            self.ostream = output.add_stream(plan.codec, rate=rate, layout=layout)
            self.ostream.codec_context.time_base = Fraction(1, rate)
            self.resampler = None
            self.next_pts = None
        self.packets = self.input.demux(self.istream)
        self.pending = None  # a packet read but not yet due
        self.done = False

    def _next(self):
        if self.pending is None and not self.done:
            for p in self.packets:
                if p.dts is None or p.pts is None:
                    continue
                t = float(p.pts * self.tb)
                if self.plan.start is not None and t < self.plan.start:
                    continue
                if self.plan.end is not None and t >= self.plan.end:
                    break
                self.pending = p
                return p
            self.done = True
        return self.pending

    def mux_until(self, t: float) -> None:
        """Mux the audio whose (source) time is before ``t`` seconds."""
        while True:
            p = self._next()
            if p is None or float(p.pts * self.tb) >= t:
                return
            self.pending = None
            shift = round(self.offset / self.tb)
            if self.plan.mode == "copy":
                p.pts -= shift
                p.dts -= shift
                p.stream = self.ostream
                self.output.mux(p)
            else:
                for frame in p.decode():
                    self._encode(frame, float(p.pts * self.tb) - self.offset)

    def mux_ahead_of(self, video_time: float) -> None:
        """Mux the audio up to a little after ``video_time`` (output seconds), so the muxer can interleave."""
        self.mux_until(self.offset + video_time + _AUDIO_LEAD)

    def _encode(self, frame, out_time: float | None) -> None:
        av = require_av()
        cc = self.ostream.codec_context
        if self.resampler is None:
            self.resampler = av.AudioResampler(format=cc.format, layout=cc.layout, rate=cc.sample_rate,
                                               frame_size=cc.frame_size or None)
        if self.next_pts is None and frame is not None:
            self.next_pts = round(max(0.0, out_time or 0.0) * cc.sample_rate)
        for f in self.resampler.resample(frame):
            f.pts = self.next_pts
            f.time_base = Fraction(1, cc.sample_rate)
            self.next_pts += f.samples
            for packet in self.ostream.encode(f):
                self.output.mux(packet)

    def finish(self) -> None:
        """Mux the rest (up to the plan's end), flush the encoder, close the input."""
        try:
            self.mux_until(math.inf)
            if self.plan.mode == "transcode" and self.next_pts is not None:
                self._encode(None, None)
                for packet in self.ostream.encode(None):
                    self.output.mux(packet)
        finally:
            self.input.close()

    def close(self) -> None:
        self.input.close()
