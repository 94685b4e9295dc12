"""The engine's arithmetic in forked worker processes, driven from the event loop: more cores, no GIL contention.

In one process the event loop, the request handling and the engine threads share one GIL. Every torch operation
releases it, and every operation must take it back: while the event loop is busy with HTTP, an engine thread
waits for the GIL tens of times per record, so the engine ran far below its in-process speed under load (a torch
thread beside a busy Python thread does several times fewer operations). :class:`EngineProcessPool` forks ``processes``
children once the engine is built; each holds a copy-on-write copy of it and answers ``engine.explain(x, ...)``
calls sent over a pipe. The parent talks to them from the event loop itself (a reader callback per pipe), so no
thread of the parent ever waits for the GIL on their behalf. Only the arithmetic moves: the parent still
validates, preprocesses, predicts and writes the answers, and ``x`` and the
:class:`~service.engine.gradient_shap.Explanation` travel as small numpy arrays.

::

    event loop (parent) ──(x, settings)──►  child: engine.explain(x, ...)  (one torch thread)
           ▲                                     │
           └──── reader callback ◄──Explanation──┘

The children run the same code on the same weights with one torch thread: their answers are bit-identical to
the parent's (tested). At most one call is in flight per child (the coalescer has one slot per child). A child
that dies is not replaced; its calls are computed in the parent (on a thread, with the same answers) and the
event is logged. The children ignore SIGINT/SIGTERM (the parent's lifespan stops them) and exit when their pipe
closes, so they never outlive the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import signal
import sys
from collections import deque
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

import numpy as np

from service.engine.gradient_shap import Explanation, GradientShapEngine, set_torch_threads

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("gshap")

__all__ = ["EngineProcessPool"]

_STOP = None
Connection = multiprocessing.connection.Connection


def _serve_engine(conn: Connection, engine: GradientShapEngine) -> None:
    """The child's loop: ``(x, kwargs)`` in, ``(True, Explanation)`` or ``(False, exception)`` out, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    set_torch_threads(1)  # now if torch is loaded, else when an estimator first needs it
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message is _STOP:
            break
        x, kwargs = message
        try:
            answer: tuple[bool, Any] = (True, engine.explain(x, **kwargs))
        except Exception as exc:
            answer = (False, exc)
        try:
            conn.send(answer)
        except (BrokenPipeError, OSError):
            break
    conn.close()


class _Child:
    def __init__(self, index: int, proc: BaseProcess, conn: Connection) -> None:
        self.index = index
        self.proc = proc
        self.conn = conn
        self.alive = True
        self.waiting: asyncio.Future[Explanation] | None = None


class EngineProcessPool:
    """``processes`` forked children running ``engine.explain``, called with :meth:`aexplain` on the event loop."""

    def __init__(self, engine: GradientShapEngine, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        if "fork" not in multiprocessing.get_all_start_methods():
            raise RuntimeError("engine processes need the fork start method (Linux, macOS)")
        self.engine = engine
        self.processes = processes
        self.fallbacks = 0  # calls computed in the parent because their child had died
        self._children: list[_Child] = []
        self._free: deque[_Child] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children if c.proc.pid is not None]

    def alive(self) -> int:
        """Children still running."""
        return sum(1 for c in self._children if c.alive and c.proc.is_alive())

    def start(self, warm_up: np.ndarray | None = None) -> None:
        """Fork the children and attach their pipes to the running event loop (call from the loop's thread, before
        any thread of the parent runs torch). ``warm_up`` rows are explained once by each child, by method."""
        self._loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("fork")
        for i in range(self.processes):
            parent_end, child_end = ctx.Pipe(duplex=True)
            proc = ctx.Process(
                target=_serve_engine, args=(child_end, self.engine), name=f"gshap-engine-{i}", daemon=True
            )
            proc.start()
            child_end.close()
            self._children.append(_Child(i, proc, parent_end))
        if warm_up is not None:  # every method once in every child: first-call costs are paid before ready
            for kwargs in ({"method": "exact"}, {"method": "sampled", "n_samples": 8}, {"method": "quadrature"}):
                if kwargs["method"] == "exact" and not self.engine.is_piecewise_linear:
                    continue  # a network without exact explanations (the bundle does not offer them)
                if self.engine.needs_torch(str(kwargs["method"])) and "torch" not in sys.modules:
                    continue  # loads torch: warmed up by the first request that asks for it
                for child in self._children:
                    child.conn.send((warm_up, kwargs))
                for child in self._children:
                    ok, value = child.conn.recv()
                    if not ok:
                        raise value
        for child in self._children:
            self._loop.add_reader(child.conn.fileno(), self._on_readable, child)
            self._free.append(child)

    async def aexplain(self, x: torch.Tensor | np.ndarray, **kwargs: Any) -> Explanation:
        """``engine.explain(x, **kwargs)`` in a free child; at most :attr:`processes` calls may be in flight."""
        if not self._free:
            raise RuntimeError("every engine process is busy (the caller must bound its concurrency)")
        child = self._free.popleft()
        loop = asyncio.get_running_loop()
        if not child.alive:
            self._free.append(child)
            return await self._here(x, kwargs)
        x_np = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)  # plain pickling, no torch sharing
        child.waiting = loop.create_future()
        try:
            child.conn.send((x_np, kwargs))
        except (BrokenPipeError, OSError):
            child.waiting = None
            self._lost(child)
            return await self._here(x, kwargs)
        try:
            return await child.waiting
        except _ChildLostError:
            return await self._here(x, kwargs)

    def _on_readable(self, child: _Child) -> None:
        waiting, child.waiting = child.waiting, None
        try:
            ok, value = child.conn.recv()
        except (EOFError, OSError):
            self._lost(child)
            if waiting is not None and not waiting.done():
                waiting.set_exception(_ChildLostError())
            return
        self._free.append(child)
        if waiting is None or waiting.done():
            return
        if ok:
            waiting.set_result(value)
        else:
            waiting.set_exception(value)

    def _lost(self, child: _Child) -> None:
        child.alive = False
        if self._loop is not None:
            self._loop.remove_reader(child.conn.fileno())
        child.conn.close()
        if child not in self._free:  # its slot stays: its calls are computed here from now on
            self._free.append(child)
        # the "gshap" logger, whose JSON formatter the web layer installs; "fields" is what that formatter prints
        logger.warning("engine_process_lost", extra={"fields": {"process": child.index, "alive": self.alive()}})

    async def _here(self, x: torch.Tensor | np.ndarray, kwargs: dict[str, Any]) -> Explanation:
        self.fallbacks += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.engine.explain(x, **kwargs))

    def close(self, timeout: float = 5.0) -> None:
        """Ask every child to stop, wait a little, then kill the ones still running."""
        for child in self._children:
            if child.alive:
                if self._loop is not None and not self._loop.is_closed():
                    with contextlib.suppress(ValueError, OSError):
                        self._loop.remove_reader(child.conn.fileno())
                with contextlib.suppress(BrokenPipeError, OSError):
                    child.conn.send(_STOP)
                child.conn.close()
            if child.waiting is not None and not child.waiting.done():
                child.waiting.set_exception(_ChildLostError())
        for child in self._children:
            child.proc.join(timeout)
            if child.proc.is_alive():
                child.proc.kill()
                child.proc.join(1.0)
        self._children.clear()
        self._free.clear()


class _ChildLostError(Exception):
    """The child died with a call in flight."""
