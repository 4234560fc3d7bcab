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
    ``json``), ``align`` (default ``true``: the shot is aligned to the photo first, as ``bgmatting matte`` does, a
    shot that lines up kept as it is; ``false``: used as it is; its time counts in ``matte``).

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
:func:`~bgmatting.web.serve` / :func:`~bgmatting.web.build_server` does not read messages over twice
``max_bytes``: it closes the connection with code 1009 (message too big) as they arrive. Every reply is valid
JSON (no NaN or Infinity).

All model work (HTTP and WebSocket) runs on one worker thread, so requests are served one at a time and
memory stays bounded; at most ``max_queue`` HTTP requests wait for it (503 beyond that).

This module builds the app (:func:`create_app`) and holds its small routes; the rest lives in :mod:`.photo`
(``/api/matte``), :mod:`.live` (``/api/live``), :mod:`.codecs` (images in and out), :mod:`.worker` (the model
thread), :mod:`.limits` (body and message sizes), :mod:`.hosts` (the Host/Origin check), :mod:`.errors` and
:mod:`.server` (:func:`~bgmatting.web.serve`).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import BgMattingError
from ..model_metadata import REFINE_OPTIONS
from ..models import MattingRefine
from ..pipeline import Matter
from ..weights import model_config
from .errors import error_response
from .hosts import allowed_host_names, host_allowed
from .limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_QUEUE, DEFAULT_MAX_UPLOAD_MB, BodyLimit
from .live import live_endpoint
from .photo import MATTE_RESPONSES, matte_endpoint
from .worker import MatterSource, ModelWorker

STATIC_DIR = Path(str(resources.files("bgmatting") / "web" / "static"))
EXAMPLES = {"src": "src.jpg", "bgr": "bgr.jpg"}


def describe_matter(matter: Matter | None) -> dict | None:
    """A JSON-able summary of the served model (``None`` while it is not loaded)."""
    if matter is None:
        return None
    model = matter.model
    info = {"architecture": getattr(model, "architecture", type(model).__name__),
            "backbone": getattr(model, "backbone_name", None), "device": str(matter.device),
            "precision": matter.precision, "backend": matter.backend}
    if matter.is_refine:  # the model's options, or an exported ONNX file's (in its metadata)
        options = model_config(model) if isinstance(model, MattingRefine) else model.config
        info.update({k: options.get(k) for k in REFINE_OPTIONS})
        if matter.supersample != 1:  # the frame is enlarged first: report the options as the user gave them
            info.update(backbone_scale=matter.backbone_scale,
                        refine_sample_pixels=round(info["refine_sample_pixels"] / matter.supersample ** 2))
    return info


# --------------------------------------------------------------------------------------------- errors
# always JSON with a message, never a stack trace

async def _bgmatting_error(request: Request, exc: BgMattingError):
    return error_response(getattr(exc, "status", 422), str(exc))


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
    return error_response(422, message, details=details)


async def _http_error(request: Request, exc: StarletteHTTPException):
    return error_response(exc.status_code, str(exc.detail))


async def _internal_error(request: Request, exc: Exception):
    if isinstance(exc, (MemoryError, getattr(torch.cuda, "OutOfMemoryError", MemoryError))):
        return error_response(507, "the server ran out of memory for this image; send a smaller one")
    return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")


async def _check_host(request: Request, call_next):
    """Refuse requests for another host (DNS rebinding), before anything else reads them."""
    hosts = request.app.state.allowed_hosts
    if not host_allowed(hosts, request.headers):
        return error_response(421, f"this server answers only to {', '.join(sorted(hosts))}")
    return await call_next(request)


# --------------------------------------------------------------------------------------------- routes

async def index():
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return error_response(500, "the page's files are missing from this installation (bgmatting/web/static)")
    return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})


async def health(request: Request):
    matter = request.app.state.worker.loaded
    return {"status": "ok", "version": __version__, "model": describe_matter(matter),
            "device": str(matter.device) if matter else None,
            "precision": matter.precision if matter else None,
            "limits": request.app.state.limits}


async def models(request: Request):
    from ..weights import DEFAULT_MODEL, list_models

    return {"models": [{"name": m.name, "architecture": m.architecture, "backbone": m.backbone,
                        "description": m.description, "available": m.available,
                        "default": m.name == DEFAULT_MODEL} for m in list_models()],
            "active": describe_matter(request.app.state.worker.loaded)}


async def example(which: str):
    if which not in EXAMPLES:  # a fixed whitelist: the client never names a file
        return error_response(404, f"no example '{which}'; use 'src' or 'bgr'")
    data = (resources.files("bgmatting") / "assets" / "examples" / EXAMPLES[which]).read_bytes()
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


# --------------------------------------------------------------------------------------------- the app

def create_app(matter_or_factory: MatterSource, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_queue: int = DEFAULT_MAX_QUEUE,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """Build the web app (an ASGI application; run it with Uvicorn, or call :func:`~bgmatting.web.serve`).

    Args:
        matter_or_factory: the :class:`~bgmatting.Matter` to serve, or a function returning one (loaded on
            the first request that needs it, so the page comes up at once).
        max_upload_mb: the largest request body (all files of one request together) and WebSocket message, in MB
            (2**20 bytes); larger bodies get 413, larger WebSocket messages an error message (see the module's
            docstring; the WebSocket server itself should read messages up to
            :func:`~bgmatting.web.limits.ws_max_size` bytes).
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
    hosts = allowed_host_names(allowed_hosts)

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
    app.state.allowed_hosts = hosts
    app.add_exception_handler(BgMattingError, _bgmatting_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    if hosts is not None:
        app.middleware("http")(_check_host)
    app.add_middleware(BodyLimit, max_bytes=max_bytes)

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.get("/", include_in_schema=False)(index)
    app.get("/api/health", summary="Server status, the served model and the limits")(health)
    app.get("/api/models", summary="The model zoo and the model being served")(models)
    app.get("/api/example/{which}", summary="The bundled example pair: 'src' (a frame) or 'bgr' (its clean plate)",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})(example)
    app.post("/api/matte", summary="Matte a photo given a shot of its background", response_class=Response,
             responses=MATTE_RESPONSES)(matte_endpoint(worker, max_pixels, max_queue))
    app.websocket("/api/live")(live_endpoint(worker, max_bytes, max_pixels, hosts))
    return app
