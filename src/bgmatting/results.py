"""``MatteResult``: the matte of one image as numpy arrays (alpha, foreground, error and refinement maps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .tensors import cover_resize, parse_colour, to_numpy, to_tensor

TENSOR_OUTPUTS = ("pha", "fgr", "err", "ref")
"""What :meth:`bgmatting.Matter.forward_tensors` can return: alpha, foreground, error map and refined-patch map."""


class _ArrayField:
    """A :class:`MatteResult` field: a tensor stored in it is converted to numpy when it is first read."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            raise AttributeError(self.name)  # no default value for the dataclass field
        value = obj.__dict__[self.name]
        if isinstance(value, torch.Tensor):
            value = obj.__dict__[self.name] = to_numpy(value.cpu())
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
        """The result from :meth:`bgmatting.Matter.forward_tensors`'s outputs (all four) for a batch of one image.

        The tensors are moved to the CPU now (freeing the device's memory) and made arrays when first read.
        """
        return cls(**{k: out[k].detach().cpu() for k in TENSOR_OUTPUTS})

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
