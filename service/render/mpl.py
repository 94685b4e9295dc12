"""Charts drawn with matplotlib's object API: PNG (and SVG) of one chart, and the multi-panel figures.

Every call builds its own :class:`~matplotlib.figure.Figure` and canvas: no pyplot, no current figure, so
concurrent calls on different threads share no figure. Output bytes carry no date or software stamp and the
SVG ids come from a fixed salt, so the same numbers give the same SVG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

from service.render.charts import DOWN, UP, BarChart

__all__ = [
    "DPI",
    "chart_figure",
    "chart_grid",
    "confusion_figure",
    "draw_chart",
    "figure_bytes",
    "reliability_figure",
    "render_png",
]

# a fixed salt: stable SVG element ids, identical SVGs run to run (read by the SVG backend at save time)
matplotlib.rcParams["svg.hashsalt"] = "gshap-service"
DPI = 130
_META: dict[str, dict[str, Any]] = {"png": {"Software": None}, "svg": {"Date": None}}


def draw_chart(ax: Axes, chart: BarChart, *, compact: bool = False, footnote: bool = True) -> None:
    """Draw ``chart`` on ``ax``: bars top to bottom, intervals, value texts, reference lines, labels."""
    n = len(chart.bars)
    y = np.arange(n)
    for i, b in enumerate(chart.bars):
        ax.barh(i, b.end - b.start, left=b.start, color=b.fill, alpha=0.85)
        if b.low is not None and b.high is not None and np.isfinite([b.low, b.high]).all():
            ax.errorbar(b.end, i, xerr=[[b.end - b.low], [b.high - b.end]], fmt="none", ecolor="black", capsize=3, lw=1)
        if b.text and not compact:
            positive = b.end >= b.start
            edge = max(b.end, b.high or b.end) if positive else min(b.end, b.low or b.end)
            ax.annotate(
                b.text,
                (edge, i),
                xytext=(4 if positive else -4, 0),
                textcoords="offset points",
                va="center",
                ha="left" if positive else "right",
                fontsize=8,
            )
    ax.set_yticks(y, [b.label for b in chart.bars])
    ax.set_ylim(n - 0.5, -0.5 - (0.9 if chart.markers else 0.0))
    ax.set_xlim(*chart.x_range())
    if chart.zero_line:
        ax.axvline(0, color="grey", lw=0.8)
    ordered = sorted(chart.markers, key=lambda m: m.x)
    for k, m in enumerate(ordered):
        ax.axvline(m.x, color="black" if not m.dashed else "grey", ls="--" if m.dashed else "-", lw=1)
        left_side = k == 0 and len(ordered) > 1
        ax.annotate(
            m.label,
            (m.x, -0.6),
            xytext=(-3 if left_side else 3, 0),
            textcoords="offset points",
            ha="right" if left_side else "left",
            va="bottom",
            fontsize=8,
            color="dimgrey",
        )
    ax.set_title("\n".join(chart.title), fontsize=9 if len(chart.title) > 1 else 10)
    ax.set_xlabel(chart.xlabel, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    if chart.footnote and footnote and not compact:
        # under the axis label, outside the bars (the tight bounding box takes it in)
        ax.annotate(
            chart.footnote,
            (1.0, 0.0),
            xycoords="axes fraction",
            xytext=(0, -34),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=7,
            color="dimgrey",
        )


def chart_figure(chart: BarChart, width: float = 8.0) -> Figure:
    """One chart as a figure, its height from its rows."""
    fig = Figure(figsize=(width, 1.4 + 0.38 * len(chart.bars)))
    draw_chart(fig.add_subplot(), chart)
    return fig


def chart_grid(
    charts: Sequence[BarChart], cols: int, size: tuple[float, float], *, title: str = "", shared: bool = True
) -> Figure:
    """Several charts in a grid; ``shared``: one x range for all (the outcome-group panel), compact rows."""
    rows = -(-len(charts) // cols)
    fig = Figure(figsize=size)
    axes = fig.subplots(rows, cols, sharex=shared, squeeze=False)
    lo = min(c.x_range()[0] for c in charts)
    hi = max(c.x_range()[1] for c in charts)
    for ax, chart in zip(axes.flat, charts, strict=False):
        draw_chart(ax, chart, compact=shared, footnote=False)
        if shared:
            ax.set_xlim(lo, hi)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: Mapping[str, int], names: tuple[str, str], title: str) -> Figure:
    """The evaluation set's confusion matrix (``tn``, ``fp``, ``fn``, ``tp``) with row shares."""
    m = np.array([[matrix["tn"], matrix["fp"]], [matrix["fn"], matrix["tp"]]])
    fig = Figure(figsize=(4.8, 4.2))
    ax = fig.add_subplot()
    ax.imshow(m, cmap="Blues")
    cells = [["TN", "FP"], ["FN", "TP"]]
    for i in range(2):
        for j in range(2):
            share = m[i, j] / m[i].sum() if m[i].sum() else 0.0
            ax.text(
                j,
                i,
                f"{cells[i][j]}\n{m[i, j]}\n({share:.0%} of row)",
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
                fontsize=11,
            )
    neg, pos = names
    ax.set_xticks([0, 1], [f"predicted\n{neg}", f"predicted\n{pos}"])
    ax.set_yticks([0, 1], [f"actual\n{neg}", f"actual\n{pos}"])
    ax.set_title(title, fontsize=9)
    return fig


def reliability_figure(
    metrics: Mapping[str, Any], served: str, positive: str = "the positive outcome"
) -> Figure | None:
    """Reliability diagram of the test split, before and after calibration, for the MLP and the logistic
    reference: observed rate against mean predicted risk per bin, the record count written at each point, and the
    counts as bars below. From a bundle's stored bins (``metrics["calibration"]``); ``None`` if it has none.
    ``served`` names the calibration the service applies (e.g. ``platt/validation``)."""
    cal = metrics.get("calibration")
    if not isinstance(cal, dict) or "mlp" not in cal:
        return None
    models = [(k, t) for k, t in (("mlp", "MLP (served)"), ("logistic_regression", "Logistic regression")) if k in cal]
    fig = Figure(figsize=(5.2 * len(models), 6.6))
    axes = fig.subplots(2, len(models), gridspec_kw={"height_ratios": [3, 1]}, squeeze=False)
    styles = {"before": ("#7f8c8d", "s", "--"), "after": (UP, "o", "-")}
    for col, (key, title) in enumerate(models):
        ax, bars = axes[0, col], axes[1, col]
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, alpha=0.6, label="perfect calibration")
        width = 0.04
        for i, state in enumerate(("before", "after")):
            res = cal[key][state]
            color, marker, line = styles[state]
            rows = [b for b in res["bins"] if b["count"]]
            xs = [b["mean_predicted"] for b in rows]
            ys = [b["observed"] for b in rows]
            ece = res["ece"]
            label = (
                f"{state} calibration: ECE {ece['value']:.3f} [{ece['ci_low']:.3f}, {ece['ci_high']:.3f}], "
                f"mean risk {res['mean_predicted']['value']:.2f}"
            )
            ax.plot(xs, ys, marker=marker, ls=line, color=color, label=label)
            for b in rows:
                ax.annotate(
                    f"n={b['count']}",
                    (b["mean_predicted"], b["observed"]),
                    textcoords="offset points",
                    xytext=(4, -11 if state == "before" else 5),
                    fontsize=7,
                    color=color,
                )
            centres = [(b["low"] + b["high"]) / 2 + (i - 0.5) * width for b in res["bins"]]
            bars.bar(centres, [b["count"] for b in res["bins"]], width=width, color=color, label=state)
        prev = cal[key]["after"]["observed_prevalence"]
        ax.axhspan(prev["ci_low"], prev["ci_high"], color="#2471a3", alpha=0.08, lw=0)
        ax.axhline(
            prev["value"], color=DOWN, lw=0.8, ls=":", label=f"observed prevalence {prev['value']:.2f} (95% CI band)"
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{title}: test split, {cal[key]['after']['n']} records", fontsize=10)
        ax.set_xlabel("mean predicted risk in the bin")
        ax.set_ylabel(f"observed rate of {positive} in the bin")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        bars.set_xlim(0, 1)
        bars.set_xticks(np.linspace(0, 1, 11))
        bars.set_xlabel("predicted risk (10 equal-width bins)")
        bars.set_ylabel("records")
        bars.legend(fontsize=7)
        bars.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"Reliability before and after Platt scaling (fitted on the validation split); served: {served}",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def figure_bytes(fig: Figure, fmt: Literal["png", "svg"]) -> bytes:
    """The figure saved as PNG or SVG (tight bounding box, no date or software stamp) on its own canvas."""
    canvas = FigureCanvasAgg(fig) if fmt == "png" else FigureCanvasSVG(fig)
    buffer = io.BytesIO()
    canvas.print_figure(buffer, format=fmt, dpi=DPI, bbox_inches="tight", metadata=_META[fmt])
    return buffer.getvalue()


def render_png(chart: BarChart, width: int = 1040) -> bytes:
    """One chart as PNG, about ``width`` pixels wide."""
    return figure_bytes(chart_figure(chart, width=width / DPI), "png")
