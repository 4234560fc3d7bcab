"""Calibration of FastMatting's cost model: each way of running the refiner timed on the same selections.

    python benchmarks/refiner_paths.py                 # CPU, HD: prints the times and the fitted PathCosts
    python benchmarks/refiner_paths.py --device cuda

For each model (MobileNetV2 with the shipped weights and settings, ResNet-50 with the benchmark's random weights),
input (the example photo, the noise worst case of :func:`bgmatting.bench.noise_pair`) and patch budget (the
model's ``sample_pixels`` and 4 times it), the base network runs once; then ``FastMatting.refine_patches`` is
timed with every ``refine_path`` (``tiles`` and ``patches`` with the hidden channels on blocks and dense) on the
same selection, in interleaved rounds, and ``FastMatting.hidden`` alone. From these times the script fits the
per-pixel costs of :class:`bgmatting.models.optimised.PathCosts` (medians of ratios; least squares for the dense ways)
and shows, per case, the path each set of costs picks next to the fastest measured one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bgmatting.bench import INPUTS, bench_model, parse_resolution  # noqa: E402
from bgmatting.models.optimised import PATH_COSTS, FastMatting, PathCosts  # noqa: E402
from bgmatting.models.optimised.crops import HID_BLOCK, TILE, blocks_read, tiles_of  # noqa: E402
from bgmatting.pipeline import resolve_device  # noqa: E402
from bgmatting.weights import load_model  # noqa: E402

WAYS = [("tiles", "blocks"), ("tiles", "dense"), ("patches", "blocks"), ("patches", "dense"), ("dense", "dense"),
        ("full", "dense")]


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, src, bgr, device, rounds: int) -> dict:
    """Counts and median milliseconds of each way for one model and input."""
    twins = {way: FastMatting(model, refine_path=way[0], hid_path=way[1]) for way in WAYS}
    fast = twins[WAYS[0]]
    H, W = src.shape[2:]
    with torch.inference_mode():
        small = fast.net.shrink(src, bgr)
        pha, fgr, err, low = fast.coarse(*small)
        ib, rows, cols, _, _ = fast.select(F.interpolate(err, size=(H // 4, W // 4), mode="bilinear",
                                                         align_corners=False))
        t_ib, t_rows, t_cols, _ = tiles_of((H // 4, W // 4), ib, rows, cols)
        half, h = (H // 2, W // 2), small[0].shape[2]
        case = dict(B=src.shape[0], H=H, W=W, h=h, w=small[0].shape[3], n=ib.shape[0], tiles=t_ib.shape[0],
                    blocks_tiles=blocks_read(tuple(small[0].shape), t_ib, 2 * t_rows - 3, 2 * t_cols - 3, half,
                                             2 * TILE + 6)[0].shape[0],
                    blocks_patches=blocks_read(tuple(small[0].shape), ib, 2 * rows - 3, 2 * cols - 3, half,
                                               8)[0].shape[0])
        runs = {way: (lambda t=twin: t.refine_patches(src, bgr, low, pha, fgr, ib, rows, cols, small))
                for way, twin in twins.items()}
        runs["hidden"] = lambda: fast.hidden(low, *small)
        ref = None
        for name, run in runs.items():  # warm up, and check that every way gives the same patches
            out = run()
            if name != "hidden":
                ref = out if ref is None else ref
                assert float((out - ref).abs().max()) <= 1e-3, name
        times = {name: [] for name in runs}
        names = list(runs)
        for r in range(rounds):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                _sync(device)
                t0 = time.perf_counter()
                runs[name]()
                _sync(device)
                times[name].append((time.perf_counter() - t0) * 1000)
    case["ms"] = {name: statistics.median(t) for name, t in times.items()}
    return case


def fit(cases: list[dict]) -> PathCosts:
    """Per-pixel costs (µs) from the measured cases (kernel size 3)."""
    us = [{k: v * 1000 for k, v in c["ms"].items()} for c in cases]
    hid = statistics.median(t["hidden"] / (c["B"] * c["h"] * c["w"]) for c, t in zip(cases, us))
    t1 = (2 * TILE + 6) ** 2
    tiles = statistics.median((t[("tiles", "dense")] - t["hidden"]) / (c["tiles"] * t1) for c, t in zip(cases, us))
    patches = statistics.median((t[("patches", "dense")] - t["hidden"]) / (c["n"] * 64) for c, t in zip(cases, us))
    window = (HID_BLOCK + 2) ** 2
    blocks = statistics.median(
        [(t[("tiles", "blocks")] - t[("tiles", "dense")] + t["hidden"]) / (c["blocks_tiles"] * window)
         for c, t in zip(cases, us)]
        + [(t[("patches", "blocks")] - t[("patches", "dense")] + t["hidden"]) / (c["blocks_patches"] * window)
           for c, t in zip(cases, us)])
    rows, rhs = [], []  # dense: d1 * A1 + p2 * 64 n;  full: d1 * A1 + f2 * A2
    for c, t in zip(cases, us):
        a1 = c["B"] * (c["H"] // 2 + 6) * (c["W"] // 2 + 6)
        a2 = c["B"] * (c["H"] + 4) * (c["W"] + 4)
        rows += [[a1, 64 * c["n"], 0.0], [a1, 0.0, a2]]
        rhs += [t[("dense", "dense")] - t["hidden"], t[("full", "dense")] - t["hidden"]]
    a, b = torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)[:, None]
    scale = a.abs().max(0).values  # solve for well-scaled unknowns
    d1, p2, f2 = (torch.linalg.lstsq(a / scale, b).solution[:, 0] / scale).clamp(min=0).tolist()
    return PathCosts(tiles=tiles, patches=patches, dense1=d1, patch2=p2, full2=f2, blocks=blocks, hid=hid)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--resolution", default="hd")
    p.add_argument("--models", default="mobilenetv2,resnet50")
    p.add_argument("--inputs", default="example,noise")
    p.add_argument("--budgets", default="1,4", help="multiples of the model's sample_pixels")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    size = parse_resolution(args.resolution)
    cases = []
    for name in args.models.split(","):
        for budget in (float(b) for b in args.budgets.split(",")):
            if name == "mobilenetv2":
                model = load_model().float().eval()
            else:
                model = bench_model(None, name, args.resolution)[0]
            model.refiner.sample_pixels = int(model.refiner.sample_pixels * budget)
            model = model.to(device)
            for kind in args.inputs.split(","):
                src, bgr = (t.to(device) for t in INPUTS[kind](size, 1))
                print(f"measuring {name} {kind} x{budget:g}", file=sys.stderr, flush=True)
                case = measure(model, src, bgr, device, args.rounds)
                case["label"] = f"{name} {kind} x{budget:g}"
                case["fast"] = FastMatting(model)
                cases.append(case)
    fitted = fit(cases)
    print(f"# Refiner paths, {datetime.date.today().isoformat()}, {device_name(device)}\n\n"
          f"`python benchmarks/refiner_paths.py {' '.join(sys.argv[1:])}` (torch {torch.__version__}); "
          f"median ms of FastMatting.refine_patches per way (refine path / hidden channels), {args.resolution}\n")
    current = PATH_COSTS.get(device.type, PATH_COSTS["cpu"])
    head = ["case", "patches", "tiles", "blocks (tiles)", "blocks (patches)", "hidden ms",
            *[f"{a}/{b} ms" for a, b in WAYS], "fastest", "picked (current)", "picked (fitted)"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for c in cases:
        ms = c["ms"]
        fastest = min(WAYS, key=lambda w: ms[w])
        picks = []
        for costs in (current, fitted):
            fast = c["fast"]
            fast.costs = costs
            path = fast.choose_path(c["B"], (c["H"], c["W"]), (c["h"], c["w"]), c["n"], c["tiles"])
            hid = "dense"
            if path in ("tiles", "patches"):
                hid = "blocks" if fast.hid_on_blocks(c[f"blocks_{path}"], (c["B"], 0, c["h"], c["w"])) else "dense"
            picks.append(f"{path}/{hid} ({ms[(path, hid)]:.0f} ms)")
        cells = [c["label"], str(c["n"]), str(c["tiles"]), str(c["blocks_tiles"]), str(c["blocks_patches"]),
                 f"{ms['hidden']:.0f}", *[f"{ms[w]:.0f}" for w in WAYS], f"{fastest[0]}/{fastest[1]}", *picks]
        print("| " + " | ".join(cells) + " |")
    print("\nfitted (µs per pixel):", ", ".join(f"{k}={v:.3g}" for k, v in vars(fitted).items()))


if __name__ == "__main__":
    main()
