"""One training step: a batch of samples → the model's inputs (crop, perturbations), its forward, the stage's
losses, and the optimiser's step. Validation reuses the inputs, the forward and the losses."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch

from ..data.augment import random_crop_batch
from ..data.perturb import make_pair, motion_blur
from .config import PERTURBATIONS, TrainConfig
from .losses import base_loss, refine_loss

__all__ = ["autocast", "compute_losses", "make_inputs", "train_step"]


def make_inputs(batch: Mapping[str, torch.Tensor], seed: int, device: torch.device,
                crop_sizes: Sequence[tuple[int, int]] | None, cfg: TrainConfig | None = None):
    """Samples → ``(src, bgr, true_fgr, true_pha)`` on ``device``: crop the batch, then perturb it (deterministic
    in ``seed``) with ``cfg``'s perturbations (``None``: BGMv2's, as validation uses). ``crop_sizes=None`` keeps
    the full size. Samples flagged ``batch["extra"]`` (a second subject) are misaligned with
    ``cfg.extra_subject_misalign_p`` when it is set."""
    fgr, pha, bgr = (batch[k].to(device, non_blocking=True) for k in ("fgr", "pha", "bgr"))
    if crop_sizes is not None:
        fgr, pha, bgr = random_crop_batch([fgr, pha, bgr], crop_sizes, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator(device).manual_seed(seed)
    options = {}
    if cfg is not None:
        options = {name: getattr(cfg, name) for name in PERTURBATIONS if name != "motion_blur_p"}
        options["perspective"] = cfg.perspective
        options["misalign_strength"] = cfg.misalign_strength
        options["shadow_strength"] = tuple(cfg.shadow_strength)
        if cfg.extra_subject_misalign_p is not None and "extra" in batch:
            extra = batch["extra"].to(torch.float32).flatten() > 0
            options["misalign_p"] = torch.where(extra, float(cfg.extra_subject_misalign_p), float(cfg.misalign_p))
        if cfg.motion_blur_p > 0:
            fgr, pha = motion_blur(fgr, pha, g, p=cfg.motion_blur_p)
    src, bgr_shot = make_pair(fgr, pha, bgr, generator=g, **options)
    return src, bgr_shot, fgr, pha


def compute_losses(stage: str, out: Sequence[torch.Tensor], true_pha: torch.Tensor, true_fgr: torch.Tensor):
    """The ``stage``'s loss terms (:func:`~.losses.base_loss` or :func:`~.losses.refine_loss`) on the model's
    outputs ``out``, computed in float32."""
    out = [o.float() for o in out]
    if stage == "base":
        pha, fgr, err, _hid = out
        return base_loss(pha, fgr, err, true_pha, true_fgr)
    pha, fgr, pha_sm, fgr_sm, err_sm, _ref = out
    return refine_loss(pha, fgr, pha_sm, fgr_sm, err_sm, true_pha, true_fgr)


def autocast(device: torch.device, enabled: bool):
    """float16 autocast on ``device`` when ``enabled``, else a no-op context."""
    if enabled:
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def train_step(model, optimizer, scaler, stage, src, bgr, true_fgr, true_pha, amp, device) -> dict[str, torch.Tensor]:
    """Forward, loss, backward and optimiser step (through the gradient ``scaler``); returns the detached terms."""
    with autocast(device, amp):
        out = model(src, bgr)
    terms = compute_losses(stage, out, true_pha, true_fgr)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {k: v.detach() for k, v in terms.items()}
