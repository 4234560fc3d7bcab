"""Accuracy on the held-out split of the offline corpus: a model next to an oracle-tuned difference keyer.

    python benchmarks/accuracy.py --corpus /work/corpus [--weights PATH|NAME] [--region all|trimap] [--seed 0]
                                  [--backbone-scale S] [--refine-mode sampling|thresholding|full] [--align]

The held-out people and backgrounds (``valid/`` of ``bgmatting data prepare``) are composited with the BGMv2
perturbations (shadow, noise, background colour change, misalignment) from a fixed seed, exactly as
``bgmatting eval`` does. The baseline keys on the colour difference between source and background shot,
``alpha = clip((|src - bgr| - lo) / (hi - lo), 0, 1)``, with ``lo`` and ``hi`` chosen on the same images to give
the lowest mean MSE (an oracle no real keyer has). Prints a table of the mean SAD, MSE, Grad and Conn, then
the checks of the real example pair (``EXAMPLE_CHECKS``, the ones ``tests/test_default_model.py`` makes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from bgmatting import Matter
from bgmatting.align import align_background
from bgmatting.evaluation import evaluate
from bgmatting.io import read_image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The real pair in examples/ (a frame of opencv-doc's vtest.avi and its temporal-median plate) has no true alpha;
# these regions are checked instead: (description, rows, cols, statistic, comparison, bound).
EXAMPLE_CHECKS = (
    ("empty scene: fraction of alpha < 0.1", slice(None), slice(None), "fraction_below_0.1", ">", 0.85),
    ("man in the dark jacket at the bottom: mean alpha", slice(490, 540), slice(545, 590), "mean", ">", 0.6),
    ("man on the path at the top: mean alpha", slice(220, 290), slice(505, 530), "mean", ">", 0.5),
    ("grass far from anyone: mean alpha", slice(380, 460), slice(100, 300), "mean", "<", 0.05),
)


# The six people in the example frame: (description, rows, cols) of a box around each. A person's pixels are those
# of the box where source and plate differ (colour distance > KEY_DISTANCE; the camera is static and the plate a
# temporal median, so the difference outlines the people well); ``example_people`` gives the mean alpha there.
EXAMPLE_PEOPLE = (
    ("person in red far on the left", slice(178, 255), slice(232, 260)),
    ("man on the path at the top", slice(210, 311), slice(500, 537)),
    ("man in black on the right of the path", slice(231, 312), slice(669, 704)),
    ("man in black in the middle", slice(272, 374), slice(614, 652)),
    ("man at the right edge", slice(323, 447), slice(713, 768)),
    ("the two people at the bottom", slice(423, 576), slice(516, 613)),
)
KEY_DISTANCE = 0.15


def example_people(matter) -> list[tuple[str, float]]:
    """``(description, mean alpha over the person's pixels)`` for each of :data:`EXAMPLE_PEOPLE`."""
    src, bgr = read_image(EXAMPLES / "src.jpg"), read_image(EXAMPLES / "bgr.jpg")
    pha = matter(src, bgr).pha
    person = np.sqrt(((src - bgr) ** 2).sum(axis=2)) > KEY_DISTANCE
    return [(name, float(pha[rows, cols][person[rows, cols]].mean())) for name, rows, cols in EXAMPLE_PEOPLE]


# Where :func:`small_subjects` pastes the example's smallest person over the plate (top-left corners, rows and
# columns of the 576x768 frame): path, road, grass near and far, pavement by the building.
SMALL_SUBJECT_PLACES = ((178, 232), (178, 420), (120, 232), (230, 232), (300, 232), (60, 100), (330, 282),
                        (400, 600), (250, 600))


def small_subjects(matter, zooms=(0.5, 1.0, 1.5, 2.0)) -> list[tuple[float, int, float]]:
    """How well ``matter`` finds a small person, by size: the example's person in red (77 px tall, the smallest
    of the frame), cut out by its difference from the plate, zoomed and pasted over the plate alone at each of
    :data:`SMALL_SUBJECT_PLACES` (one person per image, the plate as the background shot).

    Returns:
        ``(zoom, height in pixels, mean alpha over the pasted person's pixels, averaged over the places)``.
    """
    from PIL import Image

    src, bgr = read_image(EXAMPLES / "src.jpg"), read_image(EXAMPLES / "bgr.jpg")
    name, rows, cols = EXAMPLE_PEOPLE[0]
    person, behind = src[rows, cols], bgr[rows, cols]
    mask = np.sqrt(((person - behind) ** 2).sum(axis=2)) > KEY_DISTANCE
    out = []
    for zoom in zooms:
        h, w = max(1, round(person.shape[0] * zoom)), max(1, round(person.shape[1] * zoom))
        img = np.asarray(Image.fromarray((person * 255).round().astype(np.uint8)).resize((w, h), Image.BILINEAR),
                         dtype=np.float32) / 255
        m = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
        found = []
        for y, x in SMALL_SUBJECT_PLACES:
            y, x = min(y, bgr.shape[0] - h), min(x, bgr.shape[1] - w)
            frame = bgr.copy()
            frame[y:y + h, x:x + w][m] = img[m]
            found.append(float(matter(frame, bgr).pha[y:y + h, x:x + w][m].mean()))
        out.append((zoom, h, float(np.mean(found))))
    return out


def example_checks(matter) -> list[tuple[str, float, float, bool]]:
    """``(description, value, bound, passed)`` for each of :data:`EXAMPLE_CHECKS` on the example pair."""
    pha = matter(read_image(EXAMPLES / "src.jpg"), read_image(EXAMPLES / "bgr.jpg")).pha
    out = []
    for name, rows, cols, stat, op, bound in EXAMPLE_CHECKS:
        region = pha[rows, cols]
        value = float((region < 0.1).mean() if stat == "fraction_below_0.1" else region.mean())
        out.append((name, value, bound, value > bound if op == ">" else value < bound))
    return out


class DifferenceKeyer:
    """alpha from the per-pixel colour distance between source and background shot; records the distances."""

    def __init__(self, lo: float = 0.05, hi: float = 0.3):
        self.lo, self.hi = lo, hi
        self.distances: list[np.ndarray] = []

    def __call__(self, src: np.ndarray, bgr: np.ndarray):
        d = np.sqrt(((src - bgr) ** 2).sum(axis=2))
        self.distances.append(d)
        pha = np.clip((d - self.lo) / (self.hi - self.lo), 0.0, 1.0).astype(np.float32)
        return type("R", (), {"pha": pha, "fgr": src})()


def aligned(matter):
    """``matter`` given the background shot warped onto the source first (what ``matte --align`` does)."""

    def run(src, bgr):
        return matter(src, align_background(bgr, src, warn=False)[0])

    return run


def tune_keyer(data: Path, seed: int, align: bool = False) -> tuple[float, float]:
    """The (lo, hi) with the lowest mean MSE against the ground truth (the oracle choice)."""
    keyer = DifferenceKeyer()
    report = evaluate(data, matter=aligned(keyer) if align else keyer, seed=seed, progress=False)
    truths = [read_image(next((data / "pha").glob(f"{row['name']}.*")), "L") for row in report.rows]
    best, best_mse = (0.05, 0.3), float("inf")
    for lo in np.arange(0.0, 0.31, 0.01):
        for hi in np.arange(lo + 0.02, 0.81, 0.02):
            m = np.mean([np.mean((np.clip((d - lo) / (hi - lo), 0, 1) - t) ** 2)
                         for d, t in zip(keyer.distances, truths)])
            if m < best_mse:
                best, best_mse = (round(float(lo), 2), round(float(hi), 2)), m
    return best


def _pool(corpus: Path, tmp: Path) -> Path:
    """The composited-layout folder for ``corpus/valid``: fgr/, pha/ and the background pool as bgr/."""
    valid = corpus / "valid"
    for name, target in (("fgr", valid / "fgr"), ("pha", valid / "pha"), ("bgr", valid / "backgrounds")):
        if not target.is_dir():
            sys.exit(f"error: '{target}' is missing: run 'bgmatting data prepare --out {corpus}' first")
        (tmp / name).symlink_to(target.resolve())
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--weights", default=None, help="weights file or zoo name (default: the shipped model)")
    ap.add_argument("--region", default="all", choices=("all", "trimap"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone-scale", type=float, help="override the weights' backbone scale")
    ap.add_argument("--refine-mode", choices=("sampling", "thresholding", "full"), help="override the refine mode")
    ap.add_argument("--align", action="store_true",
                    help="align each background shot to its source first, for both methods (as --align does)")
    args = ap.parse_args()
    options = {k: v for k, v in (("backbone_scale", args.backbone_scale), ("refine_mode", args.refine_mode))
               if v is not None}
    with tempfile.TemporaryDirectory() as tmp:
        data = _pool(args.corpus, Path(tmp))
        rows = []
        wrap = aligned if args.align else (lambda m: m)
        lo, hi = tune_keyer(data, args.seed, args.align)
        report = evaluate(data, matter=wrap(DifferenceKeyer(lo, hi)), region=args.region, seed=args.seed,
                          progress=False)
        rows.append((f"difference keying (oracle lo={lo}, hi={hi})", report.mean()))
        model = Matter(args.weights, device="cpu", **options)
        report = evaluate(data, matter=wrap(model), region=args.region, seed=args.seed, progress=True)
        rows.append((f"bgmatting {args.weights or 'default'} {' '.join(f'{k}={v}' for k, v in options.items())}",
                     report.mean()))
        n = len(report.rows)
    print(f"held-out set: {n} composites, region={args.region}, seed={args.seed}"
          + (", background shots aligned to the sources" if args.align else ""))
    print(f"{'method':<48} {'SAD':>9} {'MSE':>9} {'Grad':>9} {'Conn':>9}")
    for name, m in rows:
        print(f"{name:<48} {m['sad']:9.3f} {m['mse']:9.3f} {m['grad']:9.3f} {m['conn']:9.3f}")
    ratio = rows[0][1]["mse"] / max(rows[1][1]["mse"], 1e-9)
    print(f"MSE ratio (baseline / model): {ratio:.2f}x")
    print("real example pair (examples/, no true alpha: the regions the default model's test checks):")
    for name, value, bound, passed in example_checks(model):
        print(f"  {name:<48} {value:7.3f}  (bound {bound}: {'pass' if passed else 'FAIL'})")


if __name__ == "__main__":
    main()
