"""Speed of bgmatting's backends against the original BGMv2 implementation, measured in the same run.

    python benchmarks/speed.py                     # CPU: HD, MobileNetV2 (shipped weights) and ResNet-50
    python benchmarks/speed.py --device cuda       # GPU: HD and 4K, fp32 and fp16
    python benchmarks/speed.py --settings model    # the shipped model's own settings instead of the paper's
    python benchmarks/speed.py --save              # also write benchmarks/results/<date>-<device>.md

The original is ``backgroundmattingv2==1.0`` from PyPI (``pip install backgroundmattingv2``), loaded with the same
weights and options; it is the first row of each block, so "speed-up" is against it and "max Δα" is our
alpha's largest difference from its alpha (in fp16 blocks: from its fp32 alpha, the accuracy target for fp16).
ResNet-50 has no shipped weights: it runs with random weights whose error map is positive everywhere, so that
sampling mode refines all of its pixels (the worst case).

Each model runs on two inputs (``--inputs``): ``example``, the shipped photo pair (patches along the subject's
outline), and ``noise``, the worst case for the refiner's sparse ways: a noise-textured background that the model
cannot explain, so the selected patches are scattered over the whole frame (:func:`bgmatting.bench.noise_pair`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import bgmatting` does; torch is imported first here
import torch  # noqa: E402

from bgmatting.bench import INPUTS, bench_model, format_table, run_bench
from bgmatting.pipeline import resolve_device

try:
    from BackgroundMattingV2.model import MattingRefine as OriginalRefine
except ImportError:  # pragma: no cover
    sys.exit("the original implementation is needed: pip install backgroundmattingv2==1.0")


def original_twin(model) -> torch.nn.Module:
    """The original implementation's MattingRefine with ``model``'s weights and refiner options."""
    r = model.refiner
    twin = OriginalRefine(model.backbone_name, backbone_scale=model.backbone_scale, refine_mode=r.mode,
                          refine_sample_pixels=r.sample_pixels, refine_threshold=r.threshold,
                          refine_kernel_size=r.kernel_size, refine_prevent_oversampling=r.prevent_oversampling)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--models", default="mobilenetv2,resnet50",
                   help="mobilenetv2 = the shipped weights; other backbones use random weights")
    p.add_argument("--resolutions", help="default: hd on the CPU, hd,4k on CUDA")
    p.add_argument("--precisions", help="default: fp32 on the CPU, fp32,fp16 on CUDA")
    p.add_argument("--inputs", default="example,noise", help=f"any of {', '.join(INPUTS)} (default: both)")
    p.add_argument("--settings", choices=("paper", "model"), default="paper",
                   help="backbone scale and sampled pixels: the paper's for the resolution (default) or the "
                        "model's own (the shipped MobileNetV2: scale 1/2, 40000 pixels)")
    p.add_argument("--save", action="store_true", help="write the table to benchmarks/results/")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    resolutions = (args.resolutions or ("hd,4k" if cuda else "hd")).split(",")
    precisions = (args.precisions or ("fp32,fp16" if cuda else "fp32")).split(",")
    inputs = args.inputs.split(",")
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown:
        p.error(f"unknown input(s) {', '.join(unknown)}; use {', '.join(INPUTS)}")
    backends = ["eager", "graph"] if cuda else ["eager", "onnxruntime"]
    blocks = []
    for name in args.models.split(","):
        for res in resolutions:
            shipped = name == "mobilenetv2"
            model, size = bench_model(None, None if shipped else name, res, paper_settings=args.settings == "paper")
            model = model.to(device)
            original = original_twin(model).to(device)
            for kind in inputs:
                fp32_pha = None
                if any(p != "fp32" for p in precisions):  # lower precisions are compared with the original in fp32
                    src, bgr = (t.to(device) for t in INPUTS[kind](size, 1))
                    with torch.inference_mode():
                        fp32_pha = original(src, bgr)[0].float()
                for precision in precisions:
                    rows = run_bench(model, size, backends, device=device, precision=precision, frames=args.frames,
                                     warmup=args.warmup, references={"original": original}, inputs=kind,
                                     compare_with=fp32_pha if precision != "fp32" else None,
                                     progress=lambda line: print("measuring", line, file=sys.stderr, flush=True))
                    blocks.append(format_table(rows))
                    print(blocks[-1], flush=True)
    stamp = datetime.date.today().isoformat()
    text = (f"# Speed, {stamp}, {device_name(device)}\n\n`python benchmarks/speed.py {' '.join(sys.argv[1:])}` "
            f"(torch {torch.__version__})\n\n" + "\n\n".join(blocks) + "\n")
    if args.save:
        out = Path(__file__).parent / "results" / f"{stamp}-{device.type}.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
