"""Reproducibility of a training run: seeds derived from integers, and the global RNGs' state for checkpoints."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["TAG_SAMPLE", "TAG_STEP", "TAG_VALID", "derive_seed", "rng_state", "set_rng_state"]

TAG_SAMPLE, TAG_STEP, TAG_VALID = 1, 2, 3  # streams of derived seeds


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the integers ``parts`` (well mixed, stable across platforms)."""
    return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1, np.uint64)[0] % 2**63)


def rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch and CUDA RNG states, in a form ``torch.load(weights_only=True)`` reads back."""
    py = random.getstate()
    npst = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (the CUDA states only on a machine with as many GPUs)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
