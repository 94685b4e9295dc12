"""What each chart shows: rows, order, colours, intervals, reference lines and words; drawn by .svg and .mpl.

A :class:`BarChart` is a list of horizontal bars, top to bottom. A bar runs from ``start`` to ``end`` (a
waterfall's bars start where the previous one ended; a group's bars start at 0) and may carry an interval
(``low``..``high``) and a value text. Red bars push toward the positive class, blue ones away from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.contract import format_value, sigmoid

__all__ = [
    "DOWN",
    "GROUP_TITLES",
    "NEUTRAL",
    "UP",
    "Bar",
    "BarChart",
    "Contribution",
    "Marker",
    "group_chart",
    "group_titles",
    "influence_chart",
    "sign_legend",
    "waterfall_chart",
]

UP, DOWN, NEUTRAL = "#c0392b", "#2471a3", "#7d3c98"  # toward the positive class / away from it / unsigned

POSITIVE, NEGATIVE = "positive", "negative"
"""The words for the two classes when a chart is not told the model's (``positive=``, ``negative=``)."""


def group_titles(positive: str = POSITIVE, negative: str = NEGATIVE) -> dict[str, str]:
    """The outcome groups' titles in the model's words (its positive and negative labels)."""
    return {
        "TP": f"True positives ({positive}, predicted {positive})",
        "TN": f"True negatives ({negative}, predicted {negative})",
        "FP": f"False positives ({negative}, predicted {positive})",
        "FN": f"False negatives ({positive}, predicted {negative})",
        "ALL": "All evaluation records",
    }


GROUP_TITLES = group_titles()


def sign_legend(positive: str = POSITIVE) -> str:
    """What the colours mean, in the model's words."""
    return f"red: pushes toward {positive} · blue: pushes away · relative to the base value"


@dataclass(frozen=True)
class Bar:
    """One row: a bar from ``start`` to ``end``, its row label, value text and optional interval."""

    key: str  # the API feature name (data-feature in SVG)
    label: str
    start: float
    end: float
    text: str = ""
    low: float | None = None
    high: float | None = None
    colour: str | None = None  # None: by sign (UP/DOWN)
    note: str = ""  # a sentence for screen readers and tooltips

    @property
    def fill(self) -> str:
        return self.colour or (UP if self.end > self.start else DOWN)


@dataclass(frozen=True)
class Marker:
    """A vertical reference line at ``x`` with a label (dashed: the base value)."""

    x: float
    label: str
    dashed: bool = False


@dataclass(frozen=True)
class BarChart:
    """A horizontal bar chart: titles, bars top to bottom, reference lines, axis label and a footnote."""

    title: tuple[str, ...]
    xlabel: str
    bars: tuple[Bar, ...]
    markers: tuple[Marker, ...] = ()
    footnote: str = ""
    description: str = ""
    zero_line: bool = True
    pad: float = 0.06  # share of the data span added on each side (room for the value texts)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def x_range(self) -> tuple[float, float]:
        """The x-axis range: every bar end, interval end and marker, padded by ``pad`` of the span."""
        xs: list[float] = [0.0] if self.zero_line else []
        for b in self.bars:
            xs += [b.start, b.end]
            xs += [v for v in (b.low, b.high) if v is not None and math.isfinite(v)]
        xs += [m.x for m in self.markers]
        lo, hi = min(xs), max(xs)
        span = hi - lo or 1.0
        return lo - self.pad * span, hi + self.pad * span


class Contribution(Protocol):
    """One feature's part of an explanation, as the charts and the summary sentence (:mod:`.text`) read it (the
    runtime's FeatureAttribution has these attributes)."""

    @property
    def feature(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def value(self) -> float: ...
    @property
    def imputed(self) -> bool: ...
    @property
    def attribution(self) -> float: ...


def _value_text(c: Contribution) -> str:
    value = f"{format_value(c.value)} {c.unit}".strip()
    return f"{c.label} = {value}" + (" (imputed)" if c.imputed else "")


def waterfall_chart(
    contributions: Sequence[Contribution],
    base_value: float,
    output_value: float,
    *,
    output: str = "logit",
    title: str = "How each feature moved this prediction",
    footnote: str = "",
    positive: str = POSITIVE,
) -> BarChart:
    """One explanation as a waterfall: from the base value, the largest attribution first, to the output."""
    order = sorted(range(len(contributions)), key=lambda j: -abs(contributions[j].attribution))
    bars: list[Bar] = []
    running = base_value
    for j in order:
        c = contributions[j]
        a = c.attribution
        direction = "raises" if a > 0 else "lowers"
        bars.append(
            Bar(
                key=c.feature,
                label=_value_text(c),
                start=running,
                end=running + a,
                text=f"{a:+.2f}" if output == "logit" else f"{a:+.3f}",
                note=f"{_value_text(c)} {direction} the {output} by {abs(a):.3g}",
            )
        )
        running += a
    if output == "logit":
        prob = sigmoid(output_value)
        line = f"base value {base_value:.2f} → logit {output_value:.2f} (probability {prob:.2f})"
        xlabel = f"logit (log-odds of {positive})"
    else:
        line = f"base probability {base_value:.3f} → probability {output_value:.3f}"
        xlabel = f"probability of {positive}"
    return BarChart(
        title=(title, line),
        xlabel=xlabel,
        bars=tuple(bars),
        markers=(
            Marker(base_value, f"base value E[f(b)] = {base_value:.2f}", dashed=True),
            Marker(output_value, f"f(x) = {output_value:.2f}"),
        ),
        footnote=footnote or sign_legend(positive),
        description=f"Waterfall of {len(bars)} feature attributions: {line}.",
        zero_line=False,
        pad=0.18,
    )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def group_chart(
    name: str,
    group: Mapping[str, Any],
    labels: Mapping[str, str],
    *,
    interval: str = "95% interval",
    title: str | None = None,
    positive: str = POSITIVE,
    negative: str = NEGATIVE,
) -> BarChart:
    """One outcome group's mean attribution of each feature (largest first), with its interval where it has one.

    ``group`` is a ``groups.json`` / ``GET /groups/{group}`` entry: ``count`` and ``features`` with ``feature``,
    ``mean``, ``ci_low``, ``ci_high``; ``labels`` maps feature names to their label with unit.
    """
    features: Iterable[Mapping[str, Any]] = group["features"]
    rows = sorted(features, key=lambda f: -abs(f["mean"] or 0.0))
    bars = []
    for f in rows:
        mean = float(f["mean"] or 0.0)
        low, high = _number(f.get("ci_low")), _number(f.get("ci_high"))
        label = labels.get(f["feature"], f["feature"])
        span = f" ({low:+.2f} to {high:+.2f})" if low is not None and high is not None else ""
        bars.append(
            Bar(
                key=f["feature"],
                label=label,
                start=0.0,
                end=mean,
                text=f"{mean:+.2f}",
                low=low,
                high=high,
                note=f"{label}: mean attribution {mean:+.3f}{span}",
            )
        )
    heading = title or f"{group_titles(positive, negative).get(name, name)}: n={group['count']}"
    return BarChart(
        title=(heading,),
        xlabel=f"mean GradientSHAP attribution (logit) with {interval}",
        bars=tuple(bars),
        footnote=sign_legend(positive),
        description=f"Mean attribution of each feature in outcome group {name} ({group['count']} records).",
    )


def influence_chart(group: Mapping[str, Any], labels: Mapping[str, str]) -> BarChart:
    """Mean absolute attribution of each feature over a group: how much each feature moves predictions."""
    rows = sorted(group["features"], key=lambda f: -float(f["mean_abs"]))
    bars = tuple(
        Bar(
            key=f["feature"],
            label=labels.get(f["feature"], f["feature"]),
            start=0.0,
            end=float(f["mean_abs"]),
            text=f"{float(f['mean_abs']):.2f}",
            colour=NEUTRAL,
            note=f"{labels.get(f['feature'], f['feature'])}: mean |attribution| {float(f['mean_abs']):.3f}",
        )
        for f in rows
    )
    return BarChart(
        title=("Mean |attribution|: how much each feature moves predictions",),
        xlabel="mean absolute attribution (logit)",
        bars=bars,
        description=f"Mean absolute attribution of each feature over {group['count']} records.",
        pad=0.1,
    )
