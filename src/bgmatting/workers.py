"""``ModelWorkers``: calls of the model on several threads at once, their results handed back in order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .errors import BgMattingError
from .options import MAX_WORKERS
from .pipeline import Matter


class ModelWorkers:
    """Calls of the model on up to ``workers`` threads at once, handed back in the order they were submitted.

    On a CPU, two calls that each use one thread get more done than one call on two threads (small operations do
    not keep two threads busy). Used as a context manager: PyTorch's thread count is shared among the workers
    while it is open (each worker thread reads it as it starts) and given back at the end; an exception cancels
    the calls not started yet and lets the running ones finish.

    Args:
        workers: how many at once; ``None``: 2 for a :class:`Matter` on a CPU with 2 threads or more, else 1
            (other objects may not be thread-safe). More than 1 only on a CPU.
        matter: the :class:`Matter` (or stand-in) the calls use; a :class:`Matter` gets its runner built before
            the workers start, once, with their thread count.
        device: where the model runs.
    """

    def __init__(self, workers: int | None, matter: Any, device: torch.device):
        self.check(workers)
        if workers is None:
            workers = 2 if isinstance(matter, Matter) and device.type == "cpu" and torch.get_num_threads() >= 2 else 1
        elif workers > 1 and device.type != "cpu":
            raise BgMattingError(f"--workers {workers}: parallel model calls are for the CPU; on {device.type} use 1 "
                                 "(a larger --batch instead)")
        self.workers, self.matter = int(workers), matter
        self._pool: ThreadPoolExecutor | None = None
        self._threads: int | None = None  # PyTorch's thread count, to give back
        self._queue: deque[Future] = deque()

    @staticmethod
    def check(workers: int | None) -> None:
        """Refuse a ``workers`` that is not ``None`` or a positive integer (before any work)."""
        if workers is not None and (not isinstance(workers, (int, np.integer)) or isinstance(workers, bool)
                                    or not 1 <= workers <= MAX_WORKERS):
            raise BgMattingError(f"workers must be a positive integer, at most {MAX_WORKERS}, got {workers}")

    def start(self) -> "ModelWorkers":
        """Share the threads and start the workers (what ``with`` does on entry)."""
        if self.workers > 1 and self._pool is None:
            self._threads = torch.get_num_threads()
            torch.set_num_threads(max(1, self._threads // self.workers))
            try:
                if isinstance(self.matter, Matter):
                    self.matter.runner  # noqa: B018  (built here, once, with the workers' thread count)
            except BaseException:
                self.close()
                raise
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="bgmatting-model")
        return self

    def submit(self, fn: Callable, *args) -> list:
        """Queue ``fn(*args)``; returns the results now due, oldest first: none while a worker is free, else the
        oldest call's (waiting for it). With one worker, ``fn`` runs here and now. Exceptions propagate."""
        if self._pool is None:
            return [fn(*args)]
        self._queue.append(self._pool.submit(fn, *args))
        done = []
        while len(self._queue) >= self.workers:
            done.append(self._queue.popleft().result())
        return done

    def drain(self) -> list:
        """The results of every call still queued, in order."""
        done = []
        while self._queue:
            done.append(self._queue.popleft().result())
        return done

    def __enter__(self) -> "ModelWorkers":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the calls not started, wait for the running ones, give the threads back (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._queue.clear()
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None
