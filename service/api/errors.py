"""The web layer's side of the problem documents: FastAPI's and Starlette's errors translated into the service's
error tree (:mod:`service.problems`, which holds the kinds, their pages and the documents, without a web framework)
at one boundary (:func:`install_exception_handlers`), and the one place that renders a problem as an HTTP answer
(:func:`problem_response`), also called by the middlewares that answer before routing (authentication, rate limit,
body size, the catch-all). The names of :mod:`service.problems` are re-exported here for the web layer.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from service.problems import (
    PROBLEM_BASE,
    PROBLEM_MEDIA_TYPE,
    CorsRefused,
    FieldError,
    HeadersTooLarge,
    InvalidInput,
    MalformedBody,
    MethodNotAllowed,
    MethodNotOffered,
    ModelNotReady,
    NotFound,
    OtherHTTPError,
    PayloadTooLarge,
    PreconditionFailed,
    RateLimited,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
    field_errors,
    invalid_input,
    problem_body,
    problem_kinds,
    problem_page,
    problems_index_page,
    problems_markdown,
)

__all__ = [
    "PROBLEM_BASE",
    "PROBLEM_MEDIA_TYPE",
    "CorsRefused",
    "FieldError",
    "HeadersTooLarge",
    "InvalidInput",
    "MalformedBody",
    "MethodNotAllowed",
    "MethodNotOffered",
    "ModelNotReady",
    "NotFound",
    "OtherHTTPError",
    "PayloadTooLarge",
    "PreconditionFailed",
    "RateLimited",
    "ServiceError",
    "Unauthorized",
    "UnsupportedMediaType",
    "field_errors",
    "install_exception_handlers",
    "invalid_input",
    "is_v2_path",
    "problem_body",
    "problem_kinds",
    "problem_page",
    "problem_response",
    "problems_index_page",
    "problems_markdown",
    "request_id_of",
    "v2_error_response",
    "v2_error_text",
]


def request_id_of(scope: Scope) -> str | None:
    """The request id the request-context middleware stored in the scope (None outside it)."""
    state = scope.get("state")
    rid = state.get("request_id") if isinstance(state, Mapping) else None
    return rid if isinstance(rid, str) else None


def problem_response(exc: ServiceError, *, instance: str | None, request_id: str | None) -> Response:
    """THE rendering of an error: ``application/problem+json`` with the error's status and headers (on the Open
    Inference Protocol's paths, ``/v2...``, that protocol's own error instead: :func:`v2_error_response`)."""
    if instance is not None and is_v2_path(instance):
        return v2_error_response(exc)
    content = orjson.dumps(problem_body(exc, instance=instance, request_id=request_id))
    return Response(content, status_code=exc.status, headers=dict(exc.headers), media_type=PROBLEM_MEDIA_TYPE)


V2_PREFIX = "/v2"


def is_v2_path(path: str) -> bool:
    """Whether ``path`` is one of the Open Inference Protocol's (``/v2`` and below)."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def v2_error_text(exc: ServiceError) -> str:
    """The error in one line: the detail, then each broken rule as ``field: message (rule)``; no value of the
    request (the messages never hold one)."""
    rules = "; ".join(f"{e.field}: {e.message} ({e.rule})" for e in exc.errors)
    return f"{exc.detail} {rules}" if rules else exc.detail


def v2_error_response(exc: ServiceError) -> Response:
    """An error as the Open Inference Protocol sends it: ``{"error": "..."}`` as ``application/json``, with the
    error's status and headers, except that an input refused by a rule (422 on the JSON API) is a 400, the
    protocol's status for a request it cannot run."""
    status = 400 if exc.status == 422 else exc.status
    content = orjson.dumps({"error": v2_error_text(exc)})
    return Response(content, status_code=status, headers=dict(exc.headers), media_type="application/json")


# ---- translation of FastAPI / Starlette errors ------------------------------------------------------------


def _from_validation(exc: RequestValidationError) -> ServiceError:
    raw = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in raw):
        reason = next((str(e.get("ctx", {}).get("error", "")) for e in raw if e.get("type") == "json_invalid"), "")
        pos = next((e["loc"][1] for e in raw if e.get("type") == "json_invalid" and len(e["loc"]) > 1), None)
        where = f" at character {pos}" if isinstance(pos, int) else ""
        return MalformedBody(
            detail=f"The body is not valid JSON ({reason or 'syntax error'}{where}).",
            errors=[FieldError("body", "json_invalid", "The body must be one JSON document (RFC 8259).")],
        )
    # FastAPI reports an absent body as a missing "body" field; say so in plain words
    errors = [
        FieldError("body", "missing", "A JSON body is required.") if (e.field, e.rule) == ("body", "missing") else e
        for e in field_errors(raw)
    ]
    return invalid_input(errors)


def _from_http(exc: StarletteHTTPException) -> ServiceError:
    headers = dict(exc.headers or {})
    if exc.status_code == 400:
        # FastAPI's 400 for a JSON body it could not decode for a reason other than syntax: bytes that are not
        # UTF-8, nesting deeper than the parser's recursion limit, an integer literal over 4300 digits
        return MalformedBody(
            detail="The body could not be decoded as JSON (not UTF-8, nested too deeply, or a number too long).",
            errors=[FieldError("body", "json_invalid", "The body must be one JSON document (RFC 8259).")],
            headers=headers,
        )
    if exc.status_code == 404:
        return NotFound(detail="No resource at this path; see /docs for the API.", headers=headers)
    if exc.status_code == 405:
        allow = headers.get("Allow") or headers.get("allow") or ""
        return MethodNotAllowed(detail=f"This path accepts: {allow or 'other methods'}.", headers=headers)
    if exc.status_code == 413:
        return PayloadTooLarge(detail="The request body is too large.", headers=headers)
    if exc.status_code == 415:
        return UnsupportedMediaType(detail="Send the body as application/json.", headers=headers)
    return OtherHTTPError(exc.status_code, headers=headers)


def install_exception_handlers(app: FastAPI) -> None:
    """Route every handled exception of the app through :func:`problem_response`."""

    async def on_service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return problem_response(exc, instance=request.url.path, request_id=request_id_of(request.scope))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return await on_service_error(request, _from_validation(exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return await on_service_error(request, _from_http(exc))

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
