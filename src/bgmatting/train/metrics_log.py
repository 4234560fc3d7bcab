"""Rank 0's log of a training run: ``metrics.jsonl`` (one JSON object per logged step and per validation) always,
TensorBoard scalars and image grids in ``tensorboard/`` when TensorBoard is installed."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from .distributed import Dist, say

__all__ = ["RunLogger"]


class RunLogger:
    """Appends to ``out_dir/metrics.jsonl`` (and TensorBoard when ``tensorboard``) on rank 0; a no-op elsewhere."""

    def __init__(self, out_dir: Path, d: Dist, tensorboard: bool):
        self.enabled = d.main
        self.writer = None
        if not self.enabled:
            return
        self.jsonl = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                say(d, "tensorboard is not installed (pip install tensorboard): logging to metrics.jsonl only")
            else:
                self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def scalars(self, step: int, split: str, values: Mapping[str, float]) -> None:
        """One line ``{"step", "split", **values}``; finite numbers also as TensorBoard scalars ``split/name``."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"{split}/{k}", v, step)

    def images(self, step: int, tag: str, images: torch.Tensor) -> None:
        """``images`` ``(5·n, 3, H, W)`` in [0, 1] as one TensorBoard grid of 5 rows (TensorBoard only)."""
        if self.enabled and self.writer is not None:
            from torchvision.utils import make_grid

            self.writer.add_image(tag, make_grid(images, nrow=max(1, images.shape[0] // 5)), step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()
