"""Speed of the refiner's last step, the full-resolution composition: PyTorch's four passes against the one-pass
Triton kernel (:mod:`bgmatting.models.optimised.compose`), at the paper's settings.

    python benchmarks/compose.py --device cuda          # HD (80 000 refined pixels) and 4K (320 000)
    python benchmarks/compose.py --device cpu           # the PyTorch route only (the kernel needs CUDA)

Both routes get the same inputs: coarse maps at the backbone scale, random patches at random cells (valid in
sampling mode's static form, with a quarter of them marked invalid as zero-error patches are). Prints a table with
the median time of each (timed in interleaved rounds, as ``bgmatting bench`` times) and the largest difference
between their outputs.
"""

from __future__ import annotations

import argparse
import sys

import torch

from bgmatting.bench import RESOLUTIONS, parse_resolution, time_runners
from bgmatting.models.optimised.compose import compose_torch, compose_triton, triton
from bgmatting.pipeline import resolve_device


def inputs(size: tuple[int, int], scale: float, pixels: int, device: torch.device, seed: int = 0):
    """Coarse maps, ``src``, patches and their cells for one frame of ``size`` ``(H, W)``."""
    g = torch.Generator().manual_seed(seed)
    H, W = size
    h, w = int(H * scale), int(W * scale)
    n = min(pixels // 16, (H // 4) * (W // 4))
    cells = torch.randperm((H // 4) * (W // 4), generator=g)[:n]
    tensors = dict(coarse=torch.rand(1, 4, h, w, generator=g) * 1.4 - 0.2, src=torch.rand(1, 3, H, W, generator=g),
                   patches=torch.rand(n, 4, 4, 4, generator=g), ib=torch.zeros(n, dtype=torch.long),
                   rows=cells // (W // 4), cols=cells % (W // 4), valid=torch.rand(n, generator=g) > 0.25)
    return {k: v.to(device) for k, v in tensors.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--resolutions", default="hd,4k", help="hd, 4k or WxH, comma-separated")
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args()
    device = resolve_device(args.device)
    routes = [("pytorch", compose_torch)]
    if device.type == "cuda" and triton is not None:
        routes.append(("triton", compose_triton))
    else:
        print("(the Triton kernel runs on CUDA only: timing the PyTorch route alone)", file=sys.stderr)
    print("| resolution | refined px | route | ms | max diff | speed-up |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for res in args.resolutions.split(","):
            size = parse_resolution(res)
            _, scale, pixels = RESOLUTIONS.get(res.strip().lower(), (None, 1 / 4, 80_000))
            d = inputs(size, scale, pixels, device)
            runs = [lambda s, _, fn=fn, d=d: fn(d["coarse"].clone(), s, d["patches"], d["ib"], d["rows"], d["cols"],
                                                d["valid"]) for _, fn in routes]
            timed = time_runners(runs, d["src"], d["src"], "fp32", args.frames, args.warmup)
            base_ms, base_out = None, None
            for (name, _), (ms, _, out) in zip(routes, timed):
                diff = ("-" if base_out is None
                        else f"{max(float((a - b).abs().max()) for a, b in zip(out, base_out)):.1e}")
                speedup = "1.00x" if base_ms is None else f"{base_ms / ms:.2f}x"
                if base_ms is None:
                    base_ms, base_out = ms, out
                print(f"| {size[1]}x{size[0]} | {len(d['ib']) * 16} | {name} | {ms:.3f} | {diff} | {speedup} |")


if __name__ == "__main__":
    main()
