"""``Matter``: matte frames of any size and type with one call.

It converts numpy / PIL / tensor inputs to ``(B, 3, H, W)`` float tensors in [0, 1], pads them (replicate,
bottom/right) to the size the model needs, runs the model on the chosen device and precision, crops back
and returns alpha, foreground, error and refinement maps at the input size.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backends import make_runner, resolve_backend
from .errors import BgMattingError
from .models import MattingBase, MattingRefine
from .names import MAX_WORKERS

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TENSOR_OUTPUTS = ("pha", "fgr", "err", "ref")
"""What :meth:`Matter.forward_tensors` can return: alpha, foreground, error map and refined-patch map."""
SIZE_MULTIPLE = 4  # the refiner works on 4×4 patches of the full image

ImageLike = Union[np.ndarray, torch.Tensor, "PIL.Image.Image"]  # noqa: F821


# --------------------------------------------------------------------------------------------- inputs

def to_tensor(image: Any, name: str = "image") -> torch.Tensor:
    """Convert an image to a ``(B, 3, H, W)`` float32 tensor in [0, 1] (a new tensor, never a view of ``image``).

    Accepts numpy arrays ``(H, W)``, ``(H, W, 1|3|4)`` of uint8, uint16 or float (taken as [0, 1]); PIL
    images; tensors ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)`` (uint8 or float). Gray is repeated to RGB;
    a fourth (alpha) channel is dropped with a warning.
    """
    if hasattr(image, "mode") and hasattr(image, "convert"):  # PIL image
        image = np.asarray(image.convert("RGBA" if image.mode in ("RGBA", "LA", "PA") else "RGB"))
    if isinstance(image, np.ndarray):
        arr = image[..., None] if image.ndim == 2 else image
        if arr.ndim != 3:
            raise BgMattingError(f"{name} must be an (H, W) or (H, W, C) array, got shape {image.shape}")
        if arr.dtype not in (np.uint8, np.uint16, np.bool_) and not np.issubdtype(arr.dtype, np.floating):
            raise BgMattingError(f"{name} has unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
        _check_channels(arr.shape[2], name)
        _check_size(arr.shape[:2], name)
        if arr.shape[2] == 4:
            arr = arr[..., :3]
        elif arr.shape[2] == 1:
            arr = np.broadcast_to(arr, (*arr.shape[:2], 3))
        # One single-threaded pass into a new (H, W, 3) float32 array (x / 255 rounded once, no float64).
        if arr.dtype == np.uint8 or arr.dtype == np.uint16:
            arr = np.true_divide(arr, 255.0 if arr.dtype == np.uint8 else 65535.0, dtype=np.float32, order="C")
        elif arr.dtype == np.bool_:
            arr = arr.astype(np.float32, order="C")
        else:
            arr = np.clip(arr, 0.0, 1.0, dtype=np.float32, order="C")
        return torch.from_numpy(arr).unsqueeze(0).permute(0, 3, 1, 2)  # channels-last strides, as before
    if not isinstance(image, torch.Tensor):
        raise BgMattingError(f"{name} must be a numpy array, PIL image or torch tensor, not {type(image).__name__}")
    t = image
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise BgMattingError(f"{name} must be an (H, W), (C, H, W) or (B, C, H, W) tensor, got {tuple(image.shape)}")
    if t.dtype not in (torch.uint8, torch.bool) and not t.is_floating_point():
        raise BgMattingError(f"{name} has unsupported dtype {t.dtype}; use uint8, uint16 or float in [0, 1]")
    _check_channels(t.shape[1], name)
    _check_size(t.shape[2:], name)
    if t.shape[1] == 4:
        t = t[:, :3]
    elif t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if t.dtype == torch.bool:
        return t.float()
    return t.float().clamp(0.0, 1.0)


def _check_channels(c: int, name: str) -> None:
    """Refuse channel counts other than 1 (gray), 3 (RGB) and 4 (RGBA, whose alpha is dropped with a warning)."""
    if c == 4:
        warnings.warn(f"{name} has an alpha channel; it is ignored", stacklevel=4)
    elif c not in (1, 3):
        raise BgMattingError(f"{name} must have 1, 3 or 4 channels, got {c}")


def _check_size(size: tuple[int, int], name: str) -> None:
    if size[0] < 1 or size[1] < 1:
        raise BgMattingError(f"{name} is empty ({size[0]}x{size[1]})")


def check_background_size(bgr_size: tuple[int, int], src_size: tuple[int, int], tolerance: float = 0.01) -> None:
    """Raise BgMattingError unless a background of ``(h, w)`` can serve a source of ``(H, W)`` (same aspect ratio)."""
    (h, w), (H, W) = bgr_size, src_size
    if abs((w / h) / (W / H) - 1.0) > tolerance:
        raise BgMattingError(f"background is {w}x{h} but the source is {W}x{H}: the background shot must show the "
                             "same view as the source (same aspect ratio)")


def match_background(bgr: torch.Tensor, size: tuple[int, int], tolerance: float = 0.01) -> torch.Tensor:
    """Resize ``bgr`` to ``size`` when its aspect ratio matches (with a warning), else raise BgMattingError."""
    h, w = bgr.shape[2:]
    if (h, w) == tuple(size):
        return bgr
    H, W = size
    check_background_size((h, w), (H, W), tolerance)
    warnings.warn(f"background {w}x{h} resized to the source size {W}x{H}", stacklevel=3)
    return F.interpolate(bgr, size=(H, W), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def pad_to_multiple(x: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> torch.Tensor:
    """Replicate-pad ``x`` ``(B, C, H, W)`` at the bottom and right so that H and W are multiples of ``multiple``."""
    h, w = x.shape[2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def parse_colour(text: str) -> tuple[float, float, float]:
    """``'#RRGGBB'``, ``'#RGB'`` or ``'r,g,b'`` (0-255) → an RGB tuple in [0, 1]."""
    if not isinstance(text, str):
        raise BgMattingError(f"a colour is text such as '#00ff00' or '0,255,0', not {type(text).__name__}")
    s = text.strip()
    m = re.fullmatch(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})", s)
    if m:
        h = m.group(1)
        if len(h) == 3:
            h = "".join(c * 2 for c in h)
        return tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))
    parts = s.split(",")
    if len(parts) == 3:
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            vals = []
        if vals and all(0 <= v <= 255 for v in vals):
            return tuple(v / 255.0 for v in vals)
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise BgMattingError(f"'{shown}' is not a colour; use #RRGGBB (e.g. #00ff00) or r,g,b with values 0-255")


# --------------------------------------------------------------------------------------------- results

def _to_numpy(x: torch.Tensor) -> np.ndarray:
    """A CPU tensor ``(1, 1, H, W)`` → ``(H, W)``, ``(1, C, H, W)`` → C-contiguous ``(H, W, C)`` (same dtype)."""
    x = x[0]
    if x.shape[0] == 1:
        return x[0].numpy()  # shares the tensor's memory: no copy
    hwc = x.permute(1, 2, 0)
    if hwc.is_contiguous():
        return hwc.numpy()
    planes = x.numpy()
    out = np.empty(hwc.shape, planes.dtype)
    for c, plane in enumerate(planes):  # a plane at a time: reads in order, about twice as fast as a transpose copy
        out[..., c] = plane
    return out


class _ArrayField:
    """A :class:`MatteResult` field: a tensor stored in it is converted to numpy when it is first read."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            raise AttributeError(self.name)  # no default value for the dataclass field
        value = obj.__dict__[self.name]
        if isinstance(value, torch.Tensor):
            value = obj.__dict__[self.name] = _to_numpy(value.cpu())
        return value

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.name] = value


@dataclass
class MatteResult:
    """The matte of one image, at the input size.

    Attributes:
        pha: alpha ``(H, W)`` float32 in [0, 1].
        fgr: foreground colour ``(H, W, 3)`` float32 in [0, 1] (meaningful where ``pha > 0``).
        err: the base network's error estimate, upsampled, ``(H, W)`` float32 in [0, 1].
        ref: ``(H, W)`` float32, 1 where the refiner re-predicted a 4×4 patch (all 0 for ``MattingBase``).

    Each may also be given as a tensor ``(1, 1, H, W)`` (``fgr``: ``(1, 3, H, W)``), as :meth:`from_tensors` does:
    it is converted to the array above the first time it is read, so outputs nobody reads cost nothing.
    """

    pha: np.ndarray = _ArrayField()
    fgr: np.ndarray = _ArrayField()
    err: np.ndarray = _ArrayField()
    ref: np.ndarray = _ArrayField()

    @classmethod
    def from_tensors(cls, out: dict[str, torch.Tensor]) -> "MatteResult":
        """The result from :meth:`Matter.forward_tensors`'s outputs (all four) for a batch of one image.

        The tensors are moved to the CPU now (freeing the device's memory) and made arrays when first read.
        """
        return cls(**{k: out[k].detach().cpu() for k in ("pha", "fgr", "err", "ref")})

    def mask(self, threshold: float = 0.5) -> np.ndarray:
        """Hard segmentation ``(H, W)`` bool: True where ``pha >= threshold`` (subject)."""
        return self.pha >= threshold

    def composite(self, target: Any = None) -> np.ndarray:
        """Composite the foreground over ``target``.

        Args:
            target: ``None`` → RGBA ``(H, W, 4)`` with straight (un-premultiplied) alpha, RGB 0 where alpha is 0
                (fully transparent pixels carry no colour: files stay small; :attr:`fgr` keeps it); a colour
                (``'#RRGGBB'`` or an RGB tuple in [0, 1]) or an image (array/PIL/tensor, resized to cover the frame)
                → RGB ``(H, W, 3)`` = ``pha·fgr + (1 − pha)·target``. All float32 in [0, 1].
        """
        pha = self.pha[..., None]
        if target is None:
            return np.concatenate([self.fgr * (pha > 0), pha], axis=2).astype(np.float32)
        if isinstance(target, str):
            target = parse_colour(target)
        if isinstance(target, (tuple, list)) and len(target) == 3 and all(np.isscalar(v) for v in target):
            bg = np.asarray(target, dtype=np.float32).reshape(1, 1, 3)
        else:
            bg = cover_resize(to_tensor(target, "target background"), self.pha.shape)
            bg = bg[0].permute(1, 2, 0).numpy()
        return (pha * self.fgr + (1.0 - pha) * bg).astype(np.float32)


def cover_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale ``x`` ``(B, C, h, w)`` to cover ``size`` (keeping its aspect ratio) and centre-crop to it."""
    H, W = size
    h, w = x.shape[2:]
    if (h, w) == (H, W):
        return x
    s = max(H / h, W / w)
    nh, nw = max(H, round(h * s)), max(W, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - H) // 2, (nw - W) // 2
    return x[:, :, top:top + H, left:left + W].clamp(0, 1)


# --------------------------------------------------------------------------------------------- Matter

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
        from .weights import is_onnx_file, load_model

        if is_onnx_file(model):
            self._use_onnx_file(model, backend, model_options)
            return
        if not isinstance(model, nn.Module):
            model = load_model(model, **model_options)
        elif model_options:
            raise BgMattingError("model options can only be given when Matter loads the model itself")
        if not isinstance(model, (MattingBase, MattingRefine)):
            raise BgMattingError(f"Matter needs a MattingBase or MattingRefine model, not {type(model).__name__}")
        self.model = model.eval().to(self.device)
        self.is_refine = isinstance(model, MattingRefine)
        self.backend = resolve_backend(backend or os.environ.get("BGMATTING_BACKEND") or "auto", self.device,
                                       self.precision)

    def _use_onnx_file(self, path, backend: str | None, model_options: dict) -> None:
        """Run a file written by ``bgmatting export --format onnx`` with ONNX Runtime (its options are fixed)."""
        from .export import OnnxModel
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
        src = pad_to_multiple(src.to(self.device, torch.float32))
        bgr = pad_to_multiple(bgr.to(self.device, torch.float32))
        dtype = PRECISIONS[self.precision]
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
            res["ref"] = torch.zeros_like(pha) if ref is None else F.interpolate(ref.float(), size=(H, W), mode="nearest")
        crop = (slice(None), slice(None), slice(0, h), slice(0, w))
        return {k: res[k][crop].float().clamp(0, 1) for k in TENSOR_OUTPUTS if k in outputs}

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
        s = to_tensor(src, "source image")
        b = to_tensor(bgr, "background image")
        if s.shape[0] != 1 or b.shape[0] != 1:
            raise BgMattingError("Matter() takes one image at a time; use forward_tensors() for batches")
        b = match_background(b, tuple(s.shape[2:]))
        return MatteResult.from_tensors(self.forward_tensors(s, b))


def tensor_to_uint(x: torch.Tensor, high_bit: bool = False) -> np.ndarray:
    """``(B, C, H, W)`` float in [0, 1] → contiguous ``(B, H, W, C)`` uint8 (or uint16) numpy, rounded."""
    top = 65535.0 if high_bit else 255.0
    # a copy in row order (as encoders take images), never the caller's tensor: one output can feed another
    x = x.cpu().permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format).clamp_(0, 1).mul_(top).round_()
    x = x.to(torch.int32 if high_bit else torch.uint8).numpy()
    return x.astype(np.uint16) if high_bit else x


class ModelWorkers:
    """Calls of the model on up to ``workers`` threads at once, handed back in the order they were submitted.

    On a CPU, two calls that each use one thread get more done than one call on two threads (small operations do
    not keep two threads busy). Used as a context manager: PyTorch's thread count is shared among the workers
    while it is open (each worker thread reads it as it starts) and given back at the end; an exception cancels
    the calls not started yet and lets the running ones finish.

    Args:
        workers: how many at once; ``None``: 2 for a :class:`Matter` on a CPU with 2 threads or more, else 1
            (other objects may not be thread-safe). More than 1 only on a CPU.
        matter: the :class:`Matter` (or stand-in) the calls use; a :class:`Matter` gets its runner built before
            the workers start, once, with their thread count.
        device: where the model runs.
    """

    def __init__(self, workers: int | None, matter: Any, device: torch.device):
        self.check(workers)
        if workers is None:
            workers = 2 if isinstance(matter, Matter) and device.type == "cpu" and torch.get_num_threads() >= 2 else 1
        elif workers > 1 and device.type != "cpu":
            raise BgMattingError(f"--workers {workers}: parallel model calls are for the CPU; on {device.type} use 1 "
                                 "(a larger --batch instead)")
        self.workers, self.matter = int(workers), matter
        self._pool: ThreadPoolExecutor | None = None
        self._threads: int | None = None  # PyTorch's thread count, to give back
        self._queue: deque[Future] = deque()

    @staticmethod
    def check(workers: int | None) -> None:
        """Refuse a ``workers`` that is not ``None`` or a positive integer (before any work)."""
        if workers is not None and (not isinstance(workers, (int, np.integer)) or isinstance(workers, bool)
                                    or not 1 <= workers <= MAX_WORKERS):
            raise BgMattingError(f"workers must be a positive integer, at most {MAX_WORKERS}, got {workers}")

    def start(self) -> "ModelWorkers":
        """Share the threads and start the workers (what ``with`` does on entry)."""
        if self.workers > 1 and self._pool is None:
            self._threads = torch.get_num_threads()
            torch.set_num_threads(max(1, self._threads // self.workers))
            try:
                if isinstance(self.matter, Matter):
                    self.matter.runner  # noqa: B018  (built here, once, with the workers' thread count)
            except BaseException:
                self.close()
                raise
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="bgmatting-model")
        return self

    def submit(self, fn: Callable, *args) -> list:
        """Queue ``fn(*args)``; returns the results now due, oldest first: none while a worker is free, else the
        oldest call's (waiting for it). With one worker, ``fn`` runs here and now. Exceptions propagate."""
        if self._pool is None:
            return [fn(*args)]
        self._queue.append(self._pool.submit(fn, *args))
        done = []
        while len(self._queue) >= self.workers:
            done.append(self._queue.popleft().result())
        return done

    def drain(self) -> list:
        """The results of every call still queued, in order."""
        done = []
        while self._queue:
            done.append(self._queue.popleft().result())
        return done

    def __enter__(self) -> "ModelWorkers":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the calls not started, wait for the running ones, give the threads back (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._queue.clear()
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None
