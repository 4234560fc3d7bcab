"""The trainer: a plain, resumable training loop for the base and the refine stage, distributed with ``torchrun``.

One call does a whole run::

    from bgmatting.train import TrainConfig, export_weights, train

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

Reproducibility and resuming: the data order and every sample's augmentation are functions of the seed, the
epoch and the sample (:mod:`.loaders`), and the per-batch crop, perturbations and dropout a function of
``(seed, step, rank)``. A checkpoint (:mod:`.checkpoints`) therefore only needs the step to continue exactly where
it stopped. ``resume=True`` restarts from the newest ``checkpoint-*.pt`` in ``out_dir``.

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

import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..errors import BgMattingError
from ..io import atomic_path
from ..weights import build_model
from .checkpoints import latest_checkpoint, restore_model, restore_training_state, save_checkpoint
from .cli import parse_train_args
from .config import TrainConfig, lr_factor, to_toml
from .distributed import Dist, all_agree, mean_across, say, setup, unwrap
from .initial_weights import load_init
from .loaders import build_loaders
from .metrics_log import RunLogger
from .seeding import TAG_STEP, derive_seed
from .steps import make_inputs, train_step
from .validation import validate

__all__ = ["main", "train"]


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
        :func:`bgmatting.weights.read_state_dict` and :func:`~bgmatting.train.initial_weights.load_init`); turn it
        into a shippable weights file with :func:`~bgmatting.train.checkpoints.export_weights`.

    Raises:
        BgMattingError: bad options, data folders that do not fit their kind, an ``out_dir`` that already holds
            checkpoints without ``resume=True``, or a checkpoint of another model.
    """
    cfg = _resolve(config, overrides)
    d, device = setup(cfg.device)
    try:
        return _run(cfg, d, device)
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg: TrainConfig, d: Dist, device: torch.device) -> Path:
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
        ckpt = restore_model(model, resume_from)
        step = int(ckpt["step"])
        say(d, f"resuming from {resume_from} at step {step}")
    else:
        if cfg.resume:
            say(d, f"no checkpoint in '{out_dir}' to resume from: starting at step 0")
        if cfg.init:
            say(d, str(load_init(model, cfg.init)))
        if cfg.stage == "refine" and cfg.base_checkpoint:
            report = load_init(model, cfg.base_checkpoint)
            absent = [k for k in report.missing if not k.startswith("refiner.")]
            if absent:
                raise BgMattingError(f"base_checkpoint '{cfg.base_checkpoint}' lacks {len(absent)} tensors of the base "
                                     f"network (first: {', '.join(absent[:3])}); is it a {cfg.backbone} model?")
            say(d, str(report))
    model.to(device)
    if d.active and cfg.stage == "refine" and device.type == "cuda":  # SyncBatchNorm runs on GPUs only
        for part in ("backbone", "aspp", "decoder"):
            setattr(model, part, nn.SyncBatchNorm.convert_sync_batchnorm(getattr(model, part)))
    model.train()
    optimizer = torch.optim.Adam(_param_groups(model, cfg))
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # the configured rates, which lr_schedule scales
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    if ckpt is not None:
        restore_training_state(ckpt, optimizer, scaler)
    if d.active:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.stage == "refine")  # a process may select no patch to refine

    loader, sampler, steps_per_epoch, valid_loader = build_loaders(cfg, d, device)
    crop_sizes = cfg.crop_sizes()
    scales = cfg.refine_scales() if cfg.stage == "refine" else []
    logger = RunLogger(out_dir, d, cfg.tensorboard)
    path = resume_from
    if step >= cfg.steps:
        say(d, f"the run already reached step {step} (steps={cfg.steps}); nothing to do")
        logger.close()
        return Path(path)
    say(d, f"training {cfg.stage} stage, {cfg.backbone}, on {device} x{d.world_size}: {len(loader.dataset)} samples, "
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
                seed = derive_seed(cfg.seed, TAG_STEP, step, d.rank)
                torch.manual_seed(seed)  # dropout: a function of (seed, step, rank), like everything else
                src, bgr, fgr, pha = make_inputs(batch, seed, device, crop_sizes, cfg)
                if len(scales) > 1:  # drawn from the step's seed: resuming repeats it
                    unwrap(model).backbone_scale = scales[seed % len(scales)]
                factor = lr_factor(cfg.lr_schedule, step, cfg.steps)
                for group, lr in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = lr * factor
                terms = train_step(model, optimizer, scaler, cfg.stage, src, bgr, fgr, pha, amp, device)
                if len(scales) > 1:  # checkpoints, validation and export keep the configured scale
                    unwrap(model).backbone_scale = cfg.backbone_scale
                bar.update(1)
                if deadline is not None and step % cfg.log_every == 0:
                    out_of_time = all_agree(time.perf_counter() >= deadline, d, device)
                final = step == cfg.steps or out_of_time
                if step % cfg.log_every == 0 or final:
                    values = mean_across(terms, d)
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
                    path = save_checkpoint(out_dir, step, model, optimizer, scaler, cfg)
                if valid_loader is not None and cfg.validate_every and (step % cfg.validate_every == 0 or final):
                    if d.main:
                        means, preview = validate(unwrap(model), valid_loader, cfg, device, amp)
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
        say(d, f"stopped at step {step} of {cfg.steps}: the time budget of {cfg.max_minutes:g} minutes is spent "
                "(resume=True continues the run)")
    if d.active:
        dist.barrier()  # rank 0 has written the final checkpoint
    return out_dir / f"checkpoint-{step:08d}.pt"


# ================================================================================================ command line

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bgmatting.train.trainer [config.toml] [name=value ...] [--resume]`` (works under ``torchrun``);
    prints the final checkpoint's path (rank 0) and returns 0, or prints the error on one line and returns 2."""
    try:
        config, overrides = parse_train_args(argv)
        path = train(config, **overrides)
    except BgMattingError as e:
        print(f"bgmatting: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
