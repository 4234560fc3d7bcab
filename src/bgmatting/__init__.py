"""bgmatting: real-time, high-resolution background matting (Background Matting V2).

>>> import bgmatting
>>> matter = bgmatting.Matter()                       # doctest: +SKIP
>>> result = matter(src, bgr)                         # doctest: +SKIP
"""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    # OpenMP threads that spin after each parallel region take the cores from the other thread pools our CPU
    # path uses (NNPACK's, ONNX Runtime's): read once, when PyTorch loads OpenMP; a value set by the user wins.
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .batch import matte_images
from .errors import BgMattingError
from .export import OnnxModel, export_onnx, export_torchscript
from .models import MattingBase, MattingRefine
from .pipeline import Matter, MatteResult
from .video import VideoReport, convert_video
from .weights import ModelInfo, list_models, load_model, read_state_dict, save_weights

__version__ = "0.1.0"

__all__ = ["BgMattingError", "MattingBase", "MattingRefine", "MatteResult", "Matter", "ModelInfo", "OnnxModel", "VideoReport", "__version__", "convert_video",
           "export_onnx", "export_torchscript", "list_models", "load_model", "matte_images", "read_state_dict", "save_weights"]
