"""Serving the app: binding the socket, building the Uvicorn server, and ``bgmatting serve``."""

from __future__ import annotations

import socket
import sys
import warnings

from ..errors import BgMattingError
from ..pipeline import Matter
from .app import create_app
from .hosts import LOOPBACK_HOSTS, is_loopback
from .limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB, ws_max_size
from .worker import MatterSource


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
    ``server.should_exit = True``. Its WebSocket messages may be up to :func:`~.limits.ws_max_size` bytes.

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
          precision: str = "fp32", *, backend: str | None = None, matter: Matter | None = None,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_pixels: int = DEFAULT_MAX_PIXELS,
          log_level: str = "warning", **model_options) -> None:
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
