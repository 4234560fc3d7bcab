"""The server's size limits: their defaults, the request body limit (an ASGI middleware), and the WebSocket
server's message limit."""

from __future__ import annotations

from .errors import error_response

DEFAULT_MAX_UPLOAD_MB = 32.0
DEFAULT_MAX_PIXELS = 16_000_000
DEFAULT_MAX_QUEUE = 8


class BodyLimit:
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
            return await error_response(413, self._message())(scope, receive, send)
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
                        await error_response(413, self._message())(scope, receive, send)
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
