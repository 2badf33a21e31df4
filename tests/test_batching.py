"""Dynamic batching: concurrent submissions share model calls, results go back to the right caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.batching import BatchSettings, DynamicBatcher


def _double(items):
    return [2 * x for x in items]


def test_concurrent_requests_are_batched_and_answered_in_order():
    calls: list[int] = []

    def fn(items):
        calls.append(len(items))
        return _double(items)

    async def main():
        batcher = DynamicBatcher(fn, BatchSettings(max_batch=8, max_wait_ms=50))
        results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.close()
        return results

    assert asyncio.run(main()) == [2 * i for i in range(20)]
    assert sum(calls) == 20 and max(calls) == 8 and len(calls) < 20


def test_batch_size_one_calls_per_item():
    calls: list[int] = []

    def fn(items):
        calls.append(len(items))
        return _double(items)

    async def main():
        batcher = DynamicBatcher(fn, BatchSettings(max_batch=1))
        return await asyncio.gather(*(batcher.submit(i) for i in range(5))), batcher.stats

    results, stats = asyncio.run(main())
    assert results == [0, 2, 4, 6, 8]
    assert calls == [1] * 5
    assert stats.sizes == {1: 5} and stats.running == 0 and stats.most_running >= 1


def test_errors_reach_every_caller_of_the_batch_and_the_batcher_recovers():
    def fn(items):
        if -1 in items:
            raise ValueError("bad item")
        return _double(items)

    async def main():
        batcher = DynamicBatcher(fn, BatchSettings(max_batch=4, max_wait_ms=20))
        failed = await asyncio.gather(batcher.submit(1), batcher.submit(-1), return_exceptions=True)
        ok = await batcher.submit(3)
        await batcher.close()
        return failed, ok

    failed, ok = asyncio.run(main())
    assert all(isinstance(f, ValueError) for f in failed) and ok == 6


def test_invalid_settings():
    with pytest.raises(ValueError):
        BatchSettings(max_batch=0)


def test_a_lone_request_is_sent_at_once():
    """With nothing else waiting the request goes to the model without the batching window (it waited 1 s before)."""
    calls: list[list[int]] = []

    def fn(items):
        calls.append(list(items))
        return _double(items)

    async def main():
        loop = asyncio.get_running_loop()
        batcher = DynamicBatcher(fn, BatchSettings(max_batch=8, max_wait_ms=1000))
        started = loop.time()
        result = await batcher.submit(21)
        waited = loop.time() - started
        await batcher.close()
        return result, waited

    result, waited = asyncio.run(main())
    assert result == 42 and calls == [[21]]
    assert waited < 1.0  # the window holds a batch back at least 1 s: a lone request never sees it


def test_requests_that_queue_while_the_model_is_busy_form_the_next_batch():
    busy, release = threading.Event(), threading.Event()
    calls: list[list[int]] = []

    def fn(items):
        calls.append(list(items))
        if len(calls) == 1:  # the first (lone) request keeps the model busy until the others have queued
            busy.set()
            release.wait(timeout=30)
        return _double(items)

    async def main():
        batcher = DynamicBatcher(fn, BatchSettings(max_batch=4, max_wait_ms=0))
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(busy.wait, 30)
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0)  # every submission is queued
        release.set()
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return results, batcher.describe()

    results, described = asyncio.run(main())
    assert results == [2 * i for i in range(7)]
    assert calls == [[0], [1, 2, 3, 4], [5, 6]]
    assert described.startswith("7 items in 3 batch calls (2.3 a call; sizes 1:1 2:1 4:1); an item queued ")
    assert described.endswith("at most 1 call(s) at once")
