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

from importlib import import_module as _import_module

from .errors import BgMattingError

__version__ = "0.1.0"

# The rest loads on first use (PEP 562), so that ``import bgmatting`` — and the command line's ``--help`` and
# argument errors — do not wait seconds for PyTorch and torchvision.
_LAZY = {
    "matte_images": ".folders", "OnnxModel": ".onnx_runtime", "export_onnx": ".export", "export_torchscript": ".export",
    "MattingBase": ".models", "MattingRefine": ".models", "Matter": ".pipeline", "MatteResult": ".results",
    "VideoReport": ".video", "convert_video": ".video", "ModelInfo": ".zoo", "list_models": ".zoo",
    "load_model": ".weights", "read_state_dict": ".weights", "save_weights": ".weights",
}

__all__ = ["BgMattingError", "MattingBase", "MattingRefine", "MatteResult", "Matter", "ModelInfo", "OnnxModel",
           "VideoReport", "__version__", "convert_video", "export_onnx", "export_torchscript", "list_models",
           "load_model", "matte_images", "read_state_dict", "save_weights"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_import_module(_LAZY[name], __name__), name)
    else:  # a submodule, as ``bgmatting.video`` was before these names were lazy
        try:
            value = _import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'bgmatting' has no attribute '{name}'") from None
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
