"""Bounded work per model: a queue of at most ``serving.max_queue`` requests each, and a deadline per request.

A request is admitted when it arrives (REST: before its body is read; gRPC: when its message is in) if its model
holds fewer than ``max_queue`` requests, running or waiting; otherwise it is refused at once (HTTP 429 with
``Retry-After``, gRPC RESOURCE_EXHAUSTED) and counted in ``clipsync_requests_refused_total`` (no model name: the
metrics of a shared server name no client). An admitted request that takes longer than ``request_timeout_s``,
waiting included, is abandoned with HTTP 504 / DEADLINE_EXCEEDED (a lip-sync worker thread then finishes in the
background and its result is dropped). Everything runs on the server's event loop: the counters need no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import Any

from prometheus_client import Counter

from serving.errors import Overloaded, RequestTimeout

REFUSED = Counter("clipsync_requests_refused", "Inference requests refused by the server", ["reason"])


class Admission:
    """The per-model queues of one server.

    Args:
        max_queue: Requests one model may hold at once.
        timeout_s: Deadline of each admitted request.
    """

    def __init__(self, max_queue: int, timeout_s: float) -> None:
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.in_flight: dict[str, int] = {}
        self.refused = 0

    def acquire(self, model: str) -> None:
        """Take a place in ``model``'s queue.

        Raises:
            Overloaded: The queue is full (counted).
        """
        held = self.in_flight.get(model, 0)
        if held >= self.max_queue:
            self.refused += 1
            REFUSED.labels(reason="queue_full").inc()
            raise Overloaded(
                f"{model} is busy ({held} requests in its queue); retry shortly", headers={"Retry-After": "1"}
            )
        self.in_flight[model] = held + 1

    def release(self, model: str) -> None:
        held = self.in_flight.get(model, 0) - 1
        if held > 0:
            self.in_flight[model] = held
        else:
            self.in_flight.pop(model, None)

    @contextlib.contextmanager
    def admit(self, model: str) -> Iterator[None]:
        """:meth:`acquire` for the duration of the block."""
        self.acquire(model)
        try:
            yield
        finally:
            self.release(model)

    async def within_deadline(self, work: Awaitable[Any]) -> Any:
        """Await ``work``, abandoning it after ``timeout_s``.

        Raises:
            RequestTimeout: It took longer (counted).
        """
        try:
            async with asyncio.timeout(self.timeout_s):  # no extra task per request, unlike asyncio.wait_for
                return await work
        except TimeoutError:
            REFUSED.labels(reason="deadline").inc()
            raise RequestTimeout(
                f"the request took longer than {self.timeout_s:g} s (serving.request_timeout_s)"
            ) from None
