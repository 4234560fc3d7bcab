"""Model zoo and weight files: our safetensors, the original BGMv2 ``.pth`` state_dicts and TorchScript exports.

Every file is treated as data, never as code: ``.pth`` files go through ``torch.load(weights_only=True)``;
TorchScript archives are read by a restricted unpickler that only rebuilds tensors (no TorchScript code is
loaded or run); safetensors hold nothing but tensors and a JSON header.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import BgMattingError
from .io.atomic import atomic_path
from .model_metadata import FORMAT_TAG, REFINE_OPTIONS
from .models import BACKBONES, REFINE_MODES, MattingBase, MattingRefine
from .onnx_runtime import OnnxModel
from .zoo import DEFAULT_MODEL, ModelInfo, find_model, list_models, register_model

__all__ = ["DEFAULT_MODEL", "FORMAT_TAG", "REFINE_OPTIONS", "ModelInfo", "build_model", "check_onnx_options",
           "detect_config", "is_onnx_file", "list_models", "load_model", "model_config", "pytorch_weights",
           "read_state_dict", "register_model", "save_weights"]

_ARCHITECTURES = {"MattingBase": MattingBase, "MattingRefine": MattingRefine}


# --------------------------------------------------------------------------------------------- file readers

def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return 0 < size < 100_000_000 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError) as e:
        raise BgMattingError(f"'{path}' is not a valid safetensors file: {e}") from None


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stands in for a TorchScript module class: keeps only the attribute dict it is built with."""

    def __init__(self, *args):
        self.state: dict = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage, offset, size, stride, *_):
    return torch.as_strided(storage, size, stride, offset).clone()


def _build_list(*args):
    return list(args[0]) if len(args) == 1 else list(args)


class _TorchScriptUnpickler(pickle.Unpickler):
    """Reads a TorchScript archive's ``data.pkl`` as plain data: tensors and attribute dicts, nothing else."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return _ScriptObject
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            from collections import OrderedDict
            return OrderedDict
        if module == "torch.jit._pickle" and name.startswith("build_") and name.endswith("list"):
            return _build_list
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}' from a TorchScript file")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected storage record {pid!r}")
        raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return t[:numel]


def _collect_tensors(obj: _ScriptObject, prefix: str = "", out: dict | None = None) -> dict[str, torch.Tensor]:
    out = {} if out is None else out
    for name, value in obj.state.items():
        if not isinstance(name, str) or name.startswith("_"):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect_tensors(value, f"{prefix}{name}.", out)
    return out


def _torchscript_meta(archive: zipfile.ZipFile, prefix: str) -> dict[str, str]:
    """The metadata of an archive written by ``bgmatting export --format torchscript`` (its extra file
    ``bgmatting.json``, plain JSON) in the form of our safetensors header; empty for other archives."""
    try:
        info = json.loads(archive.read(prefix + "extra/bgmatting.json"))
    except (KeyError, ValueError):
        return {}
    if not isinstance(info, dict) or info.get("format") != FORMAT_TAG:
        return {}
    return {"format": FORMAT_TAG, "config": json.dumps(info)}  # load_model keeps the refiner options of it


def _read_torchscript(path: Path, archive: zipfile.ZipFile) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    data_pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if not data_pkl:
        raise BgMattingError(f"'{path}' looks like a TorchScript archive but has no data.pkl")
    prefix = data_pkl[0][: -len("data.pkl")]
    try:
        root = _TorchScriptUnpickler(archive.read(data_pkl[0]), archive, prefix).load()
    except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as e:
        raise BgMattingError(f"cannot read weights from TorchScript file '{path}': {e}") from None
    if not isinstance(root, _ScriptObject):
        raise BgMattingError(f"'{path}' does not hold a TorchScript module")
    return _collect_tensors(root), _torchscript_meta(archive, prefix)


def _refusal_reason(message: str) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words, from its long multi-paragraph message."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return f"it holds Python objects that would run code when loaded (it asks for {found.group(1)})"
    after = message.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in message else ""
    detail = next((line.strip() for line in after.splitlines() if line.strip()), "")
    detail = re.split(r"(?<=[.!?])\s", detail, maxsplit=1)[0]  # its first sentence
    if len(detail) > 120:
        detail = detail[:120].rsplit(" ", 1)[0] + " ..."
    return f"PyTorch's safe loader stopped at: {detail}" if detail else "it holds more than tensors"


def _first_line(error: BaseException, limit: int = 160) -> str:
    """An exception as a few words on one line: its message's first line (else its type), shortened."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # a damaged file's "pickle protocol" notice: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise BgMattingError(f"'{path}' is not a plain weights file: {_refusal_reason(str(e))}; refusing to load it "
                             "(a .pth state_dict or a .safetensors file holds only tensors)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise BgMattingError(f"'{path}' is not a readable PyTorch weights file: {_first_line(e)}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BgMattingError(f"'{path}' does not hold a state_dict (a mapping of parameter names to tensors)")
    return dict(obj)


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read the tensors of a weights file of any supported kind, safely.

    Returns ``(state_dict, metadata)``; metadata is empty except for our own safetensors files. Prefixes
    ``model.`` (TorchScript wrappers) and ``module.`` (DistributedDataParallel) are removed.
    """
    p = Path(path)
    if not p.exists():
        raise BgMattingError(f"weights file '{p}' does not exist")
    if not p.is_file():
        raise BgMattingError(f"weights path '{p}' is not a file")
    try:
        state, meta = _read_weights_file(p)
    except BgMattingError:
        raise
    except OSError as e:  # the file itself cannot be read (permissions, I/O): not a damaged file
        raise BgMattingError(f"cannot read weights file '{p}': {e.strerror or _first_line(e)}") from None
    except MemoryError:
        raise BgMattingError(f"'{p}' is not a weights file that can be loaded: it asks for more memory than there "
                             "is (a damaged or crafted file?)") from None
    except Exception as e:  # noqa: BLE001 (the readers' many ways of failing on damaged bytes, IndexError to
        # UnicodeDecodeError: all of them mean a damaged file, never a bug to show with a traceback)
        raise BgMattingError(f"'{p}' is a damaged weights file (cut short or corrupt?): {type(e).__name__}: "
                             f"{_first_line(e)}") from None
    for prefix in ("model.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, meta


def _read_weights_file(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of an existing file, by its kind (see :func:`read_state_dict`)."""
    meta: dict[str, str] = {}
    if _is_safetensors(p):
        state, meta = _read_safetensors(p)
    elif zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as archive:
            names = archive.namelist()
            if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
                state, meta = _read_torchscript(p, archive)
            else:
                state = None
        if state is None:
            state = _read_torch(p)
    else:
        with open(p, "rb") as f:
            magic = f.read(2)
        if magic[:1] != b"\x80":  # legacy torch.save files start with a pickle protocol opcode
            raise BgMattingError(f"'{p}' is not a weights file (.pth state_dict, TorchScript or .safetensors)")
        state = _read_torch(p)
    return state, meta


# --------------------------------------------------------------------------------------------- building models

def detect_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture, backbone and refiner kernel size of a BGMv2 state_dict, from its key names and shapes."""
    if "backbone.features.0.0.weight" in state:
        backbone = "mobilenetv2"
    elif "backbone.layer3.0.conv1.weight" in state:
        backbone = "resnet101" if "backbone.layer3.6.conv1.weight" in state else "resnet50"
    else:
        raise BgMattingError("these weights are not a Background Matting V2 model: no 'backbone.*' parameters "
                             f"(first keys: {', '.join(list(state)[:3]) or 'none'})")
    cfg: dict[str, Any] = {"architecture": "MattingBase", "backbone": backbone}
    if any(k.startswith("refiner.") for k in state):
        cfg["architecture"] = "MattingRefine"
        w = state.get("refiner.conv1.weight")
        if w is not None and w.ndim == 4:
            cfg["refine_kernel_size"] = int(w.shape[-1])
    return cfg


def _check_keys(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", mismatched)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise BgMattingError(f"weights '{source}' do not fit {type(model).__name__}"
                             f"({getattr(model, 'backbone_name', '?')}): " + "; ".join(problems))


def build_model(architecture: str, backbone: str, **options) -> nn.Module:
    """Construct a ``MattingBase``/``MattingRefine`` from names, with clear errors for bad values."""
    if architecture not in _ARCHITECTURES:
        raise BgMattingError(f"unknown architecture '{architecture}'; choose MattingBase or MattingRefine")
    if backbone not in BACKBONES:
        raise BgMattingError(f"unknown backbone '{backbone}'; choose one of {', '.join(BACKBONES)}")
    if architecture == "MattingBase":
        return MattingBase(backbone)
    _check_refine_options(options)
    return MattingRefine(backbone, **options)


def _check_refine_options(options: dict[str, Any]) -> None:
    """Raise :class:`BgMattingError` for a ``MattingRefine`` option of the wrong type or value."""
    mode = options.get("refine_mode", "sampling")
    if not isinstance(mode, str) or mode not in REFINE_MODES:
        raise BgMattingError(f"refine mode must be one of {', '.join(REFINE_MODES)}, not {mode!r}")
    pixels = options.get("refine_sample_pixels", 16)
    if not isinstance(pixels, numbers.Integral) or isinstance(pixels, bool) or pixels < 16:
        raise BgMattingError(f"refine_sample_pixels must be an integer of at least 16 (one 4x4 patch), not {pixels!r}")
    threshold = options.get("refine_threshold", 0.1)
    if not _is_real(threshold) or not 0.0 <= threshold <= 1.0:
        raise BgMattingError(f"refine_threshold must be a number in [0, 1], not {threshold!r}")
    scale = options.get("backbone_scale", 0.25)
    if not _is_real(scale) or not 0.0 < scale <= 1.0:
        raise BgMattingError(f"backbone_scale must be a number in (0, 1], not {scale!r}")
    if not isinstance(options.get("refine_prevent_oversampling", True), bool):
        raise BgMattingError("refine_prevent_oversampling must be true or false, not "
                             f"{options['refine_prevent_oversampling']!r}")
    if options.get("refine_kernel_size", 3) not in (1, 3):
        raise BgMattingError(f"refine_kernel_size must be 1 or 3, not {options['refine_kernel_size']!r}")


def _is_real(value: Any) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_onnx_file(source: Any) -> bool:
    """Whether ``source`` names an ONNX file (``.onnx``), which runs as exported rather than as PyTorch weights."""
    return isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(".onnx")


def check_onnx_options(options: dict) -> None:
    """Refuse refiner ``options`` for an exported ONNX file: they were fixed when it was exported."""
    if options:
        raise BgMattingError(f"the refiner options of an exported ONNX file are fixed; export it again to change "
                             f"them ({', '.join(sorted(options))} given)")


def pytorch_weights(source: Any, command: str) -> Any:
    """``source``, refused with a clear error if it is an ONNX file: ``command`` needs PyTorch weights."""
    if is_onnx_file(source):
        raise BgMattingError(f"{command} needs PyTorch weights (.pth, TorchScript, .safetensors or a model name), "
                             f"not the exported ONNX file '{source}'")
    return source


def load_model(source: str | os.PathLike | None = None, **overrides) -> MattingBase | OnnxModel:
    """Load a matting model, ready for inference (eval mode, float32, CPU).

    Args:
        source: ``None`` for the default model of the zoo; a zoo name (see :func:`list_models`); or the
            path of an original BGMv2 ``.pth`` state_dict, an original TorchScript export, or one of our
            ``.safetensors`` files. The architecture (``MattingBase``/``MattingRefine``) and backbone are
            detected from the weights. An ``.onnx`` file written by ``bgmatting export`` gives an
            :class:`~bgmatting.onnx_runtime.OnnxModel` instead: called like the model (same outputs), run by ONNX
            Runtime on the CPU, in the precision and refine options it was exported with.
        **overrides: ``MattingRefine`` options to use instead of the file's defaults: ``backbone_scale``,
            ``refine_mode``, ``refine_sample_pixels``, ``refine_threshold``, ``refine_prevent_oversampling``.

    Raises:
        BgMattingError: unknown name, missing/unreadable file, or weights that do not fit the model (the
            message names the first few offending keys).
    """
    unknown = sorted(set(overrides) - set(REFINE_OPTIONS))
    if unknown:
        raise BgMattingError(f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(REFINE_OPTIONS)}")
    if is_onnx_file(source):
        check_onnx_options(overrides)
        return OnnxModel(source)
    name = DEFAULT_MODEL if source is None else source
    info = find_model(name) if isinstance(name, str) else None
    if info is not None:
        if not info.available:
            raise BgMattingError(
                f"the weights of model '{info.name}' are not included in this installation; pass a weights file "
                "(an original BGMv2 .pth/TorchScript checkpoint or a bgmatting .safetensors) with --weights")
        path = info.path
    else:
        path = Path(source)
        if not path.exists() and isinstance(source, str) and os.sep not in source and "." not in source:
            names = ", ".join(i.name for i in list_models()) or "none"
            raise BgMattingError(f"'{source}' is neither a file nor a model name (models: {names})")
    state, meta = read_state_dict(path)
    try:
        cfg = detect_config(state)
    except BgMattingError as e:
        raise BgMattingError(f"'{path}': {e}") from None
    options: dict[str, Any] = {}
    if meta.get("format") == FORMAT_TAG and meta.get("config"):
        try:
            header = json.loads(meta["config"])
        except json.JSONDecodeError:
            raise BgMattingError(f"'{path}' has a corrupt bgmatting metadata header") from None
        if not isinstance(header, dict):
            raise BgMattingError(f"'{path}' has a corrupt bgmatting metadata header: its config is not a JSON object")
        options.update(header)
    if cfg["architecture"] == "MattingRefine":
        try:  # a value stored in the file (and not overridden) is the file's fault: say so
            _check_refine_options({k: v for k, v in options.items() if k in REFINE_OPTIONS and k not in overrides})
        except BgMattingError as e:
            raise BgMattingError(f"'{path}' has a bad refiner option in its metadata header: {e}") from None
        if "refine_kernel_size" in cfg:
            options["refine_kernel_size"] = cfg["refine_kernel_size"]
        options.update(overrides)
    elif overrides:
        raise BgMattingError(f"'{path}' holds a MattingBase model, which has no refiner options "
                             f"({', '.join(sorted(overrides))})")
    options = {k: v for k, v in options.items() if k in REFINE_OPTIONS or k == "refine_kernel_size"}
    model = build_model(cfg["architecture"], cfg["backbone"], **options)
    _check_keys(model, state, str(path))
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model.eval()


def model_config(model: nn.Module) -> dict[str, Any]:
    """The constructor options of ``model`` as a JSON-friendly dict (architecture, backbone, refiner options)."""
    cfg: dict[str, Any] = {"architecture": type(model).__name__, "backbone": model.backbone_name}
    if isinstance(model, MattingRefine):
        r = model.refiner
        cfg.update(backbone_scale=model.backbone_scale, refine_mode=r.mode, refine_sample_pixels=r.sample_pixels,
                   refine_threshold=r.threshold, refine_kernel_size=r.kernel_size,
                   refine_prevent_oversampling=r.prevent_oversampling)
    return cfg


def save_weights(model: nn.Module, path: str | os.PathLike, dtype: torch.dtype | None = None,
                 description: str = "") -> Path:
    """Write ``model``'s weights to a ``.safetensors`` file with a bgmatting metadata header, atomically.

    Args:
        dtype: store floating-point tensors in this dtype (e.g. ``torch.float16`` to halve the size).
    """
    from safetensors.torch import save_file

    p = Path(path)
    cfg = model_config(model)
    meta = {"format": FORMAT_TAG, "architecture": cfg.pop("architecture"), "backbone": cfg.pop("backbone"),
            "config": json.dumps(cfg), "description": description}
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous()
    with atomic_path(p) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return p
