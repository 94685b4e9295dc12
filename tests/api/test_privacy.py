"""No patient value in the logs or in a problem body: distinctive values through every endpoint, error paths and a
forced 500, against real server processes logging at debug level, then a search of everything they wrote.

What may be logged is decided in :mod:`service.api.observability`: request id, method, route template, status,
latency, the API key's short id, and for a failure the exception's type and frames (never its message). The
metrics (``/metrics``) and the drift report (``/monitoring``) are searched too, after the same traffic. A problem
names fields and rules, never values; an unknown field's *name* is echoed to the client (so that it sees its typo)
but never logged.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers import record
from live_server import LiveServer, running_server

from service.api.security import key_id

GOOD = {"glucose": 173.456789, "bmi": 41.987654, "diabetes_pedigree_function": 1.234567, "age": 67.891234}
BAD_AGE = 987.654321
BAD_STRING = "zzz-value-canary-5e1"
UNKNOWN_FIELD = "zzz_canary_9f3"
LONG = "zzz-long-canary-" + "q" * 20_000
GROUP = "zzzgroupcanary7"
HEADER = "zzz-header-canary"
KEY, WRONG_KEY = "zzz-key-canary-1", "zzz-wrong-key-canary"

# what must never be logged; values also in every spelling a formatter might produce
VALUES = ("173.456789", "173.4568", "41.987654", "41.98765", "1.234567", "67.891234", "67.8912", "987.654", "987.65")
NEVER_LOGGED = (*VALUES, BAD_STRING, UNKNOWN_FIELD, LONG[:40], GROUP, HEADER, KEY, WRONG_KEY)
NEVER_IN_PROBLEMS = (*VALUES, BAD_STRING, LONG[:40], HEADER, KEY, WRONG_KEY)


def _patient(**changes: Any) -> dict[str, Any]:
    return record(**{**GOOD, **changes})


def _exercise(url: str, headers: dict[str, str]) -> list[httpx.Response]:
    """Every endpoint with the distinctive values, answered and refused; returns every answer."""
    bad = {**_patient(age=BAD_AGE, glucose=BAD_STRING), UNKNOWN_FIELD: 1}
    j = {**headers, "content-type": "application/json", "X-Patient-Name": HEADER}
    out: list[httpx.Response] = []
    with httpx.Client(base_url=url, timeout=60.0, headers=j) as c:
        out += [
            c.post("/predict?glucose=173.456789", json=_patient()),
            c.post("/explain", json={**_patient(), "method": "sampled", "seed": 7, "n_samples": 32}),
            c.post("/explain", json={**_patient(), "output": "probability"}),
            c.post("/predict/batch", json={"records": [_patient(), bad, {"glucose": LONG}]}),
            c.post("/explain/batch", json={"records": [_patient(), bad], "method": "quadrature"}),
            c.post("/predict", json=bad),
            c.post("/explain", json={**_patient(glucose=LONG)}),
            c.post("/predict", content=b'{"glucose": 173.456789, "bmi": 41.987654,'),
            c.post("/predict", content=json.dumps(_patient()), headers={"content-type": "text/plain"}),
            c.post("/predict", json={**_patient(), "pad": "x" * 1_100_000}),
            c.post("/predict/batch", json={"records": [_patient()] * 101}),
            c.get(f"/groups/{GROUP}?age=67.891234"),
            c.get("/predict?glucose=173.456789"),
            c.get("/model?bmi=41.987654"),
            c.get("/groups"),
            c.get("/groups/TP"),
            c.get("/healthz?glucose=173.456789"),
            c.get("/readyz"),
            c.get("/openapi.json"),
            c.post("/predict", json=_patient(), headers={"X-Request-ID": f"{HEADER} 173.456789"}),
            c.post("/predict", json=_patient(), headers={"X-API-Key": WRONG_KEY}),
            c.post("/predict", json=_patient(), headers={"Authorization": f"Bearer {WRONG_KEY}", "X-API-Key": ""}),
        ]
    return out


def _scrape(url: str) -> str:
    """/metrics and /monitoring as one text (both open by default, whatever the API keys)."""
    with httpx.Client(base_url=url, timeout=60.0) as c:
        metrics, monitoring = c.get("/metrics"), c.get("/monitoring")
    assert metrics.status_code == 200
    assert monitoring.status_code == 200
    assert "gshap_http_requests_total" in metrics.text
    return metrics.text + monitoring.text


def _assert_no_leak(answers: list[httpx.Response], log: str) -> None:
    assert answers
    assert '"route"' in log  # the access log was on: there was something to search
    for canary in NEVER_LOGGED:
        assert canary not in log, f"{canary[:40]!r} in the server's log"
    for r in answers:
        if r.status_code >= 400:
            assert r.headers["content-type"] == "application/problem+json", r.text[:200]
            for canary in NEVER_IN_PROBLEMS:
                assert canary not in r.text, f"{canary[:40]!r} echoed in a {r.status_code} problem"


@pytest.fixture(scope="module")
def keyed() -> Iterator[LiveServer]:
    with running_server({"GSHAP_LOG_LEVEL": "debug", "GSHAP_API_KEYS": f"{KEY},other-key"}) as server:
        yield server


def test_no_patient_value_in_logs_or_problems(keyed: LiveServer) -> None:
    """Distinctive values through every endpoint and error path: not in the debug log, not in any problem."""
    answers = _exercise(keyed.url, {"X-API-Key": KEY})
    log = keyed.log.read_text()
    statuses = sorted({r.status_code for r in answers})
    assert statuses == [200, 400, 401, 404, 405, 413, 415, 422], statuses
    _assert_no_leak(answers, log)
    assert key_id(KEY) in log  # the key is known by its short id only
    scraped = _scrape(keyed.url)
    for canary in NEVER_LOGGED:
        assert canary not in scraped, f"{canary[:40]!r} in /metrics or /monitoring"
    assert 'route="/groups/{group}"' in scraped  # the template, never the group asked for


# A real `gshap serve` whose model turns NaN after loading (the bundle on disk is fine, so its checks pass) and
# whose warm-up and drift reference are skipped (both refuse non-finite answers, so the broken model would never serve):
# every prediction then fails inside the route (the runtime refuses the NaN it computed). The catch-all must
# log the error's type and frames only.
FORCED_500 = """
import sys
import service.runtime.inference
import service.runtime.registry
import service.model.store

real = service.model.store.load_bundle

def nan_model(path=None):
    bundle = real(path)  # the served network is folded from bundle.state (numpy): the NaN goes there
    key = next(k for k, v in bundle.state.items() if v.ndim == 2)
    weight = bundle.state[key].copy()
    weight[0, 0] = float("nan")
    bundle.state[key] = weight
    return bundle

service.runtime.registry.load_bundle = service.model.store.load_bundle = nan_model
service.runtime.inference.InferenceRuntime.warm_up = lambda self: None
# the drift reference (the served probabilities of the evaluation set) would refuse the model too
service.runtime.inference.InferenceRuntime.reference_probabilities = lambda self: [0.5] * len(self.bundle.eval_raw)
from service.cli import main
sys.exit(main(["serve", "--host", "127.0.0.1"]))
"""


def test_forced_500_logs_no_patient_value() -> None:
    """An internal error while answering a record: a bare 500 problem, a log line without the record's values."""
    env = {"GSHAP_LOG_LEVEL": "debug"}
    with running_server(env, program=(sys.executable, "-c", FORCED_500), command=()) as server:
        with httpx.Client(base_url=server.url, timeout=60.0) as c:
            answers = [
                c.post("/predict", json=_patient()),
                c.post("/explain", json=_patient()),
                c.post("/explain/batch", json={"records": [_patient()]}),
                c.post("/predict/batch", json={"records": [_patient()]}),
            ]
        scraped = _scrape(server.url)
        log = server.log.read_text()
    assert 'gshap_http_requests_total{method="POST",route="/predict",status="500"} 1.0' in scraped
    for canary in NEVER_LOGGED:
        assert canary not in scraped
    assert [r.status_code for r in answers] == [500] * 4
    for r in answers:
        assert set(r.json()) == {"type", "title", "status", "detail", "instance", "request_id"}
    assert log.count('"event":"unhandled_error"') == 4
    assert '"error_type":"NonFiniteOutputError"' in log
    _assert_no_leak(answers, log)
