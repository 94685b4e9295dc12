"""Alternating rounds: every round measures every contender, in an order reversed every other round, so that the
machine's drift between rounds falls on both sides of each comparison alike; and the spread of per-round values.

Used by ``bench.py --metrics-overhead`` (metrics on and off), ``bench.py --v2`` (V2 against the JSON API) and
``bench_goals.py`` (the fast-path goals)."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Round", "alternating_rounds", "loadavg", "round_order", "spread"]

T = TypeVar("T")


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """``names`` in their order on even rounds and reversed on odd ones: no contender always runs first."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as the results files print them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


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


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Median, min and max of the per-round values, NaN (not measured) left out; all None when none is left."""
    measured = [v for v in values if not math.isnan(v)]
    if not measured:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(measured), "min": min(measured), "max": max(measured)}
