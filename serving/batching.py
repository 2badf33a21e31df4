"""Dynamic batching of concurrent requests: one model call for many queries that arrive together.

A request that finds nothing else waiting is sent to the model at once: a lone request never waits for company
(it used to wait the whole ``max_wait_ms``). Batches form from the requests that queued while the model was busy
with the previous batch; when others are already waiting, the batch also takes what arrives within
``max_wait_ms`` (at most ``max_batch`` in all). The batch function runs once in a worker thread (so the event loop
keeps accepting requests) and each caller gets its own result back. ``benchmarks/serving.py`` measures the gain
against unbatched calls and the lone request's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


class DynamicBatcher(Generic[T, R]):
    """Collects items submitted concurrently and runs ``batch_fn`` on them together."""

    def __init__(self, batch_fn: Callable[[Sequence[T]], Sequence[R]], settings: BatchSettings | None = None):
        self._fn = batch_fn
        self.settings = settings or BatchSettings()
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result (exceptions of the batch call are raised here)."""
        if self.settings.max_batch == 1:
            return (await asyncio.to_thread(self._fn, [item]))[0]
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _collect(self) -> list[tuple[T, asyncio.Future[R]]]:
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
            items = [item for item, _ in batch]
            try:
                results = await asyncio.to_thread(self._fn, items)
                if len(results) != len(items):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
            except Exception as exc:  # every caller of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(items)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def describe(self) -> str:
        """How many items the batch function saw in how many calls (logged when a model stops)."""
        mean = self.items / self.batches if self.batches else 0.0
        return f"{self.items} items in {self.batches} batch calls ({mean:.1f} a call)"

    async def close(self) -> None:
        """Stop the background worker (pending callers are cancelled)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
