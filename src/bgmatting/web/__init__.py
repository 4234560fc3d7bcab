"""``bgmatting serve``: a local web page (photo and live webcam matting) and its JSON/WebSocket API.

>>> from bgmatting.web import create_app, serve          # doctest: +SKIP
>>> serve("127.0.0.1", 8000, weights="model.pth")         # doctest: +SKIP

The server needs the ``web`` extra (FastAPI, Uvicorn, python-multipart, websockets); importing this package
works without it, and :func:`create_app` / :func:`serve` then raise :class:`bgmatting.BgMattingError` with the
command that installs it. See :mod:`bgmatting.web.app` for the HTTP and WebSocket protocol.
"""

from __future__ import annotations

import importlib

from ..errors import BgMattingError, install_hint

__all__ = ["build_server", "create_app", "serve"]

_WEB_PACKAGES = {"fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "pydantic"}
_HOMES = {"create_app": "app", "build_server": "server", "serve": "server"}


def _web_module(name: str):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:
        missing = (e.name or "").split(".")[0]
        if missing in _WEB_PACKAGES:
            raise BgMattingError(f"the web page needs the 'web' extra ({missing} is not installed): "
                                 f"{install_hint('web')}") from None
        raise


def __getattr__(name: str):
    if name in __all__:
        return getattr(_web_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
