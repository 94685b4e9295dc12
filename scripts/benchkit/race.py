"""The race check: the same requests one at a time, then all at once under load, must give the same bits."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchkit.common import dumps
from benchkit.servers import Server
from benchkit.stats import percentile
from benchkit.targets import SAMPLED
from benchkit.wrk import run_wrk

__all__ = ["race_check"]


def race_check(server: Server, records: Sequence[dict[str, Any]], script: Path, n_records: int) -> dict[str, Any]:
    """Same requests one at a time, then all at once under wrk load: the attributions must be byte-identical."""
    import httpx

    recs = list(records[:n_records])
    variants: list[dict[str, Any]] = [{}, dict(SAMPLED), {**SAMPLED, "seed": 7, "n_samples": 64}]

    def key(answer: dict[str, Any]) -> str:
        return dumps([a["attribution"] for a in answer["attributions"]] + [answer["output_value"]])

    with httpx.Client(base_url=server.url, timeout=60) as client:
        reference = {}
        for i, rec in enumerate(recs):
            for v, extra in enumerate(variants):
                resp = client.post("/explain", json={**rec, **extra})
                resp.raise_for_status()
                reference[(i, v)] = key(resp.json())
        batch = client.post("/explain/batch", json={"records": recs, **SAMPLED})
        batch.raise_for_status()
        batch_keys = {i: key(item) for i, item in enumerate(batch.json()["results"])}

    async def burst() -> list[tuple[tuple[int, int], str | None, float]]:
        limits = httpx.Limits(max_connections=len(reference), max_keepalive_connections=len(reference))
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:

            async def one(i: int, v: int) -> tuple[tuple[int, int], str | None, float]:
                t0 = time.perf_counter()
                resp = await client.post("/explain", json={**recs[i], **variants[v]})
                ms = (time.perf_counter() - t0) * 1000
                return (i, v), (key(resp.json()) if resp.status_code == 200 else None), ms

            jobs = [one(i, v) for (i, v) in reference] * 2
            return await asyncio.gather(*jobs)

    holder: dict[str, Any] = {}
    loader = threading.Thread(
        target=lambda: holder.update(run_wrk(server.url + "/explain", script, 8, 3)), name="race-load"
    )
    loader.start()
    time.sleep(0.5)
    answers = asyncio.run(burst())
    loader.join()
    mismatches = sum(1 for k, got, _ in answers if got != reference[k])
    sampled_idx = variants.index(dict(SAMPLED))
    batch_mismatches = sum(1 for i in range(len(recs)) if batch_keys[i] != reference[(i, sampled_idx)])
    latencies = [ms for *_, ms in answers]
    return {
        "concurrent_requests": len(answers),
        "distinct_requests": len(reference),
        "mismatches": mismatches,
        "batch_vs_single_mismatches": batch_mismatches,
        "burst_p50_ms": percentile(latencies, 50),
        "burst_p99_ms": percentile(latencies, 99),
        "background_load_rps": holder.get("rps", math.nan),
        "background_load_errors": holder.get("errors", -1),
    }
