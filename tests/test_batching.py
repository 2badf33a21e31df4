"""Dynamic batching: concurrent submissions share model calls, results go back to the right caller."""

from __future__ import annotations

import asyncio

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
        return await asyncio.gather(*(batcher.submit(i) for i in range(5)))

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
    assert calls == [1] * 5


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
