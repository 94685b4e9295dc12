"""The per-model routes are copies of built routes (service/api/route_copies.py), not routes analysed again: each
copy is the route FastAPI would build, field by field and over HTTP, and the FastAPI internals the copy reads are
the ones it was written against (a FastAPI upgrade fails here, not in the answers)."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from collections.abc import Callable
from typing import Any

import fastapi
import fastapi._compat.v2
import fastapi.dependencies.utils
import fastapi.routing
import pytest
from fastapi import Depends, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from helpers import app_client
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute

import service.api.app as app_module
from service.api import route_copies
from service.api import routes as routes_module
from service.api.metrics import leaf_routes
from service.api.route_copies import ROUTE_ATTRIBUTES, analysed_copy, pinned_copy
from service.api.routes import models as models_routes
from service.api.routes import pin_model, require_json, runtime_dependency
from service.config import Settings

FAST = routes_module._FAST
Copy = tuple[APIRoute, dict[str, Any], APIRoute]


@pytest.fixture(scope="module")
def copies() -> list[Copy]:
    """Every copy the app of the shipped store makes (per-model and CDS), with the route and arguments it came from."""
    made: list[Copy] = []

    def recording(route: APIRoute, **kwargs: Any) -> APIRoute:
        new = pinned_copy(route, **kwargs)
        made.append((route, kwargs, new))
        return new

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(app_module, "pinned_copy", recording)
        app_module.create_app(Settings())
    return made


def test_every_copy_is_the_route_fastapi_builds(copies: list[Copy]) -> None:
    """Each copy equals FastAPI's own analysis of the same route (APIRoute(...) with the same arguments): every
    attribute, the fields (names, types, modes, schemas) and the dependency tree (order, calls, parameters, path)."""
    assert len(copies) == 6 * 12 + 2  # 6 prefixes of 12 routes (4 bundles), 2 CDS routes of another version
    for route, kwargs, new in copies:
        reference = analysed_copy(route, **kwargs)
        # (install_fast_routes then gives the fast ones their fast app, in an attribute of its own)
        assert set(vars(new)) - {FAST} == set(vars(reference)) == ROUTE_ATTRIBUTES, new.path
        _same(new, reference, new.path)


def test_the_pin_runs_first_then_the_routes_own(copies: list[Copy]) -> None:
    """The pin's dependency comes before the route's own (require_json, the runtime) in the copy's dependency tree."""
    by_id = {new.operation_id: new for _, _, new in copies}
    batch = by_id["predict_batch__pima_diabetes__1_0_0"]
    calls = [d.call for d in batch.dependant.dependencies]
    pinned = pin_model("x", None).__qualname__
    assert getattr(calls[0], "__qualname__", None) == pinned
    assert calls[1] is require_json  # the route's router's dependency, then the endpoint's parameters
    assert runtime_dependency in calls[2:]
    card = by_id["get_model_card__breast_cancer_wisconsin"]
    assert getattr(card.dependant.dependencies[0].call, "__qualname__", None) == pinned
    # every node of the tree has the copy's path (FastAPI's error messages name it)
    nodes = [batch.dependant]
    while nodes:
        node = nodes.pop()
        assert node.path == "/models/pima-diabetes/versions/1.0.0/predict/batch"
        nodes += node.dependencies


def test_copies_share_the_analysis_instead_of_repeating_it(copies: list[Copy]) -> None:
    """What makes a copy cheap: its fields are the route's, renamed, with the same pydantic TypeAdapter."""
    for route, _, new in copies:
        assert new.response_field is None or new.response_field._type_adapter is route.response_field._type_adapter  # type: ignore[union-attr]
        for code, field in new.response_fields.items():
            assert field._type_adapter is route.response_fields[code]._type_adapter
            assert field.name == f"Response_{code}_{new.unique_id}"


def test_a_prefix_with_path_parameters_is_analysed_again() -> None:
    """Outside what the copy handles (here, a prefix that adds a path parameter), the copy is FastAPI's own."""

    async def endpoint(name: str, group: str) -> dict[str, str]:
        return {"name": name, "group": group}

    route = APIRoute("/groups/{group}", endpoint, operation_id="g")
    pin = Depends(pin_model("m", None))
    kwargs: dict[str, Any] = {"path": "/models/{name}/groups/{group}", "operation_id": "g__m", "tags": ["models"]}
    new = pinned_copy(route, prepend=[pin], **kwargs)
    assert [f.name for f in route.dependant.query_params] == ["name"]
    assert [f.name for f in new.dependant.path_params] == ["name", "group"]
    _same(new, analysed_copy(route, prepend=[pin], **kwargs), new.path)


def test_leaf_routes_hold_every_copy(copies: list[Copy]) -> None:
    """Sanity: the copies the app makes are what it serves under /models/ and the CDS paths of other versions."""
    app = app_module.create_app(Settings())
    routes = [r for r in leaf_routes(app.routes) if isinstance(r, APIRoute)]
    served = {r.operation_id for r in routes if "__" in (r.operation_id or "")}
    assert served == {new.operation_id for _, _, new in copies}


def test_per_model_routes_are_served_as_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The copies are the app's own routes, right after those of GET /models: not an included router's, which
    FastAPI builds again at the first request that walks past them and after every change. No copy is analysed
    again at a request, nor after a reload; the app's dependency overrides apply to them as to the others."""
    app = app_module.create_app(Settings(admin_keys=["admin-secret"]))
    top = app.router.routes
    at = next(i for i, r in enumerate(top) if getattr(r, "original_router", None) is models_routes.router) + 1
    copied = top[at : at + 6 * 12 + 2]
    assert all(isinstance(r, APIRoute) and "__" in (r.operation_id or "") for r in copied)
    following = top[at + len(copied)]
    assert not isinstance(following, APIRoute) or "__" not in (following.operation_id or "")
    paths = {r.path for r in copied if isinstance(r, APIRoute)}
    analysed: list[str] = []
    populate = fastapi.routing._populate_api_route_state

    def counting(route: Any, path: str, *args: Any, **kwargs: Any) -> None:
        analysed.append(path)
        populate(route, path, *args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "_populate_api_route_state", counting)
    asked = ["/readyz", "/", "/models/pima-diabetes/model", "/models/breast-cancer-wisconsin/versions/1.1.0/groups"]
    with app_client(app) as client:
        for path in asked:
            assert client.get(path).status_code == 200, path
        assert client.post("/admin/reload", headers={"X-Admin-Key": "admin-secret"}).status_code == 200
        assert app.router.routes[at : at + len(copied)] == copied  # an unchanged store: the same routes
        for path in asked[2:]:
            assert client.get(path).status_code == 200, path

        async def refused() -> None:
            raise HTTPException(status_code=418)

        app.dependency_overrides[runtime_dependency] = refused
        assert client.get("/model").status_code == client.get("/models/pima-diabetes/model").status_code == 418
    assert [p for p in analysed if p in paths] == []


# ---- over HTTP -------------------------------------------------------------------------------------------------


def _requests(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    """Requests to per-model paths of two models, answered and refused (400, 404, 405, 415, 422)."""
    state = app.state.gshap
    out: list[tuple[str, str, dict[str, Any]]] = []
    for prefix, name in (
        ("/models/pima-diabetes/versions/1.0.0", "pima-diabetes"),
        ("/models/breast-cancer-wisconsin", "breast-cancer-wisconsin"),
    ):
        bundle = next(e.runtime.bundle for n, _, e, d in state.registry.served_or_pending() if n == name and d)
        example = state.schemas(bundle).example()
        body = json.dumps(example).encode()
        first = next(iter(example))
        for path in (f"{prefix}/predict", f"{prefix}/explain"):  # the fast routes
            out += [
                ("POST", path, {"json": example}),
                ("POST", path, {"content": body, "headers": {"content-type": "text/plain"}}),
                ("POST", path, {"json": {**example, "zzz": 1, first: -1e9}}),
                ("POST", path, {"content": b'{"a":', "headers": {"content-type": "application/json"}}),
                ("GET", path, {}),
            ]
        for path in (f"{prefix}/predict/batch", f"{prefix}/explain/batch"):  # FastAPI's request handling
            out += [
                ("POST", path, {"json": {"records": [example, {**example, first: -1e9}]}}),
                ("POST", path, {"content": body, "headers": {"content-type": "text/plain"}}),
                ("POST", path, {"content": b'{"x": 1, "x": 2}', "headers": {"content-type": "application/json"}}),
                ("POST", path, {"json": {"records": "no"}}),
                ("POST", path, {"content": b'{"a":', "headers": {"content-type": "application/json"}}),
            ]
        out += [
            ("POST", f"{prefix}/explain?output=probability", {"json": example}),
            ("POST", f"{prefix}/explain/plot", {"json": example}),
            ("POST", f"{prefix}/explain/plot", {"json": {"record": example}}),
            ("GET", f"{prefix}/groups", {}),
            ("GET", f"{prefix}/groups/TP", {}),
            ("GET", f"{prefix}/groups/TP/plot", {}),
            ("GET", f"{prefix}/groups/nope", {}),
            ("GET", f"{prefix}/model", {}),
            ("GET", f"{prefix}/monitoring", {}),
            ("POST", f"{prefix}/fhir/predict", {"json": {"resourceType": "Bundle", "type": "collection"}}),
            ("POST", f"{prefix}/fhir/explain?method=nope", {"json": {}}),
            ("POST", f"{prefix}/fhir/explain", {"content": body, "headers": {"content-type": "text/plain"}}),
        ]
    out += [
        ("POST", "/cds-services/diabetes-risk-1.0.0", {"json": {}}),
        ("POST", "/cds-services/diabetes-risk-1.0.0/feedback", {"json": {"feedback": []}}),
    ]
    return out


def _answers(app: FastAPI) -> list[tuple[str, int, dict[str, str], bytes]]:
    with app_client(app) as client:
        out = []
        for i, (method, path, kwargs) in enumerate(_requests(app)):
            headers = {**kwargs.pop("headers", {}), "X-Request-ID": f"copy-{i}"}
            r = client.request(method, path, headers=headers, **kwargs)
            out.append((f"{method} {path}", r.status_code, dict(r.headers), r.content))
        return out


def test_copies_answer_as_analysed_routes_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """The app with copied routes and the app with routes analysed by FastAPI give the same answers, headers and
    refusals on the per-model paths (fast routes, FastAPI's request handling, path parameters, CDS)."""
    copied = _answers(app_module.create_app(Settings()))
    monkeypatch.setattr(app_module, "pinned_copy", analysed_copy)
    analysed = _answers(app_module.create_app(Settings()))
    assert {200, 400, 404, 405, 415, 422} <= {status for _, status, _, _ in copied}
    assert len(copied) == len(analysed)
    for a, b in zip(copied, analysed, strict=True):
        assert a == b, a[0]


# ---- the FastAPI internals the copy reads ----------------------------------------------------------------------

MIRRORED: dict[str, Callable[..., Any]] = {
    # what pinned_copy does step by step, and the defaults copy_arguments spells out
    "_populate_api_route_state": fastapi.routing._populate_api_route_state,
    "APIRoute.__init__": fastapi.routing.APIRoute.__init__,
    "APIRoute.get_route_handler": fastapi.routing.APIRoute.get_route_handler,
    "APIRouter.add_api_route": fastapi.routing.APIRouter.add_api_route,
    "_build_dependant_with_parameterless_dependencies": (
        fastapi.routing._build_dependant_with_parameterless_dependencies
    ),
    # the path goes down to every sub-dependant, and only path parameters depend on it
    "get_dependant": fastapi.dependencies.utils.get_dependant,
    "get_parameterless_sub_dependant": fastapi.dependencies.utils.get_parameterless_sub_dependant,
    # a field's TypeAdapter is built from its field info and config alone
    "ModelField.__post_init__": fastapi._compat.v2.ModelField.__post_init__,
}
FINGERPRINTS = {
    "_populate_api_route_state": "f4631f02941b361d",
    "APIRoute.__init__": "82a204e5818940a1",
    "APIRoute.get_route_handler": "b0412ff714c76e76",
    "APIRouter.add_api_route": "4fe92100884de22e",
    "_build_dependant_with_parameterless_dependencies": "9bb60b5335596798",
    "get_dependant": "76cf742e38a93604",
    "get_parameterless_sub_dependant": "aa81db801599b2c9",
    "ModelField.__post_init__": "5d3689614a475b63",
}
"""The sha256 of the source of each (its first 16 digits), in FastAPI 0.165.0 (constraints.txt)."""


def test_the_fastapi_internals_are_those_the_copy_was_written_for() -> None:
    """A FastAPI upgrade that changes any function pinned_copy mirrors fails here: read the new code, bring
    service/api/route_copies.py in line (or drop it for APIRoute(...)), then update the fingerprints."""
    found = {name: hashlib.sha256(inspect.getsource(f).encode()).hexdigest()[:16] for name, f in MIRRORED.items()}
    changed = sorted(name for name in found if found[name] != FINGERPRINTS[name])
    assert changed == [], f"FastAPI {fastapi.__version__} changed {changed}: {json.dumps(found, indent=1)}"


def test_an_apiroute_has_the_attributes_the_copy_sets() -> None:
    """APIRoute.__init__ sets exactly ROUTE_ATTRIBUTES; a Dependant has the fields _with_path copies."""

    async def endpoint() -> None:
        pass

    assert set(vars(APIRoute("/", endpoint))) == ROUTE_ATTRIBUTES
    assert route_copies._fastapi_shape_known()
    assert {f.name for f in dataclasses.fields(Dependant)} >= {
        "path",
        "path_params",
        "query_params",
        "header_params",
        "cookie_params",
        "body_params",
        "dependencies",
        "call",
    }


# ---- comparison ------------------------------------------------------------------------------------------------


def _same(a: Any, b: Any, where: str) -> None:
    """``a`` and ``b`` are equivalent: equal values, fields of the same name, type, mode and schema, dependency trees
    alike node by node, compiled paths of the same pattern; ASGI apps are compared over HTTP instead."""
    if isinstance(a, APIRoute):
        assert isinstance(b, APIRoute)
        for name in sorted(ROUTE_ATTRIBUTES - {"app"}):
            _same(getattr(a, name), getattr(b, name), f"{where}.{name}")
    elif isinstance(a, fastapi._compat.v2.ModelField):
        assert isinstance(b, fastapi._compat.v2.ModelField), where
        assert (a.name, a.mode, a.config) == (b.name, b.mode, b.config), where
        assert fastapi._compat.v2.asdict(a.field_info) == fastapi._compat.v2.asdict(b.field_info), where
        assert type(a.field_info) is type(b.field_info), where
        assert a._type_adapter.core_schema == b._type_adapter.core_schema, where
    elif isinstance(a, Dependant):
        assert isinstance(b, Dependant), where
        for f in dataclasses.fields(Dependant):
            _same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b), where
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif hasattr(a, "pattern") and hasattr(a, "match"):  # a compiled path
        assert a.pattern == b.pattern, where
    elif type(a).__module__ == "starlette.convertors":
        assert type(a) is type(b), where
    elif isinstance(a, BaseRoute):
        raise AssertionError(f"{where}: a route where none was expected")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
