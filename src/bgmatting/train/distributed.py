"""Where a training process runs: its device, its place in a ``torchrun`` job, and the few collectives the loop uses.

Under ``torchrun`` there is one process per GPU (``nccl``) or CPU process (``gloo``); run alone, the world size is 1
and every helper here is a no-op.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..errors import BgMattingError

__all__ = ["Dist", "all_agree", "mean_across", "say", "setup", "unwrap"]


@dataclass
class Dist:
    """Where this process stands in a ``torchrun`` job (world size 1 when run alone)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group when started by ``torchrun`` and pick this process's device.

    ``device_name``: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` (under ``torchrun``, CUDA processes take
    ``cuda:LOCAL_RANK``). Raises :class:`BgMattingError` for an unknown or unavailable device.
    """
    want = device_name
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(want)
    except RuntimeError:
        raise BgMattingError(f"unknown device {device_name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type not in ("cpu", "cuda"):
        raise BgMattingError(f"device {device_name!r} is not supported for training; use 'cpu' or 'cuda'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BgMattingError(f"device '{device_name}' asked for, but CUDA is not available; use device='cpu'")
    d = Dist()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 or (dist.is_available() and dist.is_initialized()):
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            d.owns_group = True
        d.world_size, d.rank = dist.get_world_size(), dist.get_rank()
        d.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return d, device


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def say(d: Dist, msg: str) -> None:
    """Print ``msg`` on stderr from rank 0 only (without breaking a tqdm bar)."""
    if d.main:
        tqdm.write(msg, file=sys.stderr)


def all_agree(flag: bool, d: Dist, device: torch.device) -> bool:
    """``flag`` of rank 0, the same on every process (so that all of them stop at the same step)."""
    if not d.active:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def mean_across(values: dict[str, torch.Tensor], d: Dist) -> dict[str, float]:
    """The mean of each scalar tensor of ``values`` over all processes, as floats."""
    keys = sorted(values)
    t = torch.stack([values[k].float() for k in keys])
    if d.active:
        dist.all_reduce(t)
        t /= d.world_size
    return dict(zip(keys, t.tolist()))
