"""In-app hardening: API keys, a per-key rate limit, the body-size limit and the security headers.

All four answer before FastAPI parses anything and cover every route, the docs included: the service applies them
in its one ASGI layer (:class:`service.api.stack.ServiceLayer`, through :meth:`ApiKeyMiddleware.refusal`,
:meth:`HeaderSizeLimitMiddleware.refusal`, :meth:`BodySizeLimitMiddleware.buffered` and :func:`security_headers`);
the classes are plain ASGI middlewares too. Their refusals are :mod:`service.api.errors` problems rendered by
:func:`service.api.errors.problem_response`, like every other error.

- API keys (``GSHAP_API_KEYS``, a list so that keys can rotate): ``Authorization: Bearer <key>`` or
  ``X-API-Key: <key>``, compared in constant time against every key; a missing and a wrong key get the same
  401. ``/healthz`` and ``/readyz`` stay open for orchestrators, and so do ``/metrics`` and ``/monitoring`` for
  scrapers unless GSHAP_METRICS_REQUIRE_KEY=true (the app passes its ``open_paths``).
- Rate limit (``GSHAP_RATE_LIMIT_PER_MINUTE``): a token bucket per API key (per client address without
  keys), in-process, so with N workers the effective limit is up to N times higher. 429 with ``Retry-After``.
- Body size (``GSHAP_MAX_BODY_BYTES``; ``GSHAP_FHIR_MAX_BODY_BYTES`` on the FHIR and CDS Hooks routes, which take
  a patient's Bundle): ``Content-Length`` checked first, then the streamed size while the body is read into
  memory. 413.
- Header size: the request line and headers over ``GSHAP_MAX_HEADER_BYTES`` are refused by the HTTP protocol
  itself (:mod:`service.api.http_limits`) as soon as that many bytes came without the end of the headers, and
  here again for servers that do not use it; ``Authorization`` over ``GSHAP_MAX_AUTHORIZATION_BYTES`` is refused
  before any key or token is read. 431.
- Headers: ``nosniff``, ``DENY`` framing, ``no-referrer``, ``no-store`` and a CSP that forbids everything
  on API answers; only the two documentation pages get one that lets Swagger UI and ReDoc load (from this
  server: ``'self'`` only, no inline script), and the page at ``/`` and its files get a strict same-origin CSP
  (no inline script or style, no eval). The page and ``/static/`` files hold no data and need no API key (a
  browser cannot send one when it opens a page); the page asks for a key when the API answers 401. Static files
  are revalidated (``no-cache``, with their ETag) rather than never stored.
- CORS (``GSHAP_CORS_ORIGINS``, closed when empty): Starlette's middleware, except that a refused preflight
  is a 403 problem like every other refusal rather than a plain-text 400 (:class:`ProblemCORSMiddleware`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping
from functools import cache
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import (
    PROBLEM_BASE,
    CorsRefused,
    HeadersTooLarge,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    Unauthorized,
    problem_response,
    request_id_of,
)

__all__ = [
    "DOCS_CSP",
    "OPEN_PATHS",
    "OPEN_PREFIXES",
    "PAGE_CSP",
    "SECURITY_HEADERS",
    "ApiKeyMiddleware",
    "BodySizeLimitMiddleware",
    "HeaderSizeLimitMiddleware",
    "ProblemCORSMiddleware",
    "TokenBucket",
    "is_page_path",
    "key_id",
    "path_kind",
    "security_headers",
]

OPEN_PATHS = frozenset({"/healthz", "/readyz", PROBLEM_BASE.rstrip("/")})
# the pages problem types resolve to (/problems/<kind>): a client refused for its key must be able to read them
OPEN_PREFIXES = (PROBLEM_BASE,)
# CDS Hooks clients authenticate with their own signed JWT (service.api.cds_auth), not with an API key
CDS_PREFIX = "/cds-services"
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
PAGE_PATHS = frozenset({"/"})
STATIC_PREFIX = "/static/"

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# Swagger UI and ReDoc are served by this server (service.api.docs) and started by a script file; both set inline
# styles (React style props, styled-components) and ReDoc's search runs in a blob worker. Only on these pages.
DOCS_CSP = (
    "default-src 'none'; "
    "script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; worker-src blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# The page at / (service/api/static): its own script, style sheet and API calls, nothing inline, no eval.
PAGE_CSP = (
    "default-src 'none'; "
    "script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; "
    "manifest-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def is_page_path(path: str) -> bool:
    """The page and its static files: open without a key (they hold no data)."""
    return path in PAGE_PATHS or path.startswith(STATIC_PREFIX)


UNAUTHORIZED_DETAIL = "A valid API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."


def key_id(key: str) -> str:
    """A short, stable, non-reversible id of an API key, for logs and rate-limit buckets."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


async def _refuse(exc: ServiceError, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem_response(exc, instance=scope.get("path"), request_id=request_id_of(scope))
    await response(scope, receive, send)


class TokenBucket:
    """Token buckets keyed by client: ``rate`` tokens a second up to ``capacity``; the least recent evicted."""

    def __init__(
        self,
        rate_per_minute: int,
        capacity: int | None = None,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_minute / 60.0
        self.capacity = float(capacity or rate_per_minute)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float:
        """Take one token; returns 0 if granted, else the seconds until one is available."""
        now = self.clock()
        tokens, last = self._buckets.pop(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


class ApiKeyMiddleware:
    """Authentication by API key and the rate limit; either may be off (no keys, no rate)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: Iterable[str] = (),
        rate_limit_per_minute: int | None = None,
        rate_limit_burst: int | None = None,
        open_paths: Iterable[str] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self.open_paths = frozenset(open_paths)
        self._keys = [(_digest(k), key_id(k)) for k in api_keys]
        self.bucket = TokenBucket(rate_limit_per_minute, rate_limit_burst) if rate_limit_per_minute else None

    def _match(self, headers: Headers) -> str | None:
        """The id of the key presented, or None; every configured key is compared, in constant time each."""
        presented: list[str] = []
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            presented.append(token.strip())
        if x_key := headers.get("x-api-key"):
            presented.append(x_key)
        found: str | None = None
        for candidate in presented:
            digest = _digest(candidate)
            for known, kid in self._keys:
                if hmac.compare_digest(digest, known):
                    found = kid
        return found

    def refusal(self, scope: Scope) -> ServiceError | None:
        """The 401 or 429 for this HTTP request, or None (the key's id then in the scope's state)."""
        path = scope["path"]
        if (
            path in self.open_paths
            or path.startswith(OPEN_PREFIXES)
            or is_page_path(path)
            or (not self._keys and self.bucket is None)
        ):
            return None
        client = None
        cds = path == CDS_PREFIX or path.startswith(CDS_PREFIX + "/")
        if self._keys and not cds:
            client = self._match(Headers(scope=scope))
            if client is None:
                return Unauthorized(UNAUTHORIZED_DETAIL, headers={"WWW-Authenticate": 'Bearer realm="gshap"'})
            state: MutableMapping[str, Any] = scope.setdefault("state", {})
            state["api_key_id"] = client
        if self.bucket is not None:
            who = client or f"addr:{(scope.get('client') or ('unknown', 0))[0]}"
            wait = self.bucket.take(who)
            if wait > 0:
                retry = max(1, math.ceil(wait))
                return RateLimited(
                    f"Rate limit exceeded; retry in {retry} s.",
                    headers={"Retry-After": str(retry)},
                    extra={"retry_after": retry},
                )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (refused := self.refusal(scope)) is not None:
            await _refuse(refused, scope, receive, send)
            return
        await self.app(scope, receive, send)


def header_limit_problem(limit: int, name: str = "") -> HeadersTooLarge:
    """The 431 problem: the whole header block over ``limit`` bytes, or the header ``name`` over it."""
    if name:
        return HeadersTooLarge(
            f"The {name} header is larger than {limit} bytes (GSHAP_MAX_AUTHORIZATION_BYTES); it was not read.",
            extra={"limit": limit, "limit_name": "max_authorization_bytes"},
        )
    return HeadersTooLarge(
        f"The request line and headers are larger than {limit} bytes (GSHAP_MAX_HEADER_BYTES).",
        extra={"limit": limit, "limit_name": "max_header_bytes"},
    )


class HeaderSizeLimitMiddleware:
    """431 for headers over ``max_bytes`` in all, or an ``Authorization`` header over ``max_authorization_bytes``,
    before anything reads them (API keys, the CDS client's JWT)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_authorization_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_authorization_bytes = max_authorization_bytes

    def refusal(self, scope: Scope) -> HeadersTooLarge | None:
        """The 431 for this HTTP request's headers, or None."""
        total = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        for name, value in scope["headers"]:
            total += len(name) + len(value) + 4
            if name == b"authorization" and len(value) > self.max_authorization_bytes:
                return header_limit_problem(self.max_authorization_bytes, "Authorization")
        if total > self.max_bytes:
            return header_limit_problem(self.max_bytes)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (refused := self.refusal(scope)) is not None:
            await _refuse(refused, scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodySizeLimitMiddleware:
    """413 for a body over its route's limit: by ``Content-Length``, then by the bytes actually streamed.

    ``max_bytes`` is the default (GSHAP_MAX_BODY_BYTES); ``routes`` gives other limits by path prefix, each with the
    name of its setting (the FHIR and CDS Hooks routes: GSHAP_FHIR_MAX_BODY_BYTES)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, routes: Iterable[tuple[str, int, str]] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.routes = tuple(routes)

    def _limit(self, path: str) -> tuple[int, str]:
        for prefix, limit, name in self.routes:
            if path == prefix.rstrip("/") or path.startswith(prefix):
                return limit, name
        return self.max_bytes, "max_body_bytes"

    def _too_large(self, limit: int, name: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"The request body is larger than {limit} bytes (GSHAP_{name.upper()}).",
            extra={"limit": limit, "limit_name": name},
        )

    async def buffered(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The HTTP request's body read whole, as a ``receive`` that hands it over in one message; None when it was
        refused (the 413 sent) or the client went away."""
        limit, name = self._limit(scope["path"])
        length: str | None = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > limit:
            await _refuse(self._too_large(limit, name), scope, receive, send)
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(self._too_large(limit, name), scope, receive, send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return replay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replay = await self.buffered(scope, receive, send)
        if replay is not None:
            await self.app(scope, replay, send)


SECURITY_HEADERS = (
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "cache-control",
    "content-security-policy",
)


@cache
def security_headers(path_kind: str) -> tuple[tuple[bytes, bytes], ...]:
    """The security headers of every answer (raw: lower-case names), by the kind of path (:func:`path_kind`): the
    docs pages get the relaxed CSP they need, the page and its files theirs, static files are revalidated rather
    than never stored."""
    csp = DOCS_CSP if path_kind == "docs" else PAGE_CSP if path_kind in ("page", "static") else API_CSP
    values = ("nosniff", "DENY", "no-referrer", "no-cache" if path_kind == "static" else "no-store", csp)
    return tuple((name.encode(), value.encode("latin-1")) for name, value in zip(SECURITY_HEADERS, values, strict=True))


def path_kind(path: str) -> str:
    """``docs``, ``page``, ``static`` or ``api``: what decides an answer's security headers."""
    if path in DOCS_PATHS:
        return "docs"
    if path.startswith(STATIC_PREFIX):
        return "static"
    return "page" if path in PAGE_PATHS else "api"


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware whose refused preflights are 403 problems (naming nothing that was sent)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "origin" in headers and "access-control-request-method" in headers:
                response = self.preflight_response(request_headers=headers)
                if response.status_code >= 400:
                    refused = CorsRefused(
                        "The origin, method or headers of this cross-origin request are not allowed here "
                        "(GSHAP_CORS_ORIGINS).",
                        headers={"Vary": response.headers.get("vary", "Origin")},
                    )
                    response = problem_response(refused, instance=scope.get("path"), request_id=request_id_of(scope))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
