"""Alternating rounds: every round measures every contender, in an order reversed every other round, so that the
machine's drift between rounds falls on both sides of each comparison alike; and the spread of per-round values.

Used by ``bench.py --metrics-overhead`` (metrics on and off), ``bench.py --v2`` (V2 against the JSON API) and
``bench_goals.py`` (the fast-path goals)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from benchkit.common import loadavg

__all__ = ["Round", "RoundsPlan", "alternating_rounds", "interleaved", "round_order", "spread"]

T = TypeVar("T")


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """``names`` in their order on even rounds and reversed on odd ones: no contender always runs first."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


@dataclass(frozen=True)
class RoundsPlan:
    """What a program of alternating rounds measures and where it writes (``bench.py --metrics-overhead``, ``--v2``)."""

    records: Sequence[dict[str, Any]]
    rounds: int
    seconds: int
    warmup: int
    concurrency: int
    extra_env: Mapping[str, str]
    json_path: Path
    md_path: Path | None
    quick: bool = False


@dataclass
class Round(Generic[T]):
    """One round: its order, the load average before it, and each contender's measurement (in measured order)."""

    index: int
    order: list[str]
    loadavg_before: str
    results: dict[str, T]


def alternating_rounds(
    names: Sequence[str],
    rounds: int,
    measure: Callable[[str], T],
    *,
    before: Callable[[int, list[str], str], None] | None = None,
    after: Callable[[Round[T]], None] | None = None,
) -> list[Round[T]]:
    """``rounds`` rounds of ``measure(name)`` for every name, in :func:`round_order`; ``before(index, order,
    loadavg)`` and ``after(round)`` are called around each round (progress lines)."""
    done: list[Round[T]] = []
    for r in range(rounds):
        order = round_order(names, r)
        load = loadavg()
        if before is not None:
            before(r, order, load)
        one = Round(r, order, load, {name: measure(name) for name in order})
        done.append(one)
        if after is not None:
            after(one)
    return done


def interleaved(
    named: Mapping[str, Callable[[], object]],
    repeats: int,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds of each callable: one warm-up call each, then ``repeats`` rounds calling each in turn, so
    that the machine's noise falls on every callable alike (``progress`` wraps the rounds, e.g. tqdm)."""
    for fn in named.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in named}
    for _ in progress(range(repeats)) if progress is not None else range(repeats):
        for name, fn in named.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Median, min and max of the per-round values, NaN (not measured) left out; all None when none is left."""
    measured = [v for v in values if not math.isnan(v)]
    if not measured:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(measured), "min": min(measured), "max": max(measured)}
