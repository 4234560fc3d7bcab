"""The losses of Background Matting V2 (Lin et al., 2021, "Real-Time High-Resolution Background Matting").

Notation follows the paper: ``pha`` (α), ``fgr`` (F), ``err`` (E) are predictions, ``true_pha`` (α*) and
``true_fgr`` (F*) the ground truth. All tensors are NCHW float in ``[0, 1]``.

- Alpha:       ``L_α = ‖α − α*‖₁ + ‖∇α − ∇α*‖₁``
- Foreground:  ``L_F = ‖(α* > 0) · (F − F*)‖₁``
- Error:       ``L_E = ‖E − E*‖₂`` with ``E* = |α − α*|``

Choices the paper leaves open, made here once:

- Every norm is a **mean** over all elements (batch, channels, pixels), so the loss does not grow with the
  image size or the batch size; ``L_E`` is the mean *squared* error.
- ``∇`` is the 3×3 Sobel operator, normalised by 1/8 so that a ramp rising by 1 per pixel has gradient 1;
  borders are replicate-padded (a flat border has zero gradient). The gradient term is the mean absolute
  difference over both the x and the y gradient images.
- ``E*`` is computed from a *detached* α: the error term trains the error head only and sends no gradient
  into α through its target.
- ``L_F`` masks with ``α* > 0`` and still divides by *all* elements (not by the masked count), so images with
  little foreground weigh less.
- Targets larger than a prediction are resized to the prediction's size (bilinear, ``align_corners=False``).

Two entry points compute a whole stage's loss and return a dict of named terms plus ``"total"`` (the sum to
back-propagate); every value is a scalar tensor, so a trainer can log ``{k: v.item() for k, v in d.items()}``:

- :func:`base_loss` for ``MattingBase`` → keys ``pha``, ``fgr``, ``err``, ``total``.
- :func:`refine_loss` for ``MattingRefine`` → keys ``pha``, ``fgr``, ``pha_sm``, ``fgr_sm``, ``err_sm``, ``total``.

Each function has a thin :class:`torch.nn.Module` wrapper (:class:`AlphaLoss`, :class:`ForegroundLoss`,
:class:`ErrorLoss`, :class:`BaseLoss`, :class:`RefineLoss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..shapes import check_same_shape, check_shape

__all__ = [
    "spatial_gradient",
    "alpha_loss",
    "foreground_loss",
    "error_loss",
    "resize_target",
    "base_loss",
    "refine_loss",
    "AlphaLoss",
    "ForegroundLoss",
    "ErrorLoss",
    "BaseLoss",
    "RefineLoss",
]


def _check_nchw(name: str, x: Tensor, channels: int | None = None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, not {type(x).__name__}")
    check_shape(x, name, "B C H W", **({} if channels is None else {"C": channels}))


def spatial_gradient(x: Tensor) -> Tensor:
    """Normalised 3×3 Sobel gradients of each channel, replicate-padded.

    The kernels are ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] / 8`` for x and its transpose for y (applied as a
    cross-correlation), so a ramp rising by 1 per pixel along x has an x gradient of exactly 1 inside the image
    (0.5 on the first and last column, where the border is replicated).

    Args:
        x: ``(B, C, H, W)``.

    Returns:
        ``(B, C, 2, H, W)``: index 0 of dim 2 is d/dx (along W), index 1 is d/dy (along H).

    Example:
        >>> ramp = torch.arange(4.0).expand(1, 1, 4, 4)
        >>> spatial_gradient(ramp)[0, 0, 0, 1]
        tensor([0.5000, 1.0000, 1.0000, 0.5000])
    """
    _check_nchw("x", x)
    b, c, h, w = x.shape
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype) / 8
    kernel = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    padded = F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernel).reshape(b, c, 2, h, w)


def alpha_loss(pha: Tensor, true_pha: Tensor) -> Tensor:
    """``L_α = mean|α − α*| + mean|∇α − ∇α*|`` (Sobel gradients, see :func:`spatial_gradient`).

    Args:
        pha: predicted alpha ``(B, 1, H, W)`` in ``[0, 1]``.
        true_pha: ground-truth alpha, same shape, in ``[0, 1]``.

    Returns:
        A scalar tensor.

    Example:
        >>> alpha_loss(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5))
        tensor(0.5000)
    """
    _check_nchw("pha", pha)
    check_same_shape(pha, "pha", true_pha, "true_pha")
    return F.l1_loss(pha, true_pha) + F.l1_loss(spatial_gradient(pha), spatial_gradient(true_pha))


def foreground_loss(fgr: Tensor, true_fgr: Tensor, true_pha: Tensor) -> Tensor:
    """``L_F = mean|(α* > 0) · (F − F*)|``: the foreground counts only where the true alpha is not zero.

    Args:
        fgr: predicted foreground ``(B, 3, H, W)`` in ``[0, 1]``.
        true_fgr: ground-truth foreground, same shape.
        true_pha: ground-truth alpha ``(B, 1, H, W)``; the mask ``α* > 0`` is shared by the 3 channels.

    Returns:
        A scalar tensor: the masked absolute error averaged over *all* ``B·3·H·W`` elements.

    Example:
        >>> mask = torch.tensor([[[[0.0, 1.0]]]])  # (1, 1, 1, 2): only the right pixel counts
        >>> foreground_loss(torch.ones(1, 3, 1, 2), torch.zeros(1, 3, 1, 2), mask)
        tensor(0.5000)
    """
    _check_nchw("fgr", fgr)
    check_same_shape(fgr, "fgr", true_fgr, "true_fgr")
    _check_nchw("true_pha", true_pha, channels=1)
    if true_pha.shape[0] != fgr.shape[0] or true_pha.shape[-2:] != fgr.shape[-2:]:
        raise ValueError(f"true_pha {tuple(true_pha.shape)} does not match fgr {tuple(fgr.shape)} in batch or size")
    mask = (true_pha > 0).to(fgr.dtype)
    return (mask * (fgr - true_fgr)).abs().mean()


def error_loss(err: Tensor, pha: Tensor, true_pha: Tensor) -> Tensor:
    """``L_E = mean (E − E*)²`` with ``E* = |α − α*|`` computed from a detached ``α``.

    Only ``err`` receives a gradient from this loss: the target ``E*`` is a constant.

    Args:
        err: predicted error map ``(B, 1, H, W)`` in ``[0, 1]``.
        pha: predicted alpha, same shape (used detached).
        true_pha: ground-truth alpha, same shape.

    Returns:
        A scalar tensor.

    Example:
        >>> error_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
        tensor(1.)
    """
    _check_nchw("err", err)
    check_same_shape(err, "err", pha, "pha")
    check_same_shape(err, "err", true_pha, "true_pha")
    true_err = (pha.detach() - true_pha).abs()
    return F.mse_loss(err, true_err)


def resize_target(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Resize a target ``(B, C, H, W)`` to ``size = (h, w)`` (bilinear, ``align_corners=False``); no-op when equal."""
    _check_nchw("target", x)
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def base_loss(pha: Tensor, fgr: Tensor, err: Tensor, true_pha: Tensor, true_fgr: Tensor) -> dict[str, Tensor]:
    """The base-stage loss ``L_α + L_F + L_E`` on ``MattingBase``'s outputs.

    Targets are resized to the prediction's size when they differ (see :func:`resize_target`).

    Args:
        pha: ``(B, 1, h, w)`` in ``[0, 1]``.
        fgr: ``(B, 3, h, w)`` in ``[0, 1]``.
        err: ``(B, 1, h, w)`` in ``[0, 1]``.
        true_pha: ``(B, 1, H, W)`` in ``[0, 1]``.
        true_fgr: ``(B, 3, H, W)`` in ``[0, 1]``.

    Returns:
        ``{"pha": L_α, "fgr": L_F, "err": L_E, "total": L_α + L_F + L_E}``, all scalar tensors.
    """
    _check_nchw("pha", pha, channels=1)
    size = pha.shape[-2:]
    true_pha = resize_target(true_pha, size)
    true_fgr = resize_target(true_fgr, size)
    terms = {
        "pha": alpha_loss(pha, true_pha),
        "fgr": foreground_loss(fgr, true_fgr, true_pha),
        "err": error_loss(err, pha, true_pha),
    }
    terms["total"] = terms["pha"] + terms["fgr"] + terms["err"]
    return terms


def refine_loss(
    pha: Tensor,
    fgr: Tensor,
    pha_sm: Tensor,
    fgr_sm: Tensor,
    err_sm: Tensor,
    true_pha: Tensor,
    true_fgr: Tensor,
) -> dict[str, Tensor]:
    """The refine-stage loss on ``MattingRefine``'s outputs: full-resolution ``L_α + L_F`` plus the coarse
    ``L_α + L_F + L_E`` against targets resized to the coarse size.

    Args:
        pha: full-resolution alpha ``(B, 1, H, W)`` in ``[0, 1]``.
        fgr: full-resolution foreground ``(B, 3, H, W)`` in ``[0, 1]``.
        pha_sm: coarse alpha ``(B, 1, h, w)`` (``h = H · backbone_scale``).
        fgr_sm: coarse foreground ``(B, 3, h, w)``.
        err_sm: coarse error map ``(B, 1, h, w)``.
        true_pha: ``(B, 1, H, W)`` in ``[0, 1]``.
        true_fgr: ``(B, 3, H, W)`` in ``[0, 1]``.

    Returns:
        ``{"pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "total"}``: the full-resolution terms, the coarse terms
        and their sum, all scalar tensors.
    """
    _check_nchw("pha", pha, channels=1)
    _check_nchw("pha_sm", pha_sm, channels=1)
    full_pha = resize_target(true_pha, pha.shape[-2:])
    full_fgr = resize_target(true_fgr, pha.shape[-2:])
    coarse = base_loss(pha_sm, fgr_sm, err_sm, true_pha, true_fgr)
    terms = {
        "pha": alpha_loss(pha, full_pha),
        "fgr": foreground_loss(fgr, full_fgr, full_pha),
        "pha_sm": coarse["pha"],
        "fgr_sm": coarse["fgr"],
        "err_sm": coarse["err"],
    }
    terms["total"] = sum(terms.values())
    return terms


class AlphaLoss(nn.Module):
    """Module form of :func:`alpha_loss`: ``forward(pha, true_pha)`` → scalar."""

    def forward(self, pha: Tensor, true_pha: Tensor) -> Tensor:
        return alpha_loss(pha, true_pha)


class ForegroundLoss(nn.Module):
    """Module form of :func:`foreground_loss`: ``forward(fgr, true_fgr, true_pha)`` → scalar."""

    def forward(self, fgr: Tensor, true_fgr: Tensor, true_pha: Tensor) -> Tensor:
        return foreground_loss(fgr, true_fgr, true_pha)


class ErrorLoss(nn.Module):
    """Module form of :func:`error_loss`: ``forward(err, pha, true_pha)`` → scalar."""

    def forward(self, err: Tensor, pha: Tensor, true_pha: Tensor) -> Tensor:
        return error_loss(err, pha, true_pha)


class BaseLoss(nn.Module):
    """Module form of :func:`base_loss`: ``forward(pha, fgr, err, true_pha, true_fgr)`` → dict of terms."""

    def forward(self, pha: Tensor, fgr: Tensor, err: Tensor, true_pha: Tensor, true_fgr: Tensor) -> dict[str, Tensor]:
        return base_loss(pha, fgr, err, true_pha, true_fgr)


class RefineLoss(nn.Module):
    """Module form of :func:`refine_loss`: ``forward(pha, fgr, pha_sm, fgr_sm, err_sm, true_pha, true_fgr)``."""

    def forward(
        self,
        pha: Tensor,
        fgr: Tensor,
        pha_sm: Tensor,
        fgr_sm: Tensor,
        err_sm: Tensor,
        true_pha: Tensor,
        true_fgr: Tensor,
    ) -> dict[str, Tensor]:
        return refine_loss(pha, fgr, pha_sm, fgr_sm, err_sm, true_pha, true_fgr)
