"""A :class:`~service.render.charts.BarChart` written as SVG, directly: fast, deterministic, embeddable.

The same chart always gives the same bytes (fixed number formats, no ids, no dates). Every row is a
``<g data-feature="<api name>">`` holding its ``<title>`` (tooltip and screen-reader text), label, bar, interval
and value, so a page can find and style each feature. Only presentation attributes are used (no ``style``), so
the SVG may be inlined in a page whose Content-Security-Policy forbids inline styles. Text is set in the
reader's system sans-serif font: nothing is fetched.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from xml.sax.saxutils import escape, quoteattr

from service.render.charts import BarChart, Marker

__all__ = ["FONT", "chart_svg", "nice_ticks"]

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', Arial, sans-serif"
CHAR = 6.4  # mean advance of a 12 px sans-serif character, for the label column and the margins
ROW, BAR = 28.0, 16.0
GRID, INK, MUTED = "#d5d8dc", "#1c2833", "#566573"


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick positions (1, 2, 2.5 or 5 times a power of ten) covering ``lo``..``hi``."""
    span = hi - lo
    if not math.isfinite(span) or span <= 0:
        return [lo]
    raw = span / max(target - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    ticks, k = [], 0
    while first + k * step <= hi + step * 1e-9:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def _f(x: float) -> str:
    return f"{x:.1f}"


def _tick_text(t: float, step: float) -> str:
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > 1e-9:
        decimals += 1
    return f"{t:.{decimals}f}".replace("-", "−")


def _marker_labels(
    chart: BarChart, x: Callable[[float], float], width: int
) -> list[tuple[Marker, float, float, str, int]]:
    """Each marker with its line's x, its label's x and anchor, and its label's line above the plot (0 or 1):
    labels point away from each other, stay inside the picture and go on two lines where they would overlap."""
    placed: list[tuple[Marker, float, float, str, int]] = []
    spans: list[tuple[float, float]] = []
    ordered = sorted(chart.markers, key=lambda m: m.x)
    for k, m in enumerate(ordered):
        mx = x(m.x)
        anchor, dx = ("end", -4.0) if k == 0 and len(ordered) > 1 else ("start", 4.0)
        reach = len(m.label) * CHAR * 0.92
        if anchor == "start" and mx + dx + reach > width:
            anchor, dx = "end", -4.0
        elif anchor == "end" and mx + dx - reach < 0:
            anchor, dx = "start", 4.0
        span = (mx + dx - reach, mx + dx) if anchor == "end" else (mx + dx, mx + dx + reach)
        line = 1 if any(a < span[1] + 6 and span[0] < b + 6 for a, b in spans) else 0
        spans.append(span)
        placed.append((m, mx, mx + dx, anchor, line))
    return placed


def chart_svg(chart: BarChart, width: int = 720) -> bytes:
    """The chart as a standalone SVG document (UTF-8), ``width`` pixels wide, its height from its rows.

    Below about 560 pixels (long labels) each row's label goes above its bar, so that phones get readable text.
    """
    needed = max((len(b.label) for b in chart.bars), default=10) * CHAR + 16
    # narrow pictures (phones) put each row's label above its bar instead of beside it
    stacked = needed > width * 0.45
    label_w = 12.0 if stacked else needed
    row = ROW + 14 if stacked else ROW
    left, right = label_w + 8, width - 24.0
    # the first title line is 14 px bold (wider characters), the others 12 px
    title = [
        (i, line)
        for i, text in enumerate(chart.title)
        for line in textwrap.wrap(text, int((width - 24) / (CHAR * (1.3 if i == 0 else 1.0)))) or [""]
    ]
    lo, hi = chart.x_range()

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (right - left)

    markers = _marker_labels(chart, x, width)
    lines = max((level for *_, level in markers), default=-1) + 1
    footnote = textwrap.wrap(chart.footnote, int((width - 24) / (CHAR * 0.85))) if chart.footnote else []
    top = 12 + 20 * len(title) + (8 + 14 * lines if lines else 4)
    n = len(chart.bars)
    plot_bottom = top + row * n
    height = plot_bottom + 22 + (20 if chart.xlabel else 0) + 14 * len(footnote) + 12

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {_f(height)}" width="{width}" '
        f'height="{_f(height)}" role="img" aria-label={quoteattr(" ".join(chart.title))} '
        f'font-family="{FONT}" font-size="12" fill="{INK}">',
        f"<title>{escape(' — '.join(chart.title))}</title>",
    ]
    if chart.description:
        out.append(f"<desc>{escape(chart.description)}</desc>")
    out.append(f'<rect width="{width}" height="{_f(height)}" fill="#ffffff"/>')
    for k, (i, line) in enumerate(title):
        weight = ' font-weight="600" font-size="14"' if i == 0 else f' fill="{MUTED}"'
        out.append(f'<text x="12" y="{_f(26 + 20 * k)}"{weight}>{escape(line)}</text>')
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    out.append('<g class="axis">')
    for t in ticks:
        out.append(
            f'<line x1="{_f(x(t))}" x2="{_f(x(t))}" y1="{_f(top - 4)}" y2="{_f(plot_bottom)}" stroke="{GRID}"/>'
            f'<text x="{_f(x(t))}" y="{_f(plot_bottom + 16)}" text-anchor="middle" fill="{MUTED}" '
            f'font-size="11">{_tick_text(t, step)}</text>'
        )
    if chart.zero_line and lo < 0 < hi:
        out.append(
            f'<line x1="{_f(x(0))}" x2="{_f(x(0))}" y1="{_f(top - 4)}" y2="{_f(plot_bottom)}" stroke="{MUTED}"/>'
        )
    out.append("</g>")
    for i, b in enumerate(chart.bars):
        cy = top + row * i + row / 2 + (7 if stacked else 0)
        x0, x1 = sorted((x(b.start), x(b.end)))
        parts = [
            f"<g data-feature={quoteattr(b.key)}>",
            f"<title>{escape(b.note or b.label)}</title>",
            f'<text x="12" y="{_f(cy - BAR / 2 - 4)}">{escape(b.label)}</text>'
            if stacked
            else f'<text x="{_f(label_w)}" y="{_f(cy + 4)}" text-anchor="end">{escape(b.label)}</text>',
            f'<rect x="{_f(x0)}" y="{_f(cy - BAR / 2)}" width="{_f(max(x1 - x0, 1.0))}" height="{_f(BAR)}" '
            f'fill="{b.fill}" fill-opacity="0.88"/>',
        ]
        far = x1 if b.end >= b.start else x0
        if b.low is not None and b.high is not None and math.isfinite(b.low) and math.isfinite(b.high):
            wl, wh = x(b.low), x(b.high)
            parts.append(
                f'<path d="M{_f(wl)} {_f(cy)}H{_f(wh)}M{_f(wl)} {_f(cy - 5)}V{_f(cy + 5)}M{_f(wh)} {_f(cy - 5)}'
                f'V{_f(cy + 5)}" stroke="{INK}" fill="none"/>'
            )
            far = max(far, wh) if b.end >= b.start else min(far, wl)
        if b.text:
            positive = b.end >= b.start
            tx = far + 4 if positive else far - 4
            anchor = "start" if positive else "end"
            parts.append(
                f'<text x="{_f(tx)}" y="{_f(cy + 4)}" text-anchor="{anchor}" font-size="11">{escape(b.text)}</text>'
            )
        parts.append("</g>")
        out.append("".join(parts))
    for m, mx, tx, anchor, level in markers:
        dash = ' stroke-dasharray="5 3"' if m.dashed else ""
        out.append(
            f'<g class="marker"><line x1="{_f(mx)}" x2="{_f(mx)}" y1="{_f(top - 8)}" y2="{_f(plot_bottom)}" '
            f'stroke="{INK}"{dash}/><text x="{_f(tx)}" y="{_f(top - 10 - 14 * level)}" text-anchor="{anchor}" '
            f'font-size="11">{escape(m.label)}</text></g>'
        )
    y = plot_bottom + 22
    if chart.xlabel:
        y += 16
        out.append(f'<text x="{_f((left + right) / 2)}" y="{_f(y)}" text-anchor="middle">{escape(chart.xlabel)}</text>')
    for text in footnote:
        y += 14
        out.append(f'<text x="12" y="{_f(y)}" font-size="10" fill="{MUTED}">{escape(text)}</text>')
    out.append("</svg>\n")
    return "\n".join(out).encode()
