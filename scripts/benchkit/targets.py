"""What the benchmarks send: the evaluation set's records as a client sends them, and the endpoints loaded."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchkit.common import dumps

__all__ = ["BATCH_RECORDS", "CEILING_DEF_PATH", "SAMPLED", "Target", "eval_records", "targets"]

BATCH_RECORDS = 100
SAMPLED = {"method": "sampled", "n_samples": 200, "seed": 0}
CEILING_DEF_PATH = "/ceiling/def"


def eval_records(limit: int | None = None) -> list[dict[str, Any]]:
    """The default bundle's evaluation records in raw units, ``None`` where not measured; counts as integers."""
    from service.model.store import load_bundle

    bundle = load_bundle()
    out = []
    for row in bundle.eval_raw[:limit]:
        rec: dict[str, Any] = {}
        for feat, v in zip(bundle.spec, row, strict=True):
            if math.isnan(v):
                rec[feat.name] = None
            else:
                rec[feat.name] = int(v) if feat.integer else float(v)
        out.append(rec)
    return out


@dataclass(frozen=True)
class Target:
    """One endpoint to load: which server, path, request bodies, and records per request."""

    key: str
    server: str
    label: str
    path: str
    bodies: tuple[str, ...]
    records_per_request: int = 1
    answer: str = "json"  # what a 200 carries: "json" or "svg"


def targets(records: Sequence[dict[str, Any]]) -> list[Target]:
    singles = tuple(dumps(r) for r in records)
    sampled = tuple(dumps({**r, **SAMPLED}) for r in records)
    n_batches = max(1, min(4, len(records) // BATCH_RECORDS))
    batches = tuple(
        dumps({"records": [records[(b * BATCH_RECORDS + i) % len(records)] for i in range(BATCH_RECORDS)]})
        for b in range(n_batches)
    )
    return [
        Target("ceiling", "ceiling", "ceiling POST /ceiling (validate, no model)", "/ceiling", singles),
        Target("ceiling_def", "ceiling", "ceiling as a def route (threadpool; reference)", CEILING_DEF_PATH, singles),
        Target("peer", "peer", "naive peer POST /explain (Captum, 200 samples)", "/explain", singles),
        Target("predict", "ours", "ours POST /predict", "/predict", singles),
        Target("explain", "ours", "ours POST /explain (defaults: exact)", "/explain", singles),
        Target("explain_sampled", "ours", "ours POST /explain (sampled, n_samples=200)", "/explain", sampled),
        Target(
            "explain_batch",
            "ours",
            f"ours POST /explain/batch ({BATCH_RECORDS} records)",
            "/explain/batch",
            batches,
            BATCH_RECORDS,
        ),
        Target("explain_plot", "ours", "ours POST /explain/plot (SVG waterfall)", "/explain/plot", singles, 1, "svg"),
    ]
