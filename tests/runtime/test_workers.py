"""`gshap serve --workers 2`: several uvicorn processes answer bit-identically to one worker."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import psutil
from live_server import running_server

from service.model.spec import SPECS, load_spec

PIMA = load_spec(SPECS / "pima-diabetes.yaml").features  # the default model's features


def requests_to_send(n: int = 48, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """Seeded /predict, /explain (default and sampled) and /explain/batch bodies."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        rec = {f.name: f.example for f in PIMA}
        rec["pregnancies"] = int(rec["pregnancies"])
        rec["glucose"] = float(rng.integers(70, 200))
        rec["bmi"] = round(float(rng.uniform(19, 50)), 1)
        kind = i % 4
        if kind == 0:
            out.append(("/predict", rec))
        elif kind == 1:
            out.append(("/explain", {**rec, "output": "probability"}))
        elif kind == 2:
            out.append(("/explain", {**rec, "method": "sampled", "n_samples": 32, "seed": i}))
        else:
            out.append(("/explain/batch", {"records": [rec, {**rec, "insulin": None}, {**rec, "glucose": 9999}]}))
    return out


def without_request_ids(value: Any) -> Any:
    """The answer without the per-request ids (the refused batch items' problems carry one)."""
    if isinstance(value, dict):
        return {k: without_request_ids(v) for k, v in value.items() if k != "request_id"}
    if isinstance(value, list):
        return [without_request_ids(v) for v in value]
    return value


def answers(url: str, reqs: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    with httpx.Client(base_url=url, timeout=60) as http, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda r: http.post(r[0], json=r[1]), reqs))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:1]
    return [without_request_ids(r.json()) for r in responses]


def test_two_workers_answer_exactly_as_one() -> None:
    """48 concurrent requests of four kinds get the same JSON (every float bit for bit) from 2 workers as from 1."""
    reqs = requests_to_send()
    with running_server() as one:
        single = answers(one.url, reqs)
    with running_server(command=("serve", "--host", "127.0.0.1", "--workers", "2")) as two:
        assert len(psutil.Process(two.pid).children()) >= 2  # the worker processes (and uvicorn's helpers)
        multi = answers(two.url, reqs)
        multi_again = answers(two.url, list(reversed(reqs)))[::-1]
    assert multi == single
    assert multi_again == single
