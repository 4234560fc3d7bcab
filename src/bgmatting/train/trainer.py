"""The trainer: a plain, resumable training loop for the base and the refine stage, distributed with ``torchrun``.

One call does a whole run::

    from bgmatting.train.config import TrainConfig
    from bgmatting.train.trainer import train, export_weights

    ckpt = train(TrainConfig(stage="base", data_root="/work/corpus", steps=20_000, out_dir="runs/base"))
    ckpt = train(TrainConfig(stage="refine", data_root="/work/corpus", steps=20_000, out_dir="runs/refine",
                             base_checkpoint=str(ckpt)))
    export_weights(ckpt, "bgmatting_mobilenetv2.safetensors")

or, on several GPUs (or CPU processes: gloo)::

    torchrun --nproc_per_node 4 -m bgmatting.train.trainer train.toml steps=20000

What one step does (the paper's recipe):

1. the DataLoader yields samples ``fgr (B, 3, S, S)``, ``pha (B, 1, S, S)``, ``bgr (B, 3, S, S)`` augmented on the
   CPU workers (:class:`~bgmatting.data.augment.PairAugment`, :class:`~bgmatting.data.augment.BackgroundAugment`,
   ``S = size``);
2. on the training device: :func:`~bgmatting.data.augment.random_crop_batch` to a random ``H × W`` (multiples of 4,
   or of ``4 / backbone_scale`` in the refine stage), then :func:`~bgmatting.data.perturb.make_pair` (shadow,
   noise, background colour change and misalignment) gives the model's ``src`` and ``bgr``;
3. ``MattingBase`` + :func:`~bgmatting.train.losses.base_loss`, or ``MattingRefine`` (sampling mode) +
   :func:`~bgmatting.train.losses.refine_loss`; Adam with one learning rate per part; AMP on CUDA.

Reproducibility and resuming: the data order is a function of ``(seed, epoch)`` (a ``DistributedSampler``), every
sample's augmentation a function of ``(seed, epoch, index)``, and the per-batch crop, perturbations and dropout
a function of ``(seed, step, rank)``. A checkpoint therefore only needs the step to continue exactly where it
stopped; it also stores the model, optimiser, gradient scaler and the Python/NumPy/torch/CUDA RNG states (of
rank 0), and is written atomically (temporary file + rename). ``resume=True`` restarts from the newest
``checkpoint-*.pt`` in ``out_dir``.

Distributed (``torchrun``): one process per GPU (``nccl``) or CPU process (``gloo``); each reads its share of
the data (``DistributedSampler``), ``batch_size`` is per process. In the refine stage on GPUs the backbone, ASPP and
decoder use ``SyncBatchNorm`` (PyTorch's SyncBatchNorm does not run on the CPU, so CPU processes keep their own
BatchNorm statistics; the refiner keeps plain BatchNorm: it sees thousands of patches per process, and a process
whose error map selects no patch would otherwise wait forever for the others). Only rank 0 logs, validates and
writes checkpoints.

Output in ``out_dir``: ``config.toml`` (the resolved options), ``checkpoint-<step>.pt``, ``metrics.jsonl`` (one
JSON object per logged step and per validation) and, when TensorBoard is installed, ``tensorboard/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import random
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Sampler, Subset
from tqdm import tqdm

from ..data.augment import BackgroundAugment, PairAugment, random_crop_batch
from ..data.datasets import (
    VIDEO_SUFFIXES,
    BackgroundImageDataset,
    BackgroundVideoDataset,
    ImageMatteDataset,
    MattingSampleDataset,
    PhotoMatteDataset,
    VideoMatteDataset,
)
from ..data.perturb import make_pair, motion_blur
from ..errors import BgMattingError
from ..io import atomic_path
from ..weights import build_model, model_config, save_weights
from .config import PERTURBATIONS, TrainConfig, parse_overrides, to_toml
from .init import load_init
from .losses import base_loss, refine_loss

__all__ = ["export_weights", "latest_checkpoint", "load_checkpoint", "main", "train"]

CHECKPOINT_FORMAT = "bgmatting-train"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")
_TAG_SAMPLE, _TAG_STEP, _TAG_VALID = 1, 2, 3  # streams of derived seeds


# ================================================================================================ helpers

def _derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the integers ``parts`` (well mixed, stable across platforms)."""
    return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1, np.uint64)[0] % 2**63)


@dataclass
class _Dist:
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


def _setup(cfg: TrainConfig) -> tuple[_Dist, torch.device]:
    """Join the process group when started by ``torchrun`` and pick this process's device."""
    want = cfg.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(want)
    except RuntimeError:
        raise BgMattingError(f"unknown device {cfg.device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type not in ("cpu", "cuda"):
        raise BgMattingError(f"device {cfg.device!r} is not supported for training; use 'cpu' or 'cuda'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BgMattingError(f"device '{cfg.device}' asked for, but CUDA is not available; use device='cpu'")
    d = _Dist()
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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _say(d: _Dist, msg: str) -> None:
    if d.main:
        tqdm.write(msg, file=sys.stderr)


# ================================================================================================ data

def _matte_kind(root: Path) -> str:
    if (root / "fgr").is_dir() and (root / "pha").is_dir():
        return "image"
    if any((root / split / "fgr").is_dir() for split in ("train", "test")):
        return "video"
    if root.is_dir():
        return "photo"
    raise BgMattingError(f"matte folder '{root}' does not exist")


def _matte_dataset(roots: Sequence[str], kind: str, transform, valid: bool) -> Dataset:
    parts = []
    for r in roots:
        root = Path(r)
        k = _matte_kind(root) if kind == "auto" else kind
        if k == "image":
            parts.append(ImageMatteDataset(root, transform))
        elif k == "video":  # VideoMatte240K: its "test" split is the held-out one
            split = "test" if valid and (root / "test").is_dir() else "train"
            parts.append(VideoMatteDataset(root, split, transform))
        else:
            parts.append(PhotoMatteDataset(root, transform))
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def _background_dataset(roots: Sequence[str], kind: str, transform) -> Dataset:
    parts = []
    for r in roots:
        root = Path(r)
        k = kind
        if k == "auto":
            has_video = root.is_dir() and any(p.suffix.lower() in VIDEO_SUFFIXES for p in root.iterdir())
            k = "video" if has_video else "image"
        parts.append(BackgroundVideoDataset(root, transform) if k == "video" else BackgroundImageDataset(root, transform))
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


class _EpochSeeded(Dataset):
    """Samples keyed by ``(epoch, index)``: sample ``index`` of ``epoch`` is drawn with torch's RNG seeded from
    ``(seed, epoch, index)`` (and the caller's RNG state restored), whatever process or worker reads it."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_derive_seed(self.seed, _TAG_SAMPLE, epoch, index))
            return self.dataset[index]


class _ResumableSampler(Sampler):
    """A ``DistributedSampler`` (shuffled by ``(seed, epoch)``) that yields ``(epoch, index)`` keys and can start
    an epoch part-way, so that a resumed run reads exactly the samples an uninterrupted run would."""

    def __init__(self, dataset: Dataset, d: _Dist, seed: int):
        self.inner = DistributedSampler(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=seed)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start
        self.inner.set_epoch(epoch)

    def __iter__(self):
        indices = list(self.inner)[self.start:]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return len(self.inner) - self.start


def _build_data(cfg: TrainConfig, d: _Dist, device: torch.device):
    matte = _matte_dataset(cfg.matte_roots, cfg.matte_kind, None, valid=False)
    bgr = _background_dataset(cfg.background_roots, cfg.background_kind, None)
    extra = None
    if cfg.extra_subject_p > 0:  # anywhere in the frame, mostly small
        extra = PairAugment(cfg.size, scale=tuple(cfg.extra_subject_scale), translate=(0.45, 0.45))
    samples = _EpochSeeded(MattingSampleDataset(matte, bgr, PairAugment(cfg.size, scale=tuple(cfg.fgr_scale)),
                                                BackgroundAugment(cfg.size), extra_p=cfg.extra_subject_p,
                                                transform_extra=extra),
                           cfg.seed)
    sampler = _ResumableSampler(samples, d, cfg.seed)
    steps_per_epoch = len(sampler.inner) // cfg.batch_size
    if steps_per_epoch == 0:
        raise BgMattingError(f"the training set has {len(samples)} samples: fewer than batch_size ({cfg.batch_size}) "
                             f"x processes ({d.world_size}); lower batch_size or add data")
    loader = DataLoader(samples, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0)
    valid_loader = None
    if cfg.valid_matte_roots and cfg.valid_samples > 0:
        if not cfg.valid_background_roots:
            raise BgMattingError("valid_matte_roots is set but valid_background_roots is empty")
        vm = _matte_dataset(cfg.valid_matte_roots, cfg.matte_kind, None, valid=True)
        vb = _background_dataset(cfg.valid_background_roots, cfg.background_kind, None)
        valid = MattingSampleDataset(vm, vb, PairAugment(cfg.valid_size, train=False),
                                     BackgroundAugment(cfg.valid_size, train=False), seed=cfg.seed)
        valid = Subset(valid, range(min(cfg.valid_samples, len(valid))))
        valid_loader = DataLoader(valid, batch_size=cfg.batch_size, shuffle=False, num_workers=0)
    return loader, sampler, steps_per_epoch, valid_loader


def _make_inputs(batch: Mapping[str, torch.Tensor], seed: int, device: torch.device,
                 crop_sizes: Sequence[tuple[int, int]] | None, cfg: TrainConfig | None = None):
    """Samples → ``(src, bgr, true_fgr, true_pha)`` on ``device``: crop the batch, then perturb it (deterministic
    in ``seed``) with ``cfg``'s perturbations (``None``: BGMv2's, as validation uses). ``crop_sizes=None`` keeps
    the full size."""
    fgr, pha, bgr = (batch[k].to(device, non_blocking=True) for k in ("fgr", "pha", "bgr"))
    if crop_sizes is not None:
        fgr, pha, bgr = random_crop_batch([fgr, pha, bgr], crop_sizes, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator(device).manual_seed(seed)
    options = {}
    if cfg is not None:
        options = {name: getattr(cfg, name) for name in PERTURBATIONS if name != "motion_blur_p"}
        options["perspective"] = cfg.perspective
        if cfg.motion_blur_p > 0:
            fgr, pha = motion_blur(fgr, pha, g, p=cfg.motion_blur_p)
    src, bgr_shot = make_pair(fgr, pha, bgr, generator=g, **options)
    return src, bgr_shot, fgr, pha


# ================================================================================================ model

def _build(cfg: TrainConfig) -> nn.Module:
    if cfg.stage == "base":
        return build_model("MattingBase", cfg.backbone)
    return build_model("MattingRefine", cfg.backbone, backbone_scale=cfg.backbone_scale, refine_mode=cfg.refine_mode,
                       refine_sample_pixels=cfg.refine_sample_pixels, refine_threshold=cfg.refine_threshold,
                       refine_kernel_size=cfg.refine_kernel_size)


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    parts = [("backbone", cfg.lr_backbone), ("aspp", cfg.lr_aspp), ("decoder", cfg.lr_decoder)]
    if cfg.stage == "refine":
        parts.append(("refiner", cfg.lr_refiner))
    return [{"params": list(getattr(model, name).parameters()), "lr": lr, "name": name} for name, lr in parts]


def _losses(stage: str, out: Sequence[torch.Tensor], true_pha: torch.Tensor, true_fgr: torch.Tensor):
    out = [o.float() for o in out]
    if stage == "base":
        pha, fgr, err, _hid = out
        return base_loss(pha, fgr, err, true_pha, true_fgr)
    pha, fgr, pha_sm, fgr_sm, err_sm, _ref = out
    return refine_loss(pha, fgr, pha_sm, fgr_sm, err_sm, true_pha, true_fgr)


def _autocast(device: torch.device, enabled: bool):
    if enabled:
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def _train_step(model, optimizer, scaler, stage, src, bgr, true_fgr, true_pha, amp, device) -> dict[str, torch.Tensor]:
    with _autocast(device, amp):
        out = model(src, bgr)
    terms = _losses(stage, out, true_pha, true_fgr)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {k: v.detach() for k, v in terms.items()}


# ================================================================================================ checkpoints

def _rng_state() -> dict[str, Any]:
    py = random.getstate()
    npst = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The ``(step, path)`` of every ``checkpoint-<step>.pt`` file in ``out_dir``, by step."""
    p = Path(out_dir)
    if not p.is_dir():
        return []
    return sorted((int(m.group(1)), f) for f in p.iterdir() if (m := _CKPT_RE.match(f.name)) and f.is_file())


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoint-<step>.pt`` with the highest step in ``out_dir``, or ``None``."""
    found = _checkpoints(out_dir)
    return found[-1][1] if found else None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint safely (``torch.load(weights_only=True)``) onto the CPU.

    Returns the dict with ``step``, ``model`` (state_dict), ``optimizer``, ``scaler``, ``rng``, ``config`` and
    ``model_config`` (the last two as dicts). ``path`` may also be a run's ``out_dir`` (its newest checkpoint).
    """
    p = Path(path)
    if p.is_dir():
        latest = latest_checkpoint(p)
        if latest is None:
            raise BgMattingError(f"no checkpoint-*.pt in '{p}'")
        p = latest
    if not p.is_file():
        raise BgMattingError(f"checkpoint '{p}' does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise BgMattingError(f"'{p}' is not a readable training checkpoint: {str(e).splitlines()[0][:160]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise BgMattingError(f"'{p}' is not a bgmatting training checkpoint")
    ckpt["config"] = json.loads(ckpt["config"])
    ckpt["model_config"] = json.loads(ckpt["model_config"])
    ckpt["path"] = str(p)
    return ckpt


def _save_checkpoint(out_dir: Path, step: int, model, optimizer, scaler, cfg: TrainConfig) -> Path:
    path = out_dir / f"checkpoint-{step:08d}.pt"
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": _rng_state(),
        "config": json.dumps(cfg.to_dict()),
        "model_config": json.dumps(model_config(_unwrap(model))),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    if cfg.keep_checkpoints:
        old = _checkpoints(out_dir)
        for _, f in old[:-cfg.keep_checkpoints]:
            f.unlink(missing_ok=True)
    return path


# ================================================================================================ logging

class _Logger:
    """Rank 0's log: ``metrics.jsonl`` always, TensorBoard scalars and image grids when it is installed."""

    def __init__(self, out_dir: Path, d: _Dist, tensorboard: bool):
        self.enabled = d.main
        self.writer = None
        if not self.enabled:
            return
        self.jsonl = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                _say(d, "tensorboard is not installed (pip install tensorboard): logging to metrics.jsonl only")
            else:
                self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def scalars(self, step: int, split: str, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"{split}/{k}", v, step)

    def images(self, step: int, tag: str, images: torch.Tensor) -> None:
        if self.enabled and self.writer is not None:
            from torchvision.utils import make_grid

            self.writer.add_image(tag, make_grid(images, nrow=max(1, images.shape[0] // 5)), step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()


def _all_agree(flag: bool, d: _Dist, device: torch.device) -> bool:
    """``flag`` of rank 0, the same on every process (so that all of them stop at the same step)."""
    if not d.active:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def _mean_across(values: dict[str, torch.Tensor], d: _Dist) -> dict[str, float]:
    keys = sorted(values)
    t = torch.stack([values[k].float() for k in keys])
    if d.active:
        dist.all_reduce(t)
        t /= d.world_size
    return dict(zip(keys, t.tolist()))


# ================================================================================================ validation

def _metric_functions():
    try:
        from ..evaluation.metrics import grad, mse, sad
    except ImportError:
        return {}
    return {"sad": sad, "mse": mse, "grad": grad}


@torch.no_grad()
def _validate(model: nn.Module, loader: DataLoader, cfg: TrainConfig, device: torch.device, amp: bool):
    """Loss and SAD/MSE/Grad over the fixed validation set (deterministic perturbations); returns
    ``(means, preview)`` where ``preview`` stacks src, bgr, predicted and true alpha, and composite of the first
    batch as ``(5·n, 3, H, W)``."""
    was_training = model.training
    model.eval()
    metrics = _metric_functions()
    totals: dict[str, float] = {}
    count, n_batches, preview = 0, 0, None
    for i, batch in enumerate(loader):
        src, bgr, fgr, pha = _make_inputs(batch, _derive_seed(cfg.seed, _TAG_VALID, i), device, None)
        with _autocast(device, amp):
            out = model(src, bgr)
        for k, v in _losses(cfg.stage, out, pha, fgr).items():
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


# ================================================================================================ train

def _resolve(config: TrainConfig | Mapping | str | os.PathLike, overrides: Mapping[str, Any]) -> TrainConfig:
    if isinstance(config, TrainConfig):
        cfg = config.replace(**overrides) if overrides else config
    elif isinstance(config, Mapping):
        cfg = TrainConfig.from_dict({**config, **overrides})
    else:
        cfg = TrainConfig.from_file(config, **overrides)
    return cfg.resolved()


def train(config: TrainConfig | Mapping | str | os.PathLike, **overrides) -> Path:
    """Run (or resume) a training run; returns the path of the final checkpoint.

    Args:
        config: a :class:`TrainConfig`, a dict of its fields, or the path of a TOML/JSON file of them.
        **overrides: fields that replace the config's.

    Returns:
        ``out_dir/checkpoint-<steps>.pt``: a dict with the model's state_dict under ``"model"`` (readable by
        :func:`bgmatting.weights.read_state_dict` and :func:`~bgmatting.train.init.load_init`); turn it into a
        shippable weights file with :func:`export_weights`.

    Raises:
        BgMattingError: bad options, data folders that do not fit their kind, an ``out_dir`` that already holds
            checkpoints without ``resume=True``, or a checkpoint of another model.
    """
    cfg = _resolve(config, overrides)
    d, device = _setup(cfg)
    try:
        return _run(cfg, d, device)
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg: TrainConfig, d: _Dist, device: torch.device) -> Path:
    out_dir = Path(cfg.out_dir)
    resume_from = latest_checkpoint(out_dir) if cfg.resume else None
    if not cfg.resume and latest_checkpoint(out_dir) is not None:
        raise BgMattingError(f"'{out_dir}' already holds checkpoints of a run: pass resume=True to continue it, "
                             "or choose another out_dir")
    if d.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "config.toml") as tmp:
            tmp.write_text(to_toml(cfg.to_dict()), encoding="utf-8")
    amp = cfg.amp and device.type == "cuda"

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = _build(cfg)
    step = 0
    ckpt = None
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        have, want = ckpt["model_config"], model_config(model)
        if (have["architecture"], have["backbone"]) != (want["architecture"], want["backbone"]):
            raise BgMattingError(f"'{resume_from}' holds a {have['architecture']}({have['backbone']}), this run trains "
                                 f"a {want['architecture']}({want['backbone']}); use another out_dir")
        model.load_state_dict(ckpt["model"])
        step = int(ckpt["step"])
        _say(d, f"resuming from {resume_from} at step {step}")
    else:
        if cfg.resume:
            _say(d, f"no checkpoint in '{out_dir}' to resume from: starting at step 0")
        if cfg.init:
            _say(d, str(load_init(model, cfg.init)))
        if cfg.stage == "refine" and cfg.base_checkpoint:
            report = load_init(model, cfg.base_checkpoint)
            absent = [k for k in report.missing if not k.startswith("refiner.")]
            if absent:
                raise BgMattingError(f"base_checkpoint '{cfg.base_checkpoint}' lacks {len(absent)} tensors of the base "
                                     f"network (first: {', '.join(absent[:3])}); is it a {cfg.backbone} model?")
            _say(d, str(report))
    model.to(device)
    if d.active and cfg.stage == "refine" and device.type == "cuda":  # SyncBatchNorm runs on GPUs only
        for part in ("backbone", "aspp", "decoder"):
            setattr(model, part, nn.SyncBatchNorm.convert_sync_batchnorm(getattr(model, part)))
    model.train()
    optimizer = torch.optim.Adam(_param_groups(model, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
    if d.active:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.stage == "refine")  # a process may select no patch to refine

    loader, sampler, steps_per_epoch, valid_loader = _build_data(cfg, d, device)
    crop_sizes = cfg.crop_sizes()
    scales = cfg.refine_scales() if cfg.stage == "refine" else []
    logger = _Logger(out_dir, d, cfg.tensorboard)
    path = resume_from
    if step >= cfg.steps:
        _say(d, f"the run already reached step {step} (steps={cfg.steps}); nothing to do")
        logger.close()
        return Path(path)
    _say(d, f"training {cfg.stage} stage, {cfg.backbone}, on {device} x{d.world_size}: {len(loader.dataset)} samples, "
            f"{steps_per_epoch} steps per epoch, batch {cfg.batch_size} per process"
            + (", mixed precision" if amp else ""))
    bar = tqdm(total=cfg.steps, initial=step, disable=not d.main, desc=cfg.stage, dynamic_ncols=True)
    last_time, last_step = time.perf_counter(), step
    deadline = last_time + 60 * cfg.max_minutes if cfg.max_minutes else None
    out_of_time = False
    try:
        while step < cfg.steps and not out_of_time:
            epoch, skip = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch, skip * cfg.batch_size)
            for batch in loader:
                step += 1
                seed = _derive_seed(cfg.seed, _TAG_STEP, step, d.rank)
                torch.manual_seed(seed)  # dropout: a function of (seed, step, rank), like everything else
                src, bgr, fgr, pha = _make_inputs(batch, seed, device, crop_sizes, cfg)
                if len(scales) > 1:  # drawn from the step's seed: resuming repeats it
                    _unwrap(model).backbone_scale = scales[seed % len(scales)]
                terms = _train_step(model, optimizer, scaler, cfg.stage, src, bgr, fgr, pha, amp, device)
                if len(scales) > 1:  # checkpoints, validation and export keep the configured scale
                    _unwrap(model).backbone_scale = cfg.backbone_scale
                bar.update(1)
                if deadline is not None and step % cfg.log_every == 0:
                    out_of_time = _all_agree(time.perf_counter() >= deadline, d, device)
                final = step == cfg.steps or out_of_time
                if step % cfg.log_every == 0 or final:
                    values = _mean_across(terms, d)
                    now = time.perf_counter()
                    rate = (step - last_step) / max(now - last_time, 1e-9)
                    last_time, last_step = now, step
                    values.update(epoch=epoch, it_per_s=rate, height=src.shape[2], width=src.shape[3])
                    values.update({f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups})
                    if amp:
                        values["amp_scale"] = scaler.get_scale()
                    logger.scalars(step, "train", values)
                    bar.set_postfix(loss=f"{values['total']:.4f}")
                if d.main and (final or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                    path = _save_checkpoint(out_dir, step, model, optimizer, scaler, cfg)
                if valid_loader is not None and cfg.validate_every and (step % cfg.validate_every == 0 or final):
                    if d.main:
                        means, preview = _validate(_unwrap(model), valid_loader, cfg, device, amp)
                        logger.scalars(step, "valid", means)
                        if preview is not None:
                            logger.images(step, "valid/src_bgr_pha_true_com", preview)
                        bar.write(f"step {step} validation: " + ", ".join(
                            f"{k} {v:.4g}" for k, v in means.items() if k != "samples"), file=sys.stderr)
                    if d.active:
                        dist.barrier()
                if final:
                    break
    finally:
        bar.close()
        logger.close()
    if out_of_time:
        _say(d, f"stopped at step {step} of {cfg.steps}: the time budget of {cfg.max_minutes:g} minutes is spent "
                "(resume=True continues the run)")
    if d.active:
        dist.barrier()  # rank 0 has written the final checkpoint
    return out_dir / f"checkpoint-{step:08d}.pt"


# ================================================================================================ export

def export_weights(checkpoint: str | os.PathLike, out_path: str | os.PathLike, dtype: torch.dtype | None = torch.float16,
                   description: str = "", average_from: int | None = None) -> Path:
    """Turn a training checkpoint into a shippable ``.safetensors`` weights file (via
    :func:`bgmatting.weights.save_weights`), loadable with :func:`bgmatting.load_model`.

    Args:
        checkpoint: a ``checkpoint-<step>.pt`` file or a run's ``out_dir`` (its newest checkpoint).
        out_path: the ``.safetensors`` file to write (atomically).
        dtype: storage dtype of floating-point tensors (``torch.float16`` halves the size; ``None`` keeps float32).
        description: a line for the file's metadata (default: stage, backbone and step).
        average_from: average the weights (and BatchNorm statistics) of all checkpoints of the same run from this
            step to ``checkpoint``'s, equally (stochastic weight averaging): with small batches and a constant
            learning rate the weights wander from one checkpoint to the next, and their mean is steadier than any
            one of them.
    """
    ckpt = load_checkpoint(checkpoint)
    cfg = dict(ckpt["model_config"])
    model = build_model(cfg.pop("architecture"), cfg.pop("backbone"), **cfg)
    state = ckpt["model"]
    steps = [int(ckpt["step"])]
    if average_from is not None:
        state, steps = _average_checkpoints(checkpoint, int(ckpt["step"]), average_from)
    model.load_state_dict(state)
    if not description:
        tc = ckpt["config"]
        at = f"step {steps[0]}" if len(steps) == 1 else f"mean of steps {', '.join(map(str, steps))}"
        description = f"bgmatting {tc.get('stage')} stage, {tc.get('backbone')}, {at}"
    return save_weights(model, out_path, dtype=dtype, description=description)


def _average_checkpoints(checkpoint: str | os.PathLike, last: int, first: int):
    """The mean state_dict of the run's checkpoints with ``first <= step <= last`` and their steps."""
    folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    found = [(step, f) for step, f in _checkpoints(folder) if first <= step <= last]
    if not found:
        raise BgMattingError(f"no checkpoint in '{folder}' between steps {first} and {last} to average")
    total: dict[str, torch.Tensor] = {}
    for _, f in found:
        state = load_checkpoint(f)["model"]
        for k, v in state.items():
            if v.is_floating_point():
                total[k] = total[k] + v.double() if k in total else v.double()
            else:
                total[k] = v  # counters (BatchNorm's num_batches_tracked): the last checkpoint's
    mean = {k: (v / len(found)).float() if v.is_floating_point() else v for k, v in total.items()}
    return mean, [step for step, _ in found]


# ================================================================================================ command line

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bgmatting.train.trainer [config.toml] [name=value ...]`` (works under ``torchrun``)."""
    parser = argparse.ArgumentParser(prog="bgmatting train",
                                     description="Train Background Matting V2 (base or refine stage).")
    parser.add_argument("config", nargs="?", help="TOML file of TrainConfig options")
    parser.add_argument("options", nargs="*", help="name=value overrides, e.g. steps=1000 stage=refine")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    args = parser.parse_args(argv)
    items = list(args.options)
    config: Any = args.config
    if config is not None and "=" in config and not Path(config).exists():
        items.insert(0, config)
        config = None
    try:
        overrides = parse_overrides(items)
        if args.resume:
            overrides["resume"] = True
        path = train(config if config is not None else {}, **overrides)
    except BgMattingError as e:
        print(f"bgmatting: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
