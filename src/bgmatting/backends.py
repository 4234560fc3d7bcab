"""Execution backends: the same model, run by the engine that is fastest on the machine at hand.

* ``"reference"``: the ``nn.Module`` as loaded (what training and the parity tests use).
* ``"eager"``: :class:`~bgmatting.models.optimised.FastMatting` in PyTorch eager mode: BatchNorm folded,
  channels_last, Winograd convolutions in the decoder on the CPU, a refiner that cuts its patches straight from
  the inputs.
* ``"onnxruntime"``: the same, with the backbone and ASPP (most of the FLOPs) exported to ONNX and run by ONNX
  Runtime, which is faster than PyTorch there on the CPU.
* ``"graph"`` (CUDA): the static-shape twin (fixed number of patches, no host synchronisation) captured in a
  CUDA graph per input shape, replayed for every frame of that shape.
* ``"auto"``: ``graph`` on CUDA; on the CPU ``onnxruntime`` when it is installed, else ``eager``.

Every backend computes the reference model's function: outputs agree within float rounding (tested ≤ 1e-4 in
fp32). :func:`make_runner` builds one; ``Matter(backend=...)`` and ``--backend`` use it.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import BgMattingError
from .io.atomic import atomic_write_bytes
from .io.cache import cache_dir
from .models import MattingBase, MattingRefine
from .models.optimised import FastMatting
from .onnx_runtime import open_session
from .options import BACKENDS
from .tracing import LEGACY_EXPORTER, quiet_trace


def onnxruntime_available() -> bool:
    """Whether the ``onnxruntime`` backend can run here: ONNX Runtime, and onnx for torch's exporter (both are
    dependencies of bgmatting; an environment may still lack them)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device, precision: str = "fp32") -> str:
    """The concrete backend for ``backend`` on ``device`` (``auto`` resolved); raises for impossible choices."""
    if backend not in BACKENDS:
        raise BgMattingError(f"backend must be one of {', '.join(BACKENDS)}, not '{backend}'")
    if backend == "auto":
        if device.type == "cuda":
            return "graph"
        if device.type == "cpu" and precision == "fp32" and onnxruntime_available():
            return "onnxruntime"
        return "eager"
    if backend == "graph" and device.type != "cuda":
        raise BgMattingError("the graph backend captures CUDA graphs and needs a CUDA device; on the CPU use "
                             "--backend onnxruntime or eager")
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise BgMattingError("the onnxruntime backend runs on the CPU; on a GPU use --backend graph or eager")
        if not onnxruntime_available():
            raise BgMattingError("the onnxruntime backend needs onnxruntime and onnx, dependencies of bgmatting that "
                                 "are missing here: pip install onnxruntime onnx")
        if precision != "fp32":
            raise BgMattingError("the onnxruntime backend runs in fp32; use --precision fp32 or --backend eager")
    return backend


class _Encoder(nn.Module):
    """The backbone and ASPP alone, as a module with tensor outputs ``(aspp(x4), x3, x2, x1)`` (for export)."""

    def __init__(self, net: MattingBase):
        super().__init__()
        self.net = net

    def forward(self, src: torch.Tensor, bgr: torch.Tensor):
        return self.net.encode(src, bgr)[:4]


OPSET = 17
CACHE_KEEP = 4  # exported encoders kept in the cache (the least recently used go first)
ENCODER_OUTPUTS = ["aspp", "x3", "x2", "x1"]


def _encoder_onnx(model: MattingBase) -> bytes:
    """The backbone and ASPP of ``model`` as an ONNX model (dynamic batch, height and width)."""
    net = _Encoder(model).eval()
    example = torch.rand(1, 3, 64, 64, device=next(model.parameters()).device)
    buf = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with quiet_trace():
        torch.onnx.export(net, (example, example), buf, input_names=["src", "bgr"], output_names=ENCODER_OUTPUTS,
                          dynamic_axes={n: axes for n in ["src", "bgr", *ENCODER_OUTPUTS]}, opset_version=OPSET,
                          **LEGACY_EXPORTER)
    return buf.getvalue()


def _encoder_key(model: MattingBase) -> str:
    """A digest of everything the exported encoder depends on: weights, architecture, exporter."""
    h = hashlib.sha256(f"{model.backbone_name}|torch {torch.__version__}|opset {OPSET}|encoder".encode())
    for name, value in model.state_dict().items():
        if name.startswith(("backbone.", "aspp.")):
            h.update(name.encode())
            h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def cached_encoder_onnx(model: MattingBase, cache: Path | None = None) -> bytes:
    """:func:`_encoder_onnx`, kept in ``cache`` (default ``~/.cache/bgmatting/onnx``) under a digest of the weights.

    Exporting takes seconds; the shipped model is exported once per machine. The :data:`CACHE_KEEP` most recently
    used files are kept. A cache that cannot be written is skipped silently.
    """
    folder = cache or cache_dir("onnx")
    path = folder / f"encoder-{_encoder_key(model)}.onnx"
    if path.is_file():
        os.utime(path)  # recently used
        return path.read_bytes()
    data = _encoder_onnx(model)
    try:
        atomic_write_bytes(path, data)
        kept = sorted(folder.glob("encoder-*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[CACHE_KEEP:]:
            old.unlink(missing_ok=True)
        for old in folder.glob("base-*.onnx"):  # the whole base networks that earlier versions cached
            old.unlink(missing_ok=True)
    except (BgMattingError, OSError):
        pass
    return data


class OnnxEncoder:
    """The backbone and ASPP of ``model`` run by ONNX Runtime: ``(src, bgr) -> (aspp(x4), x3, x2, x1)``, for
    ``FastMatting(encoder=...)`` (the decoder and refiner stay in PyTorch).

    The network is exported to ONNX (dynamic batch and size; cached on disk, see :func:`cached_encoder_onnx`) and
    loaded into an ``InferenceSession`` on the CPU with ``threads`` intra-op threads (default:
    ``torch.get_num_threads()``).
    """

    def __init__(self, model: MattingBase, threads: int | None = None, cache: Path | None = None):
        data = cached_encoder_onnx(model, cache)
        self.session = open_session(data, "the backbone's ONNX graph does not load", threads=threads or
                                    torch.get_num_threads(), spin=False, what="the onnxruntime backend")

    def __call__(self, src: torch.Tensor, bgr: torch.Tensor):
        feed = {"src": src.detach().float().contiguous().numpy(), "bgr": bgr.detach().float().contiguous().numpy()}
        return tuple(torch.from_numpy(a) for a in self.session.run(None, feed))


class CudaGraphRunner:
    """Replays ``module`` from CUDA graphs, one captured per input shape, dtype and autocast precision.

    ``module`` must be free of host synchronisation (the static :class:`FastMatting`). The inputs are copied
    into static buffers, the graph replayed and the outputs cloned (so that the next frame cannot overwrite them).
    An autocast context active at the first call of a shape is captured with it.
    """

    def __init__(self, module: nn.Module, max_graphs: int = 4):
        self.module = module
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, tuple] = {}

    def _run(self, src, bgr):
        return self.module(src, bgr)

    def __call__(self, src: torch.Tensor, bgr: torch.Tensor):
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        key = (tuple(src.shape), src.dtype, src.device, autocast)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                self.graphs.pop(next(iter(self.graphs)))
            static_src, static_bgr = src.clone(), bgr.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up kernels and cudnn autotuning outside the capture
                    self._run(static_src, static_bgr)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self._run(static_src, static_bgr)
            entry = self.graphs[key] = (graph, static_src, static_bgr, outputs)
        graph, static_src, static_bgr, outputs = entry
        static_src.copy_(src)
        static_bgr.copy_(bgr)
        graph.replay()
        return tuple(o.clone() for o in outputs)


Runner = Callable[[torch.Tensor, torch.Tensor], tuple]


def make_runner(model: MattingBase, backend: str, device: torch.device,
                precision: str = "fp32") -> tuple[str, Runner]:
    """Build the callable that runs ``model`` (already on ``device``, eval mode) with ``backend``.

    Returns ``(backend, runner)``: the concrete backend name (``auto`` resolved) and a callable
    ``runner(src, bgr)`` that returns the model's output tuple. Precision is the caller's autocast context.
    """
    if not isinstance(model, (MattingBase, MattingRefine)):
        raise BgMattingError(f"backends run MattingBase or MattingRefine models, not {type(model).__name__}")
    name = resolve_backend(backend, device, precision)
    if name == "reference":
        return name, model
    if name == "eager":
        return name, FastMatting(model, channels_last=device.type == "cpu" or precision != "fp32")
    if name == "onnxruntime":
        threads = int(os.environ.get("BGMATTING_ORT_THREADS", "0")) or None
        return name, FastMatting(model, channels_last=False, encoder=OnnxEncoder(model, threads))
    if isinstance(model, MattingRefine) and model.refiner.mode == "thresholding":
        if backend == "auto":  # a data-dependent number of patches cannot be captured
            return "eager", FastMatting(model, channels_last=True)
        raise BgMattingError("the graph backend needs a fixed amount of work per frame: use refine mode "
                             "sampling or full, or --backend eager")
    torch.backends.cudnn.benchmark = True
    return name, CudaGraphRunner(FastMatting(model, static=True, channels_last=True))
