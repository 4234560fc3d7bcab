"""Atomic file creation: write under a temporary name in the destination folder, rename when complete.

Folders are made only when the first file is written into them, and a run that fails removes again the (empty)
folders it made (:func:`removing_new_folders`), so that a mistake found late leaves no trace. A ``SIGTERM``
(``timeout``, a container stop, a job scheduler) can be turned into :class:`Terminated`, a
:class:`KeyboardInterrupt`, so that it goes through the same clean-up as Ctrl-C (:func:`terminate_as_interrupt`).
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import BgMattingError


def current_umask() -> int:
    """The process's file-mode creation mask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, innermost first."""
    missing = []
    f = Path(os.path.abspath(folder))
    while not f.exists() and f != f.parent:
        missing.append(f)
        f = f.parent
    return missing


@contextmanager
def removing_new_folders(folder: str | os.PathLike) -> Iterator[Path]:
    """Remove, when the block fails, the folders on the way to ``folder`` that did not exist when it began.

    Only empty folders are removed (innermost first), so files written by this or another run stay where they
    are. Nothing is created here: writers make the folders when they write (see :func:`atomic_path`).
    """
    missing = _missing_folders(Path(folder))
    try:
        yield Path(folder)
    except BaseException:
        for f in missing:
            try:
                f.rmdir()
            except FileNotFoundError:  # never made
                continue
            except OSError:  # not empty: holds files of this or another run
                break
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); rename it to ``path`` when the block succeeds.

    The folder of ``path`` is made if needed. On any exception (KeyboardInterrupt included) the temporary file is
    removed, with the folders made for it when they are left empty, and ``path`` is left as it was, so readers
    never see a half-written file. Raises :class:`BgMattingError` when the folder cannot be created or written.
    """
    p = Path(path)
    with removing_new_folders(p.parent):
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
                os.chmod(tmp_path, 0o666 & ~current_umask())
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
    """Make sure files can be written in ``folder``; raise :class:`BgMattingError` if not.

    A folder that does not exist yet is not made (that happens when the first file is written into it): its
    nearest existing parent must be a folder that this user can write in.
    """
    f = Path(folder)
    missing = _missing_folders(f)
    existing = missing[-1].parent if missing else Path(os.path.abspath(f))
    if not existing.is_dir():
        raise BgMattingError(f"cannot write to output folder '{f}': '{existing}' is not a folder")
    if missing:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise BgMattingError(f"cannot write to output folder '{f}': cannot create folders in '{existing}'")
        return f
    try:
        probe = f / f".bgmatting-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BgMattingError(f"cannot write to output folder '{f}': {e.strerror or e}") from None
    return f


# --------------------------------------------------------------------------------------------- SIGTERM

class Terminated(KeyboardInterrupt):
    """Raised in the main thread by :func:`terminate_as_interrupt` when the process receives ``SIGTERM``.

    A :class:`KeyboardInterrupt`, so that every clean-up made for Ctrl-C (temporary files deleted, threads
    stopped) runs for it too. The conventional exit status is :data:`EXIT_STATUS` (128 + 15).
    """

    EXIT_STATUS = 128 + signal.SIGTERM


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, ``SIGTERM`` raises :class:`Terminated` in the main thread; the previous handler is put
    back afterwards.

    Further ``SIGTERM``\\ s are ignored while the first one is being handled, so that the clean-up it starts is
    not itself interrupted. Outside the main thread (where Python cannot handle signals) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    fired = False

    def handler(signum, frame):
        nonlocal fired
        if fired:
            return
        fired = True
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
