"""Access control, CORS and security headers across the whole surface (what test_security and test_api leave out).

Every operation of the OpenAPI document and every documentation page needs a key when keys are set; keys are
compared against every configured key whatever matches; keys in the URL are not keys; CORS preflights are
refused by default and answered for a configured origin only; every answer, errors included, carries the
security headers.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fhir_helpers import load
from helpers import AppClient, app_client, record

from service.api.app import create_app
from service.api.security import ApiKeyMiddleware, ProblemCORSMiddleware
from service.config import Settings
from service.model.store import Bundle

KEYS = ["key-2025-old", "key-2025-new"]
ORIGIN = "https://clinic.example"
OPEN = {"/healthz", "/readyz", "/metrics", "/monitoring", "/v2/health/live", "/v2/health/ready"}  # see below
# /metrics and /monitoring: unless GSHAP_METRICS_REQUIRE_KEY; /v2/health/*: the V2 protocol's probes
DOCS = ("/docs", "/redoc", "/docs/oauth2-redirect", "/openapi.json")
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@pytest.fixture(scope="module")
def keyed(bundle: Bundle) -> Iterator[AppClient]:
    with app_client(create_app(Settings(api_keys=KEYS), bundle)) as c:
        yield c


@pytest.fixture(scope="module")
def plain(bundle: Bundle) -> Iterator[AppClient]:
    with app_client(create_app(Settings(), bundle)) as c:
        yield c


def _operations(client: AppClient) -> list[tuple[str, str, Any]]:
    """(method, concrete path, JSON body) of every operation of the served OpenAPI document."""
    doc = client.get("/openapi.json", headers={"X-API-Key": KEYS[0]}).json()
    bodies = {"/predict": record(), "/explain": record(), "/predict/batch": {"records": [record()]}}
    bodies["/explain/batch"] = bodies["/predict/batch"]
    bundle = load("patient_bundle.json")
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"].get("id") != "glu-other"]
    bodies["/fhir/predict"] = bodies["/fhir/explain"] = bundle
    bodies["/explain/plot"] = record()
    v2_inputs = [{"name": k, "datatype": "FP64", "shape": [1], "data": [v]} for k, v in record().items()]
    bodies["/v2/models/{name}/infer"] = bodies["/v2/models/{name}/versions/{version}/infer"] = {"inputs": v2_inputs}
    name, version = client.get("/readyz", headers={"X-API-Key": KEYS[0]}).json()["model_version"].split("/")
    out = []
    for path, item in doc["paths"].items():
        concrete = (
            path.replace("{group}", "TP")
            .replace("{name}", name)
            .replace("{version}", version)
            .replace("{service_id}", "diabetes-risk")
        )
        for method in item:
            # a served model's own routes (/models/{name}[/versions/{version}]/...) take the root route's body
            root = re.sub(r"^/models/[^/]+(/versions/[^/]+)?(?=/)", "", path)
            out.append((method.upper(), concrete, bodies.get(path, bodies.get(root))))
    return out


def test_every_operation_and_doc_page_needs_a_key(keyed: AppClient) -> None:
    """With GSHAP_API_KEYS, each operation and doc page is 401 without a key and answered with either key."""
    operations = _operations(keyed)
    # 28 root operations, /models and /models/{name}, and the served model's 12 under its name and 12 under its
    # version
    assert len(operations) == 54
    for method, path, body in operations:
        r = keyed.request(method, path, json=body)
        feedback = path.endswith(("/feedback", "/feedback/summary"))
        if path.startswith("/cds-services") and not feedback:
            # CDS Hooks clients authenticate with their signed JWT (GSHAP_CDS_JWT_ISSUERS), never with an API key
            assert r.status_code != 401, path
            continue
        if path in OPEN:
            assert r.status_code == 200, path
            continue
        assert r.status_code == 401, (method, path)
        if path.startswith("/v2"):  # the Open Inference Protocol's own error (docs/V2.md)
            assert r.headers["content-type"] == "application/json"
            assert set(r.json()) == {"error"}
        else:
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"] == "/problems/unauthorized"
        for headers in ({"Authorization": f"Bearer {KEYS[0]}"}, {"X-API-Key": KEYS[1]}):
            # feedback without JWT issuers takes the API key; its bodiless call is then refused for the body (422)
            expected = 422 if path.endswith("/feedback") else 200
            assert keyed.request(method, path, json=body, headers=headers).status_code == expected, (method, path)
    for path in DOCS:
        assert keyed.get(path).status_code == 401, path
        assert keyed.get(path, headers={"X-API-Key": KEYS[0]}).status_code == 200, path


def test_metrics_require_a_key_when_configured(bundle: Bundle) -> None:
    """GSHAP_METRICS_REQUIRE_KEY=true puts /metrics and /monitoring behind the keys; /healthz stays open."""
    settings = Settings(api_keys=KEYS, metrics_require_key=True)
    with app_client(create_app(settings, bundle)) as c:
        for path in ("/metrics", "/monitoring"):
            r = c.get(path)
            assert r.status_code == 401, path
            assert r.headers["content-type"] == "application/problem+json"
            assert c.get(path, headers={"Authorization": f"Bearer {KEYS[1]}"}).status_code == 200, path
        assert c.get("/healthz").status_code == 200
        refused = c.get("/metrics", headers={"X-API-Key": KEYS[0]}).text
        assert 'gshap_http_requests_total{method="GET",route="/metrics",status="401"} 1.0' in refused


def test_metrics_require_key_without_keys_is_refused() -> None:
    """Asking for keys on /metrics with no GSHAP_API_KEYS is a configuration error, not a silently open endpoint."""
    with pytest.raises(ValueError, match="GSHAP_METRICS_REQUIRE_KEY"):
        Settings(metrics_require_key=True)


def test_a_key_in_the_url_is_not_a_key(keyed: AppClient) -> None:
    """Keys go in headers only: ?api_key=, ?key= or ?token= with a valid key is still a 401."""
    for param in ("api_key", "key", "token", "access_token"):
        assert keyed.get(f"/model?{param}={KEYS[0]}").status_code == 401


def test_every_key_is_compared_whatever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each presented key is compared (in constant time) against all configured keys: no early exit to time."""
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # the module service.api.security calls

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError

    mw = ApiKeyMiddleware(app, api_keys=["first", "second", "third"])
    from starlette.datastructures import Headers

    for presented in ("first", "third", "nothing"):
        calls.clear()
        mw._match(Headers({"x-api-key": presented}))
        assert len(calls) == 3, presented
    calls.clear()
    mw._match(Headers({"x-api-key": "first", "authorization": "Bearer second"}))
    assert len(calls) == 6


def test_cors_preflight_refused_by_default(plain: AppClient) -> None:
    """Without GSHAP_CORS_ORIGINS a preflight gets no CORS headers (a 405 problem): browsers refuse the call."""
    r = plain.request("OPTIONS", "/explain", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"
    assert not [h for h in r.headers if h.startswith("access-control-")]
    simple = plain.post("/predict", json=record(), headers={"Origin": ORIGIN})
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_only_the_configured_origin(bundle: Bundle) -> None:
    """A configured origin's preflight is answered; another origin's gets no Allow-Origin, preflight or not."""
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key, content-type"}
    with app_client(create_app(Settings(cors_origins=[ORIGIN], api_keys=KEYS), bundle)) as c:
        ok = c.request("OPTIONS", "/explain", headers={"Origin": ORIGIN, **preflight})
        assert ok.status_code == 200  # preflights carry no credentials: answered before authentication
        assert ok.headers["access-control-allow-origin"] == ORIGIN
        assert "x-api-key" in ok.headers["access-control-allow-headers"].lower()
        assert ok.headers["access-control-allow-methods"] == "GET, POST"
        refused = c.request("OPTIONS", "/explain", headers={"Origin": "https://evil.example", **preflight})
        assert refused.status_code >= 400
        assert "access-control-allow-origin" not in refused.headers
        r = c.post("/predict", json=record(), headers={"Origin": "https://evil.example", "X-API-Key": KEYS[0]})
        assert "access-control-allow-origin" not in r.headers
        unauth = c.post("/predict", json=record(), headers={"Origin": ORIGIN})
        assert unauth.status_code == 401
        assert unauth.headers["access-control-allow-origin"] == ORIGIN  # the browser may read the 401


def test_refused_cors_preflight_is_a_problem(bundle: Bundle) -> None:
    """A refused preflight is a problem like any refusal, not Starlette's plain-text 400."""
    with app_client(create_app(Settings(cors_origins=[ORIGIN]), bundle)) as c:
        headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        r = c.request("OPTIONS", "/predict", headers=headers)
        assert r.headers["content-type"] == "application/problem+json"


def test_problem_cors_middleware_refuses_with_a_problem() -> None:
    """ProblemCORSMiddleware answers an allowed preflight as Starlette does and a refused one with a 403 problem."""
    from helpers import BASE_URL
    from starlette.applications import Starlette

    inner = Starlette()
    app = ProblemCORSMiddleware(inner, allow_origins=[ORIGIN], allow_methods=["GET", "POST"])

    import anyio
    import httpx

    async def probe(origin: str, method: str = "POST") -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as client:
            headers = {"Origin": origin, "Access-Control-Request-Method": method}
            return await client.request("OPTIONS", "/predict", headers=headers)

    ok = anyio.run(probe, ORIGIN)
    assert (ok.status_code, ok.headers["access-control-allow-origin"]) == (200, ORIGIN)
    for origin, method in (("https://evil.example", "POST"), (ORIGIN, "DELETE")):
        r = anyio.run(probe, origin, method)
        assert r.status_code == 403
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["type"] == "/problems/cors-refused"
        assert "evil" not in r.text
        assert r.headers["vary"].startswith("Origin")
        assert "access-control-allow-origin" not in r.headers


# ---- security headers on every kind of answer -----------------------------------------------------------------


async def _slowly(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 512):
        yield data[i : i + 512]


def _answers(bundle: Bundle) -> Iterator[tuple[str, Any]]:
    settings = Settings(api_keys=[*KEYS, "key-rate-limited"], rate_limit_per_minute=3, max_body_bytes=2048)
    app = create_app(settings, bundle)

    async def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom)
    key = {"X-API-Key": KEYS[0]}
    big = json.dumps({**record(), "pad": "x" * 4000}).encode()
    with app_client(app) as c:
        yield "200", c.post("/predict", json=record(), headers=key)
        yield "400", c.post("/predict", content=b"{", headers={**key, "content-type": "application/json"})
        yield "401", c.get("/model")
        yield "413", c.post("/predict", content=big, headers={**key, "content-type": "application/json"})
        c2 = {"X-API-Key": KEYS[1]}
        json_c2 = {**c2, "content-type": "application/json"}
        yield "413-streamed", c.post("/predict", content=_slowly(big), headers=json_c2)
        yield "415", c.post("/predict", content=b"{}", headers={**c2, "content-type": "text/plain"})
        limited = {"X-API-Key": "key-rate-limited"}
        assert [c.get("/model", headers=limited).status_code for _ in range(3)] == [200] * 3
        yield "429", c.get("/model", headers=limited)
    with app_client(create_app(Settings(), bundle)) as c:
        yield "404", c.get("/nowhere")
        yield "405", c.request("PUT", "/predict", json=record())
        yield "422", c.post("/predict", json={"glucos": 1})
        yield "healthz", c.get("/healthz")
    with app_client(app) as c:
        yield "500", c.get("/boom", headers={"X-API-Key": KEYS[1]})
    with app_client(create_app(Settings(), bundle), lifespan=False) as c:
        yield "503", c.post("/predict", json=record())


def test_security_headers_on_every_answer(bundle: Bundle) -> None:
    """200, 400, 401, 404, 405, 413 (declared and streamed), 415, 422, 429, 500, 503: all carry the headers."""
    seen = []
    for name, r in _answers(bundle):
        seen.append(name)
        expected = int(name[:3]) if name[:3].isdigit() else 200
        assert r.status_code == expected, (name, r.text[:200])
        for header, value in SECURITY_HEADERS.items():
            assert r.headers.get(header) == value, (name, header)
        assert r.headers["content-security-policy"].startswith("default-src 'none'"), name
        assert r.headers["x-request-id"], name
        assert "server" not in r.headers, name
        if expected >= 400:
            assert r.headers["content-type"] == "application/problem+json", name
    assert len(seen) == 13
