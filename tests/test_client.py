"""service.client against the real server in a subprocess: typed answers, problems as exceptions, keys, retries.

Two servers run for the session: an open one, and one with API keys and a rate limit. The rate limit is how a
real server is made to refuse with a ``Retry-After`` on demand (429), so the client's respect of
``Retry-After`` is tested end to end. A real server cannot be made to answer 503 on demand: ``gshap serve``
loads and verifies the bundle *before* it listens, and exits on a bad one, so ``/readyz`` is never 503 while
a test can reach it. The 503 tests therefore use a small ``httpx.MockTransport``, as does the one test of an
answer that breaks the schema, which a correct server cannot send either.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import httpx
import pytest
from helpers import default_spec
from live_server import ROOT, LiveServer, free_port, running_server

from service.client import (
    ApiError,
    AsyncGshapClient,
    GshapClient,
    InvalidInput,
    NotFound,
    RateLimited,
    ResponseError,
    Retry,
    TransportError,
    Unauthorized,
    Unavailable,
    parse_retry_after,
)
from service.schemas import (
    BatchItemError,
    ExplanationBatchItem,
    ExplanationBatchPublic,
    ExplanationPublic,
    GroupPublic,
    GroupsPublic,
    HealthPublic,
    ModelCardPublic,
    PredictionBatchItem,
    PredictionBatchPublic,
    PredictionPublic,
    ReadinessPublic,
    example_record,
    patient_record_model,
)

KEYS = ("key-test-a", "key-test-b", "key-test-rate")
RATE_PER_MINUTE = 60  # one token a second: a refused request is told Retry-After: 1
RATE_BURST = 5


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    with running_server() as live:
        yield live


@pytest.fixture(scope="session")
def keyed_server() -> Iterator[LiveServer]:
    env = {
        "GSHAP_API_KEYS": ",".join(KEYS),
        "GSHAP_RATE_LIMIT_PER_MINUTE": str(RATE_PER_MINUTE),
        "GSHAP_RATE_LIMIT_BURST": str(RATE_BURST),
    }
    with running_server(env) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[GshapClient]:
    with GshapClient(server.url, timeout=30) as c:
        yield c


class Pauses:
    """A ``sleep`` that records the pauses asked for (and does not wait unless told to)."""

    def __init__(self, real: bool = False) -> None:
        self.real = real
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        if self.real:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        self.seconds.append(seconds)


# ---- typed answers ---------------------------------------------------------------------------------------------


def test_predict_returns_the_service_model(client: GshapClient) -> None:
    """predict() answers a PredictionPublic whose label agrees with its probability and threshold."""
    p = client.predict(example_record(default_spec()))
    assert isinstance(p, PredictionPublic)
    assert 0.0 <= p.probability <= 1.0
    assert p.label == int(p.probability >= p.threshold)
    assert math.isclose(p.probability, 1 / (1 + math.exp(-p.logit)), rel_tol=1e-9)


def test_explain_adds_up_to_the_output(client: GshapClient) -> None:
    """explain() answers an ExplanationPublic: base_value + Σ attributions + gap = output_value = the logit."""
    record_model = patient_record_model(default_spec())  # the served model's record (a PatientRecord)
    e = client.explain(record_model.model_validate(example_record(default_spec())))
    assert isinstance(e, ExplanationPublic)
    total = e.base_value + sum(a.attribution for a in e.attributions) + e.completeness_gap
    assert math.isclose(total, e.output_value, abs_tol=1e-9)
    assert math.isclose(e.output_value, e.prediction.logit, abs_tol=1e-6)
    assert abs(e.completeness_gap) < 1e-6
    assert [a.feature for a in e.attributions] == list(example_record(default_spec()))


def test_explain_options_reach_the_server(client: GshapClient) -> None:
    """Keyword options are sent: a probability-scale sampled explanation reports its method, seed and count."""
    e = client.explain(example_record(default_spec()), method="sampled", output="probability", n_samples=16, seed=7)
    assert (e.method, e.output, e.n_samples, e.seed) == ("sampled", "probability", 16, 7)
    assert math.isclose(e.output_value, e.prediction.probability, abs_tol=1e-6)


def test_batches_answer_in_order_and_report_refusals_by_index(client: GshapClient) -> None:
    """A batch with one bad record answers the others; the refusal is a BatchItemError naming the field."""
    bad = {**example_record(default_spec()), "glucose": 10_000}
    records = [example_record(default_spec()), bad, {**example_record(default_spec()), "insulin": None}]
    pb = client.predict_batch(records)
    assert isinstance(pb, PredictionBatchPublic)
    assert (pb.succeeded, pb.failed) == (2, 1)
    assert [type(r) for r in pb.results] == [PredictionBatchItem, BatchItemError, PredictionBatchItem]
    eb = client.explain_batch(records)
    assert isinstance(eb, ExplanationBatchPublic)
    refused = eb.results[1]
    assert isinstance(refused, BatchItemError)
    assert refused.index == 1
    assert refused.error.errors is not None
    assert [e.field for e in refused.error.errors] == ["glucose"]
    assert isinstance(eb.results[2], ExplanationBatchItem)
    assert "insulin" in eb.results[2].prediction.imputed


def test_model_card_health_and_readiness(client: GshapClient) -> None:
    """model(), health() and ready() answer the service's models, naming the same model version."""
    card = client.model()
    assert isinstance(card, ModelCardPublic)
    assert [f.name for f in card.features] == list(example_record(default_spec()))
    assert isinstance(client.health(), HealthPublic)
    ready = client.ready()
    assert isinstance(ready, ReadinessPublic)
    assert ready.model_version == card.model_version


def test_groups_and_one_group(client: GshapClient) -> None:
    """groups() lists the outcome groups; group() fetches one, case-insensitively, as a GroupPublic."""
    groups = client.groups()
    assert isinstance(groups, GroupsPublic)
    assert {"TP", "TN", "FP", "FN", "ALL"} <= set(groups.groups)
    tp = client.group("tp")
    assert isinstance(tp, GroupPublic)
    assert tp.group == "TP"
    assert tp.count == groups.groups["TP"].count


def test_async_client_gives_the_same_answers(client: GshapClient, server: LiveServer) -> None:
    """AsyncGshapClient's answers equal the sync client's (the exact method is deterministic)."""

    async def run() -> tuple[PredictionPublic, ExplanationPublic, PredictionBatchPublic, ReadinessPublic]:
        async with AsyncGshapClient(server.url, timeout=30) as ac:
            return await asyncio.gather(
                ac.predict(example_record(default_spec())),
                ac.explain(example_record(default_spec())),
                ac.predict_batch([example_record(default_spec())] * 3),
                ac.ready(),
            )

    prediction, explanation, batch, ready = asyncio.run(run())
    assert prediction == client.predict(example_record(default_spec()))
    assert explanation.attributions == client.explain(example_record(default_spec())).attributions
    assert batch.succeeded == 3
    assert ready.status == "ready"


# ---- problems as exceptions ------------------------------------------------------------------------------------


def test_invalid_record_raises_invalid_input_with_the_problem(client: GshapClient) -> None:
    """A record the server refuses raises InvalidInput (422) carrying the problem and naming the field."""
    with pytest.raises(InvalidInput) as info:
        client.predict({**example_record(default_spec()), "glucose": 10_000})
    err = info.value
    assert err.status == 422
    assert err.fields == ["glucose"]
    assert err.errors[0].rule == "less_than_equal"
    assert err.type.endswith("/validation")
    assert err.problem["instance"] == "/predict"
    assert err.request_id


def test_async_invalid_record_raises_the_same_error(server: LiveServer) -> None:
    """The async client raises the same InvalidInput, naming a misspelled field."""

    async def run() -> None:
        async with AsyncGshapClient(server.url) as ac:
            await ac.explain({**example_record(default_spec()), "glucos": 100})

    with pytest.raises(InvalidInput) as info:
        asyncio.run(run())
    assert "glucos" in info.value.fields


def test_unknown_group_raises_not_found(client: GshapClient) -> None:
    """An unknown outcome group is a NotFound (404) problem, and is not retried."""
    with pytest.raises(NotFound) as info:
        client.group("nonsense")
    assert info.value.status == 404
    assert isinstance(info.value, ApiError)


def test_nan_is_refused_before_sending(client: GshapClient) -> None:
    """NaN is not JSON: the client refuses it locally and says to use None for "not measured"."""
    with pytest.raises(ValueError, match="use None"):
        client.predict({**example_record(default_spec()), "glucose": float("nan")})


# ---- API keys ----------------------------------------------------------------------------------------------------


def test_api_key_is_sent_as_bearer(keyed_server: LiveServer) -> None:
    """With GSHAP_API_KEYS set, a client with a listed key is answered and one without is Unauthorized (401)."""
    with GshapClient(keyed_server.url, api_key=KEYS[1]) as c:
        assert isinstance(c.predict(example_record(default_spec())), PredictionPublic)
    for key in (None, "not-a-key"):
        with GshapClient(keyed_server.url, api_key=key) as c, pytest.raises(Unauthorized) as info:
            c.model()
        assert info.value.status == 401
        assert info.value.type.endswith("/unauthorized")


def test_probes_need_no_key(keyed_server: LiveServer) -> None:
    """health() and ready() work without a key, as orchestrators (and the Docker HEALTHCHECK) need."""
    with GshapClient(keyed_server.url) as c:
        assert c.health().status == "ok"
        assert c.ready().status == "ready"


def test_x_api_key_header_works_too(keyed_server: LiveServer) -> None:
    """A key given as an X-API-Key header (extra headers) is accepted."""
    with GshapClient(keyed_server.url, headers={"X-API-Key": KEYS[0]}) as c:
        assert c.model().model_version


# ---- retries -------------------------------------------------------------------------------------------------------


def test_rate_limit_refusal_carries_retry_after(keyed_server: LiveServer) -> None:
    """Without retries, the request over the burst raises RateLimited (429) with Retry-After in seconds."""
    with GshapClient(keyed_server.url, api_key=KEYS[2], retry=Retry(max_attempts=1)) as c:

        def drain() -> None:
            for _ in range(RATE_BURST + 2):
                c.model()

        with pytest.raises(RateLimited) as info:
            drain()
    err = info.value
    assert err.status == 429
    assert err.retry_after == 1.0
    assert err.problem["retry_after"] == 1


def test_retry_waits_for_retry_after_then_succeeds(keyed_server: LiveServer) -> None:
    """Against a real 429, the client waits at least Retry-After (plus bounded jitter) and then succeeds."""
    pauses = Pauses(real=True)
    policy = Retry(max_attempts=4, backoff=0.1)
    with GshapClient(keyed_server.url, api_key=KEYS[2], retry=policy, sleep=pauses) as c:
        for _ in range(RATE_BURST + 2):
            assert isinstance(c.model(), ModelCardPublic)
            if pauses.seconds:
                break
    assert len(pauses.seconds) == 1, "the burst was never exceeded"
    assert 1.0 <= pauses.seconds[0] <= 1.0 + policy.backoff


PREDICTION = {
    "probability": 0.8,
    "logit": math.log(4.0),
    "label": 1,
    "label_name": "diabetes",
    "threshold": 0.6,
    "model_version": "mock/1",
    "calibration": "platt/validation",
    "imputed": [],
    "warnings": [],
}


def _mock(answers: Sequence[tuple[int, str | None]]) -> tuple[httpx.MockTransport, list[float]]:
    """A transport answering (status, Retry-After) in turn, the last repeating; records when requests came."""
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        i = min(len(seen), len(answers) - 1)
        seen.append(time.monotonic())
        status, retry_after = answers[i]
        if status == 200:
            return httpx.Response(200, json=PREDICTION)
        problem = {
            "type": "/problems/model-not-ready",
            "title": "Model not ready",
            "status": status,
            "detail": "The model is loading or shutting down; retry shortly.",
            "request_id": f"r{len(seen) - 1}",
        }
        headers = {"Content-Type": "application/problem+json"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        return httpx.Response(status, content=json.dumps(problem).encode(), headers=headers)

    return httpx.MockTransport(handler), seen


def test_503_is_retried_with_jittered_exponential_backoff() -> None:
    """503s without Retry-After are retried after uniform(0, backoff·2^(n-1)) pauses (seeded), then succeed."""
    transport, seen = _mock([(503, None)] * 3 + [(200, None)])
    pauses = Pauses()
    policy = Retry(max_attempts=5, backoff=0.5, max_backoff=1.5)
    with GshapClient("http://gshap.test", transport=transport, retry=policy, sleep=pauses, rng=random.Random(3)) as c:
        answer = c.predict(example_record(default_spec()))
    assert isinstance(answer, PredictionPublic)
    assert len(seen) == 4
    rng = random.Random(3)
    assert pauses.seconds == [rng.uniform(0, bound) for bound in (0.5, 1.0, 1.5)]


def test_503_retry_waits_for_retry_after_in_real_time() -> None:
    """After a 503 with Retry-After: 1 the next attempt comes 1 s later, not sooner, and within the jitter."""
    transport, seen = _mock([(503, "1"), (200, None)])
    policy = Retry(max_attempts=3, backoff=0.2)
    with GshapClient("http://gshap.test", transport=transport, retry=policy) as c:
        assert c.predict(example_record(default_spec())).label == 1
    assert len(seen) == 2
    assert 1.0 <= seen[1] - seen[0] <= 1.0 + policy.backoff + 0.5


def test_503_retries_are_bounded_and_end_in_unavailable() -> None:
    """A server that stays at 503 gets exactly max_attempts requests; Unavailable carries the last problem."""
    transport, seen = _mock([(503, "0")])
    pauses = Pauses()
    with (
        GshapClient("http://gshap.test", transport=transport, retry=Retry(max_attempts=3), sleep=pauses) as c,
        pytest.raises(Unavailable) as info,
    ):
        c.predict(example_record(default_spec()))
    assert len(seen) == 3
    assert len(pauses.seconds) == 2
    err = info.value
    assert err.status == 503
    assert err.retry_after == 0.0
    assert err.request_id == "r2"
    assert err.type.endswith("/model-not-ready")


def test_retry_after_beyond_the_bound_is_raised_at_once() -> None:
    """A Retry-After longer than max_retry_after is not waited for: one request, and the error says when."""
    transport, seen = _mock([(503, "120"), (200, None)])
    pauses = Pauses()
    policy = Retry(max_attempts=4, max_retry_after=30)
    with (
        GshapClient("http://gshap.test", transport=transport, retry=policy, sleep=pauses) as c,
        pytest.raises(Unavailable) as info,
    ):
        c.predict(example_record(default_spec()))
    assert (len(seen), pauses.seconds, info.value.retry_after) == (1, [], 120.0)


def test_async_client_retries_503_too() -> None:
    """The async client follows the same policy with its own (awaited) sleep."""
    transport, seen = _mock([(503, "0"), (503, None), (200, None)])
    pauses = Pauses()
    policy = Retry(max_attempts=3, backoff=0.25)

    async def run() -> PredictionPublic:
        async with AsyncGshapClient(
            "http://gshap.test", transport=transport, retry=policy, sleep=pauses.asleep, rng=random.Random(1)
        ) as ac:
            return await ac.predict(example_record(default_spec()))

    assert asyncio.run(run()).probability == 0.8
    assert len(seen) == 3
    rng = random.Random(1)
    assert pauses.seconds == [0.0 + rng.uniform(0, 0.25), rng.uniform(0, 0.5)]


def test_readiness_probe_is_not_retried() -> None:
    """ready() reports the present state: one request, and a 503 raises Unavailable at once."""
    transport, seen = _mock([(503, "1")])
    with GshapClient("http://gshap.test", transport=transport) as c, pytest.raises(Unavailable):
        c.ready()
    assert len(seen) == 1


def test_refused_connection_is_retried_then_raises_transport_error() -> None:
    """A closed port is tried max_attempts times with bounded back-off, then TransportError (from ConnectError)."""
    pauses = Pauses()
    policy = Retry(max_attempts=3, backoff=0.2)
    url = f"http://127.0.0.1:{free_port()}"
    with GshapClient(url, retry=policy, sleep=pauses, timeout=5) as c, pytest.raises(TransportError) as info:
        c.model()
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert len(pauses.seconds) == 2
    assert all(0 <= p <= policy.backoff * 2**n for n, p in enumerate(pauses.seconds))


def test_answer_breaking_the_schema_raises_response_error() -> None:
    """A 200 whose body is not the promised model raises ResponseError (only a mock can send one)."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"status": "maybe"}))
    with GshapClient("http://gshap.test", transport=transport) as c, pytest.raises(ResponseError) as info:
        c.health()
    assert info.value.status == 200


def test_retry_after_is_read_as_seconds_or_http_date() -> None:
    """Retry-After as delta-seconds or an HTTP date gives seconds from now; anything else gives None."""
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:05 GMT", now=lambda: now) == 5.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=lambda: now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_client_imports_no_web_framework() -> None:
    """Importing service.client loads neither FastAPI, Starlette, uvicorn nor the numerical stack (torch)."""
    code = (
        "import sys, service.client; "
        "print(sorted({'fastapi', 'starlette', 'uvicorn', 'torch', 'captum'} & set(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "[]"
