"""ONNX Runtime: one way to open a session, and :class:`OnnxModel`, which runs an ONNX file written by
``bgmatting export`` like the PyTorch model."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import BgMattingError, import_optional
from .model_metadata import FORMAT_TAG, INPUT_NAMES, OUTPUT_NAMES
from .models.matting import check_backbone_size, check_pair


def open_session(model: str | os.PathLike | bytes, error: str, *, providers: Sequence[str] | None = None,
                 threads: int | None = None, spin: bool = True, what: str = "ONNX Runtime"):
    """An ``onnxruntime.InferenceSession`` of ``model`` (a file or the bytes of one), quiet (errors only in its log).

    Args:
        error: the start of the message when the model cannot be loaded (``"<error>: <first line of the cause>"``).
        providers: execution providers in order of preference (default ``["CPUExecutionProvider"]``).
        threads: intra-op threads (default: ONNX Runtime's choice, all cores).
        spin: let idle threads spin-wait (faster alone; ``False`` leaves the cores to PyTorch in between).
        what: who needs ONNX Runtime, for the message when it is not installed.

    Raises:
        BgMattingError: ``onnxruntime`` missing, an unavailable provider, or a model that does not load.
    """
    ort = import_optional("onnxruntime", what, None)
    providers = list(providers or ["CPUExecutionProvider"])
    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise BgMattingError(f"ONNX Runtime provider(s) {', '.join(missing)} not available here; available: "
                             f"{', '.join(ort.get_available_providers())}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers)
    except Exception as e:  # noqa: BLE001 -- onnxruntime's own types (InvalidProtobuf, Fail, ...)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise BgMattingError(f"{error}: {first}") from None


def read_onnx_metadata(meta: dict[str, str], path: Path) -> dict[str, Any]:
    """The model configuration in an ONNX file's ``metadata_props`` ``meta``, as written by ``bgmatting export``."""
    if meta.get("format") != FORMAT_TAG:
        raise BgMattingError(f"'{path}' is an ONNX model but not one exported by bgmatting (no bgmatting metadata); "
                             "export one with 'bgmatting export --format onnx'")
    try:
        cfg = {"architecture": meta["architecture"], "backbone": meta["backbone"],
               **json.loads(meta.get("config", "{}"))}
    except (KeyError, json.JSONDecodeError, TypeError):
        raise BgMattingError(f"'{path}' has corrupt bgmatting metadata") from None
    if cfg["architecture"] not in OUTPUT_NAMES:
        raise BgMattingError(f"'{path}' holds an unknown architecture '{cfg['architecture']}'")
    return cfg


class OnnxModel:
    """Run an ONNX file written by :func:`export_onnx` with ONNX Runtime, like the PyTorch model.

    ``model(src, bgr)`` with ``src``, ``bgr`` ``(B, 3, H, W)`` tensors in [0, 1] (``H``, ``W`` multiples of 4 for
    ``MattingRefine``) returns the same tuple as the PyTorch model — ``(pha, fgr, err, hid)`` or
    ``(pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm)`` — as tensors on ``src``'s device, in the file's precision.

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers in order of preference (default ``["CPUExecutionProvider"]``;
            e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` with ``onnxruntime-gpu``).
        intra_op_threads: threads of one operator (default: ONNX Runtime's choice, all cores).

    Attributes:
        config: architecture, backbone and refiner options, as :func:`bgmatting.weights.model_config` gives them.
        metadata: the file's raw ``metadata_props``.
        output_names: the outputs' names, in order.
        session: the ``onnxruntime.InferenceSession``.

    Raises:
        BgMattingError: ``onnxruntime`` missing, a file that is not an ONNX model or not one of ours, or an
        unavailable provider.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None,
                 intra_op_threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise BgMattingError(f"ONNX file '{self.path}' does not exist")
        self.session = open_session(self.path, f"'{self.path}' is not a readable ONNX model", providers=providers,
                                    threads=intra_op_threads, what="OnnxModel")
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.config = read_onnx_metadata(self.metadata, self.path)
        self.architecture = self.config["architecture"]
        self.backbone_name = self.config["backbone"]
        self.precision = self.metadata.get("precision", "fp32")
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        inputs = self.session.get_inputs()
        if tuple(i.name for i in inputs) != INPUT_NAMES or self.output_names != OUTPUT_NAMES[self.architecture]:
            raise BgMattingError(f"'{self.path}' does not have the inputs/outputs of a bgmatting export")
        self._np_dtype = {"tensor(float16)": "float16", "tensor(float)": "float32"}.get(inputs[0].type, "float32")

    def __repr__(self) -> str:
        return f"OnnxModel('{self.path}', {self.architecture}({self.backbone_name}), {self.precision})"

    def __call__(self, src: torch.Tensor, bgr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        check_pair(src, bgr, multiple=4 if self.architecture == "MattingRefine" else 1)
        if isinstance(self.config.get("backbone_scale"), (int, float)):
            check_backbone_size(tuple(src.shape[2:]), self.config["backbone_scale"])
        feed = {n: t.detach().cpu().contiguous().numpy().astype(self._np_dtype, copy=False)
                for n, t in zip(INPUT_NAMES, (src, bgr))}
        outs = self.session.run(None, feed)
        return tuple(torch.from_numpy(o).to(src.device) for o in outs)
