"""The real example pair (a frame of vtest.avi and its plate) per weights file and backbone scale: how much of each
of its six people each model finds, and the region checks of the default model's test.

    python benchmarks/example_pair.py --weights runs/previous-default.safetensors --weights runs/chunk-3.safetensors

Fast (about a second per model and scale), for choosing among a training chunk's checkpoint averages: the held-out
composites have large subjects only, this frame has people 25-150 pixels tall in a real scene.

``--small`` also pastes the frame's smallest person (77 px tall), zoomed 0.5-2x, alone over the plate at nine
places, and prints the mean alpha found on them per size (``accuracy.small_subjects``; about 40 s per model).
"""

from __future__ import annotations

import argparse

from bgmatting import Matter

from accuracy import EXAMPLE_PEOPLE, example_checks, example_people, small_subjects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", action="append", help="weights file or zoo name (repeat; default: the shipped model)")
    ap.add_argument("--backbone-scale", type=lambda t: t if t == "auto" else float(t), action="append",
                    help="backbone scales to run at, or auto (repeat; default: 1/2 and 1/4)")
    ap.add_argument("--small", action="store_true", help="also the small-person test at each size (slower)")
    args = ap.parse_args()
    scales = args.backbone_scale or [0.5, 0.25]
    short = [name.split(" ")[-1] if len(name) > 12 else name for name, *_ in EXAMPLE_PEOPLE]
    print(f"{'weights':<40} {'scale':>10} " + " ".join(f"{s[:9]:>9}" for s in short) + f" {'people':>7} checks")
    for weights in args.weights or [None]:
        for scale in scales:
            matter = Matter(weights, device="cpu", backbone_scale=scale)
            people = [v for _, v in example_people(matter)]
            checks = example_checks(matter)
            passed = sum(p for *_, p in checks)
            shown = f"{'auto ' if scale == 'auto' else ''}{matter.backbone_scale:.3g}"  # after a frame: auto's choice
            print(f"{str(weights or 'default')[-40:]:<40} {shown:>10} " + " ".join(f"{v:9.3f}" for v in people)
                  + f" {sum(people) / len(people):7.3f} {passed}/{len(checks)}")
            if args.small:
                print("    one small person over the plate, mean alpha by height: " + ", ".join(
                    f"{h} px {a:.3f}" for _, h, a in small_subjects(matter)))


if __name__ == "__main__":
    main()
