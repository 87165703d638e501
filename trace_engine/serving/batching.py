"""An asyncio micro-batcher: requests for the same key that arrive within `max_wait_s` share one batch.

One worker task takes the oldest key, waits until its batch is full or its oldest item has waited `max_wait_s`,
and runs the batch on a single-thread executor (one model, so one batch at a time). Items that arrive while a
batch runs accumulate, so under load batches grow on their own. Work that must not interleave with a batch
(loading or unloading an adapter) goes through `run_exclusive`, on the same thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    max_batch: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.max_batch = max(self.max_batch, size)
        self.batch_sizes.append(size)
        del self.batch_sizes[:-1000]  # recent history only

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "items": self.items, "max_batch": self.max_batch,
                "recent_batch_sizes": self.batch_sizes[-32:]}


@dataclass
class _Pending(Generic[T]):
    item: T
    future: asyncio.Future[None]
    arrived: float


class MicroBatcher(Generic[T]):
    """`await submit(key, item)` returns once `run_batch(key, items)` has processed the batch holding `item`.

    A key of None never batches (each such item runs alone: e.g. a seeded sampled request, whose random draws
    would depend on its batch-mates).
    """

    def __init__(self, run_batch: Callable[[Hashable, list[T]], None], *, max_batch_size: int = 16,
                 max_wait_s: float = 0.005) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.stats = BatcherStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._pending: dict[Hashable, list[_Pending[T]]] = {}
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, key: Hashable | None, item: T) -> None:
        loop = asyncio.get_running_loop()
        self._ensure_worker()
        assert self._wake is not None
        future: asyncio.Future[None] = loop.create_future()
        self._pending.setdefault(object() if key is None else key, []).append(_Pending(item, future, loop.time()))
        self._wake.set()
        await future

    async def run_exclusive(self, fn: Callable[..., R], *args: Any) -> R:
        """Run `fn(*args)` on the generation thread, never during a batch."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for pending in self._pending.values():
            for p in pending:
                if not p.future.done():
                    p.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            key = next(iter(self._pending))
            await self._fill(key, loop)
            queue = self._pending[key]
            batch, rest = queue[: self.max_batch_size], queue[self.max_batch_size :]
            if rest:
                self._pending[key] = rest
            else:
                del self._pending[key]
            live = [p for p in batch if not p.future.done()]  # a cancelled request is not generated
            if not live:
                continue
            self.stats.record(len(live))
            try:
                await loop.run_in_executor(self._executor, self.run_batch, key, [p.item for p in live])
            except Exception as exc:  # noqa: BLE001 - the batch's error belongs to its requests
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
            else:
                for p in live:
                    if not p.future.done():
                        p.future.set_result(None)

    async def _fill(self, key: Hashable, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the key's batch is full or its oldest item has waited max_wait_s."""
        assert self._wake is not None
        deadline = self._pending[key][0].arrived + self.max_wait_s
        while len(self._pending[key]) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
