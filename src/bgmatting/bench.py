"""Speed benchmark: every backend on the same model and inputs, with the reference measured in the same run.

:func:`run_bench` times ``model`` with each backend of :mod:`bgmatting.backends` (and any extra implementation
you pass, e.g. the original BGMv2 code in ``benchmarks/speed.py``) on one pair of frames, checks that each gives
the same alpha as the reference, and returns :class:`BenchRow` s; :func:`format_table` prints them.
``bgmatting bench`` is the command-line front end.

Inputs (:data:`INPUTS`) are the shipped example pair resized to the benchmark resolution, so the refiner selects
patches along a real subject's outline, as it does on real footage, or the worst case for the refiner's sparse
ways, a noise background that spreads the selected patches over the whole frame (:func:`noise_pair`). The runners
are timed in interleaved rounds (:func:`time_runners`), so that a drift in the machine's speed does not favour one
of them.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F

from .backends import make_runner
from .errors import BgMattingError
from .io.images import check_pixels
from .models import MattingBase, MattingRefine
from .options import BACKENDS
from .pipeline import PRECISION_DTYPES, resolve_device
from .tensors import to_tensor

#: named resolutions and the paper's settings for them: (H, W), backbone_scale, refine_sample_pixels
RESOLUTIONS = {"hd": ((1080, 1920), 1 / 4, 80_000), "4k": ((2160, 3840), 1 / 8, 320_000)}


@dataclass
class BenchRow:
    """One measured configuration. ``ms`` is the median time per frame; ``peak_mb`` the CUDA memory a call
    needs beyond the weights (``None`` on the CPU); ``max_diff`` the largest alpha difference from the reference
    row (``nan`` for the reference itself); ``speedup`` = reference ms / ms."""

    backbone: str
    size: tuple[int, int]
    mode: str
    precision: str
    batch: int
    backend: str
    ms: float
    peak_mb: float | None
    refined: int = 0
    max_diff: float = math.nan
    patches_diff: int = 0
    speedup: float = math.nan
    input: str = "example"

    @property
    def fps(self) -> float:
        return 1000.0 / self.ms


def parse_resolution(text: str) -> tuple[int, int]:
    """``'hd'``, ``'4k'`` or ``'WxH'`` → ``(H, W)``, both multiples of 4."""
    key = text.strip().lower()
    if key in RESOLUTIONS:
        return RESOLUTIONS[key][0]
    try:
        w, h = (int(v) for v in key.split("x"))
    except ValueError:
        raise BgMattingError(f"'{text}' is not a resolution; use hd, 4k or WIDTHxHEIGHT (e.g. 1280x720)") from None
    if w < 32 or h < 32 or w % 4 or h % 4:
        raise BgMattingError(f"resolution {w}x{h}: width and height must be at least 32 and multiples of 4")
    check_pixels((h, w), "the benchmark frame", hint="use a smaller --resolution")  # images' cap: 8K fits
    return h, w


def example_pair(size: tuple[int, int], batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped example ``src``/``bgr`` resized to ``size`` ``(H, W)``: two ``(batch, 3, H, W)`` tensors."""
    from .io.images import read_image

    folder = resources.files("bgmatting") / "assets" / "examples"
    out = []
    for name in ("src.jpg", "bgr.jpg"):
        t = to_tensor(read_image(str(folder / name)), name)
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        out.append(t.expand(batch, -1, -1, -1).contiguous())
    return out[0], out[1]


def _texture(size: tuple[int, int], batch: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch, 3, H, W)`` in [0, 1]: the mean of two layers of uniform random colours, one per 32×32 block and
    one per 4×4 block (one refiner patch), so that it varies at every patch and no two patches look alike."""
    layers = []
    for block in (32, 4):
        h, w = -(-size[0] // block), -(-size[1] // block)
        c = torch.rand(batch, 3, h, w, generator=generator)
        layers.append(c.repeat_interleave(block, 2).repeat_interleave(block, 3)[:, :, :size[0], :size[1]])
    return (layers[0] + layers[1]) / 2


def noise_pair(size: tuple[int, int], batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A worst case for the refiner's sparse paths: two ``(batch, 3, H, W)`` tensors in [0, 1].

    ``bgr`` is a noise texture (:func:`_texture`); ``src`` is the shipped example's subject (a soft ellipse of
    the example photo around it) in front of *another* texture of the same kind, as if the background had
    changed completely. The network cannot explain the background, so its error map is positive over most of
    the frame and varies from patch to patch: the patches it selects are scattered over the whole frame, not
    clustered along the subject's outline.
    """
    g = torch.Generator().manual_seed(seed)
    photo = example_pair(size, batch)[0]
    H, W = size
    y = (torch.arange(H, dtype=torch.float32) + 0.5) / H
    x = (torch.arange(W, dtype=torch.float32) + 0.5) / W
    r = ((y[:, None] - 0.55) / 0.42) ** 2 + ((x[None, :] - 0.5) / 0.22) ** 2  # an upright ellipse, radius 1
    pha = ((1.0 - r.sqrt()) * min(H, W) / 8.0).clamp(0, 1)  # a soft edge a few pixels wide
    bgr = _texture(size, batch, g)
    src = pha * photo + (1 - pha) * _texture(size, batch, g)
    return src.contiguous(), bgr.contiguous()


#: benchmark inputs by name: ``(size, batch) -> (src, bgr)``
INPUTS: dict[str, Callable[[tuple[int, int], int], tuple[torch.Tensor, torch.Tensor]]] = {
    "example": example_pair, "noise": noise_pair}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call_ms(run: Callable, src: torch.Tensor, bgr: torch.Tensor) -> tuple[float, tuple]:
    """Milliseconds of one call of ``run(src, bgr)`` (the device synchronised around it) and its outputs."""
    _sync(src.device)
    t0 = time.perf_counter()
    out = run(src, bgr)
    _sync(src.device)
    return (time.perf_counter() - t0) * 1000.0, out


def time_runners(runs: Sequence[Callable], src: torch.Tensor, bgr: torch.Tensor, precision: str, frames: int,
                 warmup: int) -> list[tuple[float, float | None, tuple]]:
    """Median milliseconds per call of each ``run(src, bgr)``, timed in interleaved rounds.

    Each runner is first warmed up alone (``warmup`` calls, at least one), which measures its peak CUDA memory:
    the most it allocated beyond what was allocated before it started (its weights and the other runners' are
    not counted; its CUDA graphs' memory is). Then ``frames`` rounds call every runner once each, in an order that
    rotates from round to round, so that a machine whose speed drifts (other jobs, clocks) slows them all alike
    and their ratios stay fair. Returns ``(ms, peak_mb, outputs)`` per runner: peak is ``None`` on the CPU,
    outputs those of the last call.
    """
    device = src.device
    dtype = PRECISION_DTYPES[precision]
    cuda = device.type == "cuda"
    peaks, outs, times = [], [], [[] for _ in runs]
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for run in runs:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            for _ in range(max(warmup, 1)):
                out = _call_ms(run, src, bgr)[1]
            peaks.append((torch.cuda.max_memory_allocated(device) - before) / 2 ** 20 if cuda else None)
            outs.append(out)
        for r in range(frames):
            for k in range(len(runs)):
                i = (r + k) % len(runs)
                ms, outs[i] = _call_ms(runs[i], src, bgr)
                times[i].append(ms)
    return [(statistics.median(t), peak, out) for t, peak, out in zip(times, peaks, outs)]


def run_bench(model: MattingBase, size: tuple[int, int], backends: Sequence[str], *, device: torch.device,
              precision: str = "fp32", batch: int = 1, frames: int = 10, warmup: int = 3,
              references: Mapping[str, Callable] | None = None, compare_with: torch.Tensor | None = None,
              progress: Callable[[str], None] | None = None, inputs: str = "example") -> list[BenchRow]:
    """Time ``model`` (eval mode, on ``device``) with each of ``backends`` on the ``inputs`` pair at ``size``.

    Args:
        references: extra implementations of the same model to time first, ``{name: callable(src, bgr)}``
            returning the model's output tuple (e.g. the original BGMv2 module). The first row, reference or
            backend, is the one the others are compared with (alpha difference and speed-up).
        compare_with: an alpha ``(B, 1, H, W)`` to compare every row with instead of the first row's (e.g. the
            fp32 reference when timing fp16).
        progress: called with a line before each configuration is measured.
        inputs: which pair of frames (:data:`INPUTS`): ``"example"`` or ``"noise"``.

    Returns:
        One :class:`BenchRow` per reference and backend, in that order.
    """
    if inputs not in INPUTS:
        raise BgMattingError(f"unknown benchmark input '{inputs}'; use one of {', '.join(INPUTS)}")
    model = model.eval().to(device)
    src, bgr = INPUTS[inputs](size, batch)
    src, bgr = src.to(device), bgr.to(device)
    mode = model.refiner.mode if isinstance(model, MattingRefine) else "base"
    rows: list[BenchRow] = []
    base_pha = None
    runners = list((references or {}).items())
    for name in backends:
        runners.append(make_runner(model, name, device, precision))
    if progress:
        progress(f"{', '.join(n for n, _ in runners)}: {size[1]}x{size[0]} {inputs} {precision} batch {batch}, "
                 f"{frames} interleaved rounds")
    timed = time_runners([run for _, run in runners], src, bgr, precision, frames, warmup)
    for (name, _), (ms, peak, out) in zip(runners, timed):
        refined = int(out[5].float().sum()) * 16 // batch if isinstance(model, MattingRefine) else 0
        row = BenchRow(model.backbone_name, size, mode, precision, batch, name, ms / batch, peak, refined,
                       input=inputs)
        pha = out[0].float()
        ref = out[5].float() if isinstance(model, MattingRefine) else None
        first = base_pha is None
        if first:
            base_pha, base_ms, base_ref = pha, row.ms, ref
        else:
            row.speedup = base_ms / row.ms
            row.patches_diff = 0 if ref is None else int((ref != base_ref).sum())
        if compare_with is not None:
            row.max_diff = float((pha - compare_with.to(pha)).abs().max())
        elif not first:
            row.max_diff = float((pha - base_pha).abs().max())
        rows.append(row)
    return rows


def choose_backends(backends: str | Sequence[str] | None, device: torch.device) -> list[str]:
    """The backends to time, the reference first: ``'reference,eager'`` or a list (checked against
    :data:`~bgmatting.options.BACKENDS`, ``auto`` excluded), or ``None`` for reference, eager, and graph on CUDA or
    onnxruntime on the CPU."""
    if not backends:
        return ["reference", "eager", "graph"] if device.type == "cuda" else ["reference", "eager", "onnxruntime"]
    names = [b.strip() for b in (backends.split(",") if isinstance(backends, str) else backends) if b.strip()]
    for b in names:
        if b not in BACKENDS or b == "auto":
            raise BgMattingError(f"unknown backend '{b}' in --backend; choose from "
                                 f"{', '.join(x for x in BACKENDS if x != 'auto')}")
    return names


def bench(weights: str | None = None, backbone: str | None = None, resolutions: str | Sequence[str] = "hd",
          backends: str | Sequence[str] | None = None, *, device: str | torch.device = "auto",
          precisions: str | Sequence[str] = "fp32", batch: int = 1, frames: int = 10, warmup: int = 3,
          backbone_scale: float | None = None, refine_mode: str | None = None,
          refine_sample_pixels: int | None = None, refine_threshold: float | None = None,
          progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    """What ``bgmatting bench`` does: :func:`run_bench` for each resolution and precision.

    Args:
        weights, backbone: the model (see :func:`bench_model`).
        resolutions: ``'hd,4k'`` or a list of :func:`parse_resolution` entries.
        backends: see :func:`choose_backends`.
        precisions: ``'fp32,bf16'`` or a list of :data:`~bgmatting.options.PRECISIONS`.
        backbone_scale, refine_mode, refine_sample_pixels, refine_threshold: override the paper's settings.

    Returns:
        the rows of every configuration, resolution by resolution.
    """
    device = resolve_device(device)
    backends = choose_backends(backends, device)
    rows: list[BenchRow] = []
    for resolution in resolutions.split(",") if isinstance(resolutions, str) else resolutions:
        model, size = bench_model(weights, backbone, resolution, backbone_scale=backbone_scale,
                                  refine_mode=refine_mode, refine_sample_pixels=refine_sample_pixels,
                                  refine_threshold=refine_threshold)
        for precision in precisions.split(",") if isinstance(precisions, str) else precisions:
            rows += run_bench(model, size, backends, device=device, precision=precision.strip(), batch=batch,
                              frames=frames, warmup=warmup, progress=progress)
    return rows


def format_table(rows: Sequence[BenchRow]) -> str:
    """A Markdown table of ``rows``."""
    head = ("backbone", "resolution", "input", "mode", "precision", "batch", "backend", "refined px", "fps",
            "ms/frame", "peak MiB", "max Δα", "Δ patches", "speed-up")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (r.backbone, f"{r.size[1]}x{r.size[0]}", r.input, r.mode, r.precision, str(r.batch), r.backend,
                 str(r.refined), f"{r.fps:.2f}", f"{r.ms:.1f}", "-" if r.peak_mb is None else f"{r.peak_mb:.0f}",
                 "(reference)" if math.isnan(r.max_diff) else f"{r.max_diff:.1e}", str(r.patches_diff),
                 "1.00x" if math.isnan(r.speedup) else f"{r.speedup:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_model(weights: str | None, backbone: str | None, resolution: str, *, backbone_scale: float | None = None,
                refine_mode: str | None = None, refine_sample_pixels: int | None = None,
                refine_threshold: float | None = None,
                paper_settings: bool = True) -> tuple[MattingBase, tuple[int, int]]:
    """The model and ``(H, W)`` for a benchmark: the paper's settings for ``hd``/``4k`` unless overridden, or
    (``paper_settings=False``) the model's own (those stored with the weights, or the defaults of random ones).

    ``backbone`` without ``weights`` builds that architecture with random weights whose error map is positive
    everywhere (and varied: no ties), so sampling mode always refines its full ``sample_pixels`` (the worst case
    for speed).
    """
    from .weights import build_model, load_model, pytorch_weights

    size = parse_resolution(resolution)
    scale, pixels = RESOLUTIONS.get(resolution.strip().lower(), (None, 1 / 4, 80_000))[1:]
    if not paper_settings:
        scale = pixels = None
    options = {k: v for k, v in (("backbone_scale", backbone_scale or scale),
                                 ("refine_sample_pixels", refine_sample_pixels or pixels)) if v}
    if refine_mode:
        options["refine_mode"] = refine_mode
    if refine_threshold is not None:
        options["refine_threshold"] = refine_threshold
    if backbone and weights:
        raise BgMattingError("give --weights or --backbone (random weights), not both")
    if backbone:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same random weights in every run
            model = build_model("MattingRefine", backbone, **options)
        with torch.no_grad():  # error in (0, 1) everywhere and spread out, so that top-k has no near-ties to break
            model.decoder.conv4.bias[4] = 0.5
        return model.eval(), size
    return load_model(pytorch_weights(weights, "bgmatting bench"), **options).float().eval(), size
