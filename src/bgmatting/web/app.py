"""The web server behind ``bgmatting serve``: one static page plus a JSON and WebSocket API.

HTTP API (all errors are JSON ``{"error": "<what went wrong and what to do>", "status": <code>}``, never a
stack trace):

``GET /``
    The page (photo mode and live webcam mode), served from the package's ``web/static`` folder.
``GET /api/health``
    ``{"status": "ok", "version", "model": {...} | null, "device", "precision", "limits": {...}}``.
``GET /api/models``
    ``{"models": [{"name", "architecture", "backbone", "description", "available", "default"}], "active": ...}``.
``GET /api/example/{src|bgr}``
    The bundled example pair (a real frame and its clean plate), as JPEG.
``POST /api/matte`` (``multipart/form-data``)
    Fields: ``src`` (image file, required), ``bgr`` (image file, required: the same view without the subject,
    same size or same aspect ratio), ``output`` (comma-separated, default ``com``; see below), ``colour``
    (``#RRGGBB`` or ``r,g,b``) or ``target`` (image file) for the composite, ``format`` (``auto``, ``png`` or
    ``json``).

    Outputs: ``pha`` alpha (8-bit gray), ``fgr`` foreground colour (RGB), ``com`` (alias ``composite``): the
    foreground over ``colour`` / ``target`` (RGB), or over transparency when neither is given (RGBA, straight
    alpha), ``err`` error map, ``ref`` refined-patch map, ``mask`` alpha ≥ 0.5. All at the size of ``src``.

    Response: with one output and ``format=auto|png``, the PNG itself (``image/png``), with the headers
    ``Server-Timing`` (``queue``, ``decode``, ``matte``, ``encode``, in ms) and ``X-Process-Time`` (seconds
    the server spent, queue excluded). With several outputs or ``format=json``::

        {"width": W, "height": H,
         "outputs": {"pha": "data:image/png;base64,...", "com": "data:image/png;base64,..."},
         "timing": {"queue_ms", "decode_ms", "matte_ms", "encode_ms", "total_ms"}}

    Status codes: 413 body over ``max_upload_mb`` or an image over ``max_pixels``; 415 a file that is not a
    PNG, JPEG, WebP, BMP or TIFF image; 422 a missing field, an unknown output or colour, a corrupt or truncated
    image, or a background whose size does not fit the source; 503 the model could not be loaded or the
    server is busy.

WebSocket ``/api/live`` (live mode). The server first sends ``{"type": "hello", "version", "max_bytes",
"max_pixels"}``. The client sends binary messages whose first byte says what they are:

- ``b"B" + image``: the background (JPEG/PNG), once; the reply is ``{"type": "background", "width", "height"}``.
- ``b"T" + image``: an image to composite over (optional); the reply is ``{"type": "target", ...}``.
- ``b"F" + uint32 id (little-endian) + JPEG``: a frame. The reply is a binary message
  ``b"R" + uint32 id + float32 server_ms + JPEG`` (the composite, or the alpha), or the text message
  ``{"type": "dropped", "id"}`` when a newer frame arrived before this one was started: each client has
  at most one frame being matted and one waiting, so frames never queue up.

and text messages, JSON objects:

- ``{"type": "config", "output": "com"|"pha", "colour": "#RRGGBB"|"r,g,b", "quality": 1-100}``, any of the three
  fields (the others keep their values; other keys are ignored). The reply is the whole configuration,
  ``{"type": "config", "output", "colour": "#rrggbb", "quality"}``; a field of the wrong type or value changes
  nothing and is answered with an error.
- ``{"type": "clear_target"}``: composite over the colour again; the reply is
  ``{"type": "target", "width": null, "height": null}``.
- ``{"type": "ping", "t": <number>}`` (``t`` optional): the reply is ``{"type": "pong", "t": <the same>}``.

Problems are answered with ``{"type": "error", "message", "id"?}`` (``id``: the frame's) and leave the
connection open: a message that is not one of the above (text that is not a JSON object, an unknown ``type``, a
config field of the wrong type or value, an empty or unknown binary message, a frame without its id), an image
that cannot be used, and a message over ``max_bytes`` (read, then ignored). The WebSocket server started by
:func:`serve` / :func:`build_server` does not read messages over twice ``max_bytes``: it closes the connection
with code 1009 (message too big) as they arrive. Every reply is valid JSON (no NaN or Infinity).

All model work (HTTP and WebSocket) runs on one worker thread, so requests are served one at a time and
memory stays bounded; at most ``max_queue`` HTTP requests wait for it (503 beyond that).
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import json
import logging
import math
import socket
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Union
from urllib.parse import urlsplit

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import BgMattingError
from ..io.images import ImageDecodeError, ImageTooLargeError, to_uint
from ..io.images import decode_image as _decode
from ..models import MattingRefine
from ..outputs import parse_outputs
from ..pipeline import Matter
from ..results import MatteResult
from ..tensors import check_background_size, cover_resize, match_background, parse_colour, tensor_to_uint, to_tensor

DEFAULT_MAX_UPLOAD_MB = 32.0
DEFAULT_MAX_PIXELS = 16_000_000
DEFAULT_MAX_QUEUE = 8
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

# What the page accepts, by content (the client's file name and declared type are not trusted).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
ACCEPTED_TYPES = "PNG, JPEG, WebP, BMP or TIFF"
OUTPUT_ALIASES = {"composite": "com"}
STATIC_DIR = Path(str(resources.files("bgmatting") / "web" / "static"))
EXAMPLES = {"src": "src.jpg", "bgr": "bgr.jpg"}

MatterSource = Union[Matter, Callable[[], Matter]]
logger = logging.getLogger(__name__)


class WebError(BgMattingError):
    """A request the server refuses; ``status`` is the HTTP status code it answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)


# --------------------------------------------------------------------------------------------- images

def sniff_format(data: bytes) -> str | None:
    """The image format of ``data`` from its first bytes (PNG, JPEG, TIFF, BMP, WEBP), or ``None``."""
    for sig, fmt in _SIGNATURES:
        if data.startswith(sig):
            return fmt
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, name: str, max_pixels: int, raw: bool = False) -> np.ndarray:
    """Decode an uploaded image file held in memory.

    Args:
        data: the file's bytes.
        name: what the user calls it (``"src"``), for the messages.
        max_pixels: refuse (413) images with more pixels than this, before decoding them.
        raw: return ``uint8`` ``(H, W, 3)`` (8-bit sources only, faster) instead of ``float32`` in [0, 1].

    Returns:
        RGB ``(H, W, 3)``, EXIF orientation applied.

    Raises:
        WebError: 415 not an accepted image type, 413 too many pixels, 422 empty, corrupt or truncated.
    """
    if not data:
        raise WebError(f"'{name}' is an empty file; upload a {ACCEPTED_TYPES} image")
    fmt = sniff_format(data)
    if fmt is None:
        raise WebError(f"'{name}' is not a supported image; upload a {ACCEPTED_TYPES} file", 415)
    try:
        return _decode(data, name=f"'{name}'", max_pixels=max_pixels, formats=[fmt], uint8=raw)
    except ImageTooLargeError as e:
        raise WebError(str(e), 413) from None
    except ImageDecodeError as e:
        raise WebError(f"{e}; upload the complete {fmt} file") from None


def encode_png(array: np.ndarray) -> bytes:
    """``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` float in [0, 1] (or uint8) → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(to_uint(np.asarray(array), 8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(1, C, H, W)`` float in [0, 1] → ``(H, W)`` or ``(H, W, 3)`` uint8."""
    arr = tensor_to_uint(x)[0]
    return arr[..., 0] if arr.shape[2] == 1 else arr


def _encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- model worker

class ModelWorker:
    """Owns the :class:`Matter` and the one thread that runs it: every model call is serialised here.

    Args:
        matter_or_factory: a :class:`Matter`, or a function that returns one (called once, lazily, on the
            worker thread; a :class:`BgMattingError` it raises is answered with 503 and retried next time).
    """

    def __init__(self, matter_or_factory: MatterSource):
        if isinstance(matter_or_factory, Matter):
            self._matter: Matter | None = matter_or_factory
            self._factory = None
        elif callable(matter_or_factory):
            self._matter, self._factory = None, matter_or_factory
        else:
            raise TypeError("create_app() needs a Matter or a function that returns one")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bgmatting-model")
        self._load_lock = threading.Lock()

    @property
    def loaded(self) -> Matter | None:
        return self._matter

    def matter(self) -> Matter:
        """The Matter, loaded on first use (call on the worker thread)."""
        if self._matter is None:
            with self._load_lock:
                if self._matter is None:
                    try:
                        m = self._factory()
                    except BgMattingError as e:
                        raise WebError(f"the model could not be loaded: {e}", 503) from None
                    if not isinstance(m, Matter):
                        raise TypeError(f"the model factory returned {type(m).__name__}, not a Matter")
                    self._matter = m
        return self._matter

    async def run(self, fn: Callable, *args) -> Any:
        """Run ``fn(*args)`` on the model thread and wait for it without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def describe_matter(matter: Matter | None) -> dict | None:
    """A JSON-able summary of the served model (``None`` while it is not loaded)."""
    if matter is None:
        return None
    model = matter.model
    info = {"architecture": getattr(model, "architecture", type(model).__name__),
            "backbone": getattr(model, "backbone_name", None), "device": str(matter.device),
            "precision": matter.precision, "backend": matter.backend}
    if isinstance(model, MattingRefine):
        r = model.refiner
        info.update(backbone_scale=model.backbone_scale, refine_mode=r.mode, refine_sample_pixels=r.sample_pixels,
                    refine_threshold=r.threshold)
    elif matter.is_refine:  # an exported ONNX file: its options are in its metadata
        info.update({k: model.config.get(k) for k in ("backbone_scale", "refine_mode", "refine_sample_pixels",
                                                      "refine_threshold")})
    return info


# --------------------------------------------------------------------------------------------- photo mode

@dataclass
class _PhotoJob:
    src: bytes
    bgr: bytes
    target: bytes | None
    colour: tuple | None
    kinds: list
    max_pixels: int
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
    s = to_tensor(src, "src")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the background is resized to the source: expected here
        b = match_background(to_tensor(bgr, "bgr"), tuple(s.shape[2:]))
    del src, bgr
    out = matter.forward_tensors(s, b)
    del s, b
    result = MatteResult.from_tensors(out)
    t2 = time.perf_counter()
    images = {}
    for kind in job.kinds:
        if kind == "pha":
            images[kind] = encode_png(result.pha)
        elif kind == "fgr":
            images[kind] = encode_png(result.fgr)
        elif kind == "com":
            images[kind] = encode_png(result.composite(target))
        elif kind == "err":
            images[kind] = encode_png(result.err)
        elif kind == "ref":
            images[kind] = encode_png(result.ref)
        elif kind == "mask":
            images[kind] = encode_png(result.mask(0.5).astype(np.uint8) * 255)
    t3 = time.perf_counter()
    job.timing.update(decode_ms=(t1 - t0) * 1e3, matte_ms=(t2 - t1) * 1e3, encode_ms=(t3 - t2) * 1e3)
    h, w = result.pha.shape
    return h, w, images


# --------------------------------------------------------------------------------------------- live mode

class _LiveSession:
    """The state of one WebSocket client: its background, target and output settings (model thread only)."""

    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels
        self.bgr: torch.Tensor | None = None
        self.target: torch.Tensor | None = None
        self.output = "com"
        self.colour = parse_colour("#00b140")
        self.quality = 80
        self._bgr_cache: dict = {}
        self._target_cache: dict = {}

    def set_background(self, data: bytes) -> dict:
        self.bgr = to_tensor(decode_image(data, "background", self.max_pixels, raw=True), "background")
        self._bgr_cache = {}
        h, w = self.bgr.shape[2:]
        return {"type": "background", "width": w, "height": h}

    def set_target(self, data: bytes) -> dict:
        self.target = to_tensor(decode_image(data, "target", self.max_pixels, raw=True), "target")
        self._target_cache = {}
        h, w = self.target.shape[2:]
        return {"type": "target", "width": w, "height": h}

    def _resized(self, cache: dict, image: torch.Tensor, size: tuple, fit) -> torch.Tensor:
        if size not in cache:
            if len(cache) > 8:  # the client changes resolution now and then; keep a few sizes
                cache.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[size] = fit(image, size)
        return cache[size]

    def process(self, matter: Matter, data: bytes) -> bytes:
        """Matte one JPEG frame against the stored background → JPEG of the composite or alpha."""
        if self.bgr is None:
            raise WebError("capture the background first (send it once before the frames)")
        frame = to_tensor(decode_image(data, "frame", self.max_pixels, raw=True), "frame")
        size = tuple(frame.shape[2:])
        try:
            bgr = self._resized(self._bgr_cache, self.bgr, size, match_background)
        except BgMattingError as e:
            raise WebError(f"the frame does not fit the background: {e}; capture the background again") from None
        out = matter.forward_tensors(frame, bgr, outputs=("pha", "fgr"))
        pha = out["pha"]
        if self.output == "pha":
            image = pha
        else:
            fgr = out["fgr"]
            if self.target is not None:
                behind = self._resized(self._target_cache, self.target, size, cover_resize).to(pha.device)
            else:
                behind = torch.tensor(self.colour, dtype=pha.dtype, device=pha.device).view(1, 3, 1, 1)
            image = pha * fgr + (1 - pha) * behind
        return _encode_jpeg(_tensor_to_uint8(image), self.quality)

    def configure(self, message: dict) -> dict:
        """Apply a config message: each of its fields is checked before any is changed (WebError if one is wrong)."""
        output, colour, quality = self.output, self.colour, self.quality
        if "output" in message:
            output = message["output"]
            if not isinstance(output, str) or output not in ("com", "composite", "pha"):
                raise WebError(f'output must be "com" or "pha", not {_shown(output)}')
        if "colour" in message:
            colour = message["colour"]
            if not isinstance(colour, str):
                raise WebError(f'colour must be a string such as "#00b140" or "0,177,64", not {_shown(colour)}')
            colour = parse_colour(colour)
        if "quality" in message:
            quality = message["quality"]
            if not _is_number(quality) or not 1 <= quality <= 100:
                raise WebError(f"quality must be a number from 1 to 100, not {_shown(quality)}")
        self.output, self.colour, self.quality = OUTPUT_ALIASES.get(output, output), colour, int(quality)
        return {"type": "config", "output": self.output,
                "colour": "#" + "".join(f"{round(c * 255):02x}" for c in self.colour), "quality": self.quality}

    def clear_target(self) -> dict:
        self.target = None
        self._target_cache = {}
        return {"type": "target", "width": None, "height": None}


def _is_number(value: Any) -> bool:
    """Whether a JSON value is a finite number (``true``/``false`` are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _shown(value: Any) -> str:
    """A client's JSON value, short, for an error message: ``'fgr'``, ``12``, ``NaN``, or its kind (``a list``)."""
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # NaN, Infinity, -Infinity
    if _is_number(value) and len(str(value)) <= 20:
        return str(value)
    kinds = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "a list",
             dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------------- safety

class _BodyLimit:
    """ASGI middleware: answer 413 to HTTP requests whose body is over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _message(self) -> str:
        return (f"the upload is over this server's limit of {self.max_bytes / 2 ** 20:g} MB; send smaller "
                "images (or start the server with a higher limit)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _error(413, self._message())(scope, receive, send)
        received, refused, started = 0, False, False

        async def limited_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await _error(413, self._message())(scope, receive, send)
                    return {"type": "http.disconnect"}  # the app stops reading; its own answer is dropped
            return message

        async def app_send(message):
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, app_send)


def ws_max_size(max_bytes: int) -> int:
    """The WebSocket server's own message limit for an app that accepts messages of ``max_bytes``.

    Twice the app's limit: a message a little over it is still read and answered with an error message; a larger
    one the server refuses as it arrives (closing the connection with code 1009), not to hold it all in memory.
    """
    return 2 * max_bytes


def _host_of(value: str) -> str:
    """``'127.0.0.1:8000'`` / ``'[::1]:8000'`` → the host name part, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``127.x``, ``::1``, ``localhost``)."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------- the app

def create_app(matter_or_factory: MatterSource, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_queue: int = DEFAULT_MAX_QUEUE,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """Build the web app (an ASGI application; run it with Uvicorn, or call :func:`serve`).

    Args:
        matter_or_factory: the :class:`~bgmatting.Matter` to serve, or a function returning one (loaded on
            the first request that needs it, so the page comes up at once).
        max_upload_mb: the largest request body (all files of one request together) and WebSocket message, in MB
            (2**20 bytes); larger bodies get 413, larger WebSocket messages an error message (see the module's
            docstring; the WebSocket server itself should read messages up to :func:`ws_max_size` bytes).
        max_pixels: the largest image (width × height) accepted; larger ones get 413 before they are decoded.
        max_queue: how many photo requests may wait for the model; more get 503.
        allowed_hosts: if given, requests whose ``Host`` header (and WebSocket ``Origin``) names another host
            are refused: protects a server on localhost from DNS-rebinding pages. ``None`` checks nothing.

    Returns:
        a FastAPI app; its OpenAPI page is at ``/docs``.
    """
    if max_upload_mb <= 0 or max_pixels <= 0 or max_queue < 1:
        raise BgMattingError("max_upload_mb and max_pixels must be positive and max_queue at least 1")
    max_bytes = int(max_upload_mb * 2 ** 20)
    worker = ModelWorker(matter_or_factory)
    pending = {"count": 0}
    hosts = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts}

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()

    app = FastAPI(title="bgmatting", version=__version__, lifespan=lifespan,
                  description="Background Matting V2: alpha mattes and composites from a photo and a shot of "
                              "its background. See the module docstring of `bgmatting.web.app` for the "
                              "WebSocket protocol of `/api/live`.")
    app.state.worker = worker
    app.state.limits = {"max_upload_mb": max_upload_mb, "max_pixels": max_pixels, "max_queue": max_queue}

    # ---- errors: always JSON with a message, never a stack trace
    @app.exception_handler(BgMattingError)
    async def _bgmatting_error(request: Request, exc: BgMattingError):
        return _error(getattr(exc, "status", 422), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        problems, details = [], []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
            where = ".".join(loc) or "request"
            if err.get("type") == "missing":
                problems.append(f"missing field '{where}'")
            else:
                problems.append(f"field '{where}': {err.get('msg', 'invalid')}")
            details.append({"field": where, "type": err.get("type"), "message": err.get("msg")})
        message = "; ".join(problems) + " (POST multipart/form-data with files 'src' and 'bgr'; see /docs)"
        return _error(422, message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        if isinstance(exc, (MemoryError, getattr(torch.cuda, "OutOfMemoryError", MemoryError))):
            return _error(507, "the server ran out of memory for this image; send a smaller one")
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    # ---- host check (DNS rebinding) before anything else reads the request
    if hosts is not None:
        @app.middleware("http")
        async def _check_host(request: Request, call_next):
            host = _host_of(request.headers.get("host", "")).strip("[]")
            if host not in hosts:
                return _error(421, f"this server answers only to {', '.join(sorted(hosts))}")
            return await call_next(request)

    app.add_middleware(_BodyLimit, max_bytes=max_bytes)

    # ---- page and static files
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            return _error(500, "the page's files are missing from this installation (bgmatting/web/static)")
        return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})

    # ---- JSON API
    @app.get("/api/health", summary="Server status, the served model and the limits")
    async def health():
        matter = worker.loaded
        return {"status": "ok", "version": __version__, "model": describe_matter(matter),
                "device": str(matter.device) if matter else None,
                "precision": matter.precision if matter else None,
                "limits": app.state.limits}

    @app.get("/api/models", summary="The model zoo and the model being served")
    async def models():
        from ..weights import DEFAULT_MODEL, list_models

        return {"models": [{"name": m.name, "architecture": m.architecture, "backbone": m.backbone,
                            "description": m.description, "available": m.available,
                            "default": m.name == DEFAULT_MODEL} for m in list_models()],
                "active": describe_matter(worker.loaded)}

    @app.get("/api/example/{which}", summary="The bundled example pair: 'src' (a frame) or 'bgr' (its clean plate)",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    async def example(which: str):
        if which not in EXAMPLES:  # a fixed whitelist: the client never names a file
            return _error(404, f"no example '{which}'; use 'src' or 'bgr'")
        data = (resources.files("bgmatting") / "assets" / "examples" / EXAMPLES[which]).read_bytes()
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/matte", summary="Matte a photo given a shot of its background",
              response_class=Response,
              responses={200: {"content": {"image/png": {}, "application/json": {}},
                               "description": "PNG (one output) or JSON with base64 PNGs (several outputs)"},
                         413: {"description": "upload or image too large"},
                         415: {"description": "not an image"},
                         422: {"description": "missing field, corrupt image, or mismatched sizes"}})
    async def matte(src: Annotated[UploadFile, File(description="the photo with the subject")],
                    bgr: Annotated[UploadFile, File(description="the same view without the subject")],
                    output: Annotated[str, Form(description="comma-separated: pha, fgr, com (= composite), err, "
                                                            "ref, mask")] = "com",
                    colour: Annotated[str | None, Form(description="composite over this colour: #RRGGBB or "
                                                                   "r,g,b")] = None,
                    target: Annotated[UploadFile | None, File(description="composite over this image")] = None,
                    format: Annotated[str, Form(description="auto (PNG for one output, JSON for several), png "
                                                            "or json")] = "auto"):
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
                        colour=parse_colour(colour) if colour else None, kinds=kinds, max_pixels=max_pixels)
        # Check the types now (cheap), so a wrong file does not wait for the model.
        for name, data in (("src", job.src), ("bgr", job.bgr), ("target", job.target)):
            if data is not None and data and sniff_format(data) is None:
                raise WebError(f"'{name}' is not a supported image; upload a {ACCEPTED_TYPES} file", 415)
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
        timing = {k: round(v, 1) for k, v in timing.items()}
        server_timing = ", ".join(f"{k[:-3]};dur={v}" for k, v in timing.items())
        if format == "json" or (format == "auto" and len(kinds) > 1):
            return JSONResponse({"width": w, "height": h, "timing": timing,
                                 "outputs": {k: "data:image/png;base64," + base64.b64encode(v).decode("ascii")
                                             for k, v in images.items()}},
                                headers={"Server-Timing": server_timing})
        (kind, png), = images.items()
        return Response(png, media_type="image/png",
                        headers={"Server-Timing": server_timing, "X-Process-Time": f"{timing['total_ms'] / 1e3:.4f}",
                                 "Content-Disposition": f'inline; filename="{kind}.png"'})

    # ---- live mode
    @app.websocket("/api/live")
    async def live(ws: WebSocket):
        if hosts is not None:
            origin = ws.headers.get("origin")
            host = _host_of(ws.headers.get("host", "")).strip("[]")
            origin_host = (urlsplit(origin).hostname or "") if origin else host
            if host not in hosts or origin_host.strip("[]") not in hosts:
                await ws.close(code=1008)
                return
        await ws.accept()
        session = _LiveSession(max_pixels)
        send_lock = asyncio.Lock()
        slot: dict = {"frame": None}
        wake = asyncio.Event()
        closed = asyncio.Event()

        async def send_json(obj):
            text = json.dumps(obj, allow_nan=False)  # valid JSON for the browser: a NaN here is a bug
            async with send_lock:
                await ws.send_text(text)

        async def send_bytes(data):
            async with send_lock:
                await ws.send_bytes(data)

        async def matte_frames():
            while not closed.is_set():
                await wake.wait()
                wake.clear()
                frame = slot["frame"]
                slot["frame"] = None
                if frame is None:
                    continue
                fid, data = frame
                t0 = time.perf_counter()
                try:
                    jpeg = await worker.run(lambda data=data: session.process(worker.matter(), data))
                except BgMattingError as e:
                    await send_json({"type": "error", "id": fid, "message": str(e)})
                    continue
                except Exception as e:  # never kill the connection with a stack trace
                    logger.exception("live frame %d failed", fid)
                    await send_json({"type": "error", "id": fid,
                                     "message": f"internal error ({type(e).__name__}) on this frame"})
                    continue
                ms = (time.perf_counter() - t0) * 1e3
                await send_bytes(b"R" + struct.pack("<If", fid, ms) + jpeg)

        async def control(fn):
            """Run a change of the session on the model thread (so never under a frame) and send its reply."""
            await send_json(await worker.run(fn))

        async def on_bytes(data: bytes):
            tag, body = data[:1], data[1:]
            if tag == b"F":
                if len(body) < 4:
                    raise WebError("a frame is b'F' + its uint32 id (little-endian) + the JPEG; this one has no id")
                fid = struct.unpack("<I", body[:4])[0]
                stale = slot["frame"]
                slot["frame"] = (fid, body[4:])  # the newest frame wins: never a queue
                wake.set()
                if stale is not None:
                    await send_json({"type": "dropped", "id": stale[0]})
            elif tag == b"B":
                await control(lambda: session.set_background(body))
            elif tag == b"T":
                await control(lambda: session.set_target(body))
            else:
                raise WebError("unknown binary message; start it with b'F' + uint32 id, b'B' or b'T'")

        async def on_text(text: str):
            try:
                msg = json.loads(text)
            except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
                msg = None
            if not isinstance(msg, dict):
                raise WebError('text messages must be JSON objects such as {"type": "config", "output": "pha"}')
            kind = msg.get("type")
            if kind == "config":
                await control(lambda: session.configure(msg))
            elif kind == "clear_target":
                await control(session.clear_target)
            elif kind == "ping":
                t = msg.get("t")
                if t is not None and not _is_number(t):
                    raise WebError(f"ping's 't' must be a number, not {_shown(t)}")
                await send_json({"type": "pong", "t": t})
            else:
                raise WebError(f'the message type must be "config", "clear_target" or "ping", not {_shown(kind)} '
                               "(images go in binary messages)")

        matting = asyncio.create_task(matte_frames())
        await send_json({"type": "hello", "version": __version__, "max_bytes": max_bytes, "max_pixels": max_pixels})
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data, text = message.get("bytes"), message.get("text")
                try:
                    size = len(data) if data is not None else len((text or "").encode("utf-8", "surrogatepass"))
                    if size > max_bytes:
                        raise WebError(f"a message of {size} bytes is over this server's limit of {max_bytes} "
                                       "bytes; it is ignored (send smaller images)")
                    if data is not None:
                        await on_bytes(data)
                    elif text is not None:
                        await on_text(text)
                except BgMattingError as e:
                    await send_json({"type": "error", "message": str(e)})
                except WebSocketDisconnect:
                    raise
                except Exception as e:  # a bug: answer it, log it, and keep the connection
                    logger.exception("the live message could not be handled")
                    await send_json({"type": "error", "message": f"internal error ({type(e).__name__}) on this "
                                                                 "message; the server log has the details"})
        except WebSocketDisconnect:
            pass
        finally:
            closed.set()
            wake.set()
            matting.cancel()
            try:
                await matting
            except (asyncio.CancelledError, Exception):
                pass

    return app


# --------------------------------------------------------------------------------------------- serve

def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: a free port), or a clear BgMattingError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise BgMattingError(f"cannot resolve host '{host}'; use an address such as 127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        hint = "pick another --port" if e.errno in (98, 48, 10048) else "check --host and --port"
        raise BgMattingError(f"cannot listen on {host}:{port}: {e.strerror or e}; {hint}") from None
    sock.set_inheritable(True)
    return sock


def build_server(matter_or_factory: MatterSource, host: str = "127.0.0.1", port: int = 8000, *,
                 max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_pixels: int = DEFAULT_MAX_PIXELS,
                 log_level: str = "warning"):
    """Bind ``host:port`` and build (not start) the Uvicorn server of the app.

    A server on a loopback address answers only to requests for localhost / 127.0.0.1 / ::1 (a guard against
    DNS rebinding). Start it with ``server.run(sockets=[sock])`` (blocks) and stop it with
    ``server.should_exit = True``. Its WebSocket messages may be up to :func:`ws_max_size` bytes.

    Returns:
        ``(server, sock)``: the ``uvicorn.Server`` and its listening socket (``sock.getsockname()[1]`` is the
        port, useful with ``port=0``).
    """
    import uvicorn

    sock = bind_socket(host, port)
    try:
        app = create_app(matter_or_factory, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                         allowed_hosts=list(LOOPBACK_HOSTS) if is_loopback(host) else None)
        config = uvicorn.Config(app, log_level=log_level, ws_max_size=ws_max_size(int(max_upload_mb * 2 ** 20)),
                                timeout_graceful_shutdown=2)
        return uvicorn.Server(config), sock
    except BaseException:
        sock.close()
        raise


def serve(host: str = "127.0.0.1", port: int = 8000, weights: str | None = None, device: str = "auto",
          precision: str = "fp32", *, backend: str | None = None, matter: Matter | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
          max_pixels: int = DEFAULT_MAX_PIXELS, log_level: str = "warning", **model_options) -> None:
    """Serve the page and the API until interrupted (Ctrl+C). What ``bgmatting serve`` runs.

    Args:
        host: the address to listen on. The default, 127.0.0.1, keeps the page on this machine; any other
            address makes it reachable from the network (with a warning: there is no authentication).
        port: the TCP port (0 picks a free one).
        weights: a weights file or zoo name, ``None`` for the default model (see :func:`bgmatting.load_model`).
        device, precision, backend, **model_options: as for :class:`bgmatting.Matter`.
        matter: a ready :class:`Matter` to serve instead of loading ``weights``.
        max_upload_mb, max_pixels: see :func:`create_app`.
        log_level: Uvicorn's log level (``"info"`` logs every request).

    Raises:
        BgMattingError: the model cannot be loaded, or the address cannot be used. Both are checked before
            the server starts.
    """
    if matter is None:
        matter = Matter(weights, device=device, precision=precision, backend=backend, **model_options)
    elif weights is not None or model_options:
        raise BgMattingError("give either a Matter or weights and model options, not both")
    if not is_loopback(host):
        warnings.warn(f"serving on {host}: anyone who can reach this machine on port {port} can use the page and "
                      "the API (there is no authentication); use --host 127.0.0.1 to keep it local", stacklevel=2)
    server, sock = build_server(matter, host, port, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                                log_level=log_level)
    shown = f"[{host}]" if ":" in host else host
    print(f"bgmatting: serving on http://{shown}:{sock.getsockname()[1]}/ (model on {matter.device}; "
          "Ctrl+C to stop)", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
