"""The standard run as Markdown: the load table, servers, ratios, goals, page weight, race check, engine, wrk."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from benchkit.cells import CellResult
from benchkit.goals import find_cell

__all__ = ["fmt", "markdown_table"]


def fmt(x: float | None, digits: int = 1) -> str:
    """``x`` with thousands separators, or "–" when not measured (None or NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def markdown_table(result: Mapping[str, Any]) -> str:
    """The run as Markdown: the load table, servers, ratios, goals, in-process engine, generator capacity."""
    meta = result["meta"]
    lines = [
        f"Run {meta['date']} on {meta['machine']['summary']}; commit {meta['git']}; mode {meta['mode']} "
        f"({meta['seconds_per_cell']} s per cell after {meta['warmup_seconds']} s warm-up); load generator wrk "
        f"(1 thread); load average at start {meta['loadavg_start']}.",
        "",
        "| target | conc. | req/s | records/s | p50 ms | p95 ms | p99 ms | errors | server CPU | wrk CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in result["cells"]:
        lines.append(
            f"| {cell['label']} | {cell['concurrency']} | {fmt(cell['rps'])} | {fmt(cell['records_per_s'])} | "
            f"{fmt(cell['p50_ms'], 2)} | {fmt(cell['p95_ms'], 2)} | {fmt(cell['p99_ms'], 2)} | {cell['errors']} | "
            f"{cell['server_cpu_share'] * 100:.0f} % | {cell['wrk_cpu_share'] * 100:.0f} % |"
        )
    lines += [
        "",
        "| server | cold start s | peak RSS MB | RSS after load MB | PSS MB | processes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in result["servers"].items():
        mem = s.get("memory_after_load", {})
        starts = s.get("cold_starts_s") or [s["cold_start_s"]]
        shown = fmt(s["cold_start_s"], 2) + (f" (median of {len(starts)})" if len(starts) > 1 else "")
        lines.append(
            f"| {name} | {shown} | {fmt(mem.get('rss_peak_mb', math.nan), 0)} | "
            f"{fmt(mem.get('rss_mb', math.nan), 0)} | {fmt(mem.get('pss_mb', math.nan), 0)} | "
            f"{mem.get('processes', '–')} |"
        )
    evs = [result["evaluation"], *result.get("variant_evaluations", {}).values()]
    names = " | ".join(ev["ours"] for ev in evs)
    lines += ["", f"| ratio | {names} |", "|---|" + "---:|" * len(evs)]
    for k in evs[0]["ratios"]:
        lines.append(f"| {k} | " + " | ".join(fmt(ev["ratios"][k], 2) for ev in evs) + " |")
    lines += ["", f"| goal | {names} |", "|---|" + "---|" * len(evs)]
    for i, g in enumerate(evs[0]["goals"]):
        row = []
        for ev in evs:
            gi = ev["goals"][i]
            met = "–" if gi["met"] is None else ("met" if gi["met"] else "**not met**")
            row.append(f"{fmt(gi['value'], 2) if gi['value'] is not None else '–'} ({met})")
        lines.append(f"| {g['text']} | " + " | ".join(row) + " |")
    page = result.get("page")
    if page:
        parts = ", ".join(f"{path} {size:,}" for path, size in page["files"].items())
        lines += ["", f"Page first load: {page['bytes']:,} bytes by {page['method']}: {parts}."]
    for name, race in (result.get("races") or {}).items():
        lines += [
            "",
            f"Race check ({name}): {race['concurrent_requests']} concurrent /explain requests "
            f"({race['distinct_requests']} distinct, 3 settings incl. seeded sampled) under wrk load "
            f"({fmt(race['background_load_rps'])} req/s): {race['mismatches']} differ from the unloaded answers; "
            f"/explain/batch vs single: {race['batch_vs_single_mismatches']} differ.",
        ]
    eng = result.get("engine")
    if eng:
        n = eng["n_samples"]
        lines += [
            "",
            f"In-process, {eng['records']} evaluation records, torch threads {eng['torch_threads']}:",
            "",
            "| estimator | explanations/s |",
            "|---|---:|",
        ]
        for name in ("engine_exact", f"engine_sampled_{n}", f"captum_{n}_batch", f"captum_{n}_per_record"):
            lines.append(f"| {name} | {fmt(eng[name]['explanations_per_s'])} |")
        lines.append(
            f"\nengine sampled/{n} vs Captum/{n}: ×{fmt(eng['speedup_sampled_vs_captum_batch'], 1)} (whole set in "
            f"one call), ×{fmt(eng['speedup_sampled_vs_captum_per_record'], 1)} (one record per call)."
        )
    gen = result.get("generator")
    if gen:
        ceiling = find_cell([CellResult(**c) for c in result["cells"]], "ceiling", gen["concurrency"])
        vs = f", {gen['rps'] / ceiling.rps:.1f}× the ceiling's rate" if ceiling and ceiling.rps else ""
        lines.append(
            f"\nLoad generator capacity: wrk reached {fmt(gen['rps'], 0)} req/s against a trivial responder at "
            f"c={gen['concurrency']} (wrk CPU {gen['wrk_cpu_share'] * 100:.0f} % of a core){vs}."
        )
    return "\n".join(lines) + "\n"
