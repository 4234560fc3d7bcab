"""``Matter``: matte frames of any size and type with one call.

It converts numpy / PIL / tensor inputs to ``(B, 3, H, W)`` float tensors in [0, 1], pads them (replicate,
bottom/right) to the size the model needs, runs the model on the chosen device and precision, crops back
and returns alpha, foreground, error and refinement maps at the input size.
"""

from __future__ import annotations

import os
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn

from .backends import make_runner, resolve_backend
from .errors import BgMattingError
from .models import MattingBase, MattingRefine
from .options import PRECISIONS
from .results import TENSOR_OUTPUTS, MatteResult
from .tensors import ImageLike, match_background, pad_to_multiple, to_tensor

PRECISION_DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.float16, torch.bfloat16)))
"""The autocast dtype of each of :data:`bgmatting.options.PRECISIONS`."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``'auto'`` → CUDA when available, else CPU; otherwise the named device, checked to exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise BgMattingError(f"unknown device '{device}'; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BgMattingError("CUDA was requested but no CUDA GPU is available; use --device cpu")
    return dev


MAX_SUPERSAMPLED_PIXELS = 40_000_000
"""The largest frame a backbone scale above 1/2 may enlarge to (the network's work at 1/2 on an image at the
default pixel limit): 4K at scale 1 passes, 8K does not."""


AUTO_REFERENCE_SIDE = 1280
"""With ``backbone_scale="auto"``: frames whose long side is shorter than this get a larger scale. Weights come
with the backbone scale for HD (the shipped model's 1/2: the base network then sees people as large as in its
training crops); a smaller frame at that scale shows it subjects too small (an SD frame's people of 77 px become
38 px)."""


def auto_backbone_scale(height: int, width: int, default: float) -> float:
    """The backbone scale ``"auto"`` picks for a ``height`` x ``width`` frame: the weights' own ``default`` for
    frames of :data:`AUTO_REFERENCE_SIDE` pixels (long side) and more; for smaller ones ``default`` doubled (the
    frame enlarged by a whole factor: 3/4 measured worse than both 1/2 and 1) until the base network sees at least
    as many pixels as at ``default`` on a frame of ``AUTO_REFERENCE_SIDE``, at most 1 (for the shipped model's 1/2:
    1 below 1280 px, 1/2 from there)."""
    side, scale = max(height, width, 1), default
    while scale * 2 <= 1 and side * scale < AUTO_REFERENCE_SIDE * default:
        scale *= 2
    return scale


def _network_setting(scale: float) -> tuple[float, float]:
    """``(network scale, supersample)`` for a backbone ``scale``: above 1/2 the network runs at 1/2 on the frame
    enlarged by ``2 * scale``."""
    return (0.5, 2 * float(scale)) if scale > 0.5 else (scale, 1.0)


class Matter:
    """Background matting for frames of any size.

    Args:
        model: a ``MattingBase``/``MattingRefine`` module, a zoo name, a weights path, ``None`` for the
            default model (see :func:`bgmatting.load_model`), or an ``.onnx`` file written by
            ``bgmatting export`` (run with ONNX Runtime, its refiner options fixed).
        device: ``'auto'`` (CUDA if available), ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
        precision: ``'fp32'``, ``'fp16'`` (CUDA only) or ``'bf16'``: autocast for the network.
        backend: how the network runs (see :mod:`bgmatting.backends`): ``'auto'`` (the default, or the
            ``BGMATTING_BACKEND`` environment variable), ``'eager'``, ``'onnxruntime'`` (CPU), ``'graph'`` (CUDA
            graphs) or ``'reference'`` (the plain module). All give the same outputs within float rounding;
            the engine is built at the first frame.
        **model_options: refiner options passed to :func:`bgmatting.load_model` when ``model`` is not a module.
            A ``backbone_scale`` above 1/2 (up to 1) supersamples: each frame is enlarged by ``2 * backbone_scale``
            and run at 1/2, so that the base network sees the frame at ``backbone_scale`` of its size, and the
            outputs are shrunk back (area average); ``refine_sample_pixels`` still counts the frame's own pixels.
            For subjects small in the frame (people under about 150 px in SD footage), which the base network at
            1/2 misses; it costs about ``(2 * backbone_scale)**2`` times the time. ``backbone_scale="auto"``
            picks the scale per frame size (:func:`auto_backbone_scale`): the weights' own for HD and larger,
            more (up to 1) for smaller frames, so that they are seen as HD frames are.

    Example:
        >>> matter = Matter("mobilenetv2")                          # doctest: +SKIP
        >>> result = matter(src_rgb_uint8, bgr_rgb_uint8)            # doctest: +SKIP
        >>> result.pha.shape, result.composite("#00ff00").shape      # doctest: +SKIP
        ((1080, 1920), (1080, 1920, 3))
    """

    def __init__(self, model: nn.Module | str | os.PathLike | None = None, device: str = "auto",
                 precision: str = "fp32", backend: str | None = None, **model_options):
        if precision not in PRECISIONS:
            raise BgMattingError(f"precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise BgMattingError("fp16 needs a CUDA GPU; on the CPU use --precision fp32 or bf16")
        self.precision = precision
        self._runner = None
        self.supersample = 1.0
        """How much each frame is enlarged before the network (``2 * backbone_scale`` for a scale above 1/2)."""
        self.auto_scale = False
        """Whether the backbone scale follows each frame's size (``backbone_scale="auto"``)."""
        from .weights import is_onnx_file, load_model

        if is_onnx_file(model):
            self._use_onnx_file(model, backend, model_options)
            return
        if not isinstance(model, nn.Module):
            scale = model_options.get("backbone_scale")
            if scale == "auto":
                self.auto_scale = True
                model_options = {k: v for k, v in model_options.items() if k != "backbone_scale"}
            elif isinstance(scale, (int, float)) and not isinstance(scale, bool) and 0.5 < scale <= 1:
                net, self.supersample = _network_setting(scale)
                model_options = {**model_options, "backbone_scale": net}
            model = load_model(model, **model_options)
            if self.supersample != 1 and isinstance(model, MattingRefine):
                model.refiner.sample_pixels = round(model.refiner.sample_pixels * self.supersample ** 2)
        elif model_options:
            raise BgMattingError("model options can only be given when Matter loads the model itself")
        if not isinstance(model, (MattingBase, MattingRefine)):
            raise BgMattingError(f"Matter needs a MattingBase or MattingRefine model, not {type(model).__name__}")
        self.model = model.eval().to(self.device)
        self.is_refine = isinstance(model, MattingRefine)
        self.auto_scale = self.auto_scale and self.is_refine  # a base model sees the whole frame anyway
        if self.auto_scale:
            self._own_scale, self._own_sample_pixels = model.backbone_scale, model.refiner.sample_pixels
            self._engines: dict = {}  # (network scale, supersample) -> (backend, engine)
        self.backend = resolve_backend(backend or os.environ.get("BGMATTING_BACKEND") or "auto", self.device,
                                       self.precision)

    def _use_onnx_file(self, path, backend: str | None, model_options: dict) -> None:
        """Run a file written by ``bgmatting export --format onnx`` with ONNX Runtime (its options are fixed)."""
        from .onnx_runtime import OnnxModel
        from .weights import check_onnx_options

        check_onnx_options(model_options)
        if backend not in (None, "auto", "onnxruntime"):
            raise BgMattingError(f"an exported ONNX file runs with the onnxruntime backend, not '{backend}'")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device.type == "cuda" else None
        self.model = self._runner = OnnxModel(path, providers=providers)
        if self.precision != self.model.precision:
            raise BgMattingError(f"'{path}' was exported in {self.model.precision}; use --precision "
                                 f"{self.model.precision}")
        self.is_refine = self.model.architecture == "MattingRefine"
        self.backend = "onnxruntime"

    @property
    def runner(self):
        """The callable that runs the network with :attr:`backend` (built on first use)."""
        if self._runner is None:
            self.backend, self._runner = make_runner(self.model, self.backend, self.device, self.precision)
        return self._runner

    @torch.inference_mode()
    def forward_tensors(self, src: torch.Tensor, bgr: torch.Tensor,
                        outputs: Collection[str] = TENSOR_OUTPUTS) -> dict[str, torch.Tensor]:
        """Run the model on a batch of any size.

        Args:
            src, bgr: ``(B, 3, H, W)`` float in [0, 1], same shape (any H, W).
            outputs: the kinds to return, among :data:`TENSOR_OUTPUTS` (default: all); the others are not made
                (``err`` and ``ref`` are resampled to full resolution only when asked for).

        Returns:
            dict of float32 tensors on the model's device, at ``(H, W)``: ``pha`` ``(B, 1, H, W)``, ``fgr``
            ``(B, 3, H, W)``, ``err`` ``(B, 1, H, W)``, ``ref`` ``(B, 1, H, W)``.
        """
        unknown = set(outputs) - set(TENSOR_OUTPUTS)
        if unknown:
            raise BgMattingError(f"unknown output(s) {', '.join(sorted(unknown))}; choose from "
                                 f"{', '.join(TENSOR_OUTPUTS)}")
        h, w = src.shape[2:]
        if self.auto_scale:
            self._use_scale(auto_backbone_scale(h, w, self._own_scale))
        src, bgr = src.to(self.device, torch.float32), bgr.to(self.device, torch.float32)
        if self.supersample != 1:
            big = round(h * self.supersample) * round(w * self.supersample)
            if big > MAX_SUPERSAMPLED_PIXELS:
                raise BgMattingError(f"backbone scale {self.backbone_scale:g} would enlarge this {w}x{h} frame to "
                                     f"{big / 1e6:.0f} megapixels, over the {MAX_SUPERSAMPLED_PIXELS // 10**6} "
                                     "that the network takes; scales above 1/2 are for smaller frames: use 1/2")
            src, bgr = (F.interpolate(t, scale_factor=self.supersample, mode="bilinear", align_corners=False)
                        for t in (src, bgr))
        sh, sw = src.shape[2:]
        src, bgr = pad_to_multiple(src), pad_to_multiple(bgr)
        dtype = PRECISION_DTYPES[self.precision]
        autocast = dtype != torch.float32 and self.backend != "onnxruntime"
        with torch.autocast(self.device.type, dtype=dtype, enabled=autocast):
            out = self.runner(src, bgr)
        H, W = src.shape[2:]
        if self.is_refine:
            pha, fgr, _pha_sm, _fgr_sm, err, ref = out
        else:
            pha, fgr, err, _hid = out
            ref = None
        res = {"pha": pha, "fgr": fgr}
        if "err" in outputs:
            res["err"] = err if err.shape[2:] == (H, W) else \
                F.interpolate(err.float(), size=(H, W), mode="bilinear", align_corners=False)
        if "ref" in outputs:
            res["ref"] = (torch.zeros_like(pha) if ref is None
                          else F.interpolate(ref.float(), size=(H, W), mode="nearest"))
        crop = (slice(None), slice(None), slice(0, sh), slice(0, sw))
        res = {k: res[k][crop].float() for k in TENSOR_OUTPUTS if k in outputs}
        if self.supersample != 1:
            res = {k: F.interpolate(v, size=(h, w), mode="nearest" if k == "ref" else "area")
                   for k, v in res.items()}
        return {k: v.clamp(0, 1) for k, v in res.items()}

    def _use_scale(self, scale: float) -> None:
        """Run the next frames at backbone ``scale`` (above 1/2: the network at 1/2 on an enlarged frame, with the
        refined pixels scaled alike); each setting keeps its own engine, built at its first frame (a folder of
        mixed sizes switches between at most two)."""
        net, supersample = _network_setting(scale)
        old = (self.model.backbone_scale, self.supersample)
        if (net, supersample) == old:
            return
        self._engines[old] = (self.backend, self._runner)
        self.model.backbone_scale = net
        self.model.refiner.sample_pixels = round(self._own_sample_pixels * supersample ** 2)
        self.supersample = supersample
        self.backend, self._runner = self._engines.get((net, supersample), (self.backend, None))

    @property
    def backbone_scale(self) -> float | None:
        """The scale of the frame that the base network sees (``None`` for a base model, which sees all of it)."""
        if not self.is_refine:
            return None
        scale = self.model.backbone_scale if isinstance(self.model, MattingRefine) else \
            self.model.config.get("backbone_scale")
        return None if scale is None else scale * self.supersample

    def __call__(self, src: ImageLike, bgr: ImageLike) -> MatteResult:
        """Matte one image.

        Args:
            src: the image with the subject: numpy ``(H, W[, C])`` uint8/uint16/float in [0, 1], PIL image, or
                tensor ``(C, H, W)``/``(1, C, H, W)``. Gray or RGB; RGBA's alpha is ignored with a warning.
            bgr: the shot of the same background without the subject, in any of those forms; a different size
                with the same aspect ratio is resized (with a warning).

        Returns:
            :class:`MatteResult` with numpy arrays at the size of ``src`` (each made when it is first read).
        """
        return MatteResult.from_tensors(self.forward_tensors(*self.pair_tensors(src, bgr)))

    def pair_tensors(self, src: ImageLike, bgr: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
        """The first half of :meth:`__call__`: ``src`` and ``bgr`` (any form it takes) as ``(1, 3, H, W)`` float
        tensors in [0, 1], the background resized to the source (with a warning) when its size differs.

        Raises:
            BgMattingError: not one image each, or a background of another aspect ratio.
        """
        s = to_tensor(src, "source image")
        b = to_tensor(bgr, "background image")
        if s.shape[0] != 1 or b.shape[0] != 1:
            raise BgMattingError("Matter() takes one image at a time; use forward_tensors() for batches")
        return s, match_background(b, tuple(s.shape[2:]))
