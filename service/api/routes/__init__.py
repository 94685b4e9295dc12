"""What the route modules share: the app state, the dependencies (``RuntimeDep``, ...) and the batch splitter.

One module an area (``predict``, ``explain``, ``groups``, ``model``, ``health``), each an ``APIRouter`` named
``router``, or, where the request body is the served model's record (``predict``, ``explain``), a function
``build_router(models)`` that :func:`service.api.app.create_app` calls with the bundle's request models
(:func:`service.schemas.request_models`); ``create_app`` includes them. Routes translate HTTP to
:class:`~service.runtime.inference.InferenceRuntime` calls and back, and raise :mod:`service.api.errors` problems; they
hold no maths.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Request, Response
from fastapi._compat import Undefined
from fastapi.dependencies.utils import _validate_value_with_model_field
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import (
    FieldError,
    ModelNotReady,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    field_errors,
    invalid_input,
    problem_body,
    request_id_of,
)
from service.config import Settings
from service.model.store import Bundle
from service.observe.metrics import Telemetry
from service.runtime.inference import InferenceRuntime
from service.runtime.registry import ModelRegistry, ServedVersion, UnknownModel
from service.schemas import BatchItemError, PatientRecord, Problem, RequestModels

__all__ = [
    "GET_PROBLEMS",
    "POST_PROBLEMS",
    "AppState",
    "RequestIdDep",
    "RuntimeDep",
    "SettingsDep",
    "batch_answer",
    "body_as",
    "check_json",
    "fast_route",
    "fast_table",
    "get_runtime",
    "get_state",
    "install_fast_routes",
    "json_answer",
    "lease",
    "pin_model",
    "problem_responses",
    "require_json",
    "split_batch",
]


F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class AppState:
    """Per-app state: the settings, the bundle (loaded by ``create_app`` or handed in) and a runtime built by the
    caller (tests, ``serve``), the runtime in use, the metrics (None when GSHAP_METRICS_ENABLED is false) and the
    request models built from the bundle's specification."""

    settings: Settings
    preloaded: Bundle | None = None
    prebuilt: InferenceRuntime | None = None
    runtime: InferenceRuntime | None = None
    telemetry: Telemetry | None = None
    models: RequestModels | None = None
    # the served model versions (several at once, reloaded without a restart); ``runtime`` is its default one
    registry: ModelRegistry | None = None
    reload_seen: int = 0  # modification time (ns) of GSHAP_RELOAD_FILE at this process's last reload
    # each served bundle's request models (versions with the same features share them): the V2 routes' record
    # validation per model; None: the root bundle's ``models`` for every bundle
    schemas: Callable[[Bundle], RequestModels] | None = None


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.gshap
    return state


# The dependencies are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency on its
# threadpool, which would cost every request a thread hop (and a GIL hand-over) for an attribute lookup.


async def get_settings(request: Request) -> Settings:
    return get_state(request).settings


def _not_ready() -> ModelNotReady:
    return ModelNotReady("The model is loading or shutting down; retry shortly.", headers={"Retry-After": "1"})


def get_runtime(request: Request) -> InferenceRuntime:
    """The loaded, warmed-up runtime the request asks for, or a 503 problem (a 404 for a model or version that
    is not served). Under ``/models/{name}`` it is that model's default version, under
    ``/models/{name}/versions/{version}`` that version, elsewhere the store's default model's default version."""
    state = get_state(request)
    pinned = request.scope.get("state", {}).get("gshap_model")
    if pinned is None or state.registry is None or state.registry.served is None:
        runtime = state.runtime
    else:
        try:
            runtime = state.registry.lookup(*pinned)
        except UnknownModel as exc:  # unloaded by a reload an instant ago (its routes go with it)
            raise NotFound(str(exc), extra={"served": exc.known}) from None
    if runtime is None or not runtime.ready:
        raise _not_ready()
    request.scope.setdefault("state", {})["model_version"] = runtime.model_version
    return runtime


async def get_request_id(request: Request) -> str | None:
    return request_id_of(request.scope)


def pin_model(name: str, version: str | None) -> Callable[[Request], Awaitable[None]]:
    """The dependency of a per-model route: its requests are answered by ``name`` at ``version`` (None: the
    model's default version at the time of the request)."""

    async def pinned(request: Request) -> None:
        request.scope.setdefault("state", {})["gshap_model"] = (name, version)

    return pinned


def lease(request: Request) -> tuple[InferenceRuntime, ServedVersion | None]:
    """:func:`get_runtime`, leased for the request when the registry serves it: the entry whose ``leases`` the
    caller gives back (``entry.leases -= 1``) once the request is done, so that a reload that replaces this runtime
    closes it only then and a request in flight finishes on the model it started on."""
    runtime = get_runtime(request)
    registry = get_state(request).registry
    if registry is None or registry.served is None:
        return runtime, None
    entry = registry.entry_of(runtime)
    if entry is None:  # left the served set between the lookup and here: still running until its lease ends
        return runtime, None
    entry.leases += 1
    return runtime, entry


async def runtime_dependency(request: Request) -> AsyncIterator[InferenceRuntime]:
    """:func:`get_runtime` as a dependency, leased for the request (:func:`lease`)."""
    runtime, entry = lease(request)
    try:
        yield runtime
    finally:
        if entry is not None:
            entry.leases -= 1


async def require_json(request: Request) -> None:
    """415 unless a non-empty body is declared ``application/json`` (or ``+json``); 422 for a name given twice in
    one of its objects."""
    body = await request.body()
    check_json(request.headers.get("content-type"), body, lambda: _duplicate_keys(body))


def check_json(content_type: str | None, body: bytes, duplicates: Callable[[], list[str]]) -> None:
    """:func:`require_json`'s rules: ``duplicates`` gives the names given twice (looked at only for a JSON body)."""
    if content_type is None and not body:
        return  # no body at all: the body validation reports it as missing (422)
    if content_type != "application/json" and not _is_json_media_type(content_type):
        raise UnsupportedMediaType(
            "Send the body as JSON with 'Content-Type: application/json'.",
            headers={"Accept-Post": "application/json"},
        )
    names = duplicates()
    if names:
        raise invalid_input(
            [FieldError(name[:64], "duplicate_key", "The field is given more than once.") for name in names]
        )


def _is_json_media_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``, with any parameters (the exact ``application/json``, what
    nearly every client sends, is recognised by the caller without parsing the header)."""
    msg = Message()
    msg["content-type"] = content_type or ""
    subtype = msg.get_content_subtype()
    return (
        content_type is not None
        and msg.get_content_maintype() == "application"
        and (subtype == "json" or subtype.endswith("+json"))
    )


def _duplicate_keys(body: bytes) -> list[str]:
    """Names given twice in one JSON object anywhere in ``body`` (Python's parser would silently keep the last).

    A body that does not parse is left to the body validation, which reports it as malformed.
    """
    seen: list[str] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [k for k, _ in pairs]
        if len(set(names)) != len(names):
            seen.extend(sorted({k for k in names if names.count(k) > 1}))
        return dict(pairs)

    try:
        json.loads(body, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return []
    return sorted(set(seen))


RuntimeDep = Annotated[InferenceRuntime, Depends(runtime_dependency)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RequestIdDep = Annotated[str | None, Depends(get_request_id)]


def json_answer(content: Any) -> Response:
    """A 200 JSON answer serialised by orjson straight from the runtime's frozen dataclasses.

    The routes declare their pydantic schema as ``response_model`` (it documents the answer in OpenAPI) and
    return this: FastAPI then skips re-validating and re-encoding an answer that the runtime built field by
    field, which cost the event loop more than the HTTP work of a request. The dataclasses mirror the public
    models field for field; tests check that both serialisations are the same JSON and schemathesis checks the
    answers against the published schema.
    """
    return Response(orjson.dumps(content), media_type="application/json")


def _fields(obj: Any) -> dict[str, Any]:
    """A dataclass's fields, one level deep (orjson serialises the nested dataclasses itself)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def batch_answer(answered: Sequence[tuple[int, Any]], refused: Sequence[BatchItemError]) -> Response:
    """A batch's results in record order: ``{"index", "ok": true, <answer's fields>}`` or the refusal (with
    ``None`` fields left out, as the batch routes' ``response_model_exclude_none`` does)."""
    items: list[tuple[int, dict[str, Any]]] = [(i, {"index": i, "ok": True, **_fields(a)}) for i, a in answered]
    items += [(r.index, r.model_dump(mode="json", exclude_none=True)) for r in refused]
    items.sort(key=lambda item: item[0])
    return json_answer({"results": [d for _, d in items], "succeeded": len(answered), "failed": len(refused)})


def split_batch(
    records: Sequence[Any],
    *,
    record_model: type[PatientRecord],
    limit: int,
    instance: str,
    request_id: str | None,
) -> tuple[list[tuple[int, dict[str, Any]]], list[BatchItemError]]:
    """Validate a batch record by record with the served model's ``record_model``: ``(index, record)`` pairs to
    answer and the refusals by index.

    Raises :class:`PayloadTooLarge` (413) when the batch has more than ``limit`` records.
    """
    if len(records) > limit:
        raise PayloadTooLarge(
            f"The batch has {len(records)} records; at most {limit} are accepted (GSHAP_MAX_BATCH_RECORDS).",
            extra={"limit": limit, "limit_name": "max_batch_records", "received": len(records)},
        )
    valid: list[tuple[int, dict[str, Any]]] = []
    refused: list[BatchItemError] = []
    for i, item in enumerate(records):
        try:
            valid.append((i, record_model.model_validate(item).model_dump()))
        except ValidationError as exc:
            problem = problem_body(
                invalid_input(field_errors(exc.errors())), instance=f"{instance}#/records/{i}", request_id=request_id
            )
            refused.append(BatchItemError(index=i, ok=False, error=Problem.model_validate(problem)))
    return valid, refused


_DESCRIPTIONS = {
    400: "Malformed body: not valid JSON.",
    401: "API key missing or wrong (only when the server is configured with GSHAP_API_KEYS).",
    404: "Not found.",
    412: "CDS Hooks: the FHIR data can be had neither from the prefetch nor from an allowed FHIR server.",
    413: "Body over GSHAP_MAX_BODY_BYTES, or a batch over GSHAP_MAX_BATCH_RECORDS; `limit` names the bound.",
    415: "The body is not application/json.",
    422: "Invalid input: `errors` names each field and the rule it breaks.",
    429: "Rate limit exceeded (GSHAP_RATE_LIMIT_PER_MINUTE); see the Retry-After header.",
    500: "Internal error: the problem carries only the request id.",
    503: "The model is not loaded yet (or shutting down).",
}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries of problem answers (rendered as application/problem+json)."""
    return {code: {"model": Problem, "description": _DESCRIPTIONS[code]} for code in codes}


GET_PROBLEMS = (401, 429, 500, 503)
POST_PROBLEMS = (400, 401, 413, 415, 422, 429, 500, 503)


def body_as(**bodies: Any) -> Callable[[F], F]:
    """A decorator replacing the annotations of the endpoint's parameters named in ``bodies``, for FastAPI only.

    The routes whose body is the served model's record are written against the bases in :mod:`service.schemas`
    (``PatientRecord``, ``ExplainRequest``, ...: what the code may rely on, checked by mypy); FastAPI reads the
    endpoint's signature, so setting it here to the models built from the bundle makes FastAPI validate and
    document the served model's fields.
    """

    def bind(endpoint: F) -> F:
        signature = inspect.signature(endpoint, eval_str=True)
        params = [
            p.replace(annotation=bodies[p.name]) if p.name in bodies else p for p in signature.parameters.values()
        ]
        endpoint.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return endpoint

    return bind


# ---- the fast routes: POST /predict and POST /explain without FastAPI's request handling ------------------------

_FAST = "__gshap_fast_route__"


def fast_route(endpoint: F) -> F:
    """Marks an endpoint ``(body, runtime) -> Response`` (a route under ``require_json``) to be served by
    :func:`fast_app` once its route is built (:func:`install_fast_routes`).

    FastAPI's request handling (its dependency solving, the body read and parsed, then parsed again for the
    duplicate names) was the largest block of a ``/predict`` on our side (docs/bench/profile.md). The route itself
    stays FastAPI's: it is matched, and documented in OpenAPI, as before."""
    setattr(endpoint, _FAST, True)
    return endpoint


def install_fast_routes(routes: Iterable[BaseRoute], pin: tuple[str, str | None] | None = None) -> None:
    """Give each :func:`fast_route` route among ``routes`` its :func:`fast_app` (pinned to the model ``pin``, name
    and version, for the per-model copies, as :func:`pin_model` does), for :func:`fast_table`."""
    for route in routes:
        if isinstance(route, APIRoute) and getattr(route.endpoint, _FAST, False):
            setattr(route, _FAST, fast_app(route, pin))


def fast_table(routes: Sequence[BaseRoute]) -> dict[str, tuple[APIRoute, ASGIApp]]:
    """The fast routes of an app whose routes are ``routes`` (its leaf routes, in the router's order), by path:
    those the router would choose for a POST to their path (the first route that matches it fully), each with its
    :func:`fast_app`. :class:`service.api.stack.ServiceLayer` sends such a request straight there, as the router
    would have, without the router's walk through every route."""
    out: dict[str, tuple[APIRoute, ASGIApp]] = {}
    for route in routes:
        app = getattr(route, _FAST, None)
        if not isinstance(route, APIRoute) or app is None or not callable(app):
            continue
        probe: Scope = {"type": "http", "method": "POST", "path": route.path, "root_path": "", "headers": []}
        first = next((r for r in routes if r.matches(probe)[0] is Match.FULL), None)
        if first is route:
            out[route.path] = (route, app)
    return out


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def fast_app(route: APIRoute, pin: tuple[str, str | None] | None) -> ASGIApp:
    """The ASGI app of a :func:`fast_route` route: what FastAPI did for it, in the same order and with the same
    errors, without the dependency machinery.

    1. The body is read; a body declared JSON (``application/json``, ``application/*+json``) is parsed once, by the
       same parser FastAPI uses (errors: 400 ``json_invalid`` with the parser's reason and position, or the 400
       FastAPI gives a body it cannot decode), noting the names given twice on the way;
    2. :func:`require_json`'s rules (:func:`check_json`: 415, 422 ``duplicate_key``);
    3. the runtime asked for, leased for the request (:func:`lease`: 404 or 503);
    4. the body validated by the route's own body field (422 naming each field and rule, as FastAPI reports them);
    5. the endpoint, whose answer is sent as it is; the lease is given back once it is sent.

    Errors are raised, for the app's exception handlers to render as they rendered FastAPI's."""
    dependencies = [d.dependency for d in route.dependencies]
    field = route.body_field
    if field is None or dependencies[-1:] != [require_json] or len(dependencies) != 1 + (pin is not None):
        raise TypeError(f"{route.path} is not a fast route: one JSON body under require_json only")
    endpoint = route.endpoint
    params = set(inspect.signature(endpoint).parameters)
    if params != {field.name, "runtime"}:
        raise TypeError(f"{route.path}: a fast route's endpoint takes its body and the runtime only, not {params}")
    name = field.name

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if pin is not None:
            scope.setdefault("state", {})["gshap_model"] = pin
        content_type = _header(scope, b"content-type")
        duplicates: list[str] = []
        try:
            chunks: list[bytes] = []
            while True:
                message = await receive()
                if message["type"] == "http.request":
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
                elif message["type"] == "http.disconnect":
                    raise ClientDisconnect()
            body = b"".join(chunks)
            value: Any = Undefined
            if body:
                value = body
                if content_type and (content_type == "application/json" or _is_json_media_type(content_type)):
                    try:
                        value = _JSON.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
                    except _DuplicateNameError:  # parsed again, to the end, noting every name given twice
                        value = json.loads(body, object_pairs_hook=lambda pairs: _pairs(pairs, duplicates))
        except json.JSONDecodeError as exc:
            error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
            raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}], body=exc.doc) from exc
        except Exception as exc:
            raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc
        check_json(content_type, body, lambda: sorted(set(duplicates)))
        request = Request(scope, receive, send)
        runtime, entry = lease(request)
        try:
            validated, errors = _validate_value_with_model_field(field=field, value=value, values={}, loc=("body",))
            if errors:
                raise RequestValidationError(errors, body=None if value is Undefined else value)
            response = await endpoint(**{name: validated, "runtime": runtime})
            await response(scope, receive, send)
        finally:
            if entry is not None:
                entry.leases -= 1

    return app


class _DuplicateNameError(Exception):
    """A name given twice in a JSON object: the shared parser stops, and the body is parsed again by the one that
    notes every such name (the rare path)."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateNameError
    return out


# One parser for every request (json.loads with a hook builds a decoder a call), used as json.loads uses it on
# bytes: decoded by the encoding json.detect_encoding finds, surrogates passed through
_JSON = json.JSONDecoder(object_pairs_hook=_unique_pairs)


def _pairs(pairs: list[tuple[str, Any]], duplicates: list[str]) -> dict[str, Any]:
    """A JSON object as Python's parser makes it (the last of a name given twice wins), noting the names given
    twice (:func:`_duplicate_keys`' rule, in the same parse)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        names = [k for k, _ in pairs]
        duplicates.extend(sorted({k for k in names if names.count(k) > 1}))
    return out
