"""Coalescing of concurrent engine calls: merged calls, fair splitting, isolation of failures, identical answers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.config import Settings
from service.runtime.batching import Coalescer, CoalescerClosedError
from service.runtime.inference import ExplainOptions, InferenceRuntime


class Recorder:
    """A batch function that records the batches it was called with (and on which thread)."""

    def __init__(self, fail_on: object = None, delay: float = 0.0) -> None:
        self.calls: list[list[Any]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, items: list[Any]) -> list[Any]:
        with self._lock:
            self.calls.append(list(items))
            self.threads.add(threading.current_thread().name)
        if self.delay:
            threading.Event().wait(self.delay)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [("answer", item) for item in items]


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def test_same_turn_requests_with_equal_keys_become_one_call() -> None:
    """Requests submitted in one event-loop turn with the same key are merged; each gets its own answers."""
    fn = Recorder()

    async def main() -> list[Any]:
        co = Coalescer(threads=1, max_records=64)
        try:
            return list(await asyncio.gather(*(co.run("k", fn, [i, i + 100]) for i in range(5))))
        finally:
            co.close()

    answers = run(main)
    assert answers == [[("answer", i), ("answer", i + 100)] for i in range(5)]
    assert len(fn.calls) == 1
    assert sorted(fn.calls[0]) == sorted([i for i in range(5)] + [i + 100 for i in range(5)])


def test_different_keys_are_never_merged() -> None:
    """Requests with different settings (keys) go to separate calls."""
    fn_a, fn_b = Recorder(), Recorder()

    async def main() -> None:
        co = Coalescer(threads=1)
        try:
            await asyncio.gather(co.run("a", fn_a, [1]), co.run("b", fn_b, [2]), co.run("a", fn_a, [3]))
        finally:
            co.close()

    run(main)
    assert fn_a.calls == [[1, 3]]
    assert fn_b.calls == [[2]]


def test_max_records_bounds_a_merged_call() -> None:
    """No call carries more than max_records items (a single larger request is the only exception)."""
    fn = Recorder()

    async def main() -> None:
        co = Coalescer(threads=1, max_records=4)
        try:
            await asyncio.gather(*(co.run("k", fn, [i]) for i in range(10)))
        finally:
            co.close()

    run(main)
    assert [len(c) for c in fn.calls] == [4, 4, 2]


def test_a_large_request_is_split_across_the_threads() -> None:
    """A batch request is cut into one part per thread, run in parallel, and reassembled in order."""
    fn = Recorder(delay=0.05)

    async def main() -> list[Any]:
        co = Coalescer(threads=2, split_min=8)
        try:
            return await co.run("k", fn, list(range(100)))
        finally:
            co.close()

    answers = run(main)
    assert answers == [("answer", i) for i in range(100)]
    assert sorted(len(c) for c in fn.calls) == [50, 50]
    assert len(fn.threads) == 2


def test_a_failing_request_fails_alone() -> None:
    """When a merged call raises, its requests are retried one by one: only the bad one gets the error."""
    fn = Recorder(fail_on=3)

    async def main() -> list[Any]:
        co = Coalescer(threads=1)
        try:
            return list(await asyncio.gather(*(co.run("k", fn, [i]) for i in range(5)), return_exceptions=True))
        finally:
            co.close()

    answers = run(main)
    assert isinstance(answers[3], ValueError)
    assert [a for i, a in enumerate(answers) if i != 3] == [[("answer", i)] for i in (0, 1, 2, 4)]


def test_inline_calls_run_on_the_loop_thread_merged() -> None:
    """inline=True merges same-turn requests and runs them on the event loop's thread, not a worker."""
    fn = Recorder()

    async def main() -> list[Any]:
        co = Coalescer(threads=2)
        try:
            return list(await asyncio.gather(*(co.run("p", fn, [i], inline=True) for i in range(3))))
        finally:
            co.close()

    assert run(main) == [[("answer", i)] for i in range(3)]
    assert fn.calls == [[0, 1, 2]]
    assert fn.threads == {threading.main_thread().name}


def test_closed_coalescer_refuses_work() -> None:
    """After close(), new work is refused with CoalescerClosedError."""

    async def main() -> None:
        co = Coalescer(threads=1)
        co.close()
        with pytest.raises(CoalescerClosedError):
            await co.run("k", Recorder(), [1])

    run(main)


def test_cancelled_request_is_dropped_before_it_runs() -> None:
    """A request whose client went away before dispatch costs no engine time."""
    fn = Recorder()

    async def main() -> None:
        co = Coalescer(threads=1)
        try:
            doomed = asyncio.ensure_future(co.run("k", fn, ["gone"]))
            await asyncio.sleep(0)  # submitted, not yet dispatched
            doomed.cancel()
            assert await co.run("k", fn, ["kept"]) == [("answer", "kept")]
        finally:
            co.close()

    run(main)
    assert fn.calls == [["kept"]]


# ---- the real runtime: racing requests get exactly the unloaded answers ----------------------------------------

RACE_OPTIONS = [
    ExplainOptions(),
    ExplainOptions(method="sampled", n_samples=200, seed=7),
    ExplainOptions(method="sampled", n_samples=64, seed=7, output="probability"),
]


def _records(bundle: Any, n: int) -> list[dict[str, Any]]:
    import math

    out = []
    for row in bundle.eval_raw[:n]:
        out.append(
            {
                f.name: (None if math.isnan(v) else (int(v) if f.integer else float(v)))
                for f, v in zip(bundle.spec, row, strict=True)
            }
        )
    return out


def test_racing_requests_get_exactly_the_unloaded_answers(bundle: Any) -> None:
    """Concurrent explanations (merged and split on 2 threads) equal one-at-a-time answers, bit for bit."""
    records = _records(bundle, 12)
    runtime = InferenceRuntime(bundle, engine_threads=2, max_coalesce=5)
    alone = {(i, o): runtime.explain([r], o)[0] for i, r in enumerate(records) for o in RACE_OPTIONS}

    async def main() -> tuple[list[Any], list[Any]]:
        await runtime.start()
        jobs = [runtime.aexplain([records[i]], o) for (i, o) in alone] * 3
        raced = await asyncio.gather(*jobs)
        batched = await asyncio.gather(*(runtime.aexplain(records, o) for o in RACE_OPTIONS))
        return raced, batched

    try:
        raced, batched = run(main)
    finally:
        runtime.close()
    assert runtime.coalescer.stats.max_items > 1  # requests really were merged
    for (key, expected), [got] in zip(list(alone.items()) * 3, raced, strict=True):
        assert got == expected, key
    for o, answers in zip(RACE_OPTIONS, batched, strict=True):
        assert answers == [alone[(i, o)] for i in range(len(records))]


def test_racing_http_requests_match_the_unloaded_answer(bundle: Any) -> None:
    """Through the app: the same seeded request, sent alone and then 40 times at once, answers identically."""
    records = _records(bundle, 4)
    app = create_app(Settings(engine_threads=2, log_level="warning"), bundle)

    async def main() -> tuple[dict[Any, Any], list[Any]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                bodies = [{**r, "method": "sampled", "n_samples": 100, "seed": 11} for r in records]
                bodies += [dict(r) for r in records]
                alone = {}
                for i, body in enumerate(bodies):
                    resp = await client.post("/explain", json=body)
                    assert resp.status_code == 200
                    alone[i] = resp.json()
                raced = await asyncio.gather(
                    *(client.post("/explain", json=bodies[i % len(bodies)]) for i in range(40))
                )
                return alone, raced

    alone, raced = run(main)
    for i, resp in enumerate(raced):
        assert resp.status_code == 200
        assert resp.json() == alone[i % len(alone)]


def test_coroutine_batch_functions_are_merged_and_bounded() -> None:
    """An async batch function runs on the loop; ``threads`` bounds how many merged calls are in flight."""
    in_flight = 0
    peak = 0
    calls: list[list[int]] = []

    async def fn(items: list[int]) -> list[int]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        calls.append(list(items))
        await asyncio.sleep(0.01)
        in_flight -= 1
        return [i * 2 for i in items]

    async def main() -> list[Any]:
        co = Coalescer(threads=2)
        try:
            return list(await asyncio.gather(*(co.run("k", fn, [i]) for i in range(10))))
        finally:
            co.close()

    assert run(main) == [[i * 2] for i in range(10)]
    assert peak == 2
    assert sorted(i for c in calls for i in c) == list(range(10))


def test_slots_bound_calls_in_flight_and_threads_bound_the_work() -> None:
    """With one thread and two slots, two merged calls are in flight at once (one prepares on the loop while the
    other computes) but their thread work never overlaps: the slot count, not the thread count, bounds calls."""
    in_flight = 0
    peak_calls = 0
    on_thread = 0
    peak_thread = 0
    lock = threading.Lock()

    def work(items: list[int]) -> list[int]:
        nonlocal on_thread, peak_thread
        with lock:
            on_thread += 1
            peak_thread = max(peak_thread, on_thread)
        threading.Event().wait(0.01)
        with lock:
            on_thread -= 1
        return [i + 1 for i in items]

    async def main() -> list[Any]:
        co = Coalescer(threads=1, slots=2, max_records=2)

        async def fn(items: list[int]) -> list[int]:
            nonlocal in_flight, peak_calls
            in_flight += 1
            peak_calls = max(peak_calls, in_flight)
            await asyncio.sleep(0.005)  # the loop's part of the call
            out = await co.call(work, items)
            in_flight -= 1
            return out

        try:
            return list(await asyncio.gather(*(co.run("k", fn, [i]) for i in range(8))))
        finally:
            co.close()

    assert run(main) == [[i + 1] for i in range(8)]
    assert peak_calls == 2
    assert peak_thread == 1
    with pytest.raises(ValueError, match="slots"):
        Coalescer(threads=1, slots=0)


# ---- engine processes ------------------------------------------------------------------------------------------


def test_engine_processes_answer_exactly_like_the_parent(bundle: Any) -> None:
    """Explanations computed in forked engine processes equal the in-process ones bit for bit, merged or not."""
    records = _records(bundle, 10)
    local = InferenceRuntime(bundle, engine_threads=1)
    pooled = InferenceRuntime(bundle, engine_processes=2)
    expected = {o: local.explain(records, o) for o in RACE_OPTIONS}

    async def main() -> dict[ExplainOptions, list[Any]]:
        await pooled.start()
        assert pooled.pool is not None
        assert pooled.pool.alive() == 2
        singles = await asyncio.gather(*(pooled.aexplain([r], o) for o in RACE_OPTIONS for r in records))
        out: dict[ExplainOptions, list[Any]] = {o: [] for o in RACE_OPTIONS}
        for k, o in enumerate(RACE_OPTIONS):
            out[o] = [s[0] for s in singles[k * len(records) : (k + 1) * len(records)]]
            assert await pooled.aexplain(records, o) == expected[o]  # split across both processes
        return out

    try:
        got = run(main)
    finally:
        pooled.close()
    assert got == expected
    assert pooled.pool is not None
    assert pooled.pool.alive() == 0  # closed: no child left behind


def test_a_dead_engine_process_costs_speed_not_answers(bundle: Any) -> None:
    """When an engine process dies, its calls are computed in the server, with the same answers."""
    import os
    import signal

    records = _records(bundle, 3)
    local = InferenceRuntime(bundle, engine_threads=1)
    pooled = InferenceRuntime(bundle, engine_processes=1)
    options = RACE_OPTIONS[1]

    async def main() -> list[Any]:
        await pooled.start()
        assert pooled.pool is not None
        os.kill(pooled.pool.pids[0], signal.SIGKILL)
        await asyncio.sleep(0.2)
        first = await pooled.aexplain(records, options)
        second = await pooled.aexplain(records, options)
        assert pooled.pool.fallbacks == 2
        return [first, second]

    try:
        first, second = run(main)
    finally:
        pooled.close()
    assert first == second == local.explain(records, options)
