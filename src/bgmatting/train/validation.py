"""Validation during training: loss and SAD/MSE/Grad over the fixed validation set, and a preview grid."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import BgMattingError
from .config import TrainConfig
from .seeding import TAG_VALID, derive_seed
from .steps import autocast, compute_losses, make_inputs

__all__ = ["validate"]


def _metric_functions():
    try:
        from ..evaluation.metrics import grad, mse, sad
    except ImportError:
        return {}
    return {"sad": sad, "mse": mse, "grad": grad}


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, cfg: TrainConfig, device: torch.device, amp: bool):
    """Loss and SAD/MSE/Grad over the fixed validation set (deterministic perturbations); returns
    ``(means, preview)`` where ``preview`` stacks src, bgr, predicted and true alpha, and composite of the first
    batch as ``(5·n, 3, H, W)``."""
    was_training = model.training
    model.eval()
    metrics = _metric_functions()
    totals: dict[str, float] = {}
    count, n_batches, preview = 0, 0, None
    for i, batch in enumerate(loader):
        src, bgr, fgr, pha = make_inputs(batch, derive_seed(cfg.seed, TAG_VALID, i), device, None)
        with autocast(device, amp):
            out = model(src, bgr)
        for k, v in compute_losses(cfg.stage, out, pha, fgr).items():
            totals[f"loss_{k}"] = totals.get(f"loss_{k}", 0.0) + float(v)
        n_batches += 1
        pred = out[0].float().clamp(0, 1)
        pred_np, true_np = pred[:, 0].cpu().double().numpy(), pha[:, 0].cpu().double().numpy()
        for name, fn in list(metrics.items()):
            try:
                totals[name] = totals.get(name, 0.0) + sum(fn(p, t) for p, t in zip(pred_np, true_np))
            except BgMattingError:  # Grad without SciPy
                metrics.pop(name)
        count += pred.shape[0]
        if preview is None:
            n = min(4, pred.shape[0])
            green = torch.tensor([0.0, 1.0, 0.0], device=device).view(1, 3, 1, 1)
            com = out[1][:n].float() * pred[:n] + green * (1 - pred[:n])
            preview = torch.cat([src[:n], bgr[:n], pred[:n].expand(-1, 3, -1, -1),
                                 pha[:n].expand(-1, 3, -1, -1), com]).clamp(0, 1).cpu()
    model.train(was_training)
    means = {k: v / (n_batches if k.startswith("loss_") else count) for k, v in totals.items()}
    means["samples"] = count
    return means, preview
