"""The standard run's goals: ratios against the ceiling and the peer, each goal's measured value and verdict."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from benchkit.cells import CellResult
from benchkit.page import PAGE_BUDGET_BYTES

__all__ = ["GOALS", "evaluate_goals", "find_cell"]


GOALS: list[tuple[str, str]] = [
    ("explain_c8_vs_ceiling", "/explain c=8 throughput ≥ 50 % of the ceiling"),
    ("explain_c8_vs_peer", "/explain c=8 throughput ≥ 10× the naive peer"),
    ("explain_c8_p99", "/explain c=8 p99 ≤ 25 ms"),
    ("predict_c8_vs_ceiling", "/predict c=8 throughput ≥ 70 % of the ceiling"),
    ("batch_records_per_s", "/explain/batch (100 records) ≥ 2,000 records/s"),
    ("cold_start", "cold start ≤ 4 s"),
    ("rss_after_load", "server RSS ≤ 450 MB after the load (summed over its processes)"),
    ("no_errors", "no error under any load"),
    ("same_results", "same results under load (racing requests, same seed)"),
    ("explain_plot_c8", "/explain/plot (SVG) c=8 ≥ 200 req/s"),
    ("page_first_load", "the page's first load transfers ≤ 100 kB"),
]


def find_cell(
    cells: Sequence[CellResult], target: str, concurrency: int, server: str | None = None
) -> CellResult | None:
    return next(
        (
            c
            for c in cells
            if c.target == target and c.concurrency == concurrency and (server is None or c.server == server)
        ),
        None,
    )


def evaluate_goals(
    cells: Sequence[CellResult],
    servers: Mapping[str, Mapping[str, Any]],
    race: Mapping[str, Any] | None,
    goal_concurrency: int = 8,
    ours_name: str = "ours",
    page: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Ratios and each goal's measured value and verdict (``met`` None when not measured in this run).

    ``ours_name`` picks the configuration of the service evaluated (``ours`` or a ``--variant``)."""
    c = goal_concurrency

    def rps(target: str) -> float:
        cell = find_cell(cells, target, c, None if target in ("ceiling", "peer") else ours_name)
        return cell.rps if cell else math.nan

    ceiling, peer = rps("ceiling"), rps("peer")
    ratios = {
        f"explain_vs_ceiling_c{c}": rps("explain") / ceiling,
        f"explain_vs_peer_c{c}": rps("explain") / peer,
        f"explain_sampled_vs_ceiling_c{c}": rps("explain_sampled") / ceiling,
        f"explain_sampled_vs_peer_c{c}": rps("explain_sampled") / peer,
        f"predict_vs_ceiling_c{c}": rps("predict") / ceiling,
        f"explain_plot_vs_explain_c{c}": rps("explain_plot") / rps("explain"),
    }
    explain = find_cell(cells, "explain", c, ours_name)
    batch = find_cell(cells, "explain_batch", c, ours_name)
    ours = servers.get(ours_name, {})
    measured: dict[str, tuple[float, float, bool]] = {}  # name: (value, bound, higher is better)
    measured["explain_c8_vs_ceiling"] = (ratios[f"explain_vs_ceiling_c{c}"], 0.5, True)
    measured["explain_c8_vs_peer"] = (ratios[f"explain_vs_peer_c{c}"], 10.0, True)
    measured["explain_c8_p99"] = (explain.p99_ms if explain else math.nan, 25.0, False)
    measured["predict_c8_vs_ceiling"] = (ratios[f"predict_vs_ceiling_c{c}"], 0.7, True)
    measured["batch_records_per_s"] = (batch.records_per_s if batch else math.nan, 2000.0, True)
    measured["cold_start"] = (ours.get("cold_start_s", math.nan), 4.0, False)
    measured["rss_after_load"] = (ours.get("memory_after_load", {}).get("rss_mb", math.nan), 450.0, False)
    mine = [cell for cell in cells if cell.server in (ours_name, "ceiling", "peer")]
    measured["no_errors"] = (float(sum(cell.errors for cell in mine)), 0.0, False)
    if race is not None:
        measured["same_results"] = (float(race["mismatches"] + race["batch_vs_single_mismatches"]), 0.0, False)
    measured["explain_plot_c8"] = (rps("explain_plot"), 200.0, True)
    if page is not None:
        measured["page_first_load"] = (float(page["bytes"]), float(PAGE_BUDGET_BYTES), False)
    goals: list[dict[str, Any]] = []
    for name, text in GOALS:
        if name not in measured or math.isnan(measured[name][0]):
            goals.append({"goal": name, "text": text, "value": None, "bound": None, "met": None})
            continue
        value, bound, higher = measured[name]
        met = value >= bound if higher else value <= bound
        goals.append({"goal": name, "text": text, "value": value, "bound": bound, "met": met})
    return {"goal_concurrency": c, "ours": ours_name, "ratios": ratios, "goals": goals}
