"""Per-sample augmentation for training: foreground + alpha together, backgrounds on their own.

As in the Background Matting V2 paper's training, a foreground and its matte receive the *same* geometric
transform (random resized crop to the output size, random affine, horizontal flip) and the same box blur
and sharpening, so they stay aligned; colour jitter touches the foreground only. A background receives its
own, independently drawn crop, affine, flip, blur, sharpening and colour jitter.

Built on :mod:`torchvision.transforms.v2`: the pair is passed to one call as two ``tv_tensors.Image``, which
makes every random transform draw its parameters once for both. Both are resampled bilinearly (alpha is a
soft matte, not a label mask).

The per-*batch* perturbations (shadows, noise, background colour shifts and misalignment, compositing) live
in :mod:`bgmatting.data.perturb`; :func:`random_crop_batch` crops a batch to a randomly chosen size.

Randomness comes from torch's RNG: seed it with ``torch.manual_seed`` or pass ``generator=`` to a call (then
the global RNG state is left untouched).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..errors import BgMattingError

__all__ = ["RandomBoxBlur", "PairAugment", "BackgroundAugment", "box_blur", "random_crop_batch"]

Size = tuple[int, int]


def _size(size: int | Sequence[int]) -> Size:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"size must be a positive int or (H, W) pair of positive ints, not {size!r}")
    return int(size[0]), int(size[1])


def _ratio(size: Size, ratio: tuple[float, float] | None) -> tuple[float, float]:
    """Crop aspect ratios (w / h): by default 3/4 to 4/3 times the output's aspect ratio."""
    if ratio is not None:
        return ratio
    aspect = size[1] / size[0]
    return aspect * 3 / 4, aspect * 4 / 3


def box_blur(x: Tensor, kernel_size: int) -> Tensor:
    """Mean over a ``kernel_size × kernel_size`` window (odd size), replicate-padded; shape ``(..., C, H, W)`` kept."""
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive odd int, not {kernel_size}")
    if kernel_size == 1:
        return x
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1])
    r = kernel_size // 2
    flat = F.pad(flat, (r, r, r, r), mode="replicate")
    # separable: two 1-D means cost 2k per pixel instead of k² (shadows use kernels of 40+ pixels)
    flat = F.avg_pool2d(F.avg_pool2d(flat, (kernel_size, 1), stride=1), (1, kernel_size), stride=1)
    return flat.reshape(shape)


class RandomBoxBlur(v2.Transform):
    """With probability ``p``, box-blur every image in the call with one odd kernel size drawn from
    ``3 … max_kernel_size`` (shared by all of them). Masks, boxes and key points pass through."""

    def __init__(self, p: float = 0.1, max_kernel_size: int = 5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], not {p}")
        if max_kernel_size < 3:
            raise ValueError(f"max_kernel_size must be at least 3, not {max_kernel_size}")
        self.p = p
        self.max_kernel_size = max_kernel_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        apply = bool(torch.rand(()) < self.p)
        choices = (self.max_kernel_size - 1) // 2  # odd sizes 3, 5, ... <= max_kernel_size
        k = 3 + 2 * int(torch.randint(choices, ()))
        return {"apply": apply, "kernel_size": k}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"] or not isinstance(inpt, Tensor):
            return inpt
        if isinstance(inpt, tv_tensors.TVTensor) and not isinstance(inpt, (tv_tensors.Image, tv_tensors.Video)):
            return inpt
        out = box_blur(inpt.as_subclass(Tensor), params["kernel_size"])
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class _ResizeCover(v2.Transform):
    """Resize (keeping the aspect ratio) to the smallest size that covers ``size``; same size for all inputs."""

    def __init__(self, size: Size) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = TF.get_size(flat_inputs[0])
        scale = max(self.size[0] / h, self.size[1] / w)
        return {"size": [max(self.size[0], round(h * scale)), max(self.size[1], round(w * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.resize, inpt, params["size"], antialias=True)


def _run(fn, generator: torch.Generator | None):
    """Run ``fn()`` with torch's RNG seeded from ``generator`` (global state restored), or as is."""
    if generator is None:
        return fn()
    seed = int(torch.randint(2**63 - 1, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def _plain(x: Tensor) -> Tensor:
    return x.as_subclass(Tensor).clamp(0.0, 1.0)


class PairAugment:
    """Augment a foreground and its alpha matte with the same geometry.

    Training (``train=True``), in order, parameters shared by ``fgr`` and ``pha``:
    random resized crop to ``size`` (area fraction ``crop_scale``, aspect ``crop_ratio``) → random affine
    (``degrees``, ``translate``, ``scale``, ``shear``; uncovered area becomes ``fgr = 0``, ``pha = 0``) →
    horizontal flip (``p_flip``) → box blur (``p_blur``, odd kernel up to ``max_blur_kernel``) → sharpen
    (``p_sharpen``, factor ``sharpness``); then colour jitter on ``fgr`` only (``brightness``, ``contrast``,
    ``saturation``, ``hue``). Defaults are the paper's training settings.

    Validation (``train=False``): resize to cover ``size`` keeping the aspect ratio, then center-crop;
    deterministic.

    Call: ``fgr, pha = aug(fgr, pha, generator=None)`` with ``fgr (..., 3, H, W)`` and ``pha (..., 1, H, W)``
    float in ``[0, 1]`` (leading dims, e.g. frames, share the parameters). Returns ``(..., 3, h, w)`` and
    ``(..., 1, h, w)`` with ``(h, w) = size``, clamped to ``[0, 1]``. ``generator`` seeds the call's randomness
    without touching torch's global RNG; otherwise the global RNG is used.

    Example:
        >>> aug = PairAugment((64, 48))
        >>> fgr, pha = aug(torch.rand(3, 100, 80), torch.rand(1, 100, 80))
        >>> tuple(fgr.shape), tuple(pha.shape)
        ((3, 64, 48), (1, 64, 48))
    """

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        train: bool = True,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        crop_ratio: tuple[float, float] | None = None,
        degrees: float = 5.0,
        translate: tuple[float, float] = (0.1, 0.1),
        scale: tuple[float, float] = (0.4, 1.0),
        shear: float = 5.0,
        p_flip: float = 0.5,
        p_blur: float = 0.1,
        max_blur_kernel: int = 5,
        p_sharpen: float = 0.1,
        sharpness: float = 2.0,
        brightness: float = 0.15,
        contrast: float = 0.15,
        saturation: float = 0.15,
        hue: float = 0.05,
    ) -> None:
        self.size = _size(size)
        self.train = train
        if train:
            self.geometry = v2.Compose(
                [
                    v2.RandomResizedCrop(
                        self.size, scale=crop_scale, ratio=_ratio(self.size, crop_ratio), antialias=True
                    ),
                    v2.RandomAffine(degrees=degrees, translate=translate, scale=scale, shear=shear,
                                    interpolation=v2.InterpolationMode.BILINEAR, fill=0.0),
                    v2.RandomHorizontalFlip(p_flip),
                    RandomBoxBlur(p_blur, max_blur_kernel),
                    v2.RandomAdjustSharpness(sharpness, p=p_sharpen),
                ]
            )
            self.colour = v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        else:
            self.geometry = v2.Compose([_ResizeCover(self.size), v2.CenterCrop(self.size)])
            self.colour = None

    def __call__(self, fgr: Tensor, pha: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if fgr.ndim < 3 or fgr.shape[-3] != 3:
            raise ValueError(f"fgr must have shape (..., 3, H, W), got {tuple(fgr.shape)}")
        if pha.shape[:-3] != fgr.shape[:-3] or pha.shape[-3] != 1 or pha.shape[-2:] != fgr.shape[-2:]:
            raise ValueError(f"pha must have shape {(*fgr.shape[:-3], 1, *fgr.shape[-2:])}, got {tuple(pha.shape)}")

        def go() -> tuple[Tensor, Tensor]:
            f, p = self.geometry(tv_tensors.Image(fgr), tv_tensors.Image(pha))
            if self.colour is not None:
                f = self.colour(f)
            return _plain(f), _plain(p)

        return _run(go, generator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, train={self.train})"


class BackgroundAugment:
    """Augment a background on its own (parameters independent of any foreground's).

    Training (``train=True``): random resized crop to ``size`` → random affine (``degrees``, ``translate``,
    ``scale``, ``shear``; applied to a reflect-padded image so no black border appears for moderate
    parameters) → horizontal flip → box blur → sharpen → colour jitter. Defaults are the paper's training
    settings (the affine zooms in, ``scale=(1, 2)``).

    Validation (``train=False``): resize to cover ``size`` keeping the aspect ratio, then center-crop.

    Call: ``bgr = aug(bgr, generator=None)`` with ``bgr (..., 3, H, W)`` float in ``[0, 1]``; returns
    ``(..., 3, h, w)`` with ``(h, w) = size``, clamped to ``[0, 1]``.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        train: bool = True,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        crop_ratio: tuple[float, float] | None = None,
        degrees: float = 5.0,
        translate: tuple[float, float] = (0.1, 0.1),
        scale: tuple[float, float] = (1.0, 2.0),
        shear: float = 5.0,
        p_flip: float = 0.5,
        p_blur: float = 0.1,
        max_blur_kernel: int = 5,
        p_sharpen: float = 0.1,
        sharpness: float = 2.0,
        brightness: float = 0.15,
        contrast: float = 0.15,
        saturation: float = 0.15,
        hue: float = 0.05,
    ) -> None:
        self.size = _size(size)
        self.train = train
        h, w = self.size
        if train:
            pad_y, pad_x = max(1, h // 4), max(1, w // 4)
            if min(h, w) < 2:
                raise ValueError(f"size must be at least 2x2 for training augmentation, not {self.size}")
            self.transform = v2.Compose(
                [
                    v2.RandomResizedCrop(
                        self.size, scale=crop_scale, ratio=_ratio(self.size, crop_ratio), antialias=True
                    ),
                    v2.Pad([pad_x, pad_y, pad_x, pad_y], padding_mode="reflect"),
                    v2.RandomAffine(degrees=degrees, translate=translate, scale=scale, shear=shear,
                                    interpolation=v2.InterpolationMode.BILINEAR, fill=0.0),
                    v2.CenterCrop(self.size),
                    v2.RandomHorizontalFlip(p_flip),
                    RandomBoxBlur(p_blur, max_blur_kernel),
                    v2.RandomAdjustSharpness(sharpness, p=p_sharpen),
                    v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue),
                ]
            )
        else:
            self.transform = v2.Compose([_ResizeCover(self.size), v2.CenterCrop(self.size)])

    def __call__(self, bgr: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if bgr.ndim < 3 or bgr.shape[-3] != 3:
            raise ValueError(f"bgr must have shape (..., 3, H, W), got {tuple(bgr.shape)}")
        return _run(lambda: _plain(self.transform(tv_tensors.Image(bgr))), generator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, train={self.train})"


def _candidates(sizes: int | Sequence[int | Sequence[int]]) -> list[Size]:
    if isinstance(sizes, int):
        return [_size(sizes)]
    out = [_size(s if isinstance(s, int) else tuple(s)) for s in sizes]
    if not out:
        raise ValueError("sizes must name at least one crop size")
    return out


def random_crop_batch(
    tensors: Sequence[Tensor],
    sizes: int | Sequence[int | Sequence[int]],
    generator: torch.Generator | None = None,
) -> tuple[Tensor, ...]:
    """Crop a batch to one randomly chosen size at one random position, the same window for every tensor.

    Used per batch (for example to train the refiner on varied resolutions): pick a crop size from the
    candidates, then a position, and cut that window out of every given tensor and every item of the batch.

    Args:
        tensors: tensors ``(..., H, W)`` that share ``H, W`` (e.g. ``fgr (B, 3, H, W)``, ``pha (B, 1, H, W)``,
            ``bgr (B, 3, H, W)``).
        sizes: the candidate crop sizes, chosen uniformly: a sequence whose items are an int (square) or an
            ``(h, w)`` pair — ``[256, 384]`` or ``[(256, 256), (384, 512)]``; a single int means one square
            size. Note that ``(512, 384)`` means *two* square candidates; write ``[(512, 384)]`` for one size.
            (Pick sizes the model accepts, e.g. multiples of 4 for ``MattingRefine``.)
        generator: the random source; torch's global RNG when ``None``.

    Returns:
        The cropped tensors ``(..., h, w)``, in the given order (views of the inputs).

    Raises:
        BgMattingError: a candidate size is larger than the tensors.

    Example:
        >>> a, b = random_crop_batch([torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8)], [(4, 6)])
        >>> tuple(a.shape), tuple(b.shape)
        ((2, 3, 4, 6), (2, 1, 4, 6))
    """
    tensors = list(tensors)
    if not tensors:
        raise ValueError("random_crop_batch needs at least one tensor")
    hw = tuple(tensors[0].shape[-2:])
    for t in tensors[1:]:
        if tuple(t.shape[-2:]) != hw:
            raise ValueError(f"all tensors must share their last two dims: {[tuple(t.shape) for t in tensors]}")
    candidates = _candidates(sizes)
    too_big = [c for c in candidates if c[0] > hw[0] or c[1] > hw[1]]
    if too_big:
        raise BgMattingError(
            f"crop size(s) {too_big} are larger than the batch's {hw[0]}x{hw[1]} (H x W); "
            "choose smaller crop sizes or larger training images"
        )
    h, w = candidates[int(torch.randint(len(candidates), (), generator=generator))]
    top = int(torch.randint(hw[0] - h + 1, (), generator=generator))
    left = int(torch.randint(hw[1] - w + 1, (), generator=generator))
    return tuple(t[..., top : top + h, left : left + w] for t in tensors)

