"""The HTTP hot path (issue 26): one ASGI layer around the router, and POST /predict, /explain (and their per-model
copies) served past the router and FastAPI's request handling, with the same answers and errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import fastapi.dependencies.utils
import fastapi.routing
import pytest
from fastapi import FastAPI
from helpers import AppClient, app_client

from service.api.app import create_app
from service.api.observability import new_request_id
from service.api.stack import ServiceLayer
from service.config import Settings
from service.model.store import Bundle


@pytest.fixture(scope="module")
def app(bundle: Bundle) -> FastAPI:
    return create_app(Settings(cors_origins=["https://a.example"]), bundle)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[AppClient]:
    with app_client(app) as c:
        yield c


def test_one_layer_around_the_router(app: FastAPI) -> None:
    """The whole middleware stack is the service layer (CORS inside it when configured), then the router."""
    stack = app.build_middleware_stack()
    assert isinstance(stack, ServiceLayer)
    assert stack.app is app.router


def test_fast_routes_are_the_hot_posts(app: FastAPI) -> None:
    stack = app.build_middleware_stack()
    assert isinstance(stack, ServiceLayer)
    paths = set(stack.fast_routes)
    name = app.state.gshap.preloaded.name
    assert {"/predict", "/explain", f"/models/{name}/predict", f"/models/{name}/explain"} <= paths
    # batches, plots and everything else go through the router
    assert not {p for p in paths if not p.endswith(("/predict", "/explain"))}


def test_fast_routes_skip_fastapis_request_handling(
    app: FastAPI, client: AppClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No dependency solving on /predict or /explain (it stays on the other routes)."""
    calls: list[Any] = []
    original = fastapi.dependencies.utils.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("dependant"))
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    app.router._mark_routes_changed()  # the handlers are built again, with the counting function
    example = app.state.gshap.models.example()
    for path in ("/predict", "/explain"):
        r = client.post(path, json=example)
        assert r.status_code == 200, r.text
    assert calls == []
    assert client.post("/predict/batch", json={"records": [example]}).status_code == 200
    assert calls


def test_fast_routes_keep_the_errors_and_their_order(app: FastAPI, client: AppClient) -> None:
    example = app.state.gshap.models.example()
    body = json.dumps(example).encode()
    json_type = {"content-type": "application/json"}
    # malformed JSON: 400 before the media type or anything else is looked at
    r = client.post("/predict", content=b'{"a":', headers=json_type)
    assert (r.status_code, r.json()["errors"][0]["rule"]) == (400, "json_invalid")
    # not JSON: 415, even with a valid JSON body
    assert client.post("/predict", content=body, headers={"content-type": "text/plain"}).status_code == 415
    assert client.post("/predict", content=body).status_code == 415
    # a name given twice: 422 duplicate_key, before the record is validated
    r = client.post("/explain", content=b'{"x": 1, "x": 2}', headers=json_type)
    assert r.status_code == 422
    assert [(e["field"], e["rule"]) for e in r.json()["errors"]] == [("x", "duplicate_key")]
    # no body: the body is missing
    r = client.post("/predict", headers=json_type)
    assert [(e["field"], e["rule"]) for e in r.json()["errors"]] == [("body", "missing")]
    # an unknown field and a value out of range: named with their rules
    first = next(iter(example))
    r = client.post("/predict", json={**example, "zzz": 1, first: -1e9})
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {"zzz", first}
    assert r.headers["content-type"] == "application/problem+json"


def test_fast_routes_answer_with_every_header(app: FastAPI, client: AppClient) -> None:
    example = app.state.gshap.models.example()
    name = app.state.gshap.preloaded.name
    r = client.post(
        f"/models/{name}/predict", json=example, headers={"X-Request-ID": "hot-1", "Origin": "https://a.example"}
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "hot-1"
    assert r.headers["x-model-version"].startswith(f"{name}/")
    assert r.headers["access-control-allow-origin"] == "https://a.example"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    metrics = client.get("/metrics").text
    assert f'gshap_http_requests_total{{method="POST",route="/models/{name}/predict",status="200"}}' in metrics


def test_fast_routes_parse_bodies_as_json_loads_does(app: FastAPI, client: AppClient) -> None:
    """The shared parser reads what json.loads reads from bytes: a UTF-8 BOM and UTF-16 are decoded as it decodes
    them (the same answer as plain UTF-8), names given twice are found at any depth, and a malformed body is
    still a 400."""
    example = app.state.gshap.models.example()
    json_type = {"content-type": "application/json"}
    text = json.dumps(example)
    plain = client.post("/explain", content=text.encode(), headers=json_type)
    assert plain.status_code == 200
    for encoded in (b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16"), text.encode("utf-32-le")):
        r = client.post("/explain", content=encoded, headers=json_type)
        assert r.status_code == 200, r.text
        assert r.json() == plain.json()
    r = client.post("/explain", content=b'{"a": {"y": 1, "y": 2}, "b": [1, {"z": 0, "z": 0}]}', headers=json_type)
    assert [(e["field"], e["rule"]) for e in r.json()["errors"]] == [("y", "duplicate_key"), ("z", "duplicate_key")]
    r = client.post("/explain", content=b'{"glucose": 1, "age": }', headers=json_type)
    assert (r.status_code, r.json()["errors"][0]["rule"]) == (400, "json_invalid")


def test_new_request_ids_are_uuid4_hex() -> None:
    """A request without a usable X-Request-ID gets what uuid.uuid4().hex gives: 32 hex digits, version 4, the
    RFC 4122 variant, and never the same twice."""
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        parsed = uuid.UUID(hex=rid)
        assert (parsed.hex, parsed.version, parsed.variant) == (rid, 4, uuid.RFC_4122)
