"""How well the background-shot check tells a genuine background shot from a mistaken one, on real photos.

    OMP_NUM_THREADS=1 python benchmarks/bgr_check.py --corpus /work/corpus [--seed 0] [--threshold T] [--quick]

Genuine pairs (the shot of the empty scene behind the subject):

* ``examples``: ``examples/src.jpg`` and ``examples/bgr.jpg`` (a street scene frame and its clean plate);
* ``normal``: a foreground of the corpus (people and synthetic subjects) pasted over each real background photo
  (every source but the procedural ``synthetic`` one), the subject covering 5-45 % of the frame, with every
  BGMv2 perturbation at once (:func:`bgmatting.data.perturb.make_pair`: shadow, noise, colour change,
  misalignment);
* ``close-up``: the same with the subject scaled up to cover 50-70 % of the frame;
* ``moved``: the subject covering 5-70 %, all perturbations, and the background shot moved further by a
  hand-held camera (a 2-5 % shift, up to 2 degrees of rotation, up to 3 % of zoom), checked with ``align=True``;
* ``small frame``: the subject covering 5-70 %, all perturbations, at 384 pixels (a webcam-sized frame: the
  sensor noise is much stronger after the check's down-scaling than in large frames).

Mistaken pairs (the user passed another image): the ``src`` of every normal and close-up composite against
every *other* background of the corpus (all sources, procedural ones included), resized to the source size;
with ``align=True`` against a random subset of them. Pairs that show the same scene from another viewpoint or
exposure (stereo pairs, an exposure series) or share content (procedural backgrounds blended with a crop of a
photo; see ``SAME_SCENE``) are not mistakes: they are reported on their own line (``same scene``) and left out
of the false-accept rate.

Prints, for each group, the number of pairs and the min / 5th percentile / median / 95th percentile / max of
:func:`bgmatting.scene.background_agreement`, the rate of pairs on the wrong side of the threshold
(``MIN_AGREEMENT`` unless ``--threshold``), the mistaken pairs that score highest, and the time per pair.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from bgmatting.data.perturb import make_pair
from bgmatting.scene import MIN_AGREEMENT, background_agreement

ROOT = Path(__file__).resolve().parents[1]
FRAME_SIDE = 768  # longest side of the composites (the examples are 768x576)
SMALL_SIDE = 384  # ... of the small-frame group

# Same scene or same content: not a mistake. Stereo pairs, an exposure series, two views of a wall, and procedural
# backgrounds blended with a crop of one of the photos (found with SIFT matches consistent with a homography,
# then checked by eye).
SAME_SCENE = [
    {"aloeL", "aloeR"}, {"motorcycle_left", "motorcycle_right"}, {"leuvenA", "leuvenB"}, {"graf1", "graf3"},
    {"bg_0015", "graf1"}, {"bg_0015", "graf3"}, {"bg_0008", "Garden"}, {"bg_0019", "board"}, {"bg_0004", "rocket"},
    {"bg_0007", "Path"},
]


def _read_rgb(path: Path, max_side: int | None = None) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        sys.exit(f"error: cannot read {path}")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    if max_side and max(img.shape[:2]) > max_side:
        s = max_side / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    return img


def _t(x: np.ndarray) -> torch.Tensor:
    if x.ndim == 2:
        x = x[..., None]
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].float()


def _n(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())


def _place(fgr: np.ndarray, pha: np.ndarray, h: int, w: int, height: float, cx: float):
    """``fgr``/``pha`` scaled to ``height`` × the frame height, standing on the bottom edge, centred at ``cx``·w."""
    fh, fw = pha.shape
    s = height * h / fh
    nh, nw = max(2, round(fh * s)), max(2, round(fw * s))
    f = cv2.resize(fgr, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    a = cv2.resize(pha, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    out_f, out_a = np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.float32)
    x0, y0 = round(cx * w - nw / 2), h - nh
    sx0, sy0 = max(0, -x0), max(0, -y0)
    dx0, dy0 = max(0, x0), max(0, y0)
    cw, ch = min(nw - sx0, w - dx0), min(nh - sy0, h - dy0)
    if cw > 0 and ch > 0:
        out_f[dy0:dy0 + ch, dx0:dx0 + cw] = f[sy0:sy0 + ch, sx0:sx0 + cw]
        out_a[dy0:dy0 + ch, dx0:dx0 + cw] = a[sy0:sy0 + ch, sx0:sx0 + cw]
    return out_f, out_a


def _place_coverage(fgr, pha, h, w, target: float, cx: float):
    """Scale the subject (binary search on its height) until it covers ``target`` of the frame; None if it can't."""
    lo, hi = 0.2, 4.0
    best = None
    for _ in range(18):
        mid = 0.5 * (lo + hi)
        f, a = _place(fgr, pha, h, w, mid, cx)
        cov = float(a.mean())
        best = (f, a, cov)
        if abs(cov - target) < 0.01:
            break
        lo, hi = (mid, hi) if cov < target else (lo, mid)
    return best if abs(best[2] - target) < 0.03 else None


def _move(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A hand-held camera move: 2-5 % shift, ±2° rotation, ±3 % zoom (reflected borders)."""
    h, w = img.shape[:2]
    shift = rng.uniform(0.02, 0.05) * np.array([w, h]) * rng.choice([-1, 1], 2) * rng.uniform(0.3, 1, 2)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-2, 2), rng.uniform(0.97, 1.03))
    m[:, 2] += shift
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@dataclass
class Pair:
    group: str
    src: np.ndarray
    bgr: np.ndarray | None  # None: the background ``bg_name`` resized to the source size (made when needed)
    align: bool
    label: str
    coverage: float = 0.0
    bg_name: str = ""

    def background(self, backgrounds: dict[str, np.ndarray]) -> np.ndarray:
        if self.bgr is not None:
            return self.bgr
        h, w = self.src.shape[:2]
        return cv2.resize(backgrounds[self.bg_name], (w, h), interpolation=cv2.INTER_AREA)


def load_corpus(corpus: Path):
    backgrounds = {}
    for path in sorted(corpus.glob("*/backgrounds/*/*.jpg")):
        backgrounds[f"{path.parent.name}/{path.stem}"] = _read_rgb(path, FRAME_SIDE)
    subjects = []
    for source in ("people", "synthetic"):
        for path in sorted(corpus.glob(f"*/fgr/{source}/*.png")):
            pha_path = path.parents[2] / "pha" / source / path.name
            if pha_path.exists():
                subjects.append((f"{source}/{path.stem}", path, pha_path))
    if not backgrounds or not subjects:
        sys.exit(f"error: no backgrounds or foregrounds under {corpus}")
    return backgrounds, subjects


def make_genuine(backgrounds, subjects, seed: int, per_background: int = 1) -> list[Pair]:
    """The normal, close-up and moved composites over every real background photo."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    people = [s for s in subjects if s[0].startswith("people/")]
    others = [s for s in subjects if not s[0].startswith("people/")]
    pairs = []
    real = [k for k in backgrounds if not k.startswith("synthetic/")]
    for bg_name in real:
        for _rep in range(per_background):
            for group in ("normal", "close-up", "moved", "small frame"):
                bg = backgrounds[bg_name]
                if group == "small frame":
                    s = SMALL_SIDE / max(bg.shape[:2])
                    bg = cv2.resize(bg, (round(bg.shape[1] * s), round(bg.shape[0] * s)), interpolation=cv2.INTER_AREA)
                h, w = bg.shape[:2]
                for _attempt in range(20):
                    pool = people if rng.random() < 0.5 else others
                    name, fpath, ppath = pool[int(rng.integers(len(pool)))]
                    fgr = _read_rgb(fpath, 1024)
                    pha = cv2.imread(str(ppath), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
                    cx = rng.uniform(0.3, 0.7)
                    if group == "normal":
                        placed = _place_coverage(fgr, pha, h, w, rng.uniform(0.05, 0.45), cx)
                    elif group == "close-up":
                        placed = _place_coverage(fgr, pha, h, w, rng.uniform(0.5, 0.7), cx)
                    else:  # moved, small frame
                        placed = _place_coverage(fgr, pha, h, w, rng.uniform(0.05, 0.7), cx)
                    if placed is not None:
                        break
                else:
                    continue
                f, a, cov = placed
                src, shot = make_pair(_t(f), _t(a), _t(bg), generator=gen, shadow_p=1, noise_p=1, colour_p=1,
                                      misalign_p=1)
                src, shot = _n(src), _n(shot)
                if group == "moved":
                    shot = _move(shot, rng)
                pairs.append(Pair(group, src, shot, group == "moved", f"{name} on {bg_name}", cov, bg_name))
    return pairs


def make_mistaken(genuine: list[Pair], backgrounds, seed: int, align_others: int) -> list[Pair]:
    rng = np.random.default_rng(seed + 1)
    related = {frozenset(s) for s in SAME_SCENE}
    pairs = []
    for g in genuine:
        if g.group not in ("normal", "close-up"):
            continue
        names = [k for k in backgrounds if k != g.bg_name]
        with_align = set(rng.choice(len(names), min(align_others, len(names)), replace=False).tolist())
        for i, other in enumerate(names):
            stems = frozenset((g.bg_name.split("/")[1], other.split("/")[1]))
            group = "same scene" if stems in related else "mistaken"
            label = f"{g.label} vs {other}"
            pairs.append(Pair(group, g.src, None, False, label, g.coverage, other))
            if i in with_align:
                pairs.append(Pair(group, g.src, None, True, label, g.coverage, other))
    return pairs


def examples_pairs() -> list[Pair]:
    src, bgr = _read_rgb(ROOT / "examples/src.jpg"), _read_rgb(ROOT / "examples/bgr.jpg")
    return [Pair("examples", src, bgr, False, "examples"), Pair("examples", src, bgr, True, "examples")]


def evaluate(pairs: list[Pair], backgrounds, agreement=background_agreement) -> tuple[np.ndarray, float]:
    scores = np.empty(len(pairs))
    t0 = time.perf_counter()
    for i, p in enumerate(pairs):
        scores[i] = agreement(p.src, p.background(backgrounds), align=p.align)
    return scores, (time.perf_counter() - t0) / max(1, len(pairs))


def timing_1080p(agreement=background_agreement, repeats: int = 10) -> dict[str, float]:
    src, bgr = _read_rgb(ROOT / "examples/src.jpg"), _read_rgb(ROOT / "examples/bgr.jpg")
    src = cv2.resize(src, (1920, 1080), interpolation=cv2.INTER_CUBIC)
    bgr = cv2.resize(bgr, (1920, 1080), interpolation=cv2.INTER_CUBIC)
    out = {}
    for name, s, b in (("float32", src, bgr), ("uint8", (src * 255).astype(np.uint8), (bgr * 255).astype(np.uint8))):
        for align in (False, True):
            agreement(s, b, align=align)
            t0 = time.perf_counter()
            for _ in range(repeats):
                agreement(s, b, align=align)
            out[f"{name}{', align' if align else ''}"] = 1000 * (time.perf_counter() - t0) / repeats
    return out


def table(pairs: list[Pair], scores: np.ndarray, threshold: float, top: int = 12) -> str:
    lines = [f"{'group':<22}{'pairs':>6}{'min':>7}{'p5':>7}{'median':>8}{'p95':>7}{'max':>7}"
             f"   wrong side of {threshold:.3f}",
             "-" * 86]
    keys = []
    for p in pairs:
        key = (p.group, p.align)
        if key not in keys:
            keys.append(key)
    for group, align in keys:
        idx = [i for i, p in enumerate(pairs) if (p.group, p.align) == (group, align)]
        s = scores[idx]
        genuine = group not in ("mistaken", "same scene")
        wrong = (s < threshold) if genuine else (s >= threshold)
        kind = "false reject" if genuine else ("false accept" if group == "mistaken" else "accepted")
        lines.append(f"{group + (', align' if align else ''):<22}{len(s):>6}{s.min():>7.3f}{np.percentile(s, 5):>7.3f}"
                     f"{np.median(s):>8.3f}{np.percentile(s, 95):>7.3f}{s.max():>7.3f}   "
                     f"{kind} {100 * wrong.mean():5.1f}% ({int(wrong.sum())})")
    gen = [i for i, p in enumerate(pairs) if p.group not in ("mistaken", "same scene")]
    mis = [i for i, p in enumerate(pairs) if p.group == "mistaken"]
    lines.append("-" * 86)
    lines.append(f"all genuine: {len(gen)} pairs, min {scores[gen].min():.3f}, false rejects "
                 f"{100 * (scores[gen] < threshold).mean():.1f}%;  all mistaken: {len(mis)} pairs, p95 "
                 f"{np.percentile(scores[mis], 95):.3f}, max {scores[mis].max():.3f}, false accepts "
                 f"{100 * (scores[mis] >= threshold).mean():.2f}%")
    lines.append("\nlowest genuine pairs:")
    for i in sorted(gen, key=lambda i: scores[i])[:6]:
        p = pairs[i]
        lines.append(f"  {scores[i]:.3f}  {p.group}{', align' if p.align else ''}: {p.label} "
                     f"(subject {100 * p.coverage:.0f}%)")
    lines.append("highest mistaken pairs:")
    for i in sorted(mis, key=lambda i: -scores[i])[:top]:
        p = pairs[i]
        lines.append(f"  {scores[i]:.3f}  {'align: ' if p.align else ''}{p.label}")
    return "\n".join(lines)


def build(corpus: Path, seed: int, per_background: int, align_others: int):
    backgrounds, subjects = load_corpus(corpus)
    genuine = make_genuine(backgrounds, subjects, seed, per_background)
    return examples_pairs() + genuine + make_mistaken(genuine, backgrounds, seed, align_others), backgrounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("/work/corpus"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-background", type=int, default=1, help="composites of each kind per real background")
    ap.add_argument("--align-others", type=int, default=8,
                    help="mistaken backgrounds per composite also checked with align=True")
    ap.add_argument("--threshold", type=float, default=MIN_AGREEMENT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    pairs, backgrounds = build(args.corpus, args.seed, args.per_background, args.align_others)
    print(f"{len(pairs)} pairs built in {time.perf_counter() - t0:.0f} s")
    scores, per_pair = evaluate(pairs, backgrounds)
    print(table(pairs, scores, args.threshold))
    times = timing_1080p()
    print(f"\ntime per pair: {1000 * per_pair:.0f} ms on average over the benchmark (768 px frames, "
          f"{sum(p.align for p in pairs)} of them aligned); 1080p pair: "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in times.items()))


if __name__ == "__main__":
    main()
