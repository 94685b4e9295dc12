"""The hardening mechanisms on their own: settings from the environment, keys, token bucket, headers, limits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from helpers import AppClient, app_client, record
from starlette.datastructures import Headers

from service.api.app import create_app
from service.api.security import DOCS_CSP, ApiKeyMiddleware, TokenBucket, key_id
from service.config import Settings
from service.model.store import Bundle


@pytest.fixture(scope="module")
def secured(bundle: Bundle) -> Iterator[AppClient]:
    settings = Settings(api_keys=["alpha-key", "beta-key"], rate_limit_per_minute=1000)
    with app_client(create_app(settings, bundle)) as c:
        yield c


# ---- settings ---------------------------------------------------------------------------------------------


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """GSHAP_* variables set every setting; lists are comma-separated; blanks and 0 mean 'off'."""
    monkeypatch.setenv("GSHAP_PORT", "9123")
    monkeypatch.setenv("GSHAP_API_KEYS", "k1, k2 ,")
    monkeypatch.setenv("GSHAP_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("GSHAP_RATE_LIMIT_PER_MINUTE", "0")
    monkeypatch.setenv("GSHAP_MAX_N_SAMPLES", "")
    monkeypatch.setenv("GSHAP_LOG_LEVEL", "WARNING")
    s = Settings()
    assert s.port == 9123
    assert s.api_key_values() == ["k1", "k2"]
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.rate_limit_per_minute is None
    assert s.max_n_samples is None
    assert s.log_level == "warning"
    assert "k1" not in repr(s)  # keys are secrets


def test_settings_defaults_and_overrides() -> None:
    """Defaults match the documentation; keyword overrides (the CLI's) win; unknown names are refused."""
    s = Settings()
    assert (s.host, s.port, s.workers, s.model_path) == ("127.0.0.1", 8000, 1, None)
    assert s.api_keys == []
    assert s.cors_origins == []
    assert Settings(port=9000, model_path="/tmp/b").port == 9000
    with pytest.raises(ValueError, match="prot"):
        Settings(prot=1)  # type: ignore[call-arg]


def test_settings_round_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """as_env() rebuilds the same settings in a worker process (Settings() from the environment)."""
    s = Settings(port=9001, workers=3, api_keys=["a", "b"], cors_origins=["https://c.example"], max_n_samples=50)
    for k, v in s.as_env().items():
        monkeypatch.setenv(k, v)
    assert Settings() == s


# ---- keys -------------------------------------------------------------------------------------------------


def test_key_match_checks_both_header_forms_and_every_key() -> None:
    """Bearer and X-API-Key are both accepted; any configured key matches; others do not."""

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError

    mw = ApiKeyMiddleware(app, api_keys=["one", "two"])
    assert mw._match(Headers({"authorization": "Bearer two"})) == key_id("two")
    assert mw._match(Headers({"authorization": "bearer one"})) == key_id("one")
    assert mw._match(Headers({"x-api-key": "one"})) == key_id("one")
    for headers in ({}, {"authorization": "Bearer three"}, {"authorization": "Basic one"}, {"x-api-key": "on"}):
        assert mw._match(Headers(headers)) is None


def test_key_id_is_short_stable_and_not_the_key() -> None:
    """Logs carry a 12-hex-digit id of the key, never the key."""
    assert key_id("secret") == key_id("secret") != key_id("secret2")
    assert len(key_id("secret")) == 12
    assert "secret" not in key_id("secret")


def test_open_paths_and_protected_paths(secured: AppClient) -> None:
    """Health probes need no key; the API and its docs do; the key id is logged, not the key."""
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200
    for path in ("/model", "/groups", "/docs", "/openapi.json", "/nowhere"):
        assert secured.get(path).status_code == 401, path
    assert secured.post("/predict", json=record(), headers={"X-API-Key": "beta-key"}).status_code == 200


def test_unauthorized_body_gives_no_hint(secured: AppClient) -> None:
    """Missing, malformed and wrong keys get the same 401 problem and WWW-Authenticate header."""
    answers = [
        secured.get("/model"),
        secured.get("/model", headers={"Authorization": "Bearer alpha-kez"}),
        secured.get("/model", headers={"Authorization": "Token alpha-key"}),
        secured.get("/model", headers={"X-API-Key": ""}),
    ]
    bodies = [{k: v for k, v in r.json().items() if k != "request_id"} for r in answers]
    assert all(b == bodies[0] for b in bodies)
    assert {r.headers["www-authenticate"] for r in answers} == {'Bearer realm="gshap"'}
    assert bodies[0]["type"] == "/problems/unauthorized"


def test_auth_is_checked_before_the_body_is_read(secured: AppClient) -> None:
    """An unauthenticated oversized or malformed body gets 401, not 413 or 400."""
    r = secured.post("/predict", content=b"{" * 5_000_000, headers={"content-type": "application/json"})
    assert r.status_code == 401


# ---- rate limit -------------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_burst_then_refills() -> None:
    """Capacity = the per-minute rate; then one token every 60/rate seconds; wait time is exact."""
    clock = _Clock()
    bucket = TokenBucket(60, clock=clock)
    assert all(bucket.take("a") == 0 for _ in range(60))
    assert bucket.take("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.take("a") == 0
    assert bucket.take("b") == 0  # buckets are per client


def test_token_bucket_burst_and_eviction() -> None:
    """A burst setting caps the bucket; the least recently seen clients are evicted beyond max_clients."""
    clock = _Clock()
    bucket = TokenBucket(600, capacity=2, max_clients=3, clock=clock)
    assert [bucket.take("a") == 0 for _ in range(3)] == [True, True, False]
    for c in "bcde":
        bucket.take(c)
    assert len(bucket._buckets) == 3
    assert "a" not in bucket._buckets


def test_rate_limit_per_client_address_without_keys(bundle: Bundle) -> None:
    """Without keys, the rate limit applies per client address; health probes are exempt."""
    with app_client(create_app(Settings(rate_limit_per_minute=1), bundle), client=("10.0.0.1", 1)) as c:
        assert c.get("/model").status_code == 200
        r = c.get("/model")
        assert r.status_code == 429
        assert r.headers["content-type"] == "application/problem+json"
        assert int(r.headers["retry-after"]) == 60
        assert c.get("/healthz").status_code == 200


# ---- headers and limits -----------------------------------------------------------------------------------


def _plain_app(bundle: Bundle) -> FastAPI:
    return create_app(Settings(), bundle)


def test_docs_csp_is_relaxed_only_on_docs_pages(bundle: Bundle) -> None:
    """Only /docs and /redoc get the CSP that lets Swagger UI and ReDoc load; JSON answers forbid everything."""
    with app_client(_plain_app(bundle)) as c:
        assert c.get("/docs").headers["content-security-policy"] == DOCS_CSP
        assert c.get("/redoc").headers["content-security-policy"] == DOCS_CSP
        api_csp = c.get("/openapi.json").headers["content-security-policy"]
        assert api_csp.startswith("default-src 'none'")
        assert "unsafe-inline" not in api_csp


def test_content_length_over_limit_is_refused_without_reading(bundle: Bundle) -> None:
    """A declared Content-Length over the limit is a 413 naming the limit."""
    with app_client(create_app(Settings(max_body_bytes=300), bundle)) as c:
        r = c.post("/predict/batch", json={"records": [record()] * 3})
        assert r.status_code == 413
        assert r.json()["limit"] == 300
        assert r.json()["limit_name"] == "max_body_bytes"
