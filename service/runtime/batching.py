"""Coalescing of concurrent engine calls: many requests, few batched calls, a small pool of engine threads.

::

    event loop                                                   engine threads (``threads``)
    run(key, fn, items) ─► pending units ─► take a same-key batch ─► fn(merged items) ─► split ─► each future
                           (FIFO)           (≤ a fair share, ≤ max_records)

Concurrent requests with the same ``key`` (e.g. the same explanation settings) are merged into one call of
``fn`` on a worker thread, and each request gets its own slice of the answers back. This is only correct for
functions whose answer for an item does not depend on the other items of the call; the engine's answers for a
record never depend on its batch neighbours (tested), so the results are exactly those of unbatched calls.

- Batching is *natural*: with ``window_s = 0`` nothing waits on purpose. Units submitted in the same turn of
  the event loop are merged, and while every thread is busy the queue fills and the next free thread takes a
  batch. With ``window_s > 0`` a dispatch waits up to that long for more units (more merging, more latency).
- A thread takes a fair share of the pending items of the head unit's key (``⌈pending / idle threads⌉``, at
  most ``max_records``), so that a large request split into parts keeps every thread busy.
- A request with more than ``split_min`` items is split into up to ``threads`` parts (one batch request then
  uses every core).
- A merged call that raises is repeated unit by unit on the same thread, so that one bad request fails alone.
- A cancelled request (client gone) is dropped if it has not started.
- ``fn`` may be a coroutine function: the merged call then runs on the event loop, and ``threads`` only bounds
  how many such calls are in flight (one per engine process, see :mod:`service.runtime.engine_pool`).

Everything but the worker function runs on the event loop's thread; no lock is needed.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

__all__ = ["Coalescer", "CoalescerClosedError", "CoalescerStats"]

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - the item type
R = TypeVar("R")


# a batch function: items -> one answer per item, plain or as a coroutine
SyncBatchFn = Callable[[list[I]], list[R]]
AsyncBatchFn = Callable[[list[I]], Awaitable[list[R]]]
BatchFn = SyncBatchFn[I, R] | AsyncBatchFn[I, R]


class CoalescerClosedError(RuntimeError):
    """Work submitted to, or still pending in, a closed coalescer."""


@dataclass(eq=False)
class _Unit(Generic[I, R]):
    key: Hashable
    fn: BatchFn[I, R]
    items: list[I]
    future: asyncio.Future[list[R]]
    inline: bool = False
    submitted: float = 0.0  # time.perf_counter() when submitted: the queue wait ends when its batch starts


@dataclass
class CoalescerStats:
    """Counters since start: calls made, units and items they carried (items / calls = mean batch size)."""

    calls: int = 0
    units: int = 0
    items: int = 0
    max_items: int = 0


def _check_count(answers: Sequence[Any], merged: Sequence[Any]) -> None:
    if len(answers) != len(merged):
        raise RuntimeError(f"a coalesced call returned {len(answers)} answers for {len(merged)} items")


def _per_unit(units: Sequence[_Unit[I, R]], answers: Sequence[R]) -> list[tuple[bool, Any]]:
    """Slice the merged call's answers back into one ``(True, answers)`` per unit, in order."""
    out: list[tuple[bool, Any]] = []
    start = 0
    for unit in units:
        out.append((True, answers[start : start + len(unit.items)]))
        start += len(unit.items)
    return out


async def _run_batch_async(fn: AsyncBatchFn[I, R], units: Sequence[_Unit[I, R]]) -> list[tuple[bool, Any]]:
    """:func:`_run_batch` for a coroutine function, on the event loop."""
    merged = [item for unit in units for item in unit.items]
    try:
        answers = await fn(merged)
        _check_count(answers, merged)
    except Exception as exc:
        if len(units) == 1:
            return [(False, exc)]
        out: list[tuple[bool, Any]] = []
        for unit in units:
            try:
                out.append((True, await fn(unit.items)))
            except Exception as unit_exc:
                out.append((False, unit_exc))
        return out
    return _per_unit(units, answers)


def _run_batch(fn: SyncBatchFn[I, R], units: Sequence[_Unit[I, R]]) -> list[tuple[bool, Any]]:
    """On a worker thread: one call for all ``units``; per unit ``(True, answers)`` or ``(False, exception)``."""
    merged = [item for unit in units for item in unit.items]
    try:
        answers = fn(merged)
        _check_count(answers, merged)
    except Exception as exc:
        if len(units) == 1:
            return [(False, exc)]
        out: list[tuple[bool, Any]] = []
        for unit in units:  # one bad request must not fail its batch neighbours: each on its own
            try:
                out.append((True, fn(unit.items)))
            except Exception as unit_exc:
                out.append((False, unit_exc))
        return out
    return _per_unit(units, answers)


class Coalescer:
    """Merges concurrent calls with the same key into batched calls on ``threads`` worker threads.

    Args:
        threads: worker threads (each runs one batched call at a time).
        slots: most batched calls in flight (``None``: ``threads``). A coroutine function's call holds a slot
            from start to end, but may use a worker thread for part of it only (:meth:`call`); one slot more
            than threads then lets the event loop prepare the next batch while the threads compute.
        max_records: most items in one batched call.
        window_s: how long a dispatch may wait for more units (0: no waiting, natural batching only).
        split_min: a request with more items than this is split across the threads.
        thread_name_prefix: names of the worker threads.
        on_batch: called on the event loop as each batched call starts, with its key, its item count and the
            queue wait in seconds of each unit it carries (for metrics; must be quick and must not raise).
    """

    def __init__(
        self,
        *,
        threads: int = 1,
        slots: int | None = None,
        max_records: int = 64,
        window_s: float = 0.0,
        split_min: int = 8,
        thread_name_prefix: str = "gshap-engine",
        on_batch: Callable[[Hashable, int, list[float]], None] | None = None,
    ) -> None:
        slots = threads if slots is None else slots
        if threads < 1 or slots < 1 or max_records < 1 or window_s < 0 or split_min < 1:
            raise ValueError("threads, slots, max_records and split_min must be positive and window_s nonnegative")
        self.threads = threads
        self.max_records = max_records
        self.window_s = window_s
        self.split_min = split_min
        self.stats = CoalescerStats()
        self.on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=thread_name_prefix)
        self._pending: deque[_Unit[Any, Any]] = deque()
        self._idle = slots
        self._flush: asyncio.Handle | None = None
        self._closed = False

    # ---- public ---------------------------------------------------------------------------------------------

    async def run(self, key: Hashable, fn: BatchFn[I, R], items: Sequence[I], *, inline: bool = False) -> list[R]:
        """``fn(items)``, possibly merged with concurrent calls of the same ``key``.

        Calls with equal keys must pass interchangeable functions (the batch runs the first one's ``fn``).

        ``inline=True`` runs the merged call on the event loop's thread instead of a worker (for work so small
        that a thread hop costs more than the work itself); it is still merged with its same-turn neighbours.
        """
        if self._closed:
            raise CoalescerClosedError("the engine is shutting down")
        items = list(items)
        if not items:
            return []
        parts = 1 if inline else min(self.threads, math.ceil(len(items) / self.split_min))
        if parts <= 1:
            return await self._submit(key, fn, items, inline)
        bounds = [round(i * len(items) / parts) for i in range(parts + 1)]
        answers = await asyncio.gather(
            *(self._submit(key, fn, items[a:b], inline) for a, b in itertools.pairwise(bounds))
        )
        return [answer for part in answers for answer in part]

    async def call(self, fn: Callable[..., T], /, *args: object) -> T:
        """``fn(*args)`` on a worker thread, outside any batch, without blocking the event loop: the hot path of
        every merged explanation (the engine's arithmetic inside a coroutine batch function), and the warm-up."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def on_every_thread(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` once on each worker thread (e.g. to warm up thread-local buffers)."""
        barrier = threading.Barrier(self.threads, timeout=60)

        def each() -> None:
            fn()
            barrier.wait()  # holds this thread until every thread has taken one call

        await asyncio.gather(*(self.call(each) for _ in range(self.threads)))

    def close(self) -> None:
        """Refuse new work, fail what has not started; running calls finish on their threads."""
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        while self._pending:
            unit = self._pending.popleft()
            if not unit.future.done():
                unit.future.set_exception(CoalescerClosedError("the engine is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- dispatch (event loop thread only) ------------------------------------------------------------------

    def _submit(self, key: Hashable, fn: BatchFn[I, R], items: list[I], inline: bool) -> asyncio.Future[list[R]]:
        loop = asyncio.get_running_loop()
        unit: _Unit[I, R] = _Unit(key, fn, items, loop.create_future(), inline, time.perf_counter())
        self._pending.append(unit)
        if self._flush is None:
            if self.window_s > 0:
                self._flush = loop.call_later(self.window_s, self._dispatch)
            else:
                # the next turn of the loop: units submitted in this turn are merged, nothing waits longer
                self._flush = loop.call_soon(self._dispatch)
        elif self.window_s > 0 and sum(len(u.items) for u in self._pending) >= self.max_records:
            self._flush.cancel()
            self._flush = loop.call_soon(self._dispatch)
        return unit.future

    def _take(self, share_of: int) -> list[_Unit[Any, Any]]:
        """The head unit and the later pending units of its key, up to a fair share of items."""
        head = self._pending[0]
        same = [u for u in self._pending if u.key == head.key and u.inline == head.inline]
        cap = min(self.max_records, max(1, math.ceil(sum(len(u.items) for u in same) / share_of)))
        batch: list[_Unit[Any, Any]] = []
        n = 0
        for unit in same:
            if batch and n + len(unit.items) > cap:
                continue
            batch.append(unit)
            n += len(unit.items)
        taken = set(map(id, batch))
        self._pending = deque(u for u in self._pending if id(u) not in taken)
        return batch

    def _dispatch(self) -> None:
        self._flush = None
        # requests whose client went away before their turn cost nothing
        self._pending = deque(u for u in self._pending if not u.future.cancelled())
        while self._pending:
            head = self._pending[0]
            if head.inline:  # on this thread, now: every same-turn unit of its key in one call
                batch = self._take(1)
                self._count(batch)
                self._finish(batch, _run_batch(cast("SyncBatchFn[Any, Any]", head.fn), batch))
                continue
            if self._idle == 0:
                return  # a finishing thread dispatches again
            batch = self._take(self._idle)
            self._idle -= 1
            self._count(batch)
            job: asyncio.Future[list[tuple[bool, Any]]]
            if inspect.iscoroutinefunction(head.fn):  # its slot is a concurrency bound, not a thread
                job = asyncio.ensure_future(_run_batch_async(cast("AsyncBatchFn[Any, Any]", head.fn), batch))
            else:
                sync_fn = cast("SyncBatchFn[Any, Any]", head.fn)
                job = asyncio.get_running_loop().run_in_executor(self._executor, _run_batch, sync_fn, batch)
            job.add_done_callback(functools.partial(self._done, batch))

    def _done(self, batch: list[_Unit[Any, Any]], job: asyncio.Future[list[tuple[bool, Any]]]) -> None:
        self._idle += 1
        outcomes: list[tuple[bool, Any]]
        if job.cancelled():
            outcomes = [(False, CoalescerClosedError("the engine is shutting down"))] * len(batch)
        elif job.exception() is not None:
            outcomes = [(False, job.exception())] * len(batch)
        else:
            outcomes = job.result()
        self._finish(batch, outcomes)
        if self._pending and not self._closed:
            self._dispatch()

    @staticmethod
    def _finish(batch: Sequence[_Unit[Any, Any]], outcomes: Sequence[tuple[bool, Any]]) -> None:
        for unit, (ok, value) in zip(batch, outcomes, strict=True):
            if unit.future.done():  # cancelled meanwhile
                continue
            if ok:
                unit.future.set_result(value)
            else:
                unit.future.set_exception(value)

    def _count(self, batch: Sequence[_Unit[Any, Any]]) -> None:
        n = sum(len(u.items) for u in batch)
        s = self.stats
        s.calls += 1
        s.units += len(batch)
        s.items += n
        s.max_items = max(s.max_items, n)
        if self.on_batch is not None:
            now = time.perf_counter()
            self.on_batch(batch[0].key, n, [now - u.submitted for u in batch])
