"""The micro-batcher: same-key requests arriving together share a batch; limits and errors are per batch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Hashable

import pytest

from trace_engine.serving.batching import MicroBatcher


def record_batches(max_batch_size: int, max_wait_s: float, items: list[tuple[Hashable | None, int]]
                   ) -> list[tuple[Hashable, list[int]]]:
    seen: list[tuple[Hashable, list[int]]] = []
    threads: set[str] = set()

    def run_batch(key: Hashable, batch: list[int]) -> None:
        threads.add(threading.current_thread().name)
        seen.append((key, list(batch)))

    async def main() -> None:
        batcher: MicroBatcher[int] = MicroBatcher(run_batch, max_batch_size=max_batch_size, max_wait_s=max_wait_s)
        await asyncio.gather(*(batcher.submit(k, i) for k, i in items))
        await batcher.aclose()

    asyncio.run(main())
    assert len(threads) == 1  # one generation thread: batches never overlap
    return seen


def test_same_key_items_share_a_batch_up_to_the_limit() -> None:
    batches = record_batches(4, 0.05, [("a", i) for i in range(10)])
    assert [b for _, b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_different_keys_never_share_a_batch_and_none_runs_alone() -> None:
    batches = record_batches(8, 0.05, [("a", 0), ("b", 1), ("a", 2), (None, 3), (None, 4)])
    assert sorted(b for _, b in batches) == [[0, 2], [1], [3], [4]]


def test_a_failing_batch_fails_its_requests_only() -> None:
    def run_batch(key: Hashable, batch: list[int]) -> None:
        if key == "bad":
            raise RuntimeError("out of memory")

    async def main() -> list[object]:
        batcher: MicroBatcher[int] = MicroBatcher(run_batch, max_wait_s=0.01)
        results = await asyncio.gather(batcher.submit("bad", 1), batcher.submit("good", 2), return_exceptions=True)
        await batcher.aclose()
        return results

    bad, good = asyncio.run(main())
    assert isinstance(bad, RuntimeError) and good is None


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda k, b: None, max_batch_size=0)
