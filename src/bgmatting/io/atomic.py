"""Atomic file creation: write under a temporary name in the destination folder, rename when complete."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import BgMattingError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); rename it to ``path`` when the block succeeds.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is left as it
    was, so readers never see a half-written file. Raises :class:`BgMattingError` when the folder cannot be
    created or written.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.stem}.", suffix=f".tmp{p.suffix}", dir=p.parent)
        os.close(fd)
    except OSError as e:
        raise BgMattingError(f"cannot write to folder '{p.parent}': {e.strerror or e}") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():  # mkstemp makes files private (0600); give them the usual permissions
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, p)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        raise BgMattingError(f"cannot write '{path}': {e.strerror or e}") from None
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and make sure a file can be written in it; raise :class:`BgMattingError` if not."""
    f = Path(folder)
    try:
        f.mkdir(parents=True, exist_ok=True)
        probe = f / f".bgmatting-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BgMattingError(f"cannot write to output folder '{f}': {e.strerror or e}") from None
    return f
