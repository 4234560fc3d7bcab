"""TorchScript and ONNX export of ``MattingBase``/``MattingRefine``, validated against PyTorch (the ONNX files
run with :class:`bgmatting.onnx_runtime.OnnxModel`).

Both exporters trace the network once on an example pair and give graphs with dynamic batch, height and width.
The eager refiner has two parts that do not trace into a size-independent graph: its top-k count is
``min(sample_pixels // 16, patches)`` (a Python ``min`` that a trace freezes), and it crops patches with
``Tensor.unfold``, which the ONNX exporter cannot convert at dynamic sizes. The export therefore runs on a copy of
the model whose refiner selects a fixed top-k and crops by one gather (options of the same refiner, see
:mod:`bgmatting.models.patches`; same outputs, bit-identical in eager mode on inputs without ties in the error
map), made by :func:`exportable`; the eager model is never changed.

``topk_free=True`` replaces the sampling mode's TopK by a fixed number of bisection steps that find the k-th largest
error value (for TensorRT, whose TopK has a maximum k: 3840 in TensorRT 8, below the 5000 patches of the default
80 000 sample pixels); it selects every patch whose error reaches that
value, so it equals top-k except for ties at the threshold.

Every export is checked before the file appears: the file is run (ONNX Runtime, CPU; or ``torch.jit.load``) on a
deterministic example pair at the example size and at another size with batch 2, and compared with the PyTorch
model. The file is written atomically: a failed export or check leaves nothing behind.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BgMattingError, import_optional
from .io.atomic import atomic_path
from .model_metadata import FORMAT_TAG, INPUT_NAMES, OUTPUT_NAMES
from .models import MattingBase, MattingRefine
from .models.patches import patch_count, resize_bilinear, top_patches
from .onnx_runtime import OnnxModel
from .options import EXPORT_PRECISIONS
from .pipeline import PRECISION_DTYPES
from .tracing import LEGACY_EXPORTER, quiet_trace
from .weights import load_model, model_config, pytorch_weights

FORMATS = ("onnx", "torchscript")
PRECISIONS = {name: PRECISION_DTYPES[name] for name in EXPORT_PRECISIONS}
MIN_OPSET, MAX_OPSET = 17, 20  # 20: the newest opset of torch's TorchScript-based ONNX exporter
DEFAULT_EXAMPLE_SIZE = (256, 384)
# The check: fp32 exports must give alpha within 1e-4 (max |difference|) of PyTorch; fp16 ones within 5e-3 on average
# (fp16 rounding moves single pixels of alpha by up to ~0.15 with the shipped model, in PyTorch too). A patch may be
# refined by one and not the other when its error is this close to the selection boundary (the k-th largest
# error, or the threshold): ties in fp32, rounding in fp16; such patches are left out of the comparison.
TOLERANCES = {"fp32": ("max", 1e-4), "fp16": ("mean", 5e-3)}
BOUNDARY_TOLERANCES = {"fp32": 1e-6, "fp16": 2e-2}
TORCHSCRIPT_EXTRA_FILE = "bgmatting.json"


def _version() -> str:
    from . import __version__

    return __version__


def _check_model(model: nn.Module) -> str:
    if not isinstance(model, (MattingBase, MattingRefine)):
        raise BgMattingError(f"only MattingBase and MattingRefine models can be exported, not {type(model).__name__}")
    return type(model).__name__


def exportable(model: nn.Module, topk_free: bool = False, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` in eval mode that traces into a graph valid at every input size (``model`` is not
    changed): its refiner selects a fixed top-k (``"fixed-k"``; ``topk_free``: ``"bisection"``, no TopK) and crops
    by one gather (see :mod:`bgmatting.models.patches`), with the same outputs."""
    _check_model(model)
    out = copy.deepcopy(model).eval()
    if isinstance(out, MattingRefine):
        out.refiner.selection = "bisection" if topk_free else "fixed-k"
        out.refiner.crop = "gather"
    return out if dtype is None else out.to(dtype)


# --------------------------------------------------------------------------------------------- example inputs

def example_pair(size: tuple[int, int] = DEFAULT_EXAMPLE_SIZE, batch: int = 1, seed: int = 0,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A deterministic ``(src, bgr)`` pair, each ``(batch, 3, H, W)`` in [0, 1]: a smooth random background, and
    the same background with a soft-edged elliptic "subject" of other smooth colours in front (plus a little
    noise in both), so that the error map is non-trivial and has no ties."""
    h, w = size
    g = torch.Generator().manual_seed(seed)

    def smooth(cells: int) -> torch.Tensor:
        low = torch.rand(batch, 3, cells, max(2, round(cells * w / h)), generator=g)
        return F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)

    bgr, fgr = smooth(5), smooth(9)
    yy = torch.linspace(-1, 1, h).view(1, h, 1)
    xx = torch.linspace(-1, 1, w).view(1, 1, w)
    cx, cy = (torch.rand(batch, 1, 1, generator=g) - 0.5) * 0.4, (torch.rand(batch, 1, 1, generator=g) - 0.5) * 0.4
    rx, ry = 0.3 + 0.2 * torch.rand(batch, 1, 1, generator=g), 0.4 + 0.3 * torch.rand(batch, 1, 1, generator=g)
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    pha = torch.sigmoid((1 - d) * 8)[:, None]
    src = pha * fgr + (1 - pha) * bgr
    src = (src + 0.01 * torch.randn(src.shape, generator=g)).clamp(0, 1)
    bgr = (bgr + 0.01 * torch.randn(bgr.shape, generator=g)).clamp(0, 1)
    return src.to(device=device, dtype=dtype), bgr.to(device=device, dtype=dtype)


MAX_EXAMPLE_PIXELS = 3840 * 2160
"""The largest example pair (height × width) an export is traced and checked with."""


def _check_size(size: Sequence[int], architecture: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise BgMattingError(f"example size must be (height, width), got {size!r}") from None
    multiple = 4 if architecture == "MattingRefine" else 1
    if h < 32 or w < 32 or h % multiple or w % multiple:
        rule = " with sides divisible by 4" if multiple > 1 else ""
        raise BgMattingError(f"example size must be at least 32x32{rule}, got {h}x{w}")
    if h * w > MAX_EXAMPLE_PIXELS:  # the exported file takes any size: a larger example only costs memory
        raise BgMattingError(f"example size must be at most {MAX_EXAMPLE_PIXELS} pixels (4K, 2160x3840), got "
                             f"{h}x{w}; the exported file runs at any size")
    return h, w


def _second_size(size: tuple[int, int]) -> tuple[int, int]:
    """Another valid size for the second check: the transposed one, or a taller one for squares."""
    h, w = size
    return (w, h) if h != w else (h + 32, w)


# --------------------------------------------------------------------------------------------- reports

@dataclass
class ExportCheck:
    """One comparison of the exported file with PyTorch.

    Attributes:
        shape: the input shape ``(B, 3, H, W)``.
        diffs: max |exported − PyTorch| per output name.
        pha_mean: mean |exported − PyTorch| of alpha.
        reselected: patches that the exported file refined and PyTorch did not (or vice versa) because their
            error lies at the selection boundary (ties, or fp16 rounding); they are left out of ``diffs``.
    """

    shape: tuple[int, ...]
    diffs: dict[str, float]
    pha_mean: float = 0.0
    reselected: int = 0


@dataclass
class ExportReport:
    """What :func:`export_onnx` / :func:`export_torchscript` wrote and how it was checked."""

    path: Path
    format: str
    precision: str
    config: dict[str, Any]
    opset: int | None = None
    topk_free: bool = False
    runtime: str = ""
    criterion: str = "max"
    tolerance: float = 0.0
    checks: list[ExportCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def validated(self) -> bool:
        return bool(self.checks)

    @property
    def max_diffs(self) -> dict[str, float]:
        """Max |difference| per output over all checks."""
        out: dict[str, float] = {}
        for c in self.checks:
            for k, v in c.diffs.items():
                out[k] = max(out.get(k, 0.0), v)
        return out

    def format_table(self) -> str:
        cfg = self.config
        what = f"{cfg['architecture']}({cfg['backbone']}"
        if cfg["architecture"] == "MattingRefine":
            what += f", backbone_scale={cfg['backbone_scale']:g}, refine_mode={cfg['refine_mode']}"
            if cfg["refine_mode"] == "sampling":
                what += f", refine_sample_pixels={cfg['refine_sample_pixels']}"
            elif cfg["refine_mode"] == "thresholding":
                what += f", refine_threshold={cfg['refine_threshold']:g}"
        what += ")"
        fmt = "ONNX" + (f" opset {self.opset}" if self.opset else "") if self.format == "onnx" else "TorchScript"
        extra = ", TopK-free" if self.topk_free else ""
        lines = [f"wrote {self.path}: {fmt}, {self.precision}{extra}, {what}"]
        if not self.checks:
            lines.append("not validated")
        else:
            names = list(self.checks[0].diffs)
            lines.append(f"checked with {self.runtime} against PyTorch; max |difference| per output:")
            rows = [["input", *names]]
            for c in self.checks:
                rows.append(["x".join(map(str, c.shape)), *(f"{c.diffs[n]:.1e}" for n in names)])
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            lines += ["  " + "  ".join(v.ljust(wd) for v, wd in zip(r, widths)).rstrip() for r in rows]
            if self.criterion == "mean":
                worst = max(c.pha_mean for c in self.checks)
                lines.append(f"alpha: mean |difference| {worst:.1e} <= {self.tolerance:g} "
                             f"({self.precision}, loose): ok")
            else:
                lines.append(f"alpha: max |difference| {self.max_diffs['pha']:.1e} <= {self.tolerance:g}: ok")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- checking

def _reference_model(model: nn.Module) -> nn.Module:
    """``model`` in float32 eval mode (a copy when it is not already)."""
    p = next(model.parameters())
    if p.dtype == torch.float32 and not model.training:
        return model
    return copy.deepcopy(model).float().eval()


def _boundary_mask(model: nn.Module, ref_out: tuple, got_ref: torch.Tensor, tol: float):
    """Patches (``(B, 1, H/4, W/4)`` bool) selected differently whose error lies within ``tol`` of the selection
    boundary, or ``None`` when some other patch is selected differently (a real mismatch)."""
    want_ref, err_sm = ref_out[5], ref_out[4].float()
    differ = got_ref.to(want_ref.dtype) != want_ref
    if not differ.any():
        return differ
    r = model.refiner
    e = resize_bilinear(err_sm, tuple(want_ref.shape[2:]))
    if r.mode == "thresholding":
        boundary = torch.full_like(e, r.threshold)
    else:
        values, _ = top_patches(e.flatten(1), patch_count(r.sample_pixels))  # the selection's own top-k
        boundary = values.min(dim=1).values.view(-1, 1, 1, 1)  # the k-th largest error
    near = (e - boundary).abs() <= tol
    return differ if bool((near | ~differ).all()) else None


def _compare(model: nn.Module, names: Sequence[str], got: Sequence[torch.Tensor], want: Sequence[torch.Tensor],
             boundary_tol: float) -> ExportCheck:
    got = [g.detach().float().cpu() for g in got]
    want = [w.detach().float().cpu() for w in want]
    if len(got) != len(want):
        raise BgMattingError(f"export check failed: the exported model gives {len(got)} outputs, PyTorch {len(want)}")
    for n, g, w in zip(names, got, want):
        if g.shape != w.shape:
            raise BgMattingError(f"export check failed: output '{n}' has shape {tuple(g.shape)}, PyTorch gives "
                                 f"{tuple(w.shape)}")
    reselected = 0
    keep = None
    if isinstance(model, MattingRefine) and model.refiner.mode != "full":
        mask = _boundary_mask(model, want, got[5], boundary_tol)
        if mask is not None and mask.any():
            reselected = int(mask.sum())
            keep = ~mask
    diffs, pha_mean = {}, 0.0
    for n, g, w in zip(names, got, want):
        d = (g - w).abs()
        if keep is not None and n in ("pha", "fgr", "ref_sm"):
            d = d * F.interpolate(keep.float(), size=d.shape[2:], mode="nearest")
        diffs[n] = float(d.max())  # NaN propagates
        if n == "pha":
            pha_mean = float(d.mean())
    shape = tuple(want[0].shape[:1]) + (3,) + tuple(want[0].shape[2:])
    return ExportCheck(shape, diffs, pha_mean, reselected)


def _validate(model: nn.Module, run, names: Sequence[str], size: tuple[int, int], precision: str,
              device: torch.device, report: ExportReport) -> None:
    """Run ``run(src, bgr)`` (the exported file) and the float32 ``model`` at ``size`` (batch 1) and at another size
    (batch 2), fill ``report``; raise :class:`BgMattingError` when alpha differs by more than the tolerance."""
    criterion, tol = TOLERANCES[precision]
    boundary_tol = BOUNDARY_TOLERANCES[precision]
    dtype = PRECISIONS[precision]
    checks = []
    for batch, hw, seed in ((1, size, 0), (2, _second_size(size), 1)):
        src, bgr = example_pair(hw, batch, seed, device=device)
        with torch.no_grad():
            want = model(src, bgr)
            got = run(src.to(dtype), bgr.to(dtype))
        check = _compare(model, names, got, want, boundary_tol)
        checks.append(check)
        d = check.pha_mean if criterion == "mean" else check.diffs["pha"]
        if not d <= tol:  # also catches NaN
            raise BgMattingError(
                f"export check failed: alpha of the exported model differs from PyTorch by {d:.2e} ({criterion} "
                f"|difference|, more than {tol:g}) on a {'x'.join(map(str, check.shape))} input; nothing was "
                "written. Please report this with the model and options used")
    report.checks, report.criterion, report.tolerance = checks, criterion, tol
    report.notes += _notes(checks, precision)


def _notes(checks: list[ExportCheck], precision: str) -> list[str]:
    notes = []
    n = sum(c.reselected for c in checks)
    if n:
        why = "ties or fp16 rounding" if precision == "fp16" else "ties"
        notes.append(f"{n} patch(es) at the selection boundary ({why}) were refined differently and are left out "
                     "of the pha/fgr/ref_sm differences")
    return notes


def _prepare(model: nn.Module, precision: str, example_size) -> tuple[str, dict, tuple[int, int], torch.device]:
    architecture = _check_model(model)
    if precision not in PRECISIONS:
        raise BgMattingError(f"precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    size = _check_size(example_size, architecture)
    device = next(model.parameters()).device
    return architecture, model_config(model), size, device


# --------------------------------------------------------------------------------------------- ONNX

def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = 17, precision: str = "fp32",
                topk_free: bool = False, validate: bool = True,
                example_size: tuple[int, int] = DEFAULT_EXAMPLE_SIZE) -> ExportReport:
    """Export ``model`` (``MattingBase``, or ``MattingRefine`` in its ``refiner.mode``) to an ONNX file, atomically.

    The graph has inputs ``src``, ``bgr`` ``(B, 3, H, W)`` in [0, 1] (float16 for ``precision="fp16"``) with
    dynamic ``B``, ``H``, ``W`` (``H``, ``W`` multiples of 4 for ``MattingRefine``), and the model's outputs by name:
    ``pha, fgr, err, hid`` (``MattingBase``) or ``pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm`` (``MattingRefine``).
    The file's metadata (``metadata_props``) holds the format tag ``bgmatting``, the architecture, backbone and
    refiner options, read by :class:`OnnxModel`.

    Args:
        model: the model to export; it is not changed.
        path: the ``.onnx`` file to write (replaced if it exists).
        opset: ONNX opset, 17 to 20.
        precision: ``"fp32"``, or ``"fp16"`` (a half model, meant for GPU runtimes: CUDA/TensorRT execution
            providers; it is checked on ONNX Runtime's CPU provider with a loose tolerance).
        topk_free: sampling mode without a TopK node (for TensorRT); see :func:`exportable`.
        validate: run the file with ONNX Runtime (CPUExecutionProvider) on an example pair at ``example_size``
            (batch 1) and at another size (batch 2) and compare with the float32 PyTorch model; raise when alpha
            differs by more than 1e-4 (fp32: max |difference|) or 5e-3 (fp16: mean |difference|).
        example_size: ``(H, W)`` of the example pair the model is traced and checked with.

    Returns:
        An :class:`ExportReport` (``format_table()`` prints it).

    Raises:
        BgMattingError: a bad option, a missing ``onnx``/``onnxruntime`` package, or a failed check (then no file
        is written).
    """
    architecture, config, size, device = _prepare(model, precision, example_size)
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise BgMattingError(f"ONNX opset must be an integer from {MIN_OPSET} to {MAX_OPSET}, not {opset!r}")
    onnx = import_optional("onnx", "ONNX export", None)
    ort = import_optional("onnxruntime", "checking an ONNX export", None) if validate else None
    names = OUTPUT_NAMES[architecture]
    dtype = PRECISIONS[precision]
    reference = _reference_model(model)
    net = exportable(reference, topk_free=topk_free, dtype=dtype)
    example = tuple(t.to(dtype) for t in example_pair(size, 1, 0, device=device))
    suffix = {"pha_sm": "_sm", "fgr_sm": "_sm", "err_sm": "_sm", "ref_sm": "_4"}  # coarse and 1/4 sizes
    dynamic = {n: {0: "batch", 2: "height" + suffix.get(n, ""), 3: "width" + suffix.get(n, "")}
               for n in (*INPUT_NAMES, *names)}
    meta = {"format": FORMAT_TAG, "architecture": architecture, "backbone": config["backbone"],
            "config": json.dumps({k: v for k, v in config.items() if k not in ("architecture", "backbone")}),
            "precision": precision, "topk_free": json.dumps(bool(topk_free)), "bgmatting_version": _version()}
    report = ExportReport(Path(path), "onnx", precision, config, opset=opset, topk_free=topk_free)
    if topk_free and not (architecture == "MattingRefine" and config["refine_mode"] == "sampling"):
        report.notes.append("topk_free only changes the sampling refine mode; this graph has no TopK anyway")
    with atomic_path(path) as tmp:
        try:
            with torch.no_grad(), quiet_trace():
                torch.onnx.export(net, example, str(tmp), **LEGACY_EXPORTER, opset_version=opset,
                                  input_names=list(INPUT_NAMES), output_names=list(names), dynamic_axes=dynamic,
                                  do_constant_folding=True)
        except RuntimeError as e:  # torch.onnx.errors.OnnxExporterError is one
            raise BgMattingError(f"ONNX export failed: {str(e).strip().splitlines()[0][:300]}") from None
        proto = onnx.load(str(tmp))
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        if validate:
            runner = OnnxModel(tmp, intra_op_threads=torch.get_num_threads())
            report.runtime = f"onnxruntime {ort.__version__} (CPUExecutionProvider)"
            _validate(reference, runner, names, size, precision, device, report)
    return report


# --------------------------------------------------------------------------------------------- TorchScript

def export_torchscript(model: nn.Module, path: str | os.PathLike, *, precision: str = "fp32", validate: bool = True,
                       example_size: tuple[int, int] = DEFAULT_EXAMPLE_SIZE) -> ExportReport:
    """Export ``model`` to a TorchScript archive (``torch.jit.trace``), atomically.

    ``torch.jit.load(path)(src, bgr)`` with ``(B, 3, H, W)`` inputs in [0, 1] (any ``B``; ``H``, ``W`` multiples of
    4 for ``MattingRefine``; float16 for ``precision="fp16"``) returns the model's output tuple. The trace is made
    on the model's device; it has no device constants of its own, so ``torch.jit.load(path, map_location="cuda")``
    works for a CPU trace. The archive also reads back as weights with :func:`bgmatting.load_model`, with the
    backbone scale and refiner options it was exported with (kept in the archive's extra file
    ``bgmatting.json``). The traced graph does not check the input shapes.

    Args:
        precision: ``"fp32"`` or ``"fp16"`` (for CUDA; traced and checked on the model's device, loosely).
        validate: reload the file with ``torch.jit.load`` and compare it with the float32 PyTorch model at
            ``example_size`` (batch 1) and at another size (batch 2); raise when alpha differs by more than 1e-4
            (fp32: max |difference|) or 5e-3 (fp16: mean |difference|).
        example_size: ``(H, W)`` of the example pair used to trace and check.

    Returns:
        An :class:`ExportReport`.
    """
    architecture, config, size, device = _prepare(model, precision, example_size)
    names = OUTPUT_NAMES[architecture]
    dtype = PRECISIONS[precision]
    reference = _reference_model(model)
    net = exportable(reference, dtype=dtype)
    example = tuple(t.to(dtype) for t in example_pair(size, 1, 0, device=device))
    extra = {TORCHSCRIPT_EXTRA_FILE: json.dumps({"format": FORMAT_TAG, **config, "precision": precision,
                                                 "bgmatting_version": _version()})}
    report = ExportReport(Path(path), "torchscript", precision, config)
    with atomic_path(path) as tmp:
        try:
            with torch.no_grad(), quiet_trace():
                traced = torch.jit.trace(net, example, check_trace=False)
        except RuntimeError as e:
            raise BgMattingError(f"TorchScript export failed: {str(e).strip().splitlines()[0][:300]}") from None
        with quiet_trace():  # torch.jit.save/load warn that TorchScript is deprecated
            torch.jit.save(traced, str(tmp), _extra_files=extra)
        if validate:
            with quiet_trace():
                loaded = torch.jit.load(str(tmp), map_location=device)
            report.runtime = f"torch.jit.load (torch {torch.__version__}, {device})"
            _validate(reference, loaded, names, size, precision, device, report)
    return report


# --------------------------------------------------------------------------------------------- one call

def export_model(source: str | os.PathLike | None, path: str | os.PathLike, *, format: str = "onnx",
                 model_options: dict | None = None, **export_options) -> ExportReport:
    """Load weights (see :func:`bgmatting.load_model`) and export them: what ``bgmatting export`` runs.

    Args:
        source: weights file or zoo name (``None``: the default model).
        path: the file to write; it may not be the weights file itself.
        format: ``"onnx"`` or ``"torchscript"``.
        model_options: refiner overrides for :func:`bgmatting.load_model` (``refine_mode``, ...).
        **export_options: passed to :func:`export_onnx` or :func:`export_torchscript`.
    """
    if format not in FORMATS:
        raise BgMattingError(f"export format must be one of {', '.join(FORMATS)}, not '{format}'")
    out = Path(path)
    if source is not None and Path(source).exists() and out.exists() and out.resolve() == Path(source).resolve():
        raise BgMattingError(f"output '{out}' would overwrite the weights file; choose another output")
    if out.is_dir():
        raise BgMattingError(f"output '{out}' is a folder; give a file name")
    if format == "torchscript":
        onnx_only = sorted(k for k in ("opset", "topk_free") if export_options.get(k) not in (None, False))
        if onnx_only:
            raise BgMattingError(f"{' and '.join(onnx_only)} {'is' if len(onnx_only) == 1 else 'are'} only for ONNX "
                                 "export (--format onnx)")
        export_options = {k: v for k, v in export_options.items() if k not in ("opset", "topk_free")}
    export_options = {k: v for k, v in export_options.items() if v is not None}
    model = load_model(pytorch_weights(source, "bgmatting export"), **(model_options or {}))
    exporter = export_onnx if format == "onnx" else export_torchscript
    return exporter(model, out, **export_options)
