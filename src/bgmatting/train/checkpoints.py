"""Training checkpoints: find, save, load and resume from them, average them, and export one as shippable weights.

A checkpoint ``out_dir/checkpoint-<step:08d>.pt`` is a dict (read with ``torch.load(weights_only=True)``) holding
``format``, ``step``, ``model`` (state_dict), ``optimizer``, ``scaler``, ``rng`` (rank 0's Python/NumPy/torch/CUDA
RNG states), and ``config`` and ``model_config`` as JSON text; it is written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BgMattingError
from ..io import atomic_path
from ..weights import build_model, model_config, save_weights
from .config import TrainConfig
from .distributed import unwrap
from .seeding import rng_state, set_rng_state

__all__ = ["CHECKPOINT_FORMAT", "average_checkpoints", "export_weights", "latest_checkpoint", "list_checkpoints",
           "load_checkpoint", "restore_model", "restore_training_state", "save_checkpoint"]

CHECKPOINT_FORMAT = "bgmatting-train"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The ``(step, path)`` of every ``checkpoint-<step>.pt`` file in ``out_dir``, by step."""
    p = Path(out_dir)
    if not p.is_dir():
        return []
    return sorted((int(m.group(1)), f) for f in p.iterdir() if (m := _CKPT_RE.match(f.name)) and f.is_file())


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoint-<step>.pt`` with the highest step in ``out_dir``, or ``None``."""
    found = list_checkpoints(out_dir)
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


def save_checkpoint(out_dir: Path, step: int, model, optimizer, scaler, cfg: TrainConfig) -> Path:
    """Write ``out_dir/checkpoint-<step:08d>.pt`` (with the global RNG states), then delete all but the newest
    ``cfg.keep_checkpoints`` (0: keep all); returns its path."""
    path = out_dir / f"checkpoint-{step:08d}.pt"
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "config": json.dumps(cfg.to_dict()),
        "model_config": json.dumps(model_config(unwrap(model))),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    if cfg.keep_checkpoints:
        old = list_checkpoints(out_dir)
        for _, f in old[:-cfg.keep_checkpoints]:
            f.unlink(missing_ok=True)
    return path


def restore_model(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load checkpoint ``path`` into ``model`` (the first half of resuming); returns the checkpoint for
    :func:`restore_training_state`. Raises :class:`BgMattingError` when it holds another architecture or backbone."""
    ckpt = load_checkpoint(path)
    have, want = ckpt["model_config"], model_config(model)
    if (have["architecture"], have["backbone"]) != (want["architecture"], want["backbone"]):
        raise BgMattingError(f"'{path}' holds a {have['architecture']}({have['backbone']}), this run trains "
                             f"a {want['architecture']}({want['backbone']}); use another out_dir")
    model.load_state_dict(ckpt["model"])
    return ckpt


def restore_training_state(ckpt: dict[str, Any], optimizer: torch.optim.Optimizer, scaler) -> None:
    """The second half of resuming: the optimiser's and gradient scaler's states and the global RNG states."""
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])


def average_checkpoints(checkpoint: str | os.PathLike, last: int, first: int):
    """The mean state_dict of the run's checkpoints with ``first <= step <= last`` and their steps (floating-point
    tensors averaged in float64; integer counters taken from the last one)."""
    folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    found = [(step, f) for step, f in list_checkpoints(folder) if first <= step <= last]
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


def average_weights(sources: list[str | os.PathLike], out_path: str | os.PathLike,
                    dtype: torch.dtype | None = torch.float16, description: str = "") -> Path:
    """The mean of weights files of one model fine-tuned along different runs from the same start (a uniform
    "model soup", Wortsman et al. 2022), written as a ``.safetensors`` weights file.

    Floating-point tensors (BatchNorm statistics included) are averaged in float64; the model options (backbone
    scale, refine mode, ...) are the first file's. Files that are not the same architecture and backbone, or whose
    tensors differ in names or shapes, are refused.

    Raises:
        BgMattingError: fewer than two files, an unreadable file, or files of different models.
    """
    from ..weights import load_model

    if len(sources) < 2:
        raise BgMattingError("average-weights needs at least two weights files")
    models = [load_model(s) for s in sources]
    kinds = {(cfg["architecture"], cfg["backbone"]) for cfg in map(model_config, models)}
    if len(kinds) > 1:
        raise BgMattingError("the weights files are different models: "
                             + ", ".join(f"{a}({b})" for a, b in sorted(kinds)))
    states = [m.state_dict() for m in models]
    for source, state in zip(sources[1:], states[1:]):
        if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in states[0].items()}:
            raise BgMattingError(f"'{source}' has other tensors than '{sources[0]}'")
    mean = {k: (sum(st[k].double() for st in states) / len(states)).float() if v.is_floating_point() else v
            for k, v in states[0].items()}
    model = models[0]
    model.load_state_dict(mean)
    if not description:
        description = "mean of " + ", ".join(Path(s).name for s in sources)
    return save_weights(model, out_path, dtype=dtype, description=description)


def export_weights(checkpoint: str | os.PathLike, out_path: str | os.PathLike,
                   dtype: torch.dtype | None = torch.float16, description: str = "",
                   average_from: int | None = None) -> Path:
    """Turn a training checkpoint into a shippable ``.safetensors`` weights file (via
    :func:`bgmatting.weights.save_weights`), loadable with :func:`bgmatting.load_model`.

    Args:
        checkpoint: a ``checkpoint-<step>.pt`` file or a run's ``out_dir`` (its newest checkpoint).
        out_path: the ``.safetensors`` file to write (atomically).
        dtype: storage dtype of floating-point tensors (``torch.float16`` halves the size; ``None`` keeps float32).
        description: a line for the file's metadata (default: stage, backbone and step).
        average_from: average the weights (and BatchNorm statistics) of all checkpoints of the same run from this
            step to ``checkpoint``'s, equally (stochastic weight averaging).

    Raises:
        BgMattingError: an unreadable checkpoint, or none to average between ``average_from`` and its step.
    """
    ckpt = load_checkpoint(checkpoint)
    cfg = dict(ckpt["model_config"])
    model = build_model(cfg.pop("architecture"), cfg.pop("backbone"), **cfg)
    state = ckpt["model"]
    steps = [int(ckpt["step"])]
    if average_from is not None:
        state, steps = average_checkpoints(checkpoint, int(ckpt["step"]), average_from)
    model.load_state_dict(state)
    if not description:
        tc = ckpt["config"]
        at = f"step {steps[0]}" if len(steps) == 1 else f"mean of steps {', '.join(map(str, steps))}"
        description = f"bgmatting {tc.get('stage')} stage, {tc.get('backbone')}, {at}"
    return save_weights(model, out_path, dtype=dtype, description=description)
