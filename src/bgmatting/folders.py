"""Matte folders (or lists) of image files: pair sources with backgrounds, plan the outputs, run a
:class:`~bgmatting.Matter`, write.

This is what ``bgmatting matte`` runs; every check happens before the first image is matted, so a
mistake in the arguments costs nothing, and every file is written atomically.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .errors import BgMattingError
from .io import (
    DEFAULT_MAX_PIXELS,
    check_max_pixels,
    check_writable_folder,
    image_size,
    is_image_path,
    list_images,
    read_image,
    write_image,
)
from .outputs import load_target, output_image, parse_outputs
from .pipeline import Matter
from .results import MatteResult
from .tensors import check_background_size, match_background_image
from .workers import ModelWorkers


@dataclass
class Job:
    """One image to matte: its source, background and relative output path (without suffix)."""

    src: Path
    bgr: Path
    rel: Path
    outputs: dict[str, Path] = field(default_factory=dict)


def _expand(arg: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``(file, relative path)`` for a file argument (its name) or every image below a folder."""
    p = Path(arg)
    if p.is_dir():
        return [(f, f.relative_to(p)) for f in list_images(p)]
    if p.is_file():
        if not is_image_path(p):
            raise BgMattingError(f"'{p}' is not an image file (expected .png, .jpg, .webp, .bmp or .tif)")
        return [(p, Path(p.name))]
    raise BgMattingError(f"'{p}' does not exist")


def _key(rel: Path) -> str:
    return rel.with_suffix("").as_posix()


def pair_inputs(srcs: Sequence[str | os.PathLike], bgrs: Sequence[str | os.PathLike]) -> list[Job]:
    """Pair every source image with its background.

    Rules: one background file serves every source; otherwise the i-th background argument pairs with the
    i-th source argument (file with file, folder with folder by relative path, the suffix may differ); a
    single background folder pairs with every source argument by relative path. All sources without a
    background are reported together.
    """
    if not srcs:
        raise BgMattingError("no source images given")
    if not bgrs:
        raise BgMattingError("no background given: pass the shot of the empty scene with --bgr")
    for s in srcs:
        if not Path(s).exists():
            raise BgMattingError(f"source '{s}' does not exist")
    bgr_paths = [Path(b) for b in bgrs]
    for b in bgr_paths:
        if not b.exists():
            raise BgMattingError(f"background '{b}' does not exist")
    jobs: list[Job] = []
    missing: list[str] = []
    if len(bgr_paths) == 1 and bgr_paths[0].is_file():
        bgr_file = _expand(bgr_paths[0])[0][0]
        for s in srcs:
            jobs += [Job(f, bgr_file, rel) for f, rel in _expand(s)]
        return _check_unique(jobs)
    if len(bgr_paths) == 1:
        pairs = [(s, bgr_paths[0]) for s in srcs]
    elif len(bgr_paths) == len(srcs):
        pairs = list(zip(srcs, bgr_paths))
    else:
        raise BgMattingError(f"{len(srcs)} sources but {len(bgr_paths)} backgrounds: give one background for "
                             "all, one per source, or a folder whose relative paths match the source folder")
    for s, b in pairs:
        src_items = _expand(s)
        if b.is_file():
            if Path(s).is_dir():
                raise BgMattingError(f"source '{s}' is a folder but its background '{b}' is a file; pass a "
                                     "single --bgr file for all images, or a folder of backgrounds")
            jobs.append(Job(src_items[0][0], _expand(b)[0][0], src_items[0][1]))
            continue
        by_key = {_key(rel): f for f, rel in _expand(b)}
        for f, rel in src_items:
            match = by_key.get(_key(rel))
            if match is None:
                missing.append(str(f))
            else:
                jobs.append(Job(f, match, rel))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise BgMattingError(f"{len(missing)} source image(s) have no background with the same relative path: "
                             f"{', '.join(missing[:5])}{more}")
    return _check_unique(jobs)


def _check_unique(jobs: list[Job]) -> list[Job]:
    seen: dict[str, Path] = {}
    for j in jobs:
        k = _key(j.rel)
        if k in seen and seen[k] != j.src:
            raise BgMattingError(f"'{seen[k]}' and '{j.src}' would write the same outputs ('{k}'); "
                                 "rename one or matte them separately")
        seen[k] = j.src
    return jobs


def check_inputs(jobs: list[Job], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Read every header: all files must be images of at most ``max_pixels`` pixels (``None``: no limit), each
    background the same view (aspect ratio) as its source."""
    sizes: dict[Path, tuple[int, int]] = {}
    for j in jobs:
        for p in (j.src, j.bgr):
            if p not in sizes:
                sizes[p] = image_size(p, max_pixels=max_pixels)
        try:
            check_background_size(sizes[j.bgr], sizes[j.src])
        except BgMattingError as e:
            raise BgMattingError(f"{j.src}: {e}") from None


def plan_outputs(jobs: list[Job], out_dir: str | os.PathLike, kinds: Sequence[str], overwrite: bool = False) -> None:
    """Fill ``job.outputs`` with ``out_dir/<kind>/<relative path>.png``; refuse to overwrite or touch inputs."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BgMattingError(f"output path '{out}' exists and is not a folder")
    inputs = {j.src.resolve() for j in jobs} | {j.bgr.resolve() for j in jobs}
    existing = []
    for j in jobs:
        j.outputs = {k: out / k / j.rel.with_suffix(".png") for k in kinds}
        for path in j.outputs.values():
            if path.resolve() in inputs:
                raise BgMattingError(f"output '{path}' would overwrite an input; choose another output folder")
            if path.exists():
                existing.append(str(path))
    if existing and not overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise BgMattingError(f"{len(existing)} output file(s) exist already ({', '.join(existing[:3])}{more}); "
                             "pass --overwrite to replace them")
    check_writable_folder(out)


def write_outputs(result: MatteResult, outputs: dict[str, Path], target: Any = None, pha_16bit: bool = False,
                  mask_threshold: float = 0.5) -> None:
    """Write the requested outputs of one matte, ``{kind: path}`` (see :func:`~bgmatting.outputs.output_image`)."""
    for kind, path in outputs.items():
        image = output_image(kind, result, target, mask_threshold)
        write_image(path, image, bits=16 if pha_16bit and kind == "pha" else 8)


def matte_images(srcs: Sequence[str | os.PathLike], bgrs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 matter: Matter | Callable[[], Matter], outputs: str | Sequence[str] = ("com", "pha"),
                 target_bgr: str | None = None, overwrite: bool = False, pha_16bit: bool = False,
                 mask_threshold: float = 0.5,
                 align: bool | str = "auto", check_bgr: bool = True, progress: bool = True,
                 workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[Job]:
    """Matte image files and write the outputs under ``out_dir/<kind>/<relative path>.png``.

    Args:
        srcs: image files or folders (searched recursively) with the subject.
        bgrs: the background shot(s): one file for all sources, or files/folders paired as in :func:`pair_inputs`.
        out_dir: output folder; outputs mirror each source's relative path.
        matter: the :class:`Matter` that runs the model, or a function that makes one (called after every
            argument has been checked, so that mistakes are reported before a model is loaded).
        outputs: any of ``com`` (RGBA with straight alpha, or RGB over ``target_bgr``), ``pha`` (gray),
            ``fgr`` (RGB), ``err``/``ref`` (gray), ``mask`` (binary: subject white where alpha ≥ ``mask_threshold``).
        target_bgr: an image path or ``#RRGGBB``: ``com`` becomes the composite over it.
        overwrite: replace existing outputs (inputs are never overwritten).
        align: align each background to its source first (hand-held shots, see :mod:`bgmatting.align`); a shot
            that already lines up is kept as it is. ``"auto"`` (default): a shot that cannot be aligned is used as
            it is, silently; ``True``: the same with an :class:`~bgmatting.align.AlignmentWarning`; ``False``: the
            shots are used as they are.
        check_bgr: stop with an explanation when a background does not show the source's scene (e.g. the new
            background passed as ``bgr`` instead of ``target_bgr``).
        workers: images in the works at once (read, model, written), each model call on its share of the
            threads; ``None``: 2 on a CPU, 1 on a GPU (see :class:`~bgmatting.workers.ModelWorkers`).
        max_pixels: refuse any input (or ``target_bgr`` image) that declares more pixels than this, before any
            work (``None``: no limit; default 40 MP, see :data:`~bgmatting.io.images.DEFAULT_MAX_PIXELS`).

    Returns:
        the jobs done, with their output paths.
    """
    from tqdm import tqdm

    kinds = parse_outputs(outputs)
    ModelWorkers.check(workers)
    check_max_pixels(max_pixels)
    if not 0.0 <= mask_threshold <= 1.0:
        raise BgMattingError(f"mask threshold must be in [0, 1], got {mask_threshold}")
    jobs = pair_inputs(srcs, bgrs)
    check_inputs(jobs, max_pixels)
    plan_outputs(jobs, out_dir, kinds, overwrite)
    target = load_target(target_bgr, max_pixels)
    if not isinstance(matter, Matter):
        matter = matter()
    if align not in (True, False, "auto"):
        raise BgMattingError(f"align must be True, False or 'auto', not {align!r}")
    if align or check_bgr:
        from .align import align_background
        from .scene import check_background_matches

    def matte(job: Job) -> None:
        src = read_image(job.src, max_pixels=max_pixels)
        bgr = read_bgr(job.bgr)
        if align or check_bgr:
            bgr = match_background_image(bgr, src.shape[:2])
        if check_bgr:  # before aligning: an unrelated image is this mistake, not a shot that cannot be aligned
            try:
                check_background_matches(src, bgr, align=bool(align))
            except BgMattingError as e:
                raise BgMattingError(f"{job.src}: {e}") from None
        if align:
            bgr = align_background(bgr, src, warn=align is True)[0]
        write_outputs(matter(src, bgr), job.outputs, target, pha_16bit, mask_threshold)

    calls = ModelWorkers(workers, matter, torch.device(getattr(matter, "device", "cpu")))
    # one background per image in the works
    read_bgr = functools.lru_cache(maxsize=calls.workers)(functools.partial(read_image, max_pixels=max_pixels))
    with calls, tqdm(total=len(jobs), desc="matting", unit="img", disable=not progress) as bar:
        for job in jobs:
            bar.update(len(calls.submit(matte, job)))
        bar.update(len(calls.drain()))
    return jobs
