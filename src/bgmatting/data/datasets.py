"""Datasets for training: foreground mattes, backgrounds, and the pairing of the two.

Every dataset returns a dict of float tensors in ``[0, 1]``:

- matte datasets → ``{"fgr": (3, H, W), "pha": (1, H, W)}`` (``(T, 3, H, W)`` / ``(T, 1, H, W)`` for
  :class:`VideoMatteDataset` with ``seq_len > 1``);
- background datasets → ``{"bgr": (3, H, W)}``;
- :class:`MattingSampleDataset` → ``{"fgr", "pha", "bgr"}``.

Folder layouts are checked when a dataset is built, so a foreground without its matte (or a matte without its
foreground), an empty folder or a wrong layout raises :class:`~bgmatting.errors.BgMattingError` before any
training starts, naming the first few offending files. Images are read with :func:`bgmatting.io.read_image`.

Transforms: a matte dataset's ``transform`` is called as ``transform(fgr, pha) -> (fgr, pha)`` (for example
:class:`bgmatting.data.augment.PairAugment`); a background dataset's as ``transform(bgr) -> bgr`` (for example
:class:`bgmatting.data.augment.BackgroundAugment`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import BgMattingError
from ..io import is_image_path, list_images, read_image
from ..io.video import VIDEO_SUFFIXES, frame_times, read_frame, require_av

__all__ = [
    "VIDEO_SUFFIXES",
    "VideoMatteDataset",
    "PhotoMatteDataset",
    "ImageMatteDataset",
    "BackgroundImageDataset",
    "BackgroundVideoDataset",
    "MattingSampleDataset",
]

PairTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
ImageTransform = Callable[[Tensor], Tensor]


# Formats that carry an alpha channel (PhotoMatte-style RGBA files).
_ALPHA_SUFFIXES = (".png", ".webp", ".tif", ".tiff")

_SHOW = 5  # offending paths named in an error message


# --------------------------------------------------------------------------------------------------------------
# Helpers


def _natural_key(text: str) -> list[Any]:
    """Sort key so that ``frame2`` comes before ``frame10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _some(items: Sequence[str]) -> str:
    """``'a', 'b', 'c' (and 7 more)``: the first few of ``items`` for an error message."""
    items = sorted(items, key=_natural_key)
    shown = ", ".join(f"'{i}'" for i in items[:_SHOW])
    return shown + (f" (and {len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def _to_tensor(array: np.ndarray) -> Tensor:
    """``(H, W)`` → ``(1, H, W)``; ``(H, W, C)`` → ``(C, H, W)``; float32."""
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _list(folder: Path, what: str, layout: str) -> list[Path]:
    """The images below ``folder``, or an error that names the expected layout."""
    if not folder.is_dir():
        raise BgMattingError(
            f"{what} folder '{folder}' does not exist" + (" (it is a file)" if folder.exists() else "")
            + f"; expected the layout {layout}"
        )
    try:
        return list_images(folder)
    except BgMattingError as e:
        raise BgMattingError(f"{e}; expected the layout {layout}") from None


def _index(folder: Path, what: str, layout: str) -> dict[str, Path]:
    """Map each image's path relative to ``folder``, without its suffix (``clip/00001``), to the file."""
    index: dict[str, Path] = {}
    clashes: list[str] = []
    for f in _list(folder, what, layout):
        key = f.relative_to(folder).with_suffix("").as_posix()
        if key in index:
            clashes.append(f.relative_to(folder).as_posix())
        index[key] = f
    if clashes:
        raise BgMattingError(
            f"{what} folder '{folder}' holds several images with the same name but a different suffix: "
            f"{_some(clashes)}; keep one file per name"
        )
    return index


def _pair(fgr_dir: Path, pha_dir: Path, layout: str, depth: int | None = None) -> list[tuple[str, Path, Path]]:
    """Pair the images of ``fgr_dir`` and ``pha_dir`` by relative path without suffix.

    ``depth`` (when given) is the number of path parts every key must have (2 for ``clip/frame``).
    Returns ``(key, fgr_path, pha_path)`` in natural order of the keys.
    """
    fgr = _index(fgr_dir, "foreground", layout)
    pha = _index(pha_dir, "alpha matte", layout)
    if depth is not None:
        wrong = [k for k in (*fgr, *pha) if len(k.split("/")) != depth]
        if wrong:
            raise BgMattingError(
                f"images at the wrong folder depth below '{fgr_dir.parent}': {_some(sorted(set(wrong)))}; "
                f"expected the layout {layout}"
            )
    no_pha = sorted(set(fgr) - set(pha))
    no_fgr = sorted(set(pha) - set(fgr))
    if no_pha or no_fgr:
        parts = []
        if no_pha:
            parts.append(
                f"{len(no_pha)} foreground(s) in '{fgr_dir}' have no alpha matte in '{pha_dir}': {_some(no_pha)}"
            )
        if no_fgr:
            parts.append(
                f"{len(no_fgr)} alpha matte(s) in '{pha_dir}' have no foreground in '{fgr_dir}': {_some(no_fgr)}"
            )
        raise BgMattingError(
            "; ".join(parts) + " (files are paired by relative path without suffix; add or remove the missing ones)"
        )
    return [(k, fgr[k], pha[k]) for k in sorted(fgr, key=_natural_key)]


def _read_pair(fgr_path: Path, pha_path: Path) -> tuple[Tensor, Tensor]:
    fgr = _to_tensor(read_image(fgr_path, mode="RGB"))
    pha = _to_tensor(read_image(pha_path, mode="L"))
    if fgr.shape[-2:] != pha.shape[-2:]:
        raise BgMattingError(
            f"foreground '{fgr_path}' is {fgr.shape[-1]}x{fgr.shape[-2]} but its alpha matte '{pha_path}' is "
            f"{pha.shape[-1]}x{pha.shape[-2]}; they must have the same size"
        )
    return fgr, pha


def _apply_pair(transform: PairTransform | None, fgr: Tensor, pha: Tensor) -> dict[str, Tensor]:
    if transform is not None:
        fgr, pha = transform(fgr, pha)
    return {"fgr": fgr, "pha": pha}


# --------------------------------------------------------------------------------------------------------------
# Foreground mattes


class VideoMatteDataset(Dataset):
    """VideoMatte240K: foreground and alpha frames of green-screen clips.

    Layout::

        root/{train,test}/fgr/<clip>/<frame>.jpg
        root/{train,test}/pha/<clip>/<frame>.jpg

    Frames are paired by clip and frame name (the suffix may differ) and ordered naturally within a clip.

    Args:
        root: the dataset folder (holding ``train/`` and ``test/``).
        split: the sub-folder to use, ``"train"`` or ``"test"``.
        transform: ``transform(fgr, pha) -> (fgr, pha)``, applied to every sample.
        seq_len: frames per sample. Each clip is cut into consecutive, non-overlapping windows of ``seq_len``
            frames; left-over frames at a clip's end are not used.

    Each sample is ``{"fgr": (3, H, W), "pha": (1, H, W)}`` for ``seq_len=1``, else
    ``{"fgr": (T, 3, H, W), "pha": (T, 1, H, W)}``, float in ``[0, 1]``.

    Raises:
        BgMattingError: missing folders, a frame without its partner, an empty split, images outside
            ``<clip>/`` folders, or no clip with ``seq_len`` frames.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: PairTransform | None = None,
        seq_len: int = 1,
    ) -> None:
        if not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, not {seq_len!r}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.seq_len = seq_len
        layout = f"'{self.root}/{split}/{{fgr,pha}}/<clip>/<frame>.jpg'"
        base = self.root / split
        if not base.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
            raise BgMattingError(
                f"VideoMatte split folder '{base}' does not exist"
                + (f" (found: {', '.join(found)})" if found else "")
                + f"; expected the layout {layout}"
            )
        pairs = _pair(base / "fgr", base / "pha", layout, depth=2)
        clips: dict[str, list[tuple[Path, Path]]] = {}
        for key, f, p in pairs:  # already in natural order of "clip/frame"
            clips.setdefault(key.split("/")[0], []).append((f, p))
        self.clips = sorted(clips, key=_natural_key)
        self.samples: list[list[tuple[Path, Path]]] = []
        for clip in self.clips:
            frames = clips[clip]
            for start in range(0, len(frames) - seq_len + 1, seq_len):
                self.samples.append(frames[start : start + seq_len])
        if not self.samples:
            raise BgMattingError(
                f"no clip in '{base}' has {seq_len} frames (the longest has {max(len(v) for v in clips.values())}); "
                "use a smaller seq_len"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        frames = [_read_pair(f, p) for f, p in self.samples[index]]
        if self.seq_len == 1:
            fgr, pha = frames[0]
        else:
            sizes = {tuple(f.shape[-2:]) for f, _ in frames}
            if len(sizes) > 1:
                raise BgMattingError(
                    f"frames of clip '{self.samples[index][0][0].parent}' differ in size: {sorted(sizes)}"
                )
            fgr = torch.stack([f for f, _ in frames])
            pha = torch.stack([p for _, p in frames])
        return _apply_pair(self.transform, fgr, pha)


class PhotoMatteDataset(Dataset):
    """PhotoMatte85-style mattes: a folder of RGBA images whose RGB is the foreground and alpha the matte.

    Layout: ``root/**/<name>.png`` (PNG, WebP or TIFF with an alpha channel; sub-folders are searched).

    Args:
        root: the folder of RGBA images.
        transform: ``transform(fgr, pha) -> (fgr, pha)``.

    Each sample is ``{"fgr": (3, H, W), "pha": (1, H, W)}``, float in ``[0, 1]``. An image stored without an
    alpha channel reads as fully opaque (``pha`` all ones).

    Raises:
        BgMattingError: the folder is missing or empty, or holds formats without alpha (JPEG, BMP).
    """

    def __init__(self, root: str | os.PathLike, transform: PairTransform | None = None) -> None:
        self.root = Path(root)
        self.transform = transform
        layout = f"'{self.root}/<name>.png' (RGBA images)"
        self.files = sorted(_list(self.root, "PhotoMatte", layout), key=lambda f: _natural_key(f.as_posix()))
        no_alpha = [f.relative_to(self.root).as_posix() for f in self.files if f.suffix.lower() not in _ALPHA_SUFFIXES]
        if no_alpha:
            raise BgMattingError(
                f"{len(no_alpha)} image(s) in '{self.root}' cannot hold an alpha channel: {_some(no_alpha)}; "
                f"PhotoMatte-style data needs RGBA images ({', '.join(_ALPHA_SUFFIXES)}) — for separate "
                "foreground and matte files use ImageMatteDataset"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rgba = _to_tensor(read_image(self.files[index], mode="RGBA"))
        return _apply_pair(self.transform, rgba[:3].contiguous(), rgba[3:].contiguous())


class ImageMatteDataset(Dataset):
    """Foreground and matte images in two parallel folders (Distinctions-646, Adobe Image Matting, ...).

    Layout::

        root/fgr/<any/relative/path>.<ext>
        root/pha/<any/relative/path>.<ext>

    Files are paired by relative path without suffix, so ``fgr/a/cat.jpg`` pairs with ``pha/a/cat.png``.

    Args:
        root: the folder holding ``fgr/`` and ``pha/``.
        transform: ``transform(fgr, pha) -> (fgr, pha)``.

    Each sample is ``{"fgr": (3, H, W), "pha": (1, H, W)}``, float in ``[0, 1]``.

    Raises:
        BgMattingError: a missing or empty folder, or a file without its partner.
    """

    def __init__(self, root: str | os.PathLike, transform: PairTransform | None = None) -> None:
        self.root = Path(root)
        self.transform = transform
        layout = f"'{self.root}/{{fgr,pha}}/<name>.<ext>'"
        self.samples = [(f, p) for _, f, p in _pair(self.root / "fgr", self.root / "pha", layout)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return _apply_pair(self.transform, *_read_pair(*self.samples[index]))


# --------------------------------------------------------------------------------------------------------------
# Backgrounds


class BackgroundImageDataset(Dataset):
    """Background images: every image below one folder or several.

    Args:
        root_or_roots: a folder (searched recursively) or a sequence of folders.
        transform: ``transform(bgr) -> bgr``.

    Each sample is ``{"bgr": (3, H, W)}``, float in ``[0, 1]``.

    Raises:
        BgMattingError: a folder is missing or holds no image.
    """

    def __init__(
        self,
        root_or_roots: str | os.PathLike | Sequence[str | os.PathLike],
        transform: ImageTransform | None = None,
    ) -> None:
        roots = [root_or_roots] if isinstance(root_or_roots, (str, os.PathLike)) else list(root_or_roots)
        if not roots:
            raise BgMattingError("no background folder given")
        self.roots = [Path(r) for r in roots]
        self.transform = transform
        self.files: list[Path] = []
        for r in self.roots:
            self.files += sorted(_list(r, "background", f"'{r}/<name>.jpg'"), key=lambda f: _natural_key(f.as_posix()))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        bgr = _to_tensor(read_image(self.files[index], mode="RGB"))
        return {"bgr": self.transform(bgr) if self.transform is not None else bgr}


class BackgroundVideoDataset(Dataset):
    """Frames of background videos, one sample per frame.

    Layout::

        root/<clip>/<frame>.jpg     frames extracted into one folder per clip
        root/<clip>.mp4             video files (any of bgmatting.io.video.VIDEO_SUFFIXES), read with PyAV

    Args:
        root: the folder of clips.
        transform: ``transform(bgr) -> bgr``.

    Each sample is ``{"bgr": (3, H, W)}``, float in ``[0, 1]``. Video files are indexed once when the dataset is
    built (their packets are read, not decoded); each sample then seeks to its frame.

    Raises:
        BgMattingError: the folder is missing or holds no clip, images lie outside clip folders, a clip
            folder is empty, or video files are present and PyAV is not installed.
    """

    def __init__(self, root: str | os.PathLike, transform: ImageTransform | None = None) -> None:
        self.root = Path(root)
        self.transform = transform
        layout = f"'{self.root}/<clip>/<frame>.jpg' or '{self.root}/<clip>.mp4'"
        if not self.root.is_dir():
            raise BgMattingError(f"background video folder '{self.root}' does not exist; expected the layout {layout}")
        entries = sorted(
            (p for p in self.root.iterdir() if not p.name.startswith(".")), key=lambda p: _natural_key(p.name)
        )
        loose = [p.name for p in entries if p.is_file() and is_image_path(p)]
        if loose:
            raise BgMattingError(
                f"{len(loose)} image(s) lie directly in '{self.root}': {_some(loose)}; put each clip's frames in "
                f"its own folder ({layout}), or use BackgroundImageDataset for still images"
            )
        # Each frame is ("image", path) or ("video", path, pts).
        self.frames: list[tuple[Any, ...]] = []
        videos = [p for p in entries if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
        clips = [p for p in entries if p.is_dir()]
        for clip in clips:
            files = sorted(_list(clip, "clip", layout), key=lambda f: _natural_key(f.name))
            nested = [f.relative_to(self.root).as_posix() for f in files if f.parent != clip]
            if nested:
                raise BgMattingError(f"frames in sub-folders of a clip: {_some(nested)}; expected the layout {layout}")
            self.frames += [("image", f) for f in files]
        if videos:
            try:
                require_av()
            except BgMattingError:
                raise BgMattingError(
                    f"{len(videos)} video file(s) in '{self.root}' ({_some([v.name for v in videos])}) need PyAV "
                    "to be read: pip install av — or extract their frames into one folder per clip "
                    "(ffmpeg -i clip.mp4 clip/%05d.jpg)"
                ) from None
        for video in videos:
            self.frames += [("video", video, t) for t in frame_times(video)]
        if not self.frames:
            raise BgMattingError(f"no clips found in '{self.root}'; expected the layout {layout}")

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        kind, path, *rest = self.frames[index]
        if kind == "image":
            array = read_image(path, mode="RGB")
        else:
            array = read_frame(path, rest[0]).astype(np.float32) / 255.0
        bgr = _to_tensor(array)
        return {"bgr": self.transform(bgr) if self.transform is not None else bgr}


# --------------------------------------------------------------------------------------------------------------
# Pairing


def _mix(seed: int, index: int) -> int:
    """A 63-bit seed from ``(seed, index)`` that differs for neighbouring indices and seeds."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(index) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**64
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) % 2**64
    return (x ^ (x >> 32)) % 2**63


class MattingSampleDataset(Dataset):
    """Pair each foreground matte with a randomly chosen background.

    Args:
        matte_dataset: a dataset of ``{"fgr", "pha"}`` samples (e.g. :class:`VideoMatteDataset`).
        background_dataset: a dataset of ``{"bgr"}`` samples (e.g. :class:`BackgroundImageDataset`).
        transform_pair: ``transform_pair(fgr, pha) -> (fgr, pha)``, shared geometry for the pair.
        transform_bgr: ``transform_bgr(bgr) -> bgr``, drawn independently of the pair's.
        extra_p: probability that a second subject, a randomly chosen matte of ``matte_dataset`` put through
            ``transform_extra`` (which must give the same size as ``transform_pair``), is composited over the
            first: ``pha = a2 + (1 - a2) a1``, ``fgr`` the alpha-weighted mix. Scenes with several people.
        transform_extra: the second subject's geometry (default ``transform_pair``).
        background_subject_p: probability that another matte (geometry ``transform_extra``) is pasted into the
            background itself, after ``transform_bgr``: a subject-like thing that belongs to the scene (in the
            background shot too), whose alpha target stays 0. Misaligned with the shot, it teaches the model that a
            person or object seen in both shots is background, however it moved.
        seed: ``None`` draws the background and the transforms' randomness from torch's global RNG (use it
            for training: each epoch sees new pairings; DataLoader workers are seeded apart by torch). An int
            makes sample ``i`` a pure function of ``(seed, i)`` — the same background and the same random
            transform parameters every time, for reproducible validation. This covers any randomness drawn
            from torch's RNG (torchvision's transforms and :mod:`bgmatting.data.augment`), not Python's
            ``random`` or NumPy's; the global RNG state is left untouched.

    ``len`` is the matte dataset's length. Each sample is ``{"fgr": (3, H, W), "pha": (1, H, W),
    "bgr": (3, H', W')}`` float in ``[0, 1]`` (sizes are whatever the datasets and transforms produce); with
    ``extra_p > 0`` also ``"extra"``, a 0-d float tensor: 1 when the sample carries a second subject, else 0.

    Raises:
        BgMattingError: the background dataset is empty.
    """

    def __init__(
        self,
        matte_dataset: Dataset,
        background_dataset: Dataset,
        transform_pair: PairTransform | None = None,
        transform_bgr: ImageTransform | None = None,
        seed: int | None = None,
        extra_p: float = 0.0,
        transform_extra: PairTransform | None = None,
        background_subject_p: float = 0.0,
    ) -> None:
        if len(background_dataset) == 0:  # type: ignore[arg-type]
            raise BgMattingError("the background dataset is empty")
        self.extra_p = extra_p
        self.background_subject_p = background_subject_p
        self.transform_extra = transform_extra if transform_extra is not None else transform_pair
        self.matte_dataset = matte_dataset
        self.background_dataset = background_dataset
        self.transform_pair = transform_pair
        self.transform_bgr = transform_bgr
        self.seed = seed

    def __len__(self) -> int:
        return len(self.matte_dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if self.seed is None:
            return self._sample(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, index))
            return self._sample(index)

    def _other_subject(self) -> tuple[Tensor, Tensor]:
        """A randomly chosen matte of the set, put through ``transform_extra``: ``(fgr, pha)``."""
        k = int(torch.randint(len(self.matte_dataset), ()).item())  # type: ignore[arg-type]
        other = self.matte_dataset[k]
        fgr, pha = other["fgr"], other["pha"]
        if self.transform_extra is not None:
            fgr, pha = self.transform_extra(fgr, pha)
        return fgr, pha

    def _sample(self, index: int) -> dict[str, Tensor]:
        j = int(torch.randint(len(self.background_dataset), ()).item())  # type: ignore[arg-type]
        matte = self.matte_dataset[index]
        background = self.background_dataset[j]
        fgr, pha = matte["fgr"], matte["pha"]
        bgr = background["bgr"] if isinstance(background, dict) else background
        if self.transform_pair is not None:
            fgr, pha = self.transform_pair(fgr, pha)
        extra = self.extra_p > 0 and float(torch.rand(())) < self.extra_p
        if extra:
            fgr, pha = composite_subjects(fgr, pha, *self._other_subject())
        if self.transform_bgr is not None:
            bgr = self.transform_bgr(bgr)
        if self.background_subject_p > 0 and float(torch.rand(())) < self.background_subject_p:
            fgr3, pha3 = self._other_subject()
            if fgr3.shape[1:] != bgr.shape[1:]:
                raise ValueError(f"the background subject and the background differ in size: {tuple(fgr3.shape)} "
                                 f"and {tuple(bgr.shape)}")
            bgr = (pha3 * fgr3 + (1 - pha3) * bgr).clamp(0, 1)
        if self.extra_p > 0:
            return {"fgr": fgr, "pha": pha, "bgr": bgr, "extra": torch.tensor(float(extra))}
        return {"fgr": fgr, "pha": pha, "bgr": bgr}


def composite_subjects(fgr: Tensor, pha: Tensor, fgr2: Tensor, pha2: Tensor) -> tuple[Tensor, Tensor]:
    """Subject 2 ``(fgr2, pha2)`` in front of subject 1: the foreground and alpha of both as one layer.

    ``pha = a2 + (1 - a2) a1``; ``fgr = (a2 f2 + (1 - a2) a1 f1) / pha`` where ``pha > 0`` (else ``f1``), so that
    compositing the result over any background equals compositing subject 1, then subject 2.
    """
    if fgr.shape != fgr2.shape or pha.shape != pha2.shape:
        raise ValueError(f"the subjects differ in size: {tuple(fgr.shape)} and {tuple(fgr2.shape)}")
    a1, a2 = pha, pha2
    out_pha = a2 + (1 - a2) * a1
    num = a2 * fgr2 + (1 - a2) * a1 * fgr
    out_fgr = torch.where(out_pha > 1e-6, num / out_pha.clamp_min(1e-6), fgr)
    return out_fgr.clamp(0, 1), out_pha.clamp(0, 1)
