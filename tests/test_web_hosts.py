"""The web server's host checks, which need none of the ``web`` extra's packages."""

from bgmatting.web.hosts import is_loopback


def test_loopback_detection():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.org"))
