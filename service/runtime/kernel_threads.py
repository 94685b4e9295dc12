"""The compiled exact kernel on C threads of its own, driven from the event loop without a thread hop.

::

    event loop                                   C threads (``_exact.Runner``, never take the GIL)
    explain(x) ─► runner.submit(token, x, …) ─►  queue ─► Net.explain rows ─► done list ─► a byte in the pipe
    await future ◄── set_result ◄── collect() ◄── the loop's reader on the pipe ◄────────────────────────┘

On a Python worker thread (``loop.run_in_executor``), one explanation took the GIL three times: to start the call,
to come back from the C code and to hand the answer to the loop. Each time the thread waited for the loop to let
go of it, and the loop was interrupted to do so; the worker's Python frames cost about as much CPU as the kernel
itself (docs/bench/profile.md). Here the loop submits, the C threads compute, and the loop is woken by a pipe
that it already watches like any socket: one ``read`` per wake-up, however many calls finished.

The same numbers as :meth:`service.engine.exact_kernel.ExactKernel.explain` (the same C function on the same
rows). A runner serves one event loop at a time: a call from another loop (tests run apps on several) moves it
there when nothing is in flight, and otherwise answers on the calling loop through the executor, as before.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import numpy as np

from service.engine import _exact
from service.engine.exact_kernel import ExactKernel

__all__ = ["KernelThreads"]

Answer = tuple[np.ndarray, np.ndarray]


class KernelThreads:
    """:meth:`ExactKernel.explain` on ``threads`` C threads, awaited on the event loop.

    ``fallback(x)`` answers a call that cannot use the threads (from a second event loop while the first has calls
    in flight): the executor path. The threads start on the first call (after any engine process was forked) and
    stop at :meth:`close`, which finishes the calls in flight first.
    """

    def __init__(self, kernel: ExactKernel, threads: int, fallback: Callable[[np.ndarray], Awaitable[Answer]]) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.kernel = kernel
        self.threads = threads
        self._fallback = fallback
        self._runner: _exact.Runner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, tuple[asyncio.Future[Answer], np.ndarray, np.ndarray]] = {}
        self._tokens = itertools.count()
        self._closed = False
        self._fd = -1

    @property
    def in_flight(self) -> int:
        """Calls submitted and not yet answered."""
        return len(self._waiting)

    async def explain(self, x: np.ndarray) -> Answer:
        """``(N, F) float64 -> (attributions (N, F), logits (N,))``, computed on the C threads."""
        if self._closed:
            raise RuntimeError("the kernel threads are closed")
        loop = asyncio.get_running_loop()
        if loop is not self._loop and not self._bind(loop):
            return await self._fallback(x)
        runner = self._runner
        assert runner is not None
        xs = self.kernel.rows(x)
        attr = np.empty_like(xs)
        logit = np.empty(xs.shape[0])
        token = next(self._tokens)
        future: asyncio.Future[Answer] = loop.create_future()
        runner.submit(token, xs, attr, logit)  # xs stays alive: the runner holds its buffer until collected
        self._waiting[token] = (future, attr, logit)
        return await future

    def _bind(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Watch the runner's pipe from ``loop`` (starting the runner on first use); False while calls of another
        loop are in flight."""
        if self._waiting:
            return False
        if self._runner is None:
            self._runner = self.kernel.runner(self.threads)
        old, self._loop = self._loop, loop
        if old is not None and not old.is_closed() and not old.is_running():
            old.remove_reader(self._runner.fileno())
        # a reader left on a loop that is still running elsewhere removes itself on its next wake-up (_on_ready)
        self._fd = self._runner.fileno()
        loop.add_reader(self._fd, self._on_ready)
        return True

    def _on_ready(self) -> None:
        loop = asyncio.get_running_loop()
        if self._runner is None or loop is not self._loop:  # closed, or a loop this runner has moved away from
            loop.remove_reader(self._fd)
            return
        self._finish(self._runner.collect())

    def _finish(self, tokens: list[int]) -> None:
        for token in tokens:
            future, attr, logit = self._waiting.pop(token)
            if not future.done():  # cancelled (client gone): the answer is dropped
                future.set_result((attr, logit))

    def close(self) -> None:
        """Finish the calls in flight (their futures get their answers), stop the threads, stop watching."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is None:
            return
        runner.close()  # the queued calls are computed first
        tokens = runner.collect()
        loop = self._loop
        if loop is None or loop.is_closed():
            self._waiting.clear()
            return

        def finish() -> None:  # on the loop's thread; keeps the runner (and so its pipe) alive until then
            loop.remove_reader(runner.fileno())
            self._finish(tokens)

        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop or not loop.is_running():
            finish()
        else:
            loop.call_soon_threadsafe(finish)
