"""Dynamic batching of concurrent requests: one model call for many queries that arrive together.

A request that finds nothing else waiting is sent to the model at once: a lone request never waits for company
(it used to wait the whole ``max_wait_ms``). Batches form from the requests that queued while the model was busy
with the previous batch; when others are already waiting, the batch also takes what arrives within
``max_wait_ms`` (at most ``max_batch`` in all). The batch function runs once in a worker thread (so the event loop
keeps accepting requests) and each caller gets its own result back. ``benchmarks/serving.py`` measures the gain
against unbatched calls and the lone request's latency.

:class:`BatchStats` says where a request's time went (logged when a model stops): the batch sizes, the time an item
waited in the queue, the model call's wall and CPU time in its worker thread, how long the event loop took to pick a
finished call up again, and how many model calls were in flight at once (unbatched, each request is its own call in
the event loop's thread pool, so several run side by side, taking turns on the model's lock).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger("clipsync.serving.batching")

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchSettings:
    """Attributes:
    max_batch: Largest batch handed to the model (1 disables batching).
    max_wait_ms: Longest a batch that already holds several requests waits for more (a lone request never waits).
    """

    max_batch: int = 32
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or not 0 <= self.max_wait_ms <= 1000:
            raise ValueError(f"invalid batch settings: {self}")


@dataclass
class BatchStats:
    """Where the items' time went, summed over every model call (the event loop's thread updates it).

    Attributes:
        sizes: Batch size -> number of model calls of that size.
        queued_s: Seconds the items waited between ``submit`` and their model call's start, summed over items.
        model_s: Wall seconds of the model calls in their worker threads (waiting for the model's lock, the GIL or
            a CPU included), summed over calls.
        model_cpu_s: CPU seconds of the worker threads during the model calls, summed over calls.
        handback_s: Seconds from a model call's end to the event loop taking its results, summed over calls.
        running: Model calls handed to the thread pool and not finished (running or waiting for a thread);
            ``most_running`` the most ever at once.
    """

    sizes: collections.Counter[int] = field(default_factory=collections.Counter)
    queued_s: float = 0.0
    model_s: float = 0.0
    model_cpu_s: float = 0.0
    handback_s: float = 0.0
    running: int = 0
    most_running: int = 0

    @property
    def calls(self) -> int:
        return sum(self.sizes.values())

    @property
    def items(self) -> int:
        return sum(size * n for size, n in self.sizes.items())

    def describe(self) -> str:
        """One line for the log: sizes, then the mean queue, model and hand-back times."""
        calls, items = self.calls, self.items
        if not calls:
            return "0 items in 0 batch calls"
        sizes = " ".join(f"{size}:{n}" for size, n in sorted(self.sizes.items()))
        return (
            f"{items} items in {calls} batch calls ({items / calls:.1f} a call; sizes {sizes}); an item queued "
            f"{self.queued_s / items * 1000:.2f} ms; a call {self.model_s / calls * 1000:.2f} ms in the model "
            f"({self.model_cpu_s / calls * 1000:.2f} ms CPU), picked up {self.handback_s / calls * 1000:.2f} ms "
            f"after it ended; at most {self.most_running} call(s) at once"
        )


class DynamicBatcher(Generic[T, R]):
    """Collects items submitted concurrently and runs ``batch_fn`` on them together."""

    def __init__(self, batch_fn: Callable[[Sequence[T]], Sequence[R]], settings: BatchSettings | None = None):
        self._fn = batch_fn
        self.settings = settings or BatchSettings()
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R], float]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    def _timed(self, items: Sequence[T]) -> tuple[Sequence[R], float, float, float]:
        """The batch function in its worker thread: results, start, end (``perf_counter``) and thread CPU seconds."""
        start, cpu = time.perf_counter(), time.thread_time()
        results = self._fn(items)
        return results, start, time.perf_counter(), time.thread_time() - cpu

    async def _call(self, items: Sequence[T], submitted: Sequence[float]) -> Sequence[R]:
        """Run the batch function in a worker thread and account for it in :attr:`stats`."""
        stats = self.stats
        stats.running += 1
        stats.most_running = max(stats.most_running, stats.running)
        try:
            results, start, end, cpu = await asyncio.to_thread(self._timed, items)
        finally:
            stats.running -= 1
        stats.handback_s += time.perf_counter() - end
        stats.queued_s += sum(start - t for t in submitted)
        stats.model_s += end - start
        stats.model_cpu_s += cpu
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        stats.sizes[len(items)] += 1
        return results

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result (exceptions of the batch call are raised here)."""
        if self.settings.max_batch == 1:
            return (await self._call([item], [time.perf_counter()]))[0]
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future, time.perf_counter()))
        return await future

    async def _collect(self) -> list[tuple[T, asyncio.Future[R], float]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        while len(batch) < self.settings.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())  # queued while the model was busy
        if len(batch) == 1:
            return batch  # nothing else is waiting: no reason to hold this request back
        deadline = asyncio.get_running_loop().time() + self.settings.max_wait_ms / 1000
        while len(batch) < self.settings.max_batch:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            try:
                results = await self._call([item for item, _, _ in batch], [t for _, _, t in batch])
            except Exception as exc:  # every caller of the batch gets the error
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future, _), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def describe(self) -> str:
        """How many items the batch function saw in how many calls, and where their time went (logged at stop)."""
        return self.stats.describe()

    async def close(self) -> None:
        """Stop the background worker (pending callers are cancelled)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
