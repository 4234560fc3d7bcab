"""What ``Matter.__call__`` costs beyond ``Matter.forward_tensors`` (numpy inputs to tensors, outputs to numpy), at HD
on the CPU, with the conversions as they were before (the reference) measured in the same run.

    python benchmarks/overhead.py                  # HD, 2 threads: a no-cost network, then the shipped model
    python benchmarks/overhead.py --repeats 31 --no-model

Each time is the median of ``--repeats`` runs; the runs of the rows compared are interleaved, so a machine that gets
busier meanwhile slows them alike. With the shipped model, ``__call__ − forward_tensors`` is the difference of two
medians of a much longer run: it shows the order of magnitude; the first table and the no-cost network give the
overhead itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import bgmatting` does; torch is imported first here
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bgmatting import Matter  # noqa: E402
from bgmatting.bench import parse_resolution  # noqa: E402
from bgmatting.models import MattingBase  # noqa: E402
from bgmatting.results import MatteResult  # noqa: E402
from bgmatting.tensors import to_tensor  # noqa: E402

OUTPUTS = ("pha", "fgr", "err", "ref")


class NoNetwork(MattingBase):
    """``MattingBase`` whose network costs (almost) nothing: all-zero outputs at the input size."""

    def forward(self, src: torch.Tensor, bgr: torch.Tensor):
        b, _, h, w = src.shape
        return src.new_zeros(b, 1, h, w), src.new_zeros(b, 3, h, w), src.new_zeros(b, 1, h, w), None


# ---- the conversions as they were (the reference)

def before_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``to_tensor`` of a uint8 ``(H, W, 3)`` array before: a float32 copy, a division, then a clamp in torch."""
    arr = image.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)[None].clamp(0.0, 1.0)


def before_result(out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """``MatteResult``'s arrays before: all four made at once, ``fgr`` by a transposing copy."""
    arr = {k: v[0].permute(1, 2, 0).cpu().numpy() for k, v in out.items()}
    return {"pha": arr["pha"][..., 0], "fgr": np.ascontiguousarray(arr["fgr"]), "err": arr["err"][..., 0],
            "ref": arr["ref"][..., 0]}


def before_call(matter: Matter, src: np.ndarray, bgr: np.ndarray) -> dict[str, np.ndarray]:
    return before_result(matter.forward_tensors(before_to_tensor(src), before_to_tensor(bgr)))


def now_call(matter: Matter, src: np.ndarray, bgr: np.ndarray) -> dict[str, np.ndarray]:
    result = matter(src, bgr)
    return {k: getattr(result, k) for k in OUTPUTS}  # every output read: nothing left unconverted


# ---- timing

def medians(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """The median time in ms of each of ``runs``, run in turns (the order rotating from one turn to the next)."""
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for turn in range(warmup + repeats):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            t0 = time.perf_counter()
            runs[name]()
            if turn >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {n: statistics.median(v) for n, v in times.items()}


def table(head: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def speedup(before: float, now: float) -> str:
    return f"{before / now:.1f}x" if now > 0 else "-"


def conversions(src: np.ndarray, bgr: np.ndarray, repeats: int) -> str:
    h, w = src.shape[:2]
    g = torch.Generator().manual_seed(0)
    out = {k: torch.rand(1, 3 if k == "fgr" else 1, h, w, generator=g) for k in OUTPUTS}

    def now_all():
        result = MatteResult.from_tensors(out)
        return [getattr(result, k) for k in OUTPUTS]

    t = medians({"in before": lambda: (before_to_tensor(src), before_to_tensor(bgr)),
                 "in now": lambda: (to_tensor(src), to_tensor(bgr)),
                 "out before": lambda: before_result(out),
                 "out now": now_all,
                 "pha now": lambda: MatteResult.from_tensors(out).pha}, repeats)
    rows = [("inputs: src + bgr, uint8 (H, W, 3) → tensors", f"{t['in before']:.1f}", f"{t['in now']:.1f}",
             speedup(t["in before"], t["in now"])),
            ("outputs → MatteResult, all four read", f"{t['out before']:.1f}", f"{t['out now']:.1f}",
             speedup(t["out before"], t["out now"])),
            ("outputs → MatteResult, only pha read", f"{t['out before']:.1f}", f"{t['pha now']:.2f}",
             speedup(t["out before"], t["pha now"])),
            ("all of the above (all read)", f"{t['in before'] + t['out before']:.1f}",
             f"{t['in now'] + t['out now']:.1f}",
             speedup(t["in before"] + t["out before"], t["in now"] + t["out now"]))]
    return table(("conversion", "before ms (reference)", "now ms", "speed-up"), rows)


def end_to_end(name: str, matter: Matter, src: np.ndarray, bgr: np.ndarray, repeats: int) -> tuple:
    s, b = to_tensor(src), to_tensor(bgr)
    before, now = before_call(matter, src, bgr), now_call(matter, src, bgr)
    same = all(np.array_equal(before[k], now[k]) for k in OUTPUTS)
    t = medians({"forward": lambda: matter.forward_tensors(s, b), "before": lambda: before_call(matter, src, bgr),
                 "now": lambda: now_call(matter, src, bgr)}, repeats)
    return (name, matter.backend, f"{t['forward']:.1f}", f"{t['before']:.1f}", f"{t['now']:.1f}",
            f"{t['before'] - t['forward']:.1f}", f"{t['now'] - t['forward']:.1f}", "yes" if same else "NO")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", default="hd", help="hd, 4k or HxW (default hd)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=15, help="runs per row, of which the median is shown")
    p.add_argument("--model-repeats", type=int, default=5, help="runs per row with the shipped model")
    p.add_argument("--no-model", action="store_true", help="skip the shipped model (the slow rows)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    h, w = parse_resolution(args.resolution)
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    print(f"# Matter.__call__ overhead, {w}x{h}, CPU, {torch.get_num_threads()} threads (torch {torch.__version__})\n")
    print(conversions(src, bgr, args.repeats), "\n", flush=True)
    rows = [end_to_end("no-cost network", Matter(NoNetwork("mobilenetv2"), device="cpu", backend="reference"),
                       src, bgr, args.repeats)]
    if not args.no_model:
        print("measuring the shipped model ...", file=sys.stderr, flush=True)
        rows.append(end_to_end("shipped model", Matter(None, device="cpu"), src, bgr, args.model_repeats))
    print(table(("network", "backend", "forward_tensors ms", "__call__ before ms (reference)", "__call__ now ms",
                 "overhead before ms", "overhead now ms", "same outputs"), rows))


if __name__ == "__main__":
    main()
