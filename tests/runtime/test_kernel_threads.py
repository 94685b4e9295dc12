"""The exact kernel on C threads of its own (``_exact.Runner``) and its event-loop driver (``KernelThreads``):
the same bits as the direct call, every call answered once, bad buffers refused by name, a clean close."""

from __future__ import annotations

import asyncio
import select
import sys

import numpy as np
import pytest

from service.engine.exact_kernel import ExactKernel
from service.model.store import load_bundle
from service.runtime.inference import ExplainOptions, InferenceRuntime
from service.runtime.kernel_threads import KernelThreads


def random_kernel(seed: int, widths: tuple[int, ...] = (12, 9, 7), features: int = 6, k: int = 5) -> ExactKernel:
    """A leaky-ReLU network of three hidden layers (the general walk, not the two-layer loop) and K baselines."""
    rng = np.random.default_rng(seed)
    sizes = (features, *widths, 1)
    weights = [rng.normal(size=(sizes[i + 1], sizes[i])) for i in range(len(sizes) - 1)]
    biases = [rng.normal(size=sizes[i + 1]) * 0.3 for i in range(len(sizes) - 1)]
    baselines = rng.normal(size=(k, features))
    bw = rng.random(k)
    return ExactKernel(weights, biases, baselines, bw / bw.sum(), slopes=[0.0, 0.1, 0.0])


def rows(seed: int, n: int, features: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, features))


def drain(runner: object, expected: int, timeout: float = 10.0) -> list[object]:
    """Every token of ``expected`` calls, waiting on the runner's pipe as an event loop would."""
    got: list[object] = []
    while len(got) < expected:
        readable, _, _ = select.select([runner.fileno()], [], [], timeout)  # type: ignore[attr-defined]
        assert readable, f"the pipe stayed silent with {expected - len(got)} calls outstanding"
        got += runner.collect()  # type: ignore[attr-defined]
    return got


@pytest.mark.parametrize("threads", [1, 2])
def test_runner_answers_are_the_direct_calls_bits(threads: int) -> None:
    """Property: calls of 1 to 7 rows submitted to the runner write the same attributions and logits, bit for bit,
    as ``ExactKernel.explain`` on the same rows, on one thread or two, and each token comes back exactly once."""
    kernel = random_kernel(1)
    runner = kernel.runner(threads)
    assert runner.threads == threads
    calls = []
    for i in range(40):
        x = rows(100 + i, 1 + i % 7)
        attr, logit = np.empty_like(x), np.empty(x.shape[0])
        runner.submit(("call", i), x, attr, logit)
        calls.append((x, attr, logit))
    tokens = drain(runner, len(calls))
    assert sorted(tokens) == [("call", i) for i in range(40)]  # type: ignore[type-var]
    assert runner.pending == 0
    for x, attr, logit in calls:
        want_attr, want_logit = kernel.explain(x)
        assert attr.tobytes() == want_attr.tobytes()
        assert logit.tobytes() == want_logit.tobytes()
    runner.close()
    assert runner.threads == 0


def test_runner_answers_the_shipped_model_as_the_engine_does() -> None:
    """Property: on the shipped default bundle (two hidden layers: the two-layer loop), the runner's answers for the
    evaluation set are the engine's compiled answers, bit for bit."""
    bundle = load_bundle()
    runtime = InferenceRuntime(bundle)
    kernel = runtime.engine.compiled
    assert kernel is not None
    x = np.asarray(bundle.preprocessor.standardise(bundle.preprocessor.impute(bundle.eval_raw)), dtype=np.float64)
    runner = kernel.runner(1)
    attr, logit = np.empty_like(x), np.empty(x.shape[0])
    runner.submit(0, x, attr, logit)
    assert drain(runner, 1) == [0]
    want_attr, want_logit = kernel.explain(x)
    assert attr.tobytes() == want_attr.tobytes()
    assert logit.tobytes() == want_logit.tobytes()
    runner.close()
    runtime.close()


def test_runner_refuses_bad_buffers_by_name_and_queues_nothing() -> None:
    """Property: a call whose buffers do not fit is refused at submit with the argument's name, nothing is queued
    (pending stays 0, the pipe stays silent) and the token is not kept."""
    kernel = random_kernel(2)
    runner = kernel.runner(1)
    x = rows(3, 4)
    token = object()
    before = sys.getrefcount(token)
    with pytest.raises(ValueError, match="xs"):
        runner.submit(token, x[:, :5].copy(), np.empty((4, 5)), np.empty(4))
    with pytest.raises(ValueError, match="attr"):
        runner.submit(token, x, np.empty((3, 6)), np.empty(4))
    with pytest.raises(ValueError, match="logit"):
        runner.submit(token, x, np.empty_like(x), np.empty(5))
    read_only = np.empty_like(x)
    read_only.flags.writeable = False
    with pytest.raises(TypeError, match="attr"):
        runner.submit(token, x, read_only, np.empty(4))
    with pytest.raises(ValueError, match="xs"):
        runner.submit(token, x.astype(np.float32), np.empty_like(x), np.empty(4))
    assert runner.pending == 0
    assert sys.getrefcount(token) == before
    assert select.select([runner.fileno()], [], [], 0.05)[0] == []
    with pytest.raises(TypeError, match="submit"):
        runner.submit(token, x, np.empty_like(x))  # type: ignore[call-arg]
    runner.close()


def test_close_finishes_queued_calls_then_refuses_new_ones() -> None:
    """Property: close() computes every call still queued (collect returns them, answers correct), after which a
    submit raises RuntimeError; a runner dropped with calls uncollected frees them without crashing."""
    kernel = random_kernel(4)
    runner = kernel.runner(1)
    x = rows(5, 6)
    outs = [(np.empty_like(x), np.empty(6)) for _ in range(30)]
    for i, (attr, logit) in enumerate(outs):
        runner.submit(i, x, attr, logit)
    runner.close()
    assert sorted(runner.collect()) == list(range(30))
    want_attr, want_logit = kernel.explain(x)
    assert all(a.tobytes() == want_attr.tobytes() and lg.tobytes() == want_logit.tobytes() for a, lg in outs)
    with pytest.raises(RuntimeError, match="closed"):
        runner.submit(99, x, np.empty_like(x), np.empty(6))
    dropped = kernel.runner(2)
    for i in range(20):
        dropped.submit(i, x, np.empty_like(x), np.empty(6))
    del dropped  # joins its threads, releases the buffers and tokens of calls never collected


def test_runner_refuses_impossible_thread_counts() -> None:
    """Property: the thread count is checked (1 to 256) and named in the error."""
    kernel = random_kernel(6)
    for bad in (0, -1, 1000):
        with pytest.raises(ValueError, match="threads"):
            kernel.runner(bad)


def test_kernel_threads_answer_concurrent_calls_on_the_loop() -> None:
    """Property: concurrent awaits on one loop each get their own rows' answers (the direct call's bits); a call
    cancelled while in flight does not disturb the others, rows of the wrong shape are refused before they reach
    the threads, and the threads stop at close."""
    kernel = random_kernel(7)

    async def fallback(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError("one loop never needs the executor path")

    threads = KernelThreads(kernel, 2, fallback)
    xs = [rows(200 + i, 1 + i % 3) for i in range(64)]

    async def main() -> list[tuple[np.ndarray, np.ndarray]]:
        doomed = asyncio.ensure_future(threads.explain(rows(999, 50)))
        await asyncio.sleep(0)
        doomed.cancel()
        answers = await asyncio.gather(*(threads.explain(x) for x in xs))
        while threads.in_flight:  # the cancelled call's answer is collected and dropped
            await asyncio.sleep(0.001)
        return answers

    answers = asyncio.run(main())
    for x, (attr, logit) in zip(xs, answers, strict=True):
        want_attr, want_logit = kernel.explain(x)
        assert attr.tobytes() == want_attr.tobytes()
        assert logit.tobytes() == want_logit.tobytes()
    with pytest.raises(ValueError, match=r"\(N, 6\), got shape \(3, 5\)"):
        asyncio.run(threads.explain(rows(1, 3, features=5)))  # the kernel's own shape check, before any submit
    assert threads.in_flight == 0
    threads.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(threads.explain(xs[0]))


def test_kernel_threads_move_between_loops_and_fall_back_while_busy() -> None:
    """Property: a second event loop (tests run apps on several) gets the C threads once the first has nothing in
    flight, and while the first has calls in flight the second answers through the fallback, with the same bits."""
    kernel = random_kernel(8)
    used: list[int] = []

    async def fallback(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        used.append(len(x))
        return kernel.explain(x)

    threads = KernelThreads(kernel, 1, fallback)
    x = rows(9, 3)
    want = kernel.explain(x)

    first = asyncio.new_event_loop()
    try:
        attr, _logit = first.run_until_complete(threads.explain(x))  # binds the first loop
        assert attr.tobytes() == want[0].tobytes()
        held = first.create_task(threads.explain(rows(10, 400)))  # in flight on the first loop, not yet collected
        first.run_until_complete(asyncio.sleep(0))
        assert threads.in_flight == 1
        attr2, logit2 = asyncio.run(threads.explain(x))  # a second loop while the first is busy: the fallback
        assert used == [3]
        assert attr2.tobytes() == want[0].tobytes()
        assert logit2.tobytes() == want[1].tobytes()
        first.run_until_complete(held)
        assert threads.in_flight == 0
    finally:
        first.close()
    attr3, _ = asyncio.run(threads.explain(x))  # the first loop is gone and idle: the threads move
    assert used == [3]
    assert attr3.tobytes() == want[0].tobytes()
    threads.close()


def test_runtime_close_answers_explanations_in_flight() -> None:
    """Property: closing the runtime while explanations are in flight on the C threads still answers them (the
    queued calls finish first), with the answers of the synchronous path."""
    runtime = InferenceRuntime(load_bundle())
    record = runtime.example_record()
    options = ExplainOptions(method="exact")
    [want] = runtime.explain([record], options)

    async def main() -> list[object]:
        await runtime.start()
        tasks = [asyncio.ensure_future(runtime.aexplain([record], options)) for _ in range(6)]
        while runtime.kernel_threads is not None and runtime.kernel_threads.in_flight == 0:
            await asyncio.sleep(0)
        runtime.close()
        return [t[0] for t in await asyncio.gather(*tasks)]

    answers = asyncio.run(main())
    assert answers == [want] * 6
