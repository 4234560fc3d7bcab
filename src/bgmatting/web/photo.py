"""Photo mode: ``POST /api/matte`` (its fields and answers are in :mod:`bgmatting.web.app`)."""

from __future__ import annotations

import base64
import time
import warnings
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import File, Form, UploadFile
from fastapi.responses import JSONResponse, Response

from ..align import align_background
from ..errors import BgMattingError
from ..outputs import output_image, parse_outputs
from ..results import MatteResult
from ..tensors import check_background_size, match_background_image, parse_colour
from .codecs import OUTPUT_ALIASES, check_image_type, decode_image, encode_png
from .errors import WebError
from .worker import ModelWorker

MATTE_RESPONSES = {200: {"content": {"image/png": {}, "application/json": {}},
                         "description": "PNG (one output) or JSON with base64 PNGs (several outputs)"},
                   413: {"description": "upload or image too large"},
                   415: {"description": "not an image"},
                   422: {"description": "missing field, corrupt image, or mismatched sizes"}}
"""The answers of ``POST /api/matte``, for the OpenAPI page."""


@dataclass
class _PhotoJob:
    src: bytes
    bgr: bytes
    target: bytes | None
    colour: tuple | None
    kinds: list
    max_pixels: int
    align: bool = True
    timing: dict = field(default_factory=dict)


def _run_photo(worker: ModelWorker, job: _PhotoJob) -> tuple[int, int, dict[str, bytes]]:
    """Decode, matte and encode one photo request (on the model thread)."""
    t0 = time.perf_counter()
    src = decode_image(job.src, "src", job.max_pixels)
    bgr = decode_image(job.bgr, "bgr", job.max_pixels)
    try:
        check_background_size(bgr.shape[:2], src.shape[:2])
    except BgMattingError as e:
        raise WebError(str(e)) from None
    target = job.colour
    if job.target is not None:
        target = decode_image(job.target, "target", job.max_pixels)
    t1 = time.perf_counter()
    matter = worker.matter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the background is resized to the source: expected here
        if job.align:  # as `bgmatting matte`: a hand-held shot is warped onto the photo, one that lines up is kept
            bgr = align_background(match_background_image(bgr, src.shape[:2]), src, warn=False)[0]
        s, b = matter.pair_tensors(src, bgr)
    del src, bgr  # the decoded images: only the tensors are needed from here on
    result = MatteResult.from_tensors(matter.forward_tensors(s, b))
    del s, b
    t2 = time.perf_counter()
    images = {kind: encode_png(output_image(kind, result, target)) for kind in job.kinds}
    t3 = time.perf_counter()
    job.timing.update(decode_ms=(t1 - t0) * 1e3, matte_ms=(t2 - t1) * 1e3, encode_ms=(t3 - t2) * 1e3)
    h, w = result.pha.shape
    return h, w, images


async def _read_request(src: UploadFile, bgr: UploadFile, output: str, colour: str | None,
                        target: UploadFile | None, format: str, max_pixels: int, align: bool = True) -> _PhotoJob:
    """Check the fields of a photo request and read its files (their types are checked now, cheaply, so that a
    wrong file does not wait for the model)."""
    kinds = parse_outputs([OUTPUT_ALIASES.get(k.strip(), k.strip()) for k in output.split(",")])
    if format not in ("auto", "png", "json"):
        raise WebError(f"format must be auto, png or json, not '{format}'")
    if format == "png" and len(kinds) > 1:
        raise WebError("format=png returns one image; ask for one output, or use format=json")
    colour = colour.strip() if colour else None
    if colour and target is not None:
        raise WebError("give either 'colour' or 'target' to composite over, not both")
    job = _PhotoJob(src=await src.read(), bgr=await bgr.read(),
                    target=await target.read() if target is not None else None,
                    colour=parse_colour(colour) if colour else None, kinds=kinds, max_pixels=max_pixels,
                    align=align)
    for name, data in (("src", job.src), ("bgr", job.bgr), ("target", job.target)):
        if data:
            check_image_type(data, name)
    return job


def _response(format: str, job: _PhotoJob, h: int, w: int, images: dict[str, bytes],
              timing: dict[str, float]) -> Response:
    """The PNG (one output) or JSON answer, with the timing headers."""
    timing = {k: round(v, 1) for k, v in timing.items()}
    server_timing = ", ".join(f"{k[:-3]};dur={v}" for k, v in timing.items())
    if format == "json" or (format == "auto" and len(job.kinds) > 1):
        return JSONResponse({"width": w, "height": h, "timing": timing,
                             "outputs": {k: "data:image/png;base64," + base64.b64encode(v).decode("ascii")
                                         for k, v in images.items()}},
                            headers={"Server-Timing": server_timing})
    (kind, png), = images.items()
    return Response(png, media_type="image/png",
                    headers={"Server-Timing": server_timing, "X-Process-Time": f"{timing['total_ms'] / 1e3:.4f}",
                             "Content-Disposition": f'inline; filename="{kind}.png"'})


def matte_endpoint(worker: ModelWorker, max_pixels: int, max_queue: int):
    """The ``POST /api/matte`` endpoint: at most ``max_queue`` requests wait for ``worker`` (503 beyond)."""
    pending = {"count": 0}

    async def matte(src: Annotated[UploadFile, File(description="the photo with the subject")],
                    bgr: Annotated[UploadFile, File(description="the same view without the subject")],
                    output: Annotated[str, Form(description="comma-separated: pha, fgr, com (= composite), err, "
                                                            "ref, mask")] = "com",
                    colour: Annotated[str | None, Form(description="composite over this colour: #RRGGBB or "
                                                                   "r,g,b")] = None,
                    target: Annotated[UploadFile | None, File(description="composite over this image")] = None,
                    format: Annotated[str, Form(description="auto (PNG for one output, JSON for several), png "
                                                            "or json")] = "auto",
                    align: Annotated[bool, Form(description="align the background shot to the photo first "
                                                            "(hand-held shots; one that lines up is kept as it "
                                                            "is); false: use it as it is")] = True):
        job = await _read_request(src, bgr, output, colour, target, format, max_pixels, align)
        if pending["count"] >= max_queue:
            raise WebError("the server is busy (too many requests waiting); try again in a moment", 503)
        pending["count"] += 1
        t0 = time.perf_counter()
        started = {}

        def run():
            started["t"] = time.perf_counter()
            return _run_photo(worker, job)

        try:
            h, w, images = await worker.run(run)
        finally:
            pending["count"] -= 1
        t_end = time.perf_counter()
        timing = {"queue_ms": (started["t"] - t0) * 1e3, **job.timing, "total_ms": (t_end - started["t"]) * 1e3}
        return _response(format, job, h, w, images, timing)

    return matte
