"""The pictures, in one place: what each chart shows (:mod:`.charts`) and how it is drawn (:mod:`.svg`, :mod:`.mpl`).

Used by ``gshap figures`` (:mod:`service.training.figures`), by ``POST /explain/plot`` and
``GET /groups/{group}/plot`` (the API) and, through the API's SVG, by the page at ``/``.

- :mod:`.charts` turns numbers into a :class:`~.charts.BarChart`: rows top to bottom, each a bar from ``start``
  to ``end`` with an optional interval, reference lines, titles. All choices (order, colour, words) are made here.
- :mod:`.svg` writes a chart as SVG directly (deterministic bytes, one ``<g data-feature="...">`` a row,
  presentation attributes only, so it can be inlined under a strict CSP); well under a millisecond a chart.
- :mod:`.mpl` draws the same chart with matplotlib for PNG, plus the multi-panel figures of ``gshap figures``.
  It uses only the object API (``Figure`` and a canvas per call, no pyplot state), so calls on different
  threads do not share a figure.

No web framework and no model here: the inputs are plain numbers and words.
"""

from service.render.charts import (
    DOWN,
    GROUP_TITLES,
    UP,
    Bar,
    BarChart,
    Contribution,
    Marker,
    group_chart,
    group_titles,
    influence_chart,
    sign_legend,
    waterfall_chart,
)

__all__ = [
    "DOWN",
    "GROUP_TITLES",
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
