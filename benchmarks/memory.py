"""Peak working memory of one forward pass on the CPU: the original implementation against our paths, at the
paper's settings (4K: backbone scale 1/8, 320 000 refined pixels; HD: 1/4, 80 000), batch 1.

    python benchmarks/memory.py                          # 4K, MobileNetV2 and ResNet-50
    python benchmarks/memory.py --resolutions hd,4k --backbones mobilenetv2

Each measurement runs in a process of its own: the model is built and the inputs made, then one forward pass;
the peak is the process's resident high-water mark after the pass less its resident size just before it (so the
weights and the inputs are not counted, as ``bgmatting bench`` counts CUDA memory). Large tensors are mapped and
unmapped whole by the allocator, so this follows the tensors that are alive together.

Paths:
  original     the reference implementation (``backgroundmattingv2``), same weights and options
  static       ``FastMatting(static=True)``: what the CUDA graph backend captures (fixed patch count, no host sync)
  eager        our CPU/GPU eager path
  onnxruntime  the CPU default: backbone and ASPP in ONNX Runtime, the rest in PyTorch

All use random weights whose error map is positive everywhere, so sampling mode refines its full pixel count
(the worst case). On a GPU, ``benchmarks/speed.py --device cuda`` reports the peak CUDA memory of each backend.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys

PATHS = ("original", "static", "eager", "onnxruntime")


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(path: str, backbone: str, resolution: str, threads: int) -> float:
    """MiB beyond the weights and inputs that one forward pass of ``path`` holds at its peak (in this process)."""
    import torch

    from bgmatting.bench import bench_model, example_pair

    torch.set_num_threads(threads)
    model, size = bench_model(None, backbone, resolution)
    src, bgr = example_pair(size)
    if path == "original":
        from speed import original_twin

        run = original_twin(model)
    elif path == "static":
        from bgmatting.models.optimised import FastMatting

        run = FastMatting(model, static=True)
    else:
        from bgmatting.backends import make_runner

        run = make_runner(model, path, torch.device("cpu"))[1]
    before = _resident()
    if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 > before + 256 * 2 ** 20:
        print("warning: the set-up peaked higher than the forward pass may; the peak may be understated",
              file=sys.stderr)
    with torch.inference_mode():
        run(src, bgr)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / 2 ** 20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="mobilenetv2,resnet50")
    p.add_argument("--resolutions", default="4k", help="hd, 4k or WxH, comma-separated")
    p.add_argument("--paths", default=",".join(PATHS), help=f"any of {', '.join(PATHS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs=3, metavar=("PATH", "BACKBONE", "RESOLUTION"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(f"{measure(*args.child, args.threads):.1f}")
        return
    paths = args.paths.split(",")
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        sys.exit(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    print("| backbone | resolution | path | peak MiB | vs original |")
    print("|---|---|---|---|---|")
    for backbone in args.backbones.split(","):
        for res in args.resolutions.split(","):
            peaks = {}
            for path in paths:
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", path, backbone, res]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{path} {backbone} {res} failed:\n{done.stderr}")
                peaks[path] = float(done.stdout.strip().splitlines()[-1])
                ratio = f"{peaks[path] / peaks['original']:.2f}×" if "original" in peaks else "—"
                print(f"| {backbone} | {res} | {path} | {peaks[path]:.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
