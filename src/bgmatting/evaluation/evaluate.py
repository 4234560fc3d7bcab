"""Evaluate a matting model (or mattes already written) on a folder of ground truth.

Dataset layouts (images of any readable format, matched by relative path without the extension):

- **paired**: ``src/``, ``bgr/``, ``pha/`` and optionally ``fgr/`` — real or pre-composited pairs.
- **composited**: ``fgr/``, ``pha/`` and ``bgr/`` without ``src/`` — ``bgr/`` is a pool of clean
  backgrounds (any number). Item ``i`` (in sorted order) gets background ``i mod len(bgr)``, resized to
  cover the foreground and centre-cropped; the pair is made by :func:`bgmatting.data.perturb.make_pair`
  with a generator seeded from ``(seed, i)``, so the benchmark is the same on every run and machine.
  :func:`build_benchmark` writes it out as a paired folder.

Optionally ``trimap/`` holds trimaps (0 background, 255 foreground, anything else unknown) for
``region="trimap"`` and ``trimap_mse``; without one the trimap is made from the ground truth
(:func:`bgmatting.evaluation.trimap.trimap_from_alpha`).

When every item sits in a subfolder (``pha/<group>/<name>.png``, as in the held-out set of
:mod:`bgmatting.data.heldout`), the report also gives the means per group (the first folder of the name).

Every file is matched before any image is read; a missing or unmatched file raises
:class:`bgmatting.BgMattingError` that names the first few.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.perturb import make_pair
from ..errors import BgMattingError
from ..io import atomic_write_text, list_images, read_image, write_image
from .metrics import all_metrics, fgr_mse, mse
from .trimap import trimap_from_alpha, unknown_region

__all__ = ["evaluate", "build_benchmark", "EvalReport", "METRICS"]

METRICS = ("sad", "mse", "grad", "conn", "fgr_mse")
TRIMAP_MSE = "trimap_mse"  # optional: the MSE of the trimap's unknown region next to the whole-image metrics
TITLES = {"sad": "SAD", "mse": "MSE", "grad": "Grad", "conn": "Conn", "fgr_mse": "fgr MSE", TRIMAP_MSE: "trimap MSE"}
UNITS = {
    "sad": "sum |err| / 1000",
    "mse": "mean err^2 x 1000",
    "grad": "sum gradient err^2 / 1000",
    "conn": "sum connectivity err / 1000",
    "fgr_mse": "mean fgr err^2 (alpha > 0) x 1000",
    TRIMAP_MSE: "mean err^2 in the trimap's unknown region x 1000",
}
_SHOWN = 5  # names listed in an error message


# ----------------------------------------------------------------------------------------------------------
# report


@dataclass
class EvalReport:
    """Per-image metrics and their means.

    Attributes:
        rows: one dict per image, in sorted order: ``{"name": str, "sad": float, ...}``; a metric is
            ``nan`` where it is undefined (e.g. MSE over an empty trimap region).
        metrics: the metric keys present, in order (``"trimap_mse"`` only when asked for, ``"fgr_mse"`` only
            when foregrounds were compared).
        info: how the numbers were made: ``data_dir``, ``layout`` (``"paired"`` / ``"composited"``),
            ``source`` (``"matter"`` / ``"predictions"``), ``region``, ``trimap`` and ``trimap_mse`` (where
            the trimaps of ``region="trimap"`` / of ``trimap_mse`` came from: ``"files"`` / ``"generated"`` /
            ``None``), ``seed``.

    Units: see :mod:`bgmatting.evaluation.metrics` (SAD, Grad, Conn ÷ 1000; MSE, fgr MSE × 1000).
    """

    rows: list[dict[str, Any]]
    metrics: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def _mean_of(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        out = {}
        for m in self.metrics:
            values = [r[m] for r in rows if not math.isnan(r[m])]
            out[m] = float(np.mean(values)) if values else float("nan")
        return out

    def mean(self) -> dict[str, float]:
        """The mean of each metric over the images where it is defined (``nan`` if it is nowhere)."""
        return self._mean_of(self.rows)

    def groups(self) -> dict[str, dict[str, Any]]:
        """The means per group, when every image sits in a subfolder (``"<group>/<name>"``); else ``{}``.

        Returns:
            ``{group: {"count": int, "mean": {metric: float}}}``, groups in sorted order; each mean is
            :meth:`mean` over that group's rows.
        """
        if not self.rows or not all("/" in r["name"] for r in self.rows):
            return {}
        members: dict[str, list[dict[str, Any]]] = {}
        for r in self.rows:
            members.setdefault(r["name"].split("/", 1)[0], []).append(r)
        return {g: {"count": len(rows), "mean": self._mean_of(rows)} for g, rows in sorted(members.items())}

    def format_table(self, digits: int = 3) -> str:
        """A plain-text table: one line per image, the mean line, the means per group (see :meth:`groups`)
        if any, and a note on units."""
        header = ["name"] + [TITLES[m] for m in self.metrics]
        body = [[r["name"]] + [f"{r[m]:.{digits}f}" for m in self.metrics] for r in self.rows]
        mean = self.mean()
        foot = [f"mean ({len(self.rows)})"] + [f"{mean[m]:.{digits}f}" for m in self.metrics]
        by_group = [[f"{g}/ ({v['count']})"] + [f"{v['mean'][m]:.{digits}f}" for m in self.metrics]
                    for g, v in self.groups().items()]
        widths = [max(len(line[i]) for line in [header, *body, foot, *by_group]) for i in range(len(header))]

        def fmt(line: list[str]) -> str:
            cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
            return "  ".join(cells).rstrip()

        rule = "-" * len(fmt(["-" * w for w in widths]))
        region = self.info.get("region", "all")
        note = f"region: {region}" + (f" (trimap {self.info['trimap']})" if self.info.get("trimap") else "")
        note += "; SAD, Grad, Conn / 1000; MSE"
        note += "".join(f", {TITLES[m]}" for m in (TRIMAP_MSE, "fgr_mse") if m in self.metrics) + " x 1000"
        groups = [rule, "mean by group:", *map(fmt, by_group)] if by_group else []
        return "\n".join([fmt(header), rule, *map(fmt, body), rule, fmt(foot), *groups, note])

    def __str__(self) -> str:
        return self.format_table()

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write ``name,<metrics…>`` lines, then a ``mean`` line and, for grouped data (:meth:`groups`),
        a ``mean:<group>`` line per group, atomically; returns the path."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["name", *self.metrics])
        for r in self.rows:
            w.writerow([r["name"], *(repr(float(r[m])) for m in self.metrics)])
        mean = self.mean()
        w.writerow(["mean", *(repr(mean[m]) for m in self.metrics)])
        for g, v in self.groups().items():
            w.writerow([f"mean:{g}", *(repr(v["mean"][m]) for m in self.metrics)])
        return atomic_write_text(path, buf.getvalue())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``info``, ``units``, ``count``, ``mean``, ``groups`` (for grouped data, see
        :meth:`groups`) and ``images`` (``nan`` → ``None``)."""

        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        out = {
            "info": self.info,
            "units": {m: UNITS[m] for m in self.metrics},
            "count": len(self.rows),
            "mean": {m: clean(v) for m, v in self.mean().items()},
        }
        groups = self.groups()
        if groups:
            out["groups"] = {g: {"count": v["count"], "mean": {m: clean(x) for m, x in v["mean"].items()}}
                             for g, v in groups.items()}
        out["images"] = [{k: clean(v) for k, v in r.items()} for r in self.rows]
        return out

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON, atomically; returns the path."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------------
# finding and matching files


def _key(root: Path, f: Path) -> str:
    return f.relative_to(root).with_suffix("").as_posix()


def _index(folder: Path) -> dict[str, Path]:
    """``{relative path without extension: file}`` for the images below ``folder``."""
    out: dict[str, Path] = {}
    dups = []
    for f in list_images(folder):
        k = _key(folder, f)
        if k in out:
            dups.append(f"{out[k].name} / {f.name}")
        out[k] = f
    if dups:
        raise BgMattingError(
            f"'{folder}' holds images that differ only by extension ({len(dups)}): {', '.join(dups[:_SHOWN])}; "
            "keep one of each"
        )
    return out


def _names(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _match(folders: dict[str, dict[str, Path]], reference: str) -> list[str]:
    """The sorted keys of ``folders[reference]``; raises if any other folder misses or adds one."""
    ref = set(folders[reference])
    problems = []
    for name, files in folders.items():
        if name == reference:
            continue
        missing, extra = ref - set(files), set(files) - ref
        if missing:
            problems.append(f"{name} lacks {len(missing)} image(s) that {reference} has: {_names(missing)}")
        if extra:
            problems.append(f"{name} has {len(extra)} image(s) that {reference} lacks: {_names(extra)}")
    if problems:
        raise BgMattingError("files do not match (same relative names expected): " + "; ".join(problems))
    return sorted(ref)


def _subdir(root: Path, name: str) -> Path | None:
    d = root / name
    return d if d.is_dir() else None


# ----------------------------------------------------------------------------------------------------------
# composited benchmark


def _item_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    return (t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]).contiguous()


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).contiguous().numpy()


def _cover(bgr: np.ndarray, h: int, w: int) -> np.ndarray:
    """``bgr`` scaled to cover ``(h, w)`` and centre-cropped to it."""
    bh, bw = bgr.shape[:2]
    if (bh, bw) == (h, w):
        return bgr
    s = max(h / bh, w / bw)
    nh, nw = max(h, round(bh * s)), max(w, round(bw * s))
    t = F.interpolate(_to_tensor(bgr), size=(nh, nw), mode="bilinear", align_corners=False, antialias=s < 1)
    top, left = (nh - h) // 2, (nw - w) // 2
    return _to_numpy(t[:, :, top : top + h, left : left + w].clamp(0, 1))


def _synthesize(fgr: np.ndarray, pha: np.ndarray, bgr: np.ndarray, seed: int, index: int):
    """``(src, bgr_shot)`` as ``(H, W, 3)`` float32 arrays, reproducible from ``(seed, index)``."""
    g = torch.Generator().manual_seed(_item_seed(seed, index))
    bgr = _cover(bgr, *pha.shape)
    src, shot = make_pair(_to_tensor(fgr), _to_tensor(pha), _to_tensor(bgr), generator=g)
    return _to_numpy(src), _to_numpy(shot)


def _check_shape(name: str, key: str, img: np.ndarray, shape: tuple[int, int]) -> None:
    if img.shape[:2] != shape:
        raise BgMattingError(
            f"{name} '{key}' is {img.shape[1]}x{img.shape[0]} but the ground truth is {shape[1]}x{shape[0]}; "
            "sizes must be equal"
        )


class _Dataset:
    """The matched files of a ground-truth folder (see the module docstring)."""

    def __init__(self, data_dir: str | os.PathLike, *, need_inputs: bool):
        root = Path(data_dir)
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a folder"
            raise BgMattingError(f"data folder '{root}' {what}")
        self.root = root
        dirs = {n: _subdir(root, n) for n in ("src", "bgr", "pha", "fgr")}
        if dirs["pha"] is None:
            raise BgMattingError(f"'{root}' has no pha/ folder of ground-truth alpha mattes")
        self.layout = "paired" if dirs["src"] is not None else "composited"
        if need_inputs:
            want = ("src", "bgr") if self.layout == "paired" else ("fgr", "bgr")
            lacking = [n + "/" for n in want if dirs[n] is None]
            if lacking:
                raise BgMattingError(
                    f"'{root}' lacks {' and '.join(lacking)}: a dataset needs src/ + bgr/ + pha/ (paired) "
                    "or fgr/ + pha/ + bgr/ (composited from backgrounds)"
                )
        folders = {"pha/": _index(dirs["pha"])}
        if dirs["fgr"] is not None:
            folders["fgr/"] = _index(dirs["fgr"])
        if need_inputs and self.layout == "paired":
            folders["src/"] = _index(dirs["src"])
            folders["bgr/"] = _index(dirs["bgr"])
        self.pool: list[Path] = []
        if need_inputs and self.layout == "composited":
            self.pool = [f for _, f in sorted(_index(dirs["bgr"]).items())]
        self.keys = _match(folders, "pha/")
        self.files = {name.rstrip("/"): files for name, files in folders.items()}

    def __len__(self) -> int:
        return len(self.keys)

    def has(self, name: str) -> bool:
        return name in self.files

    def path(self, name: str, key: str) -> Path:
        return self.files[name][key]

    def inputs(self, i: int, key: str, pha: np.ndarray, fgr: np.ndarray | None, seed: int):
        """``(src, bgr)`` for item ``i``: read (paired) or composited (composited layout)."""
        if self.layout == "paired":
            src = read_image(self.path("src", key), "RGB")
            bgr = read_image(self.path("bgr", key), "RGB")
            _check_shape("src", key, src, pha.shape)
            _check_shape("bgr", key, bgr, pha.shape)
            return src, bgr
        bgr = read_image(self.pool[i % len(self.pool)], "RGB")
        return _synthesize(fgr, pha, bgr, seed, i)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BgMattingError(f"seed must be a whole number >= 0, got {seed!r}")
    return int(seed)


# ----------------------------------------------------------------------------------------------------------
# public API


def build_benchmark(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 0, progress: bool = True
) -> Path:
    """Write a composited dataset (``fgr/``, ``pha/``, ``bgr/`` pool) out as a paired benchmark folder.

    ``out_dir`` gets ``src/``, ``bgr/``, ``pha/`` and ``fgr/`` as 8-bit PNG (same relative names), made
    exactly as :func:`evaluate` makes them on the fly, so other tools can run on the same inputs and be
    scored with ``evaluate(out_dir, predictions_dir=...)``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    seed = _check_seed(seed)
    ds = _Dataset(data_dir, need_inputs=True)
    if ds.layout != "composited":
        raise BgMattingError(f"'{data_dir}' already holds src/ (a paired benchmark); nothing to build")
    out = Path(out_dir)
    for i, key in enumerate(tqdm(ds.keys, desc="compositing", unit="img", disable=not progress)):
        pha = read_image(ds.path("pha", key), "L")
        fgr = read_image(ds.path("fgr", key), "RGB")
        _check_shape("fgr", key, fgr, pha.shape)
        src, bgr = ds.inputs(i, key, pha, fgr, seed)
        for name, img in (("src", src), ("bgr", bgr), ("pha", pha), ("fgr", fgr)):
            write_image(out / name / f"{key}.png", img)
    return out


def evaluate(
    data_dir: str | os.PathLike,
    *,
    matter: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    predictions_dir: str | os.PathLike | None = None,
    region: str = "all",
    trimap_dir: str | os.PathLike | None = None,
    save_predictions: str | os.PathLike | None = None,
    seed: int = 0,
    trimap_mse: bool = False,
    progress: bool = True,
) -> EvalReport:
    """Score alpha mattes against a ground-truth folder: SAD, MSE, Grad, Conn (and fgr MSE).

    Args:
        data_dir: the ground truth, in one of the layouts of this module's docstring.
        matter: a callable ``matter(src, bgr)`` taking ``(H, W, 3)`` float32 arrays in ``[0, 1]`` and
            returning an object with ``pha`` (``(H, W)`` in ``[0, 1]``) and optionally ``fgr``
            (``(H, W, 3)`` in ``[0, 1]``; fgr MSE is ``nan`` without it), e.g. a :class:`bgmatting.Matter`.
        predictions_dir: instead of ``matter``: mattes already computed, as ``<dir>/pha/`` (and
            optionally ``<dir>/fgr/``) or a flat folder of gray images, named like the ground truth;
            each must have the ground truth's size.
        region: ``"all"`` (every pixel) or ``"trimap"`` (the unknown region of a trimap only).
        trimap_dir: trimaps for ``region="trimap"`` or ``trimap_mse``; default ``<data_dir>/trimap/`` if it
            exists, else trimaps made from the ground truth.
        save_predictions: a folder to write the predicted alphas to, as 8-bit PNG under ``pha/`` with
            the ground truth's relative names (readable back with ``predictions_dir``).
        seed: the seed of the composited layout's perturbations (ignored for paired data).
        trimap_mse: with ``region="all"``, also report ``"trimap_mse"``, the MSE over the unknown region
            of the trimap (what ``region="trimap"`` reports as MSE), without a second pass.
        progress: show a progress bar.

    Returns:
        An :class:`EvalReport`; fgr MSE is included when ground-truth ``fgr/`` exists and the predictions
        have foregrounds.

    Raises:
        BgMattingError: bad options, missing folders, unmatched files (listed), unequal image sizes.
    """
    if (matter is None) == (predictions_dir is None):
        raise BgMattingError("give either a model to run (matter) or a folder of predictions, not both or neither")
    if region not in ("all", "trimap"):
        raise BgMattingError(f"region must be 'all' or 'trimap', not {region!r}")
    if trimap_mse and region != "all":
        raise BgMattingError("trimap_mse adds the trimap region's MSE to a whole-image evaluation (region='all'); "
                             "with region='trimap' the MSE is that already")
    use_trimap = region == "trimap" or trimap_mse
    if trimap_dir is not None and not use_trimap:
        raise BgMattingError("trimap_dir is only used with region='trimap' or trimap_mse")
    seed = _check_seed(seed)

    # ---- match every file up front
    ds = _Dataset(data_dir, need_inputs=matter is not None)
    folders = {"pha": ds.files["pha"]}
    pred: dict[str, dict[str, Path]] = {}
    if predictions_dir is not None:
        proot = Path(predictions_dir)
        if not proot.is_dir():
            raise BgMattingError(f"predictions folder '{proot}' does not exist")
        pha_dir = _subdir(proot, "pha") or proot
        pred["pha"] = _index(pha_dir)
        fgr_dir = _subdir(proot, "fgr") if pha_dir != proot else None
        if fgr_dir is not None and ds.has("fgr"):
            pred["fgr"] = _index(fgr_dir)
        labels = {"pha": f"'{pha_dir}'", "fgr": f"'{fgr_dir}'"}
        _match({"pha/": folders["pha"], **{labels[k]: v for k, v in pred.items()}}, "pha/")
    trimap_source = None
    trimaps: dict[str, Path] = {}
    if use_trimap:
        tdir = Path(trimap_dir) if trimap_dir is not None else _subdir(ds.root, "trimap")
        if tdir is not None:
            if not tdir.is_dir():
                raise BgMattingError(f"trimap folder '{tdir}' does not exist")
            trimaps = _index(tdir)
            missing = set(ds.keys) - set(trimaps)
            if missing:
                raise BgMattingError(
                    f"trimap folder '{tdir}' has no trimap for {len(missing)} image(s): {_names(missing)}"
                )
            trimap_source = "files"
        else:
            trimap_source = "generated"

    with_fgr = ds.has("fgr") and (matter is not None or "fgr" in pred)
    metrics = METRICS[:4] + ((TRIMAP_MSE,) if trimap_mse else ()) + (("fgr_mse",) if with_fgr else ())
    save = Path(save_predictions) if save_predictions is not None else None

    rows = []
    for i, key in enumerate(tqdm(ds.keys, desc="evaluating", unit="img", disable=not progress)):
        true_pha = read_image(ds.path("pha", key), "L")
        true_fgr = read_image(ds.path("fgr", key), "RGB") if ds.has("fgr") else None
        if true_fgr is not None:
            _check_shape("fgr", key, true_fgr, true_pha.shape)
        if matter is not None:
            src, bgr = ds.inputs(i, key, true_pha, true_fgr, seed)
            result = matter(src, bgr)
            if not hasattr(result, "pha"):
                raise TypeError(f"matter(src, bgr) must return an object with .pha (and .fgr), got {type(result)}")
            pred_pha = np.asarray(result.pha, dtype=np.float32)
            pred_fgr = getattr(result, "fgr", None)
            pred_fgr = None if pred_fgr is None else np.asarray(pred_fgr, dtype=np.float32)
        else:
            pred_pha = read_image(pred["pha"][key], "L")
            pred_fgr = read_image(pred["fgr"][key], "RGB") if "fgr" in pred else None
        if pred_pha.ndim == 3 and pred_pha.shape[2] == 1:
            pred_pha = pred_pha[..., 0]
        if pred_pha.ndim != 2:
            raise BgMattingError(f"the predicted alpha of '{key}' has shape {pred_pha.shape}; expected (H, W)")
        _check_shape("predicted alpha", key, pred_pha, true_pha.shape)
        if pred_fgr is not None:
            _check_shape("predicted foreground", key, pred_fgr, true_pha.shape)
        pred_pha = np.clip(pred_pha, 0.0, 1.0)

        mask = unknown = None
        if use_trimap:
            if trimaps:
                tri = read_image(trimaps[key], "L")
                _check_shape("trimap", key, tri, true_pha.shape)
            else:
                tri = trimap_from_alpha(true_pha)
            unknown = unknown_region(tri)
            mask = unknown if region == "trimap" else None

        row = {"name": key, **all_metrics(pred_pha, true_pha, mask)}
        if trimap_mse:
            row[TRIMAP_MSE] = mse(pred_pha, true_pha, unknown)
        if with_fgr:  # nan when the model gives no foreground
            pred_fgr = None if pred_fgr is None else np.clip(pred_fgr, 0.0, 1.0)
            row["fgr_mse"] = math.nan if pred_fgr is None else fgr_mse(pred_fgr, true_fgr, true_pha, mask)
        rows.append(row)
        if save is not None:
            write_image(save / "pha" / f"{key}.png", pred_pha)

    info = {
        "data_dir": str(ds.root),
        "layout": ds.layout,
        "source": "matter" if matter is not None else "predictions",
        "region": region,
        "trimap": trimap_source if region == "trimap" else None,
        "trimap_mse": trimap_source if trimap_mse else None,
        "seed": seed if matter is not None and ds.layout == "composited" else None,
    }
    return EvalReport(rows=rows, metrics=metrics, info=info)
