"""The service's error tree and its RFC 9457 problem documents (``application/problem+json``), without a web framework.

::

    ServiceError                 500  internal                the client learns only the request id
     ├── MalformedBody           400  malformed-body          the body is not JSON (syntax, encoding, depth)
     ├── Unauthorized            401  unauthorized            API key missing or wrong (one body for both)
     ├── CorsRefused             403  cors-refused            a CORS preflight from an origin, method or header
     │                                                        that GSHAP_CORS_ORIGINS does not allow
     ├── NotFound                404  not-found               no such route, or no such outcome group
     ├── MethodNotAllowed        405  method-not-allowed      with an ``Allow`` header
     ├── PreconditionFailed      412  precondition-failed     CDS Hooks: the FHIR data can be had neither from the
     │                                                        prefetch nor from an allowed FHIR server
     ├── HeadersTooLarge         431  headers-too-large       request head over GSHAP_MAX_HEADER_BYTES, or an
     │                                                        Authorization header over GSHAP_MAX_AUTHORIZATION_BYTES
     ├── PayloadTooLarge         413  payload-too-large       body over GSHAP_MAX_BODY_BYTES, or a batch over
     │                                                        GSHAP_MAX_BATCH_RECORDS; ``limit`` names the bound
     ├── UnsupportedMediaType    415  unsupported-media-type  a body that is not application/json
     ├── InvalidInput            422  validation              ``errors``: one {field, rule, message} per broken rule
     ├── MethodNotOffered        422  method-not-offered      an explanation method the served model does not offer
     ├── RateLimited             429  rate-limited            with ``Retry-After`` (seconds)
     ├── ModelNotReady           503  model-not-ready         the bundle or the engine is not loaded (yet)
     └── OtherHTTPError          any  http-<status>           any other Starlette HTTP error, by its status

Domain code raises these; the web layer (:mod:`service.api.errors`) translates FastAPI's
``RequestValidationError`` and Starlette's ``HTTPException`` into them at one boundary and renders every one with
:func:`problem_body`, and the cohort job (:mod:`service.cohort`) writes the same documents for refused rows, so
every error a client can see has the same shape::

    {"type": "/problems/validation", "title": "Invalid input", "status": 422,
     "detail": "1 field breaks the request schema: glucose.", "instance": "/predict",
     "errors": [{"field": "glucose", "rule": "less_than_equal", "message": "...", "limit": 600}],
     "request_id": "..."}

Problem types are root-relative URI references, ``/problems/<kind>`` (RFC 9457 §3.1.1 allows a relative
``type``; it resolves against the request's URL, i.e. on the service itself): the project controls them, a
client compares the string as it comes, and a person who follows one gets the service's own page describing
that kind (:mod:`service.api.routes.problems`, open without an API key). Each class below says when it happens
(``when``); the pages and ``docs/PROBLEMS.md`` (``gshap problems``) are generated from the classes.

No problem carries a stack trace, an exception message of ours or a patient's value.

This module imports no web framework (an import contract in ``pyproject.toml``): the cohort job's Ray workers
load it without FastAPI or Starlette.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

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
    "invalid_input",
    "problem_body",
    "problem_kinds",
    "problem_page",
    "problems_index_page",
    "problems_markdown",
]

PROBLEM_BASE = "/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


@dataclass(frozen=True)
class FieldError:
    """One broken rule: the field's path (``glucose``, ``records.3``, ``body``), the rule and a message."""

    field: str
    rule: str
    message: str
    limit: float | int | str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "rule": self.rule, "message": self.message}
        if self.limit is not None:
            out["limit"] = self.limit
        return out


class ServiceError(Exception):
    """Base of every error a client may see; on its own, an internal error (500) that says nothing more."""

    status = 500
    slug = "internal"
    title = "Internal server error"
    default_detail = "The server failed to handle the request; quote the request id when reporting it."
    when = (
        "An unexpected failure inside the service, including a model answer that is not finite (NaN or "
        "infinite), which is never sent. The answer says nothing more than its request id (`request_id`, also "
        "the `X-Request-ID` header), under which the service's log records the cause."
    )

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.detail = detail or self.default_detail
        self.errors = tuple(errors)
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        super().__init__(self.detail)

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug


class MalformedBody(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 400
    slug = "malformed-body"
    title = "Malformed body"
    when = (
        "The body is not one JSON document: a syntax error (`detail` gives the character), bytes that are not "
        "UTF-8, nesting deeper than the parser allows, or an integer literal too long to read. `errors` has one "
        "entry for `body`."
    )


class Unauthorized(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 401
    slug = "unauthorized"
    title = "Unauthorized"
    when = (
        "The server requires API keys (GSHAP_API_KEYS) and the request carries none that it accepts, in "
        "`Authorization: Bearer <key>` or `X-API-Key`. A missing and a wrong key get the same answer, with a "
        "`WWW-Authenticate` header. `/healthz`, `/readyz` and these problem pages need no key. On the CDS Hooks "
        "endpoints (`/cds-services...`), which take no API key: GSHAP_CDS_JWT_ISSUERS is set and the CDS client's "
        "JWT is missing or invalid (the answer does not say why)."
    )


class CorsRefused(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 403
    slug = "cors-refused"
    title = "CORS request refused"
    when = (
        "A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an origin, for a "
        "method or with a header that the server's GSHAP_CORS_ORIGINS and its fixed lists do not allow."
    )


class NotFound(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 404
    slug = "not-found"
    title = "Not found"
    when = (
        "No route at this path (see `/docs`), no outcome group of that name under `/groups/{name}`, or no "
        "problem kind of that name under `/problems/{kind}`."
    )


class MethodNotAllowed(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"
    when = "The path exists but not for this HTTP method; the `Allow` header lists the methods it accepts."


class PreconditionFailed(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 412
    slug = "precondition-failed"
    title = "Precondition failed"
    when = (
        "CDS Hooks (`POST /cds-services/{id}`): the FHIR data the model cannot do without (the Patient, and the "
        "inputs that may not be left unmeasured) can be had neither from the request's `prefetch` nor from its "
        "`fhirServer`: no server named, the server not in GSHAP_CDS_FHIR_SERVERS, or it failed (timeout, error, "
        "not JSON, too large). `errors` names each `prefetch.<key>` with the reason."
    )


class PayloadTooLarge(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 413
    slug = "payload-too-large"
    title = "Payload too large"
    when = (
        "The body is larger than GSHAP_MAX_BODY_BYTES (GSHAP_FHIR_MAX_BODY_BYTES on the FHIR and CDS Hooks routes; "
        "by `Content-Length` or by the bytes sent), a batch carries more records than GSHAP_MAX_BATCH_RECORDS, or "
        "a FHIR Bundle more entries than GSHAP_FHIR_MAX_ENTRIES. `limit` and `limit_name` name the bound that was "
        "exceeded (and `received`, for a batch or a Bundle, how many records or entries came)."
    )


class HeadersTooLarge(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 431
    slug = "headers-too-large"
    title = "Request header fields too large"
    when = (
        "The request line and headers together are larger than GSHAP_MAX_HEADER_BYTES (refused by the HTTP "
        "protocol as soon as that many bytes arrived without the end of the headers, before anything is parsed), "
        "or the `Authorization` header is larger than GSHAP_MAX_AUTHORIZATION_BYTES (refused before any key or "
        "token is read). `limit` and `limit_name` name the bound."
    )


class UnsupportedMediaType(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"
    when = (
        "A request body sent without a JSON `Content-Type` (`application/json` or `application/*+json`); "
        "`Accept-Post` names the one expected."
    )


class InvalidInput(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 422
    slug = "validation"
    title = "Invalid input"
    when = (
        "The body is JSON but breaks the request schema: a missing, unknown or repeated field, a wrong type (numbers "
        "must be JSON numbers, counts integers), a value outside its field's range, a non-finite number, or an "
        "explanation setting out of bounds. `errors` lists every broken rule as `{field, rule, message, limit}`, "
        "without the value sent; in a batch, each refused record gets this problem in its own `error`."
    )


class MethodNotOffered(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 422
    slug = "method-not-offered"
    title = "Explanation method not offered by this model"
    when = (
        "The request asks for an explanation method the served model does not offer: `exact` for a network the "
        "exact kernel does not cover (any layer but Linear, ReLU, BatchNorm1d, Dropout and Identity, or other than "
        "two hidden ReLU layers). The detail says why; `methods` lists the methods that apply (`GET /model` lists "
        "them too). Never answered with a silent approximation."
    )


class RateLimited(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 429
    slug = "rate-limited"
    title = "Too many requests"
    when = (
        "The client (its API key, or its address without keys) has used up its token bucket "
        "(GSHAP_RATE_LIMIT_PER_MINUTE, GSHAP_RATE_LIMIT_BURST). `Retry-After` and `retry_after` say how many "
        "seconds to wait."
    )


class ModelNotReady(ServiceError):  # noqa: N818 (the names kserve and the issue use)
    status = 503
    slug = "model-not-ready"
    title = "Model not ready"
    when = (
        "The model bundle is not loaded and warmed up yet, or the server is shutting down; `/readyz` answers "
        "this until the service is ready. `Retry-After` suggests when to try again."
    )


class OtherHTTPError(ServiceError):
    """A Starlette HTTP error without a class of its own here (none is expected; kept so that none is lost)."""

    slug = "http-<status>"
    title = "The HTTP status's reason phrase"
    when = (
        "Any other HTTP error, by its status code (for example `/problems/http-408`); no route of this service "
        "is known to give one."
    )

    def __init__(self, status: int, *, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.slug = f"http-{status}"
        self.title = _reason(status)
        super().__init__(self.title, headers=headers)


# ---- the catalogue of problem kinds: the pages /problems/<kind> and docs/PROBLEMS.md ---------------------------


def problem_kinds() -> list[type[ServiceError]]:
    """Every problem kind, in order of status: :class:`ServiceError` and each subclass (the error tree)."""
    kinds: list[type[ServiceError]] = [ServiceError]
    todo = list(ServiceError.__subclasses__())
    while todo:
        cls = todo.pop(0)
        kinds.append(cls)
        todo.extend(cls.__subclasses__())
    other = [k for k in kinds if k is OtherHTTPError]
    return sorted((k for k in kinds if k is not OtherHTTPError), key=lambda k: (k.status, k.slug)) + other


def _kind(slug: str) -> tuple[int, str, str] | None:
    """``(status, title, when)`` of the kind named ``slug`` (``http-<status>`` for any error status), or None."""
    for k in problem_kinds():
        if k.slug == slug and k is not OtherHTTPError:
            return k.status, k.title, k.when
    code = slug.removeprefix("http-")
    if slug.startswith("http-") and code.isdigit() and len(code) == 3 and 400 <= int(code) <= 599:
        return int(code), _reason(int(code)), OtherHTTPError.when
    return None


def problems_markdown() -> str:
    """docs/PROBLEMS.md: every problem type, its status, title and when it happens (``gshap problems``)."""
    lines = [
        "# Problem types",
        "",
        "<!-- generated from service/problems.py by `gshap problems`; a test checks it is current -->",
        "",
        "Every error the service answers is an RFC 9457 `application/problem+json` document whose `type` is a",
        f"root-relative URI reference, `{PROBLEM_BASE}<kind>`: compare it as a string. It resolves against the",
        "request's URL, on the service itself, where `GET` gives a page describing the kind (open without an API",
        f"key; `{PROBLEM_BASE.rstrip('/')}` lists them all). Besides `type`, `title`, `status`, `detail`, `instance`",
        "and `request_id`, some kinds carry members of their own, named below. No problem carries a stack trace or",
        "a value the client sent.",
        "",
        "| `type` | status | title | when |",
        "|---|---|---|---|",
    ]
    for k in problem_kinds():
        status = "4xx/5xx" if k is OtherHTTPError else str(k.status)
        when = k.when.replace("|", "\\|")
        lines.append(f"| `{PROBLEM_BASE}{k.slug}` | {status} | {k.title} | {when} |")
    return "\n".join(lines) + "\n"


def _html_text(text: str) -> str:
    """``text`` escaped for HTML, with its `code` spans as <code>."""
    parts = html.escape(text, quote=False).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f"<title>{html.escape(title)} · gshap-service</title></head>\n<body>\n{body}</body>\n</html>\n"
    )


def problem_page(slug: str) -> str | None:
    """The HTML page that ``/problems/<slug>`` resolves to, or None for an unknown kind."""
    kind = _kind(slug)
    if kind is None:
        return None
    status, title, when = kind
    return _html(
        title,
        f"<h1>{html.escape(title)}</h1>\n"
        f"<p>Problem type <code>{html.escape(PROBLEM_BASE + slug)}</code>, HTTP status {status}.</p>\n"
        f"<p>{_html_text(when)}</p>\n"
        f'<p><a href="{PROBLEM_BASE.rstrip("/")}">All problem types</a> · <a href="/docs">API documentation</a></p>\n',
    )


def problems_index_page() -> str:
    """The HTML page at ``/problems``: every kind, linked to its page."""

    def cell(kind: type[ServiceError]) -> str:
        code = f"<code>{html.escape(PROBLEM_BASE + kind.slug)}</code>"
        return code if kind is OtherHTTPError else f'<a href="{PROBLEM_BASE}{kind.slug}">{code}</a>'

    rows = "".join(
        f"<tr><td>{cell(k)}</td><td>{'4xx/5xx' if k is OtherHTTPError else k.status}</td>"
        f"<td>{html.escape(k.title)}</td></tr>\n"
        for k in problem_kinds()
    )
    return _html(
        "Problem types",
        "<h1>Problem types</h1>\n<p>The <code>type</code> of every <code>application/problem+json</code> answer of "
        "this service (RFC 9457).</p>\n"
        f"<table>\n<tr><th>type</th><th>status</th><th>title</th></tr>\n{rows}</table>\n",
    )


def problem_body(exc: ServiceError, *, instance: str | None, request_id: str | None) -> dict[str, Any]:
    """The problem document of ``exc`` as a dict (also used for the per-record errors of a batch)."""
    body: dict[str, Any] = {
        "type": exc.type_uri,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
    }
    if instance is not None:
        body["instance"] = instance
    if exc.errors:
        body["errors"] = [e.to_dict() for e in exc.errors]
    body.update(exc.extra)
    body["request_id"] = request_id
    return body


# ---- pydantic errors as field errors -----------------------------------------------------------------------

_LIMIT_KEYS = ("ge", "le", "gt", "lt", "max_length", "min_length", "expected")
# an unknown field's name is echoed so that the client sees its typo, but not at any length: a body of 1 MB
# made of one key would otherwise come back twice (in `detail` and in `errors`)
_MAX_NAME_CHARS = 64


def _short(part: str) -> str:
    return part if len(part) <= _MAX_NAME_CHARS else part[: _MAX_NAME_CHARS - 1] + "…"


def field_errors(errors: Iterable[Mapping[str, Any]]) -> list[FieldError]:
    """Pydantic error dicts → :class:`FieldError` s, the input values left out on purpose.

    FastAPI's ``"body"`` prefix is dropped from locations: ``("body", "glucose")`` → ``"glucose"``; a name
    over 64 characters (an unknown field's) is cut there.
    """
    out: list[FieldError] = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if loc[:1] == ("body",):
            loc = loc[1:]
        loc = tuple(_short(str(p)) for p in loc)
        ctx = err.get("ctx") or {}
        limit = next((ctx[k] for k in _LIMIT_KEYS if k in ctx), None)
        if limit is not None and not isinstance(limit, int | float | str):
            limit = str(limit)
        out.append(
            FieldError(
                field=".".join(loc) or "body",
                rule=str(err.get("type", "invalid")),
                message=str(err.get("msg", "invalid value")),
                limit=limit,
            )
        )
    return out


def invalid_input(errors: Sequence[FieldError]) -> InvalidInput:
    """A 422 naming every broken field in its detail."""
    names = sorted({e.field for e in errors})
    noun = "field breaks" if len(names) == 1 else "fields break"
    return InvalidInput(detail=f"{len(names)} {noun} the request schema: {', '.join(names)}.", errors=errors)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
