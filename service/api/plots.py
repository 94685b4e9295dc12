"""The plot answers: a :mod:`service.render` chart as ``image/svg+xml`` or, with ``?format=png``, ``image/png``.

SVG is written directly by :func:`service.render.svg.chart_svg` on the event loop: it takes ~0.3 ms, the cost
of serialising a JSON answer, and a thread hop would cost as much as the work. PNG is drawn by matplotlib
(~100-200 ms) on a worker thread, at most ``GSHAP_PLOT_THREADS`` at once (an anyio capacity limiter), so the
event loop keeps serving while pictures are drawn and a burst of PNG requests queues instead of piling up threads.
"""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from fastapi import Query, Request, Response

from service.render import BarChart
from service.render.svg import chart_svg

__all__ = ["MEDIA_TYPES", "FormatQuery", "PlotFormat", "WidthQuery", "plot_answer", "plot_responses"]

PlotFormat = Literal["svg", "png"]
MEDIA_TYPES: dict[str, str] = {"svg": "image/svg+xml", "png": "image/png"}
FormatQuery = Annotated[
    PlotFormat | None,
    Query(
        description=(
            "svg (default) or png; without it, an Accept header naming image/png (and not image/svg+xml) gets PNG."
        ),
    ),
]

WidthQuery = Annotated[
    int,
    Query(
        ge=320,
        le=2000,
        description=(
            "Width of the picture in pixels (SVG; PNG about as wide). Narrow pictures put each label above its bar."
        ),
    ),
]


def _limiter(request: Request) -> anyio.CapacityLimiter:
    state = request.app.state
    limiter: anyio.CapacityLimiter | None = getattr(state, "plot_limiter", None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(request.app.state.gshap.settings.plot_threads)
        state.plot_limiter = limiter
    return limiter


def chosen_format(request: Request, fmt: PlotFormat | None) -> PlotFormat:
    """The query's format, else the one the Accept header prefers (SVG unless only PNG is named)."""
    if fmt is not None:
        return fmt
    accept = request.headers.get("accept", "")
    return "png" if "image/png" in accept and "image/svg+xml" not in accept else "svg"


async def plot_answer(request: Request, chart: BarChart, fmt: PlotFormat | None, width: int = 720) -> Response:
    """``chart`` in the chosen format, ``width`` pixels wide."""
    chosen = chosen_format(request, fmt)
    if chosen == "svg":
        body = chart_svg(chart, width)
    else:
        # matplotlib is imported on the first PNG, not at start-up (it costs the cold start ~0.4 s)
        from service.render.mpl import render_png

        body = await anyio.to_thread.run_sync(render_png, chart, width, limiter=_limiter(request))
    return Response(body, media_type=MEDIA_TYPES[chosen], headers={"Vary": "Accept"})


def plot_responses(description: str) -> dict[int | str, dict[str, object]]:
    """The OpenAPI entry of a 200 picture answer in both media types."""
    return {
        200: {
            "description": description,
            "content": {
                "image/svg+xml": {"schema": {"type": "string"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }
