"""Video reading and writing (PyAV): the one place where video files are opened or written.

The names below are defined, one job each, in:

- :mod:`.video_formats`: output formats and codecs (:data:`FORMATS`), and the checks of format, CRF and preset;
- :mod:`.orientation`: turning frames upright from rotation metadata (:class:`Orientation`);
- :mod:`.video_reader`: :class:`VideoReader` (files and image-sequence folders, seeking, :class:`Frame`);
- :mod:`.video_damage`: whether a file is cut short (:data:`SHORT_TOLERANCE`);
- :mod:`.video_access`: :func:`probe_video`, :func:`frame_times`, :func:`read_frame`, :func:`sample_video`;
- :mod:`.audio`: audio passthrough (:func:`plan_audio`, :class:`AudioPlan`);
- :mod:`.video_writer`: :class:`VideoWriter` (atomic writes, timestamps passed through).
"""

from .audio import AudioMuxer, AudioPlan, plan_audio
from .orientation import Orientation, frame_orientation
from .video_access import frame_times, probe_video, read_frame, sample_video
from .video_damage import SHORT_TOLERANCE
from .video_formats import (
    ALPHA_FORMATS,
    CRF_RANGE,
    DEFAULT_CRF,
    DEFAULT_PRESET,
    FORMAT_SUFFIXES,
    FORMATS,
    VIDEO_SUFFIXES,
    X264_PRESETS,
    available_formats,
    check_crf,
    check_format,
    check_known_format,
    check_preset,
    format_from_path,
    has_encoder,
    require_av,
)
from .video_reader import (
    DEFAULT_SEQUENCE_FPS,
    MAX_SEQUENCE_FPS,
    Frame,
    VideoInfo,
    VideoReader,
    parse_time,
)
from .video_writer import VideoWriter

__all__ = [
    "ALPHA_FORMATS", "CRF_RANGE", "DEFAULT_CRF", "DEFAULT_PRESET", "DEFAULT_SEQUENCE_FPS", "FORMATS",
    "FORMAT_SUFFIXES", "MAX_SEQUENCE_FPS", "SHORT_TOLERANCE", "VIDEO_SUFFIXES", "X264_PRESETS", "AudioMuxer",
    "AudioPlan", "Frame", "Orientation", "VideoInfo", "VideoReader", "VideoWriter", "available_formats",
    "check_crf", "check_format", "check_known_format", "check_preset", "format_from_path", "frame_orientation",
    "frame_times", "has_encoder", "parse_time", "plan_audio", "probe_video", "read_frame", "require_av",
    "sample_video",
]
