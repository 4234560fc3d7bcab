"""Live mode: the WebSocket ``/api/live`` (its protocol is in :mod:`bgmatting.web.app`): one
:class:`LiveSession` per client, and :class:`LiveConnection`, which reads its messages and mattes its frames,
the newest first."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import struct
import time
import warnings
from typing import Any

import torch
from fastapi import WebSocket, WebSocketDisconnect

from .. import __version__
from ..errors import BgMattingError
from ..outputs import output_image
from ..pipeline import Matter
from ..tensors import cover_resize, match_background, parse_colour, to_tensor
from .codecs import OUTPUT_ALIASES, decode_image, encode_jpeg, tensor_to_uint8
from .errors import WebError
from .hosts import websocket_allowed
from .worker import ModelWorker

logger = logging.getLogger(__name__)


class LiveSession:
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

    def _decode(self, data: bytes, name: str) -> torch.Tensor:
        return to_tensor(decode_image(data, name, self.max_pixels, raw=True), name)

    def set_background(self, data: bytes) -> dict:
        self.bgr = self._decode(data, "background")
        self._bgr_cache = {}
        h, w = self.bgr.shape[2:]
        return {"type": "background", "width": w, "height": h}

    def set_target(self, data: bytes) -> dict:
        self.target = self._decode(data, "target")
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
        frame = self._decode(data, "frame")
        size = tuple(frame.shape[2:])
        try:
            bgr = self._resized(self._bgr_cache, self.bgr, size, match_background)
        except BgMattingError as e:
            raise WebError(f"the frame does not fit the background: {e}; capture the background again") from None
        out = matter.forward_tensors(frame, bgr, outputs=("pha", "fgr"))
        pha, behind = out["pha"], None
        if self.output == "com" and self.target is not None:
            behind = self._resized(self._target_cache, self.target, size, cover_resize).to(pha.device)
        elif self.output == "com":
            behind = torch.tensor(self.colour, dtype=pha.dtype, device=pha.device).view(1, 3, 1, 1)
        return encode_jpeg(tensor_to_uint8(output_image(self.output, out, behind)), self.quality)

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


class LiveConnection:
    """One WebSocket client of live mode: reads its messages, mattes its frames on the model worker (at most one
    being matted and one waiting: a newer frame replaces the waiting one) and sends the replies."""

    def __init__(self, ws: WebSocket, worker: ModelWorker, max_bytes: int, max_pixels: int):
        self.ws, self.worker, self.max_bytes, self.max_pixels = ws, worker, max_bytes, max_pixels
        self.session = LiveSession(max_pixels)
        self.send_lock = asyncio.Lock()
        self.slot: dict = {"frame": None}
        self.wake = asyncio.Event()
        self.closed = asyncio.Event()

    async def send_json(self, obj) -> None:
        text = json.dumps(obj, allow_nan=False)  # valid JSON for the browser: a NaN here is a bug
        async with self.send_lock:
            await self.ws.send_text(text)

    async def send_bytes(self, data: bytes) -> None:
        async with self.send_lock:
            await self.ws.send_bytes(data)

    async def matte_frames(self) -> None:
        """Matte the waiting frame whenever one arrives, until the connection closes."""
        worker, session = self.worker, self.session
        while not self.closed.is_set():
            await self.wake.wait()
            self.wake.clear()
            frame = self.slot["frame"]
            self.slot["frame"] = None
            if frame is None:
                continue
            fid, data = frame
            t0 = time.perf_counter()
            try:
                jpeg = await worker.run(lambda data=data: session.process(worker.matter(), data))
            except BgMattingError as e:
                await self.send_json({"type": "error", "id": fid, "message": str(e)})
                continue
            except Exception as e:  # never kill the connection with a stack trace
                logger.exception("live frame %d failed", fid)
                await self.send_json({"type": "error", "id": fid,
                                      "message": f"internal error ({type(e).__name__}) on this frame"})
                continue
            ms = (time.perf_counter() - t0) * 1e3
            await self.send_bytes(b"R" + struct.pack("<If", fid, ms) + jpeg)

    async def control(self, fn) -> None:
        """Run a change of the session on the model thread (so never under a frame) and send its reply."""
        await self.send_json(await self.worker.run(fn))

    async def on_bytes(self, data: bytes) -> None:
        session = self.session
        tag, body = data[:1], data[1:]
        if tag == b"F":
            if len(body) < 4:
                raise WebError("a frame is b'F' + its uint32 id (little-endian) + the JPEG; this one has no id")
            fid = struct.unpack("<I", body[:4])[0]
            stale = self.slot["frame"]
            self.slot["frame"] = (fid, body[4:])  # the newest frame wins: never a queue
            self.wake.set()
            if stale is not None:
                await self.send_json({"type": "dropped", "id": stale[0]})
        elif tag == b"B":
            await self.control(lambda: session.set_background(body))
        elif tag == b"T":
            await self.control(lambda: session.set_target(body))
        else:
            raise WebError("unknown binary message; start it with b'F' + uint32 id, b'B' or b'T'")

    async def on_text(self, text: str) -> None:
        session = self.session
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            msg = None
        if not isinstance(msg, dict):
            raise WebError('text messages must be JSON objects such as {"type": "config", "output": "pha"}')
        kind = msg.get("type")
        if kind == "config":
            await self.control(lambda: session.configure(msg))
        elif kind == "clear_target":
            await self.control(session.clear_target)
        elif kind == "ping":
            t = msg.get("t")
            if t is not None and not _is_number(t):
                raise WebError(f"ping's 't' must be a number, not {_shown(t)}")
            await self.send_json({"type": "pong", "t": t})
        else:
            raise WebError(f'the message type must be "config", "clear_target" or "ping", not {_shown(kind)} '
                           "(images go in binary messages)")

    async def on_message(self, message: dict) -> None:
        """Handle one received message; problems are answered with an error message, the connection stays."""
        data, text = message.get("bytes"), message.get("text")
        max_bytes = self.max_bytes
        try:
            size = len(data) if data is not None else len((text or "").encode("utf-8", "surrogatepass"))
            if size > max_bytes:
                raise WebError(f"a message of {size} bytes is over this server's limit of {max_bytes} "
                               "bytes; it is ignored (send smaller images)")
            if data is not None:
                await self.on_bytes(data)
            elif text is not None:
                await self.on_text(text)
        except BgMattingError as e:
            await self.send_json({"type": "error", "message": str(e)})
        except WebSocketDisconnect:
            raise
        except Exception as e:  # a bug: answer it, log it, and keep the connection
            logger.exception("the live message could not be handled")
            await self.send_json({"type": "error", "message": f"internal error ({type(e).__name__}) on this "
                                                              "message; the server log has the details"})

    async def run(self) -> None:
        """Say hello, then serve the client until it disconnects."""
        matting = asyncio.create_task(self.matte_frames())
        await self.send_json({"type": "hello", "version": __version__, "max_bytes": self.max_bytes,
                              "max_pixels": self.max_pixels})
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await self.on_message(message)
        except WebSocketDisconnect:
            pass
        finally:
            self.closed.set()
            self.wake.set()
            matting.cancel()
            try:
                await matting
            except (asyncio.CancelledError, Exception):
                pass


def live_endpoint(worker: ModelWorker, max_bytes: int, max_pixels: int, hosts: set[str] | None):
    """The WebSocket endpoint of live mode; ``hosts``: see :func:`~.hosts.allowed_host_names` (``None``: any)."""

    async def live(ws: WebSocket):
        if hosts is not None and not websocket_allowed(hosts, ws.headers):
            await ws.close(code=1008)
            return
        await ws.accept()
        await LiveConnection(ws, worker, max_bytes, max_pixels).run()

    return live
