"""The held-out benchmark, scored by perturbation group: models next to an oracle-tuned difference keyer.

    python benchmarks/heldout.py --corpus corpus [--heldout DIR] [--weights PATH|NAME [--weights PATH|NAME]]
                                 [--align] [--backbone-scale S] [--refine-mode MODE] [--cases 48] [--seed 0]
                                 [--rebuild] [--no-keyer] [--per-case]

Builds the held-out set with ``bgmatting data heldout`` (default ``<corpus>/../heldout``) unless it exists,
then runs each model as a user would, ``bgmatting matte HELDOUT/src --bgr HELDOUT/bgr -o TMP --outputs pha
--no-align`` (the model alone; ``--align``: aligned as ``matte`` does by default, without alignment warnings)
(:func:`bgmatting.folders.matte_images`, background check included), and scores the written mattes
as ``bgmatting eval --data HELDOUT --predictions TMP --trimap-mse`` does. The classical reference keys on the
colour difference between source and background shot (``benchmarks/accuracy.py``), with ``lo`` and ``hi``
chosen on the same images for the lowest MSE (an oracle no real keyer has; tuned on a fixed sample of pixels
of each image). Prints one table: whole-image SAD, MSE, Grad, Conn, the MSE of the trimap's unknown region,
then the whole-image MSE of each group. ``--per-case`` adds the whole-image MSE of every case, one column per
method: a group's mean can hang on one case (a kite that moved with the shot), and this shows which.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bgmatting import BgMattingError, Matter  # noqa: E402
from bgmatting.data.heldout import GROUPS, build_heldout  # noqa: E402
from bgmatting.evaluation import evaluate  # noqa: E402
from bgmatting.folders import matte_images  # noqa: E402
from bgmatting.io import read_image  # noqa: E402

from accuracy import DifferenceKeyer, aligned  # noqa: E402

SAMPLES = 20_000  # pixels per image used to tune the keyer


class SampledKeyer(DifferenceKeyer):
    """:class:`accuracy.DifferenceKeyer` that keeps only a fixed sample of each distance map (HD frames)."""

    def __init__(self, lo: float = 0.05, hi: float = 0.3, seed: int = 0):
        super().__init__(lo, hi)
        self.rng = np.random.default_rng(seed)
        self.samples: list[tuple[np.ndarray, np.ndarray]] = []  # (flat indices, distances)

    def __call__(self, src, bgr):
        result = super().__call__(src, bgr)
        d = self.distances.pop().ravel()
        idx = self.rng.choice(d.size, size=min(SAMPLES, d.size), replace=False)
        self.samples.append((idx, d[idx]))
        return result


def tune_keyer(data: Path, names: list[str], align: bool) -> tuple[float, float]:
    """The ``(lo, hi)`` with the lowest mean MSE against the ground truth on sampled pixels (the oracle)."""
    keyer = SampledKeyer()
    run = aligned(keyer) if align else keyer
    truths = []
    for name in names:
        run(read_image(data / "src" / f"{name}.png"), read_image(data / "bgr" / f"{name}.png"))
        truths.append(read_image(data / "pha" / f"{name}.png", "L").ravel()[keyer.samples[-1][0]])
    d, t = np.stack([s for _, s in keyer.samples]), np.stack(truths)
    best, best_mse = (0.05, 0.3), float("inf")
    for lo in np.arange(0.0, 0.31, 0.01):
        for hi in np.arange(lo + 0.02, 0.81, 0.02):
            m = float(np.mean((np.clip((d - lo) / (hi - lo), 0, 1) - t) ** 2))
            if m < best_mse:
                best, best_mse = (round(float(lo), 2), round(float(hi), 2)), m
    return best


def _scale(text: str) -> float | str:
    return "auto" if text == "auto" else float(Fraction(text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, type=Path, help="a corpus from 'bgmatting data prepare'")
    ap.add_argument("--heldout", type=Path, help="the held-out set (default: <corpus>/../heldout; built if missing)")
    ap.add_argument("--weights", action="append", metavar="PATH|NAME",
                    help="a model to score (repeat to compare; default: the shipped model)")
    ap.add_argument("--align", action="store_true",
                    help="align each background shot first, as 'matte' does by default (without it: as 'matte "
                         "--no-align', the model alone)")
    ap.add_argument("--backbone-scale", type=_scale, metavar="S", help="override the weights' backbone scale")
    ap.add_argument("--refine-mode", choices=("sampling", "thresholding", "full"), help="override the refine mode")
    ap.add_argument("--cases", type=int, default=48, help="cases when building (a multiple of 6; default 48)")
    ap.add_argument("--seed", type=int, default=0, help="seed when building (default 0)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the held-out set even if it exists")
    ap.add_argument("--no-keyer", action="store_true", help="skip the difference-keying reference")
    ap.add_argument("--per-case", action="store_true", help="also print each case's whole-image MSE per method")
    args = ap.parse_args()
    options = {k: v for k, v in (("backbone_scale", args.backbone_scale), ("refine_mode", args.refine_mode))
               if v is not None}
    data = args.heldout or args.corpus.resolve().parent / "heldout"
    try:
        if args.rebuild or not (data / "manifest.json").is_file():
            print(f"building the held-out set in {data} ...", file=sys.stderr)
            build_heldout(args.corpus, data, cases=args.cases, seed=args.seed, overwrite=args.rebuild)
        manifest = json.loads((data / "manifest.json").read_text())
        rows = []
        if not args.no_keyer:
            t0 = time.perf_counter()
            lo, hi = tune_keyer(data, [c["name"] for c in manifest["items"]], args.align)
            keyer = SampledKeyer(lo, hi)
            report = evaluate(data, matter=aligned(keyer) if args.align else keyer, trimap_mse=True, progress=False)
            rows.append((f"difference keying (oracle lo={lo}, hi={hi})", report, time.perf_counter() - t0))
        for weights in args.weights or [None]:
            t0 = time.perf_counter()
            matter = Matter(weights, **options)
            with tempfile.TemporaryDirectory() as tmp:
                matte_images([data / "src"], [data / "bgr"], tmp, matter, outputs="pha",
                             align="auto" if args.align else False)
                report = evaluate(data, predictions_dir=tmp, trimap_mse=True, progress=False)
            name = f"bgmatting {weights or 'default'}" + "".join(f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}"
                                                                 for k, v in options.items())
            rows.append((name, report, time.perf_counter() - t0))
    except BgMattingError as e:
        sys.exit(f"error: {e}")

    items = manifest["items"]
    sizes = sorted({(c["width"], c["height"]) for c in items})
    counts = {s: sum((c["width"], c["height"]) == s for c in items) for s in sizes}
    print(f"held-out set {data}: {len(items)} cases ({', '.join(f'{n} at {w}x{h}' for (w, h), n in counts.items())}), "
          f"{len(manifest['people'])} people, {len(manifest['backgrounds'])} photographs, seed {manifest['seed']}"
          + ("; background shots aligned to the sources (as matte's default)" if args.align
             else "; background shots as they are (as matte --no-align)"))
    head = ["SAD", "MSE", "Grad", "Conn", "triMSE"] + list(GROUPS) + ["s"]
    width = max(len(r[0]) for r in rows)
    cols = [max(7, len(h)) for h in head]
    print(f"{'method':<{width}}  " + "  ".join(f"{h:>{c}}" for h, c in zip(head, cols)))
    for name, report, seconds in rows:
        mean, groups = report.mean(), report.groups()
        values = [mean[m] for m in ("sad", "mse", "grad", "conn", "trimap_mse")]
        values += [groups[g]["mean"]["mse"] if g in groups else float("nan") for g in GROUPS]
        cells = [f"{v:{c}.3f}" for v, c in zip(values, cols)] + [f"{seconds:{cols[-1]}.0f}"]
        print(f"{name:<{width}}  " + "  ".join(cells))
    print("SAD, Grad, Conn / 1000 and MSE x 1000 over the whole image; triMSE: MSE x 1000 in the trimap's unknown "
          f"region; {', '.join(GROUPS)}: the whole-image MSE of each group; s: seconds to run and score")
    if args.per_case:
        per = [{r["name"]: r["mse"] for r in report.rows} for _, report, _ in rows]
        names = sorted(per[0])
        cw = max(len(n) for n in names)
        heads = "  ".join(f"{'#' + str(i + 1):>7}" for i in range(len(rows)))
        print(f"\n{'case (whole-image MSE x 1000)':<{cw}}  {heads}")
        for n in names:
            print(f"{n:<{cw}}  " + "  ".join(f"{p.get(n, float('nan')):7.2f}" for p in per))
        print("  ".join(f"#{i + 1}: {name}" for i, (name, _, _) in enumerate(rows)))


if __name__ == "__main__":
    main()
