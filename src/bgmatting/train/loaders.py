"""The training and validation data of a run: datasets from the config's folders, and a sampler that resumes.

Every sample's augmentation is a function of ``(seed, epoch, index)`` and the data order a function of
``(seed, epoch)`` (a ``DistributedSampler``), so a resumed run reads exactly the samples an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Sampler, Subset

from ..data.augment import BackgroundAugment, PairAugment
from ..data.datasets import (
    VIDEO_SUFFIXES,
    BackgroundImageDataset,
    BackgroundVideoDataset,
    ImageMatteDataset,
    MattingSampleDataset,
    PhotoMatteDataset,
    VideoMatteDataset,
)
from ..errors import BgMattingError
from .config import TrainConfig
from .distributed import Dist
from .seeding import TAG_SAMPLE, derive_seed

__all__ = ["EpochSeeded", "ResumableSampler", "background_dataset", "build_loaders", "matte_dataset", "repeat_mattes"]


def _matte_kind(root: Path) -> str:
    if (root / "fgr").is_dir() and (root / "pha").is_dir():
        return "image"
    if any((root / split / "fgr").is_dir() for split in ("train", "test")):
        return "video"
    if root.is_dir():
        return "photo"
    raise BgMattingError(f"matte folder '{root}' does not exist")


def matte_dataset(roots: Sequence[str], kind: str, transform, valid: bool) -> Dataset:
    """The matte datasets of ``roots`` (``kind``: ``'auto'``, ``'image'``, ``'video'`` or ``'photo'``), joined;
    ``valid`` reads VideoMatte240K's ``test`` split where there is one."""
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


def background_dataset(roots: Sequence[str], kind: str, transform) -> Dataset:
    """The background datasets of ``roots`` (``kind``: ``'auto'``, ``'image'`` or ``'video'``), joined."""
    parts = []
    for r in roots:
        root = Path(r)
        k = kind
        if k == "auto":
            has_video = root.is_dir() and any(p.suffix.lower() in VIDEO_SUFFIXES for p in root.iterdir())
            k = "video" if has_video else "image"
        parts.append(BackgroundVideoDataset(root, transform) if k == "video"
                     else BackgroundImageDataset(root, transform))
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def repeat_mattes(matte: Dataset, repeat: Sequence[Sequence]) -> Dataset:
    """``matte`` with each sample of an image matte root whose foreground lies under ``fgr/<folder>/`` present
    ``n`` times, for each ``[folder, n]`` of ``repeat`` (the config's ``matte_repeat``); ``matte`` itself when
    ``repeat`` is empty. Raises :class:`BgMattingError` when a folder matches no sample."""
    if not repeat:
        return matte
    times = {str(folder): int(n) for folder, n in repeat}
    seen: set[str] = set()
    extra: list[int] = []
    offset = 0
    for part in matte.datasets if isinstance(matte, ConcatDataset) else [matte]:
        if isinstance(part, ImageMatteDataset):
            for i, (fgr, _) in enumerate(part.samples):
                rel = Path(fgr).relative_to(part.root / "fgr").parts
                if len(rel) > 1 and rel[0] in times:
                    seen.add(rel[0])
                    extra += [offset + i] * (times[rel[0]] - 1)
        offset += len(part)  # type: ignore[arg-type]
    missing = sorted(set(times) - seen)
    if missing:
        raise BgMattingError(f"matte_repeat: no matte lies under fgr/{missing[0]}/ of an image matte root "
                             f"({', '.join(missing)})")
    return ConcatDataset([matte, Subset(matte, extra)]) if extra else matte


class EpochSeeded(Dataset):
    """Samples keyed by ``(epoch, index)``: sample ``index`` of ``epoch`` is drawn with torch's RNG seeded from
    ``(seed, epoch, index)`` (and the caller's RNG state restored), whatever process or worker reads it."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, TAG_SAMPLE, epoch, index))
            return self.dataset[index]


class ResumableSampler(Sampler):
    """A ``DistributedSampler`` (shuffled by ``(seed, epoch)``) that yields ``(epoch, index)`` keys and can start
    an epoch part-way, so that a resumed run reads exactly the samples an uninterrupted run would."""

    def __init__(self, dataset: Dataset, d: Dist, seed: int):
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


def build_loaders(cfg: TrainConfig, d: Dist, device: torch.device):
    """``(loader, sampler, steps_per_epoch, valid_loader)`` for a resolved ``cfg``: the training DataLoader of
    augmented ``size``² samples (``{"fgr", "pha", "bgr"}``, ``batch_size`` per process) and its
    :class:`ResumableSampler`, and the fixed validation set (``None`` without ``valid_matte_roots``).

    Raises :class:`BgMattingError` when the training set is smaller than one batch of every process, or validation
    mattes come without validation backgrounds."""
    matte = repeat_mattes(matte_dataset(cfg.matte_roots, cfg.matte_kind, None, valid=False), cfg.matte_repeat)
    bgr = background_dataset(cfg.background_roots, cfg.background_kind, None)
    extra = None
    if cfg.extra_subject_p > 0 or cfg.background_subject_p > 0:  # anywhere in the frame, mostly small
        extra = PairAugment(cfg.size, scale=tuple(cfg.extra_subject_scale), translate=(0.45, 0.45))
    samples = EpochSeeded(MattingSampleDataset(matte, bgr, PairAugment(cfg.size, scale=tuple(cfg.fgr_scale)),
                                               BackgroundAugment(cfg.size), extra_p=cfg.extra_subject_p,
                                               transform_extra=extra, background_subject_p=cfg.background_subject_p),
                          cfg.seed)
    sampler = ResumableSampler(samples, d, cfg.seed)
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
        vm = matte_dataset(cfg.valid_matte_roots, cfg.matte_kind, None, valid=True)
        vb = background_dataset(cfg.valid_background_roots, cfg.background_kind, None)
        valid = MattingSampleDataset(vm, vb, PairAugment(cfg.valid_size, train=False),
                                     BackgroundAugment(cfg.valid_size, train=False), seed=cfg.seed)
        valid = Subset(valid, range(min(cfg.valid_samples, len(valid))))
        valid_loader = DataLoader(valid, batch_size=cfg.batch_size, shuffle=False, num_workers=0)
    return loader, sampler, steps_per_epoch, valid_loader
