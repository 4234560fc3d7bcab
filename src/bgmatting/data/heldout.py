"""``bgmatting data heldout``: a held-out benchmark of what users meet, in six perturbation groups.

The held-out real people (``corpus/valid/fgr/people/*.png`` with ``corpus/valid/pha/people/*.png``) are
placed over the held-out real photographs (``corpus/valid/backgrounds/<source>/*``, every source but
``synthetic``) of a corpus made by ``bgmatting data prepare``; neither was used in training. Each case is
an HD frame (3/4 at 1280×720, 1/4 at 1920×1080) showing one person, large but not always whole (head and
shoulders to full body, sometimes cut off at the bottom, at varying horizontal positions), and a background
shot that differs from the scene behind the person as defined by its group:

============  ===========================================================================================
``none``      the background shot is the clean background
``misalign``  the camera moved: the shot is rotated by at most 1°, shifted by at most 1 % of the width and
              of the height, scaled by 1 ± 1 % (about the centre, reflected borders)
``noise``     Gaussian sensor noise, σ in [0.01, 0.03], drawn independently on the source and the shot
``exposure``  the shot's exposure drifted: gain 1 ± 10 %, then gamma 1 ± 10 %
``shadow``    in the source the background is darkened by 20–50 % (where densest) under a soft shadow of
              the subject; the shot is unshadowed
``combo``     misalign, then exposure, then noise (source and shot), each as above
============  ===========================================================================================

:func:`build_heldout` writes, atomically (a temporary folder renamed into place)::

    out_dir/
      src/<group>/<name>.png   the source frame (RGB)
      bgr/<group>/<name>.png   the background shot (RGB)
      pha/<group>/<name>.png   the true alpha (8-bit gray)
      fgr/<group>/<name>.png   the true foreground (RGB, black where pha == 0)
      manifest.json            per case: person, background, size, group, placement and parameters

which is the paired layout of :func:`bgmatting.evaluation.evaluate`; ``bgmatting matte out_dir/src --bgr
out_dir/bgr -o OUT --outputs pha`` keeps the ``<group>/`` folders, so ``bgmatting eval --data out_dir
--predictions OUT`` scores each group separately. Every number is drawn from ``seed`` and the case's index
(:func:`plan_heldout`), and :func:`render_case` makes the images from a case alone, so the set is the same
on every machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..errors import BgMattingError
from ..io import atomic_write_text, image_size, is_image_path, read_image, write_image
from .perturb import composite

__all__ = [
    "GROUPS",
    "GROUP_DEFINITIONS",
    "HD_SIZES",
    "HeldoutSources",
    "find_sources",
    "plan_heldout",
    "render_case",
    "build_heldout",
    "misalign",
    "expose",
    "add_noise",
    "shadow_map",
]

FORMAT = "bgmatting-heldout/1"
GROUPS = ("none", "misalign", "noise", "exposure", "shadow", "combo")
GROUP_DEFINITIONS = {
    "none": "background shot = clean background",
    "misalign": "shot rotated <= 1 deg, shifted <= 1 % of width and height, scaled 1 +- 1 % (about the centre)",
    "noise": "Gaussian noise, sigma in [0.01, 0.03], independent on src and bgr",
    "exposure": "shot: gain 1 +- 10 %, then gamma 1 +- 10 %",
    "shadow": "src background darkened 20-50 % (densest) under a soft shadow of the subject; shot unshadowed",
    "combo": "misalign, then exposure, then noise (src and shot)",
}
HD_SIZES = ((720, 1280), (1080, 1920))  # (H, W): 3/4 of each group at the first, 1/4 at the second
LARGE_FRACTION = 0.25

# The groups (the benchmark's definition; tests check these bounds).
MISALIGN_DEGREES = 1.0
MISALIGN_SHIFT = 0.01  # fraction of width / height
MISALIGN_SCALE = 0.01
NOISE_SIGMA = (0.01, 0.03)
EXPOSURE_GAIN = 0.10
EXPOSURE_GAMMA = 0.10
SHADOW_DARKEN = (0.2, 0.5)  # fraction of light removed where the shadow is densest
# The shadow's shape: the subject's alpha shifted sideways (fraction of the frame width), a little down,
# sheared (x moves by shear × height above the subject's feet), blurred (Gaussian σ, fraction of the long side).
SHADOW_SHIFT_X = (0.04, 0.15)
SHADOW_SHIFT_Y = (0.0, 0.04)
SHADOW_SHEAR = 0.3
SHADOW_BLUR = (0.01, 0.03)
_SHADOW_WORK_SIDE = 480  # the shadow is smooth: built at most this large, then upsampled

# Placement of the person (fractions of the frame height H / width W).
CUT_P = 0.35  # probability that a whole-body cutout is cut off at the bottom anyway
WHOLE_HEIGHT = (0.55, 0.92)  # subject height when whole
CUT_VISIBLE = (0.6, 0.95)  # from the subject's top to the frame's bottom, when cut off
CUT_HIDDEN = (0.1, 0.4)  # fraction of the subject's height below the frame (whole cutouts cut off)
TRUNCATED_HIDDEN = (0.0, 0.2)  # the same for cutouts already cut off at the bottom
MAX_WIDTH = 0.9  # the subject never spans more than this fraction of the width
MARGIN = 0.02
BACKGROUND_ZOOM = (1.0, 1.15)  # the photo covers the frame, then is zoomed in by this much (random crop)

_EDGE_ALPHA = 0.5  # a cutout's subject touches an edge where this many rows/columns there exceed this alpha:
_EDGE_RUN = 0.05  # ... this fraction of the subject's extent along that edge


# ----------------------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class HeldoutSources:
    """The held-out images of a corpus: ``people`` ``{name: (fgr path, pha path)}`` and ``backgrounds``
    ``{"<source>/<name>": path}`` (real photographs only), both sorted by name."""

    people: dict[str, tuple[Path, Path]]
    backgrounds: dict[str, Path]


SPLITS = ("valid", "train")


def find_sources(corpus_dir: str | os.PathLike, split: str = "valid") -> HeldoutSources:
    """The held-out people and real photographs of a corpus (its ``valid/`` split).

    ``split='train'`` takes the training people and photographs instead: a *validation* set for choices made
    during training (which checkpoints to average), kept apart from the held-out set that judges the result;
    it measures nothing about unseen people.

    Raises:
        BgMattingError: the corpus has no such people (with alpha) or no real background photograph.
    """
    if split not in SPLITS:
        raise BgMattingError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = Path(corpus_dir)
    valid = root / split
    hint = f"run 'bgmatting data prepare --out {root}' first"
    if not root.is_dir():
        raise BgMattingError(f"corpus folder '{root}' does not exist: {hint}")
    fdir, pdir, bdir = valid / "fgr" / "people", valid / "pha" / "people", valid / "backgrounds"
    people = {}
    if fdir.is_dir():
        for f in sorted(fdir.iterdir()):
            if f.suffix.lower() == ".png" and not f.name.startswith("."):
                p = pdir / f.name
                if not p.is_file():
                    raise BgMattingError(f"'{f}' has no alpha matte '{p}'; rebuild the corpus ({hint})")
                people[f.stem] = (f, p)
    if not people:
        raise BgMattingError(f"'{fdir}' holds no held-out people (<name>.png with pha/people/<name>.png): {hint}")
    backgrounds = {}
    if bdir.is_dir():
        for src_dir in sorted(d for d in bdir.iterdir() if d.is_dir() and d.name != "synthetic"):
            for f in sorted(src_dir.iterdir()):
                if f.is_file() and is_image_path(f) and not f.name.startswith("."):
                    backgrounds[f"{src_dir.name}/{f.stem}"] = f
    if not backgrounds:
        raise BgMattingError(f"'{bdir}' holds no held-out photographs (<source>/<name>.jpg, source not "
                             f"'synthetic'): {hint}")
    return HeldoutSources(people, backgrounds)


# ----------------------------------------------------------------------------------------------------------
# planning: every random number, drawn up front


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _edges(pha: np.ndarray) -> tuple[tuple[int, int, int, int], dict[str, bool]]:
    """The subject's bounding box ``(y0, y1, x0, x1)`` (end-exclusive) and which cutout edges it touches."""
    ys, xs = np.nonzero(pha > 0.01)
    if ys.size == 0:
        raise BgMattingError("a held-out person's alpha matte is empty")
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    solid = pha > _EDGE_ALPHA
    touches = {
        "bottom": solid[-1].sum() >= max(3, _EDGE_RUN * (x1 - x0)),
        "left": solid[:, 0].sum() >= max(3, _EDGE_RUN * (y1 - y0)),
        "right": solid[:, -1].sum() >= max(3, _EDGE_RUN * (y1 - y0)),
    }
    return (y0, y1, x0, x1), {k: bool(v) for k, v in touches.items()}


def _placement(rng: np.random.Generator, pha: np.ndarray, size: tuple[int, int]) -> dict[str, Any]:
    """Where the cutout goes in a frame of ``size`` ``(H, W)``: scale, flip and its top-left corner.

    The subject is large: whole (55–92 % of the height) or cut off by the bottom of the frame (its top at
    5–40 % of the height); cutouts already cut off at the bottom always are, and a cutout cut off at one side
    is put against that side of the frame, so that no cut edge shows inside the frame.
    """
    h, w = size
    flip = bool(rng.random() < 0.5)
    (y0, y1, x0, x1), touches = _edges(pha)
    if flip:
        x0, x1 = pha.shape[1] - x1, pha.shape[1] - x0
        touches["left"], touches["right"] = touches["right"], touches["left"]
    hs, ws = y1 - y0, x1 - x0
    truncated = touches["bottom"]
    cut = truncated or bool(rng.random() < CUT_P)
    if cut:
        visible = rng.uniform(*CUT_VISIBLE) * h
        hidden = rng.uniform(*(TRUNCATED_HIDDEN if truncated else CUT_HIDDEN))
        scale = visible / (1 - hidden) / hs
    else:
        scale = rng.uniform(*WHOLE_HEIGHT) * h / hs
        hidden = 0.0
    scale = min(scale, MAX_WIDTH * w / ws)
    sh, sw = hs * scale, ws * scale
    if cut:
        top = h - sh * (1 - hidden)
    else:
        top = h * rng.uniform(MARGIN + 0.01, max(MARGIN + 0.01, 1 - MARGIN - sh / h))
    u = rng.random()
    if touches["left"] and not touches["right"]:
        left = 0.0
    elif touches["right"] and not touches["left"]:
        left = w - sw
    else:
        lo, hi = MARGIN * w, w - MARGIN * w - sw
        left = lo + u * (hi - lo) if hi > lo else (w - sw) / 2
    return {
        "scale": float(scale),
        "flip": flip,
        # the scaled cutout's top-left corner in the frame (may be outside it)
        "top": int(round(top - y0 * scale)),
        "left": int(round(left - x0 * scale)),
        "subject_height": round(float(sh / h), 4),  # fraction of the frame height
        "cut_bottom": bool(cut),
    }


def _background_crop(rng: np.random.Generator, photo_size: tuple[int, int], size: tuple[int, int]) -> dict[str, Any]:
    """The photo scaled to cover ``size`` (zoomed in a little more), and the crop's top-left corner."""
    (bh, bw), (h, w) = photo_size, size
    scale = max(h / bh, w / bw) * rng.uniform(*BACKGROUND_ZOOM)
    nh, nw = max(h, round(bh * scale)), max(w, round(bw * scale))
    return {"scale": float(scale), "resized": [nh, nw], "top": int(rng.integers(0, nh - h + 1)),
            "left": int(rng.integers(0, nw - w + 1))}


def _misalign_params(rng: np.random.Generator) -> dict[str, float]:
    return {"rotation_deg": float(rng.uniform(-MISALIGN_DEGREES, MISALIGN_DEGREES)),
            "shift_x": float(rng.uniform(-MISALIGN_SHIFT, MISALIGN_SHIFT)),  # fraction of the width
            "shift_y": float(rng.uniform(-MISALIGN_SHIFT, MISALIGN_SHIFT)),  # fraction of the height
            "scale": float(rng.uniform(1 - MISALIGN_SCALE, 1 + MISALIGN_SCALE))}


def _exposure_params(rng: np.random.Generator) -> dict[str, float]:
    return {"gain": float(rng.uniform(1 - EXPOSURE_GAIN, 1 + EXPOSURE_GAIN)),
            "gamma": float(rng.uniform(1 - EXPOSURE_GAMMA, 1 + EXPOSURE_GAMMA))}


def _noise_params(rng: np.random.Generator) -> dict[str, Any]:
    return {"sigma_src": float(rng.uniform(*NOISE_SIGMA)), "sigma_bgr": float(rng.uniform(*NOISE_SIGMA)),
            "noise_seed": int(rng.integers(0, 2**31))}


def _shadow_params(rng: np.random.Generator) -> dict[str, float]:
    side = 1.0 if rng.random() < 0.5 else -1.0
    return {"darken": float(rng.uniform(*SHADOW_DARKEN)),
            "shift_x": float(side * rng.uniform(*SHADOW_SHIFT_X)),
            "shift_y": float(rng.uniform(*SHADOW_SHIFT_Y)),
            "shear": float(rng.uniform(-SHADOW_SHEAR, SHADOW_SHEAR)),
            "blur": float(rng.uniform(*SHADOW_BLUR))}


def _group_params(group: str, rng: np.random.Generator) -> dict[str, Any]:
    if group == "none":
        return {}
    if group == "misalign":
        return {"misalign": _misalign_params(rng)}
    if group == "noise":
        return {"noise": _noise_params(rng)}
    if group == "exposure":
        return {"exposure": _exposure_params(rng)}
    if group == "shadow":
        return {"shadow": _shadow_params(rng)}
    if group == "combo":
        return {"misalign": _misalign_params(rng), "exposure": _exposure_params(rng), "noise": _noise_params(rng)}
    raise AssertionError(group)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


def _check_groups(groups: Sequence[str]) -> tuple[str, ...]:
    if isinstance(groups, str):
        groups = [g.strip() for g in groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise BgMattingError(f"groups must be some of {', '.join(GROUPS)}, got {', '.join(map(str, groups)) or 'none'}")
    return tuple(g for g in GROUPS if g in groups)  # in the benchmark's order, each once


def _check_cases(cases: int, groups: Sequence[str] = GROUPS) -> int:
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < len(groups) \
            or cases % len(groups):
        raise BgMattingError(f"the number of cases must be a positive multiple of {len(groups)} (one share per "
                             f"group: {', '.join(groups)}), got {cases!r}")
    return int(cases)


def _check_sizes(sizes: Sequence[Sequence[int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        (h1, w1), (h2, w2) = ((int(a), int(b)) for a, b in sizes)
    except (TypeError, ValueError):
        raise BgMattingError(f"sizes must be two (height, width) pairs, got {sizes!r}") from None
    if min(h1, w1, h2, w2) < 8:
        raise BgMattingError(f"sizes must be at least 8 pixels, got {sizes!r}")
    return (h1, w1), (h2, w2)


def plan_heldout(
    sources: HeldoutSources,
    *,
    cases: int = 48,
    seed: int = 0,
    sizes: Sequence[Sequence[int]] = HD_SIZES,
    groups: Sequence[str] = GROUPS,
) -> list[dict[str, Any]]:
    """Every case of the benchmark, with all its random choices drawn (no image is made).

    Cases are split equally among :data:`GROUPS`; within a group ``round(n / 4)`` are at ``sizes[1]`` and the
    rest at ``sizes[0]``. Case ``j`` of group ``g`` shows person ``(j + g) mod P`` over photograph
    ``(j + 2 g) mod B`` (people and photographs in an order shuffled by ``seed``), so each group sees
    every person and as many photographs as it has cases for. The random numbers of a case come from
    ``(seed, g, j)`` alone.

    Args:
        sources: from :func:`find_sources`.
        cases: a positive multiple of 6.
        seed: any whole number >= 0.
        sizes: the two frame sizes ``(H, W)`` (smaller sizes make quick tests).
        groups: some of :data:`GROUPS` (a list or ``"misalign,combo"``); each keeps its index ``g`` in
            :data:`GROUPS`, so its cases are those the full set with as many cases per group has.

    Returns:
        one dict per case (the entries of ``manifest.json``'s ``items``): ``name`` (``"<group>/<NN>_<person>
        _<background>"``), ``group``, ``person``, ``background``, ``height``, ``width``, ``placement``,
        ``background_crop``, ``params``.
    """
    groups = _check_groups(groups)
    cases = _check_cases(cases, groups)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BgMattingError(f"seed must be a whole number >= 0, got {seed!r}")
    small, large = _check_sizes(sizes)
    order = _rng(seed, 2**31 - 1)
    people = list(sources.people)
    backgrounds = list(sources.backgrounds)
    people = [people[i] for i in order.permutation(len(people))]
    backgrounds = [backgrounds[i] for i in order.permutation(len(backgrounds))]
    per_group = cases // len(groups)
    n_large = int(round(per_group * LARGE_FRACTION))
    shapes: dict[str, tuple[int, int]] = {}
    out = []
    for g, group in enumerate(GROUPS):
        if group not in groups:
            continue
        for j in range(per_group):
            rng = _rng(seed, g, j)
            person = people[(j + g) % len(people)]
            background = backgrounds[(j + 2 * g) % len(backgrounds)]
            h, w = large if j >= per_group - n_large else small
            if person not in shapes:
                shapes[person] = read_image(sources.people[person][1], "L")
            pha = shapes[person]
            bh, bw = image_size(sources.backgrounds[background])
            out.append({
                "name": f"{group}/{j:02d}_{_safe(person)}_{_safe(background.replace('/', '-'))}",
                "group": group,
                "person": f"people/{person}",
                "background": background,
                "height": h,
                "width": w,
                "placement": _placement(rng, pha, (h, w)),
                "background_crop": _background_crop(rng, (bh, bw), (h, w)),
                "params": _group_params(group, rng),
            })
    return out


# ----------------------------------------------------------------------------------------------------------
# rendering


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` ``(h, w[, C])`` float32 resized to ``size`` ``(H, W)``: area when shrinking, bilinear else."""
    h, w = size
    shrink = h * w < img.shape[0] * img.shape[1]
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _quantize(x: np.ndarray) -> np.ndarray:
    """To the 8-bit levels the files store, so that the written ground truth composites the written source."""
    return (np.round(np.clip(x, 0.0, 1.0) * 255) / 255).astype(np.float32)


def _place_person(fgr: np.ndarray, pha: np.ndarray, placement: dict, size: tuple[int, int]):
    """``(fgr, pha)`` of the frame: the cutout scaled (premultiplied, so no dark fringe), flipped, pasted."""
    h, w = size
    if placement["flip"]:
        fgr, pha = fgr[:, ::-1], pha[:, ::-1]
    s = placement["scale"]
    ch, cw = max(1, round(pha.shape[0] * s)), max(1, round(pha.shape[1] * s))
    pre = _resize(np.ascontiguousarray(fgr * pha[..., None]), (ch, cw))
    a = _resize(np.ascontiguousarray(pha), (ch, cw))
    out_pha = np.zeros((h, w), np.float32)
    out_pre = np.zeros((h, w, 3), np.float32)
    top, left = placement["top"], placement["left"]
    fy0, fx0 = max(0, top), max(0, left)
    fy1, fx1 = min(h, top + ch), min(w, left + cw)
    if fy1 > fy0 and fx1 > fx0:
        out_pha[fy0:fy1, fx0:fx1] = a[fy0 - top: fy1 - top, fx0 - left: fx1 - left]
        out_pre[fy0:fy1, fx0:fx1] = pre[fy0 - top: fy1 - top, fx0 - left: fx1 - left]
    out_pha = _quantize(out_pha)
    with np.errstate(divide="ignore", invalid="ignore"):
        out_fgr = np.where(out_pha[..., None] > 0, out_pre / np.maximum(out_pha[..., None], 1e-6), 0.0)
    return _quantize(out_fgr), out_pha


def _crop_background(photo: np.ndarray, crop: dict, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    big = _resize(photo, tuple(crop["resized"]))
    return np.ascontiguousarray(big[crop["top"]: crop["top"] + h, crop["left"]: crop["left"] + w])


def misalign(img: np.ndarray, rotation_deg: float, shift_x: float, shift_y: float, scale: float) -> np.ndarray:
    """A camera move: ``img`` ``(H, W, 3)`` in ``[0, 1]`` rotated by ``rotation_deg`` (counter-clockwise) and
    scaled by ``scale`` about its centre, then shifted by ``shift_x`` × W and ``shift_y`` × H pixels; bilinear,
    reflected borders. Returns ``(H, W, 3)`` float32 in ``[0, 1]``."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), rotation_deg, scale)
    m[0, 2] += shift_x * w
    m[1, 2] += shift_y * h
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def expose(img: np.ndarray, gain: float, gamma: float) -> np.ndarray:
    """Exposure drift: ``clip(img · gain, 0, 1) ** gamma`` for ``img`` ``(H, W, 3)`` in ``[0, 1]`` (float32)."""
    return (np.clip(img * gain, 0.0, 1.0) ** gamma).astype(np.float32)


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``img`` plus Gaussian noise of standard deviation ``sigma``, clamped to ``[0, 1]`` (float32)."""
    return np.clip(img + rng.normal(0.0, sigma, img.shape).astype(np.float32), 0.0, 1.0)


def shadow_map(pha: np.ndarray, darken: float, shift_x: float, shift_y: float, shear: float,
               blur: float) -> np.ndarray:
    """The fraction of light a subject's soft shadow removes, ``(H, W)`` in ``[0, darken]``.

    ``pha`` ``(H, W)`` (the placed subject) is shifted by ``shift_x`` × W and ``shift_y`` × H, sheared
    (x moves by ``shear`` × the height above the subject's lowest row), Gaussian-blurred (σ = ``blur`` × the
    long side), scaled so that its densest point is 1, and multiplied by ``darken``.
    """
    h, w = pha.shape
    f = min(1.0, _SHADOW_WORK_SIDE / max(h, w))
    sh, sw = max(1, round(h * f)), max(1, round(w * f))
    small = _resize(np.ascontiguousarray(pha, dtype=np.float32), (sh, sw))
    rows = np.nonzero(small.max(axis=1) > 0.01)[0]
    foot = float(rows.max()) if rows.size else sh - 1.0
    # x' = x + shear · (foot − y) + dx ;  y' = y + dy
    m = np.array([[1.0, -shear, shear * foot + shift_x * sw], [0.0, 1.0, shift_y * sh]], np.float64)
    moved = cv2.warpAffine(small, m, (sw, sh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    sigma = max(0.5, blur * max(sh, sw))
    soft = cv2.GaussianBlur(moved, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    peak = float(soft.max())
    if peak <= 0:
        return np.zeros((h, w), np.float32)
    soft = _resize(soft / peak, (h, w)) if (sh, sw) != (h, w) else soft / peak
    return (np.clip(soft, 0.0, 1.0) * darken).astype(np.float32)


def _composite(fgr: np.ndarray, pha: np.ndarray, bgr: np.ndarray) -> np.ndarray:
    t = [torch.from_numpy(np.ascontiguousarray(x if x.ndim == 3 else x[..., None])).permute(2, 0, 1)[None]
         for x in (fgr, pha, bgr)]
    return composite(*t)[0].permute(1, 2, 0).numpy()


def render_case(case: dict[str, Any], sources: HeldoutSources) -> dict[str, np.ndarray]:
    """The images of one case of :func:`plan_heldout`.

    Returns:
        ``src``, ``bgr`` (the background shot), ``fgr`` ``(H, W, 3)``, ``pha`` ``(H, W)`` and ``clean`` (the
        background before any perturbation, ``(H, W, 3)``), float32 in ``[0, 1]``; ``fgr`` and ``pha`` already
        at 8-bit levels, ``src = pha · fgr + (1 − pha) · background`` (the background shadowed for ``shadow``).
    """
    size = (case["height"], case["width"])
    name = case["person"].split("/", 1)[1]
    fgr_path, pha_path = sources.people[name]
    person_pha = read_image(pha_path, "L")
    person_fgr = read_image(fgr_path, "RGB")
    if person_fgr.shape[:2] != person_pha.shape:
        raise BgMattingError(f"'{fgr_path}' and '{pha_path}' differ in size; rebuild the corpus")
    fgr, pha = _place_person(person_fgr, person_pha, case["placement"], size)
    clean = _quantize(_crop_background(read_image(sources.backgrounds[case["background"]], "RGB"),
                                       case["background_crop"], size))
    p = case["params"]
    behind = clean
    if "shadow" in p:
        behind = clean * (1.0 - shadow_map(pha, **p["shadow"]))[..., None]
    src = _composite(fgr, pha, behind)
    bgr = clean
    if "misalign" in p:
        bgr = misalign(bgr, **p["misalign"])
    if "exposure" in p:
        bgr = expose(bgr, **p["exposure"])
    if "noise" in p:
        rng = np.random.default_rng(p["noise"]["noise_seed"])
        src = add_noise(src, p["noise"]["sigma_src"], rng)
        bgr = add_noise(bgr, p["noise"]["sigma_bgr"], rng)
    return {"src": src, "bgr": bgr, "fgr": fgr, "pha": pha, "clean": clean}


# ----------------------------------------------------------------------------------------------------------
# building


MIN_PEOPLE, MIN_PHOTOS = 4, 8  # what the benchmark is meant to hold at least


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BgMattingError(f"'{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "manifest.json").is_file():
            raise BgMattingError(f"'{out}' is a folder that holds files but no held-out set; choose another folder")
        if not overwrite:
            raise BgMattingError(f"'{out}' already holds a held-out set: pass overwrite=True (--overwrite) "
                                 "or choose another folder")


def build_heldout(
    corpus_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cases: int = 48,
    seed: int = 0,
    sizes: Sequence[Sequence[int]] = HD_SIZES,
    groups: Sequence[str] = GROUPS,
    split: str = "valid",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Build the held-out benchmark (see the module docstring) from a corpus's ``valid/`` split.

    Args:
        corpus_dir: a corpus made by ``bgmatting data prepare``.
        out_dir: the folder to create; it is written under a temporary name and renamed when complete.
        cases: a positive multiple of 6 (default 48: 8 per group, 6 at 1280×720 and 2 at 1920×1080).
        seed: makes a different set; the same seed always makes the same set.
        sizes: the two frame sizes ``(H, W)`` (default :data:`HD_SIZES`).
        groups: build only these of :data:`GROUPS` (``cases`` is then split among them; see :func:`plan_heldout`).
        split: ``'valid'`` (the held-out people and photographs) or ``'train'`` (a validation set for choices
            during training, e.g. which checkpoints to average; never a measure of unseen people).
        overwrite: replace an existing held-out set at ``out_dir``; a folder holding anything else is
            never replaced.
        progress: show a progress bar.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        BgMattingError: no corpus, no held-out people or photographs, a bad option, or ``out_dir`` exists.

    Warns:
        UserWarning: fewer than 4 people or 8 photographs (the benchmark's intended minimum).
    """
    out = Path(out_dir)
    _check_out(out, overwrite)
    sources = find_sources(corpus_dir, split)
    groups = _check_groups(groups)
    plan = plan_heldout(sources, cases=cases, seed=seed, sizes=sizes, groups=groups)
    if split == "valid" and (len(sources.people) < MIN_PEOPLE or len(sources.backgrounds) < MIN_PHOTOS):
        warnings.warn(f"the corpus holds {len(sources.people)} held-out people and {len(sources.backgrounds)} "
                      f"photographs; the held-out set is meant to have at least {MIN_PEOPLE} and {MIN_PHOTOS}",
                      stacklevel=2)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as e:
        raise BgMattingError(f"cannot write to folder '{out.parent}': {e.strerror or e}") from None
    try:
        for case in tqdm(plan, desc="held-out set", unit="case", disable=not progress):
            images = render_case(case, sources)
            for kind in ("src", "bgr", "pha", "fgr"):
                write_image(tmp / kind / f"{case['name']}.png", images[kind])
        manifest = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "generator": f"bgmatting {__version__} (bgmatting.data.heldout)",
            "corpus": str(Path(corpus_dir)),
            "split": split,
            "seed": int(seed),
            "cases": len(plan),
            "groups": {g: GROUP_DEFINITIONS[g] for g in groups},
            "people": sorted(f"people/{p}" for p in sources.people),
            "backgrounds": sorted(sources.backgrounds),
            "layout": {k: f"{k}/<group>/<name>.png" for k in ("src", "bgr", "pha", "fgr")},
            "usage": [f"bgmatting matte {out}/src --bgr {out}/bgr -o OUT --outputs pha [--align]",
                      f"bgmatting eval --data {out} --predictions OUT --trimap-mse"],
            "items": plan,
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1) + "\n")
        old = None
        if out.exists():  # checked above: empty, or a held-out set and overwrite=True
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
