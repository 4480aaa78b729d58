"""Micro-batching: items submitted close together are processed in one call, by one thread.

The detector's ``predict`` is batched but must not run concurrently, so the service funnels
every image through a :class:`MicroBatcher`: an asyncio-facing ``submit`` puts items on a
queue, and a single worker thread takes the first waiting item, collects more until it has
``max_batch`` of them or ``max_wait_ms`` have passed, and calls the batch function once.

The queue is bounded by ``queue_size`` *pending* items (submitted and not yet answered,
including the batch being processed). A submission that does not fit raises
:class:`QueueFull` at once (the service turns it into 503); it never waits for room.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import check_number

#: longest micro-batching wait (ms): beyond it a wait is a mistake (and too long for a thread wait)
MAX_WAIT_MS = 10_000.0


class QueueFull(Exception):
    """The batcher holds ``queue_size`` pending items already; try again later."""


class BatcherClosed(Exception):
    """The batcher was closed (service shutting down) before the item was processed."""


@dataclass
class BatchInfo:
    """How an item was processed: its batch's size, time spent waiting and in the batch call."""

    batch_size: int
    queue_ms: float
    run_ms: float


@dataclass
class _Item:
    payload: Any
    future: Future
    submitted: float


_STOP = object()


class MicroBatcher:
    """Run ``fn`` on micro-batches of submitted items in one worker thread.

    Args:
        fn: called with a list of payloads (1..max_batch), returns a list of results of the
            same length and order. An exception fails every item of that batch.
        max_batch: largest batch.
        max_wait_ms: how long the worker waits for more items after the first one arrived
            (0: take only what is already queued; at most :data:`MAX_WAIT_MS`).
        queue_size: most pending items; more raise :class:`QueueFull`.
        name: worker thread name.

    Each result comes back as ``(result, BatchInfo)``. The worker thread starts on the first
    submission; :meth:`close` stops it and fails whatever is still queued with
    :class:`BatcherClosed`. A setting out of range (a NaN or infinite wait, a batch of 0) is an
    :class:`~s2swclip.errors.S2SWError` naming it.
    """

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], *, max_batch: int = 8,
                 max_wait_ms: float = 10.0, queue_size: int = 64, name: str = "s2sw-batcher"):
        check_number("max_batch", max_batch, 1, integer=True)
        check_number("queue_size", queue_size, 1, integer=True)
        check_number("max_wait_ms", max_wait_ms, 0, MAX_WAIT_MS)
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.queue_size = int(queue_size)
        self.name = name
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        # statistics (read without the lock: approximate values are fine for /v1/health)
        self.batches = 0
        self.items = 0
        self.rejected = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------------------- state
    @property
    def pending(self) -> int:
        """Items submitted and not yet answered (queued or in the running batch)."""
        return self._pending

    @property
    def alive(self) -> bool:
        """False once closed or if the worker thread died; True before the first submission."""
        if self._closed:
            return False
        return self._thread is None or self._thread.is_alive()

    # ---------------------------------------------------------------------------- submitting
    def submit_many(self, payloads: Sequence[Any]) -> list[Future]:
        """Queue all ``payloads`` or none of them; returns one concurrent Future per payload.

        Raises :class:`QueueFull` when they do not all fit, :class:`BatcherClosed` after close.
        """
        n = len(payloads)
        with self._lock:
            if self._closed:
                raise BatcherClosed("the inference worker is shut down")
            if self._pending + n > self.queue_size:
                self.rejected += n
                raise QueueFull(f"inference queue is full ({self._pending} of {self.queue_size} images "
                                f"pending); retry in a moment")
            self._pending += n
            self._ensure_thread()
            now = time.perf_counter()
            futures = []
            for p in payloads:
                fut: Future = Future()
                self._queue.put(_Item(p, fut, now))
                futures.append(fut)
        return futures

    def submit(self, payload: Any) -> Future:
        return self.submit_many([payload])[0]

    async def run(self, payloads: Sequence[Any]) -> list[tuple[Any, BatchInfo]]:
        """Asyncio front: queue ``payloads`` together and await their results (in order).

        Raises :class:`QueueFull` immediately when they do not fit; re-raises the batch
        function's exception if their batch failed.
        """
        futures = self.submit_many(payloads)
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    # ------------------------------------------------------------------------------ worker
    def _ensure_thread(self) -> None:  # called with the lock held
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()

    def _collect(self) -> list[_Item] | None:
        """Block for the first item, then gather more for up to max_wait. None: stop."""
        first = self._queue.get()
        if first is _STOP:
            return None
        batch = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if item is _STOP:
                self._queue.put(_STOP)  # finish this batch, stop on the next round
                break
            batch.append(item)
        return batch

    def _finish(self, n: int) -> None:
        with self._lock:
            self._pending -= n

    def _work(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            live = [it for it in batch if it.future.set_running_or_notify_cancel()]
            if len(live) < len(batch):
                self._finish(len(batch) - len(live))
            if not live:
                continue
            start = time.perf_counter()
            try:
                results = list(self.fn([it.payload for it in live]))
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except BaseException as exc:  # noqa: BLE001 - delivered to the waiting requests
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._finish(len(live))
                for it in live:
                    it.future.set_exception(exc)
                continue
            end = time.perf_counter()
            self.batches += 1
            self.items += len(live)
            self._finish(len(live))
            run_ms = (end - start) * 1000.0
            for it, res in zip(live, results):
                it.future.set_result((res, BatchInfo(len(live), (start - it.submitted) * 1000.0, run_ms)))

    # ------------------------------------------------------------------------------- close
    def close(self, timeout: float | None = 10.0) -> None:
        """Stop accepting items, let the running batch finish, fail the rest with BatcherClosed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        # drain what has not been picked up yet
        leftovers = []
        while True:
            try:
                leftovers.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for it in leftovers:
            if it is not _STOP and it.future.set_running_or_notify_cancel():
                it.future.set_exception(BatcherClosed("the service is shutting down"))
        self._finish(sum(1 for it in leftovers if it is not _STOP))
        self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)
