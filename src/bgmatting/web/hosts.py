"""Which hosts the server answers to: loopback addresses, and the ``Host`` / ``Origin`` check that protects a
server on localhost from DNS-rebinding pages."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def allowed_host_names(hosts: list[str] | None) -> set[str] | None:
    """The host names of ``allowed_hosts`` as the checks below compare them (``None`` stays ``None``)."""
    return None if hosts is None else {h.lower().strip("[]") for h in hosts}


def _host_of(value: str) -> str:
    """``'127.0.0.1:8000'`` / ``'[::1]:8000'`` → the host name part, lower case, without brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        value = value[: value.find("]") + 1]
    elif value.count(":") == 1:
        value = value.rsplit(":", 1)[0]
    return value.strip("[]")


def host_allowed(hosts: Collection[str], headers: Mapping[str, str]) -> bool:
    """Whether a request's ``Host`` header names one of ``hosts`` (from :func:`allowed_host_names`)."""
    return _host_of(headers.get("host", "")) in hosts


def websocket_allowed(hosts: Collection[str], headers: Mapping[str, str]) -> bool:
    """Whether a WebSocket's ``Host`` header and its ``Origin`` (when it has one) both name one of ``hosts``."""
    origin = headers.get("origin")
    host = _host_of(headers.get("host", ""))
    origin_host = (urlsplit(origin).hostname or "") if origin else host
    return host in hosts and origin_host.strip("[]") in hosts


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``127.x``, ``::1``, ``localhost``)."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
