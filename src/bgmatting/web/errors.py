"""Errors of the web server: :class:`WebError` (a refused request with its HTTP status) and the JSON error
response every failure is answered with."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ..errors import BgMattingError


class WebError(BgMattingError):
    """A request the server refuses; ``status`` is the HTTP status code it answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str, **extra) -> JSONResponse:
    """``{"error": message, "status": status, **extra}`` with that HTTP status."""
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)
