"""One request inside the batch scheduler: its state (`Job`), shared by the worker that decodes it and the
consumer that reads it, and the consumer's side of it (`RequestStream`, what `BatchScheduler.submit`
returns).

The two sides meet only at the job's queue of steps and its two events, so the stream needs nothing of the
scheduler but three things: the worker thread (so a read never waits on a worker that is gone), and what
to tell it when a step was read (a paused request may go on) or the stream was closed (cancel it).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .request import Request
from .sequence import Sequence, Step


@dataclass(eq=False)
class Job:
    """One request's state: its samples' sequences and slots, touched only by the worker (except
    `cancelled`, an Event, and `out`, the queue to the consumer)."""

    request: Request
    ids: list[int]
    score_prompt: bool
    out: queue.Queue = field(default_factory=queue.Queue)  # Step (its `sample` set) | BaseException
    cancelled: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)  # finished, failed or cancelled
    seqs: list[Sequence] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    done: bool = False

    @property
    def n(self) -> int:
        return self.request.n


class RequestStream(Iterator[Step]):
    """The consumer side of one request: iterate for `Step`s (`step.sample` tells the samples of an n > 1
    request apart; the stream ends after every sample's final step); `close()`/`cancel()` stops early.
    Dropping the iterator also cancels, so an abandoned stream cannot hold batch slots."""

    def __init__(
        self,
        job: Job,
        worker: threading.Thread,
        on_read: Callable[[Job], None],
        on_close: Callable[[Job], None],
    ) -> None:
        self._job = job
        self._worker = worker
        self._on_read = on_read
        self._on_close = on_close
        self._open = job.n  # samples whose final step has not come yet
        self._finished = False

    def __iter__(self) -> RequestStream:
        return self

    def __next__(self) -> Step:
        if self._finished:
            raise StopIteration
        while True:
            try:
                item = self._job.out.get(timeout=1.0)
                break
            except queue.Empty:
                # Never hang on a worker that is gone (it fails open requests itself when closed).
                if not self._worker.is_alive():
                    self._finished = True
                    raise RuntimeError("the scheduler stopped") from None
        return self._take(item)

    def _take(self, item: Step | BaseException) -> Step:
        self._on_read(self._job)
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if item.token is None:
            self._open -= 1
            self._finished = self._open == 0
        return item

    def drain(self, until: float | None = None) -> list[Step]:
        """The steps ready by `until` (a `time.perf_counter()` instant; or now), waiting for at least one
        (empty once the stream has ended). A consumer that renders updates at its own pace takes what
        accumulated in one call instead of waking for every token; the request ending wakes it early."""
        if self._finished:
            return []
        steps = [next(self)]
        if until is not None and not self._finished:
            wait = until - time.perf_counter()
            if wait > 0:
                self._job.ended.wait(wait)
        while not self._finished:
            try:
                item = self._job.out.get_nowait()
            except queue.Empty:
                break
            steps.append(self._take(item))
        return steps

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            self._on_close(self._job)

    cancel = close

    def __enter__(self) -> RequestStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Best effort during interpreter shutdown, when the scheduler may already be gone.
        with contextlib.suppress(Exception):
            self.close()
