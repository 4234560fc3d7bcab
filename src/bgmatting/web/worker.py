"""The model worker: the one thread that runs the served :class:`~bgmatting.Matter`, so that requests are
served one at a time and memory stays bounded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Union

from ..errors import BgMattingError
from ..pipeline import Matter
from .errors import WebError

MatterSource = Union[Matter, Callable[[], Matter]]
"""A :class:`~bgmatting.Matter`, or a function that returns one."""


class ModelWorker:
    """Owns the :class:`Matter` and the one thread that runs it: every model call is serialised here.

    Args:
        matter_or_factory: a :class:`Matter`, or a function that returns one (called once, lazily, on the
            worker thread; a :class:`BgMattingError` it raises is answered with 503 and retried next time).
    """

    def __init__(self, matter_or_factory: MatterSource):
        if isinstance(matter_or_factory, Matter):
            self._matter: Matter | None = matter_or_factory
            self._factory = None
        elif callable(matter_or_factory):
            self._matter, self._factory = None, matter_or_factory
        else:
            raise TypeError("create_app() needs a Matter or a function that returns one")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bgmatting-model")
        self._load_lock = threading.Lock()

    @property
    def loaded(self) -> Matter | None:
        return self._matter

    def matter(self) -> Matter:
        """The Matter, loaded on first use (call on the worker thread)."""
        if self._matter is None:
            with self._load_lock:
                if self._matter is None:
                    try:
                        m = self._factory()
                    except BgMattingError as e:
                        raise WebError(f"the model could not be loaded: {e}", 503) from None
                    if not isinstance(m, Matter):
                        raise TypeError(f"the model factory returned {type(m).__name__}, not a Matter")
                    self._matter = m
        return self._matter

    async def run(self, fn: Callable, *args) -> Any:
        """Run ``fn(*args)`` on the model thread and wait for it without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
