"""The service's one ASGI layer between the server and the router (issue 26: every layer cost every request an
``await``, a ``send`` wrapper and a closure).

:class:`ServiceLayer` does, in this order, what eleven layers did (Starlette's and FastAPI's error, telemetry and
exit-stack middlewares, and the service's own):

1. the request id, the version headers, the security headers (:func:`service.api.security.security_headers`),
   the access log line, the HTTP metrics and the catch-all 500 problem (:mod:`service.api.observability`);
2. CORS, only when GSHAP_CORS_ORIGINS is set (:class:`~service.api.security.ProblemCORSMiddleware`, a layer of
   its own then);
3. the header size limits, the API key and the rate limit, the body size limit
   (:mod:`service.api.security`'s policies, which answer before anything is parsed);
4. gzip on the page, the docs and the large documents (:mod:`service.api.page`);
5. the app's exception handlers (:func:`service.api.errors.install_exception_handlers`) for what the router raises
   (404, 405, and the problems of the fast routes), and FastAPI's exit stack for files;
6. a POST to ``/predict``, ``/explain`` or a per-model copy of them goes straight to its route's fast app
   (:func:`service.api.routes.fast_route`, :func:`service.api.routes.fast_table`), past the router's walk through
   every route and FastAPI's request handling; every other request goes to the router.

:class:`ServiceApp` is FastAPI with this layer as its whole middleware stack.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from contextlib import AsyncExitStack
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import ServiceError, problem_response, request_id_of
from service.api.metrics import HttpMetrics
from service.api.observability import REQUEST_ID_HEADER, access_logger, log_event, request_id, route_template, where
from service.api.page import PageCompressionMiddleware, compressed
from service.api.security import (
    SECURITY_HEADERS,
    ApiKeyMiddleware,
    BodySizeLimitMiddleware,
    HeaderSizeLimitMiddleware,
    ProblemCORSMiddleware,
    path_kind,
    security_headers,
)

__all__ = ["ServiceApp", "ServiceLayer"]

_CONTEXT_HEADERS = frozenset({REQUEST_ID_HEADER.lower(), "x-service-version", "x-model-version"})
_OURS = frozenset(h.encode() for h in (*_CONTEXT_HEADERS, *SECURITY_HEADERS))

Handler = Callable[[Request, Exception], Any]


class ServiceLayer:
    """Everything the service does around the router, in one pure ASGI layer (see the module's docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        service_version: str,
        model_version: Callable[[], str | None],
        metrics: HttpMetrics | None,
        header_limits: HeaderSizeLimitMiddleware,
        keys: ApiKeyMiddleware,
        body_limits: BodySizeLimitMiddleware,
        exception_handlers: Mapping[Any, Handler],
        cors: Mapping[str, Any] | None = None,
        fast_routes: Mapping[str, tuple[BaseRoute, ASGIApp]] | None = None,
    ) -> None:
        self.app = app
        self.fast_routes = fast_routes if fast_routes is not None else {}
        self.service_version = service_version.encode("latin-1")
        self.model_version = model_version
        self.metrics = metrics
        self.header_limits = header_limits
        self.keys = keys
        self.body_limits = body_limits
        # the app's exception handlers, for what the router raises (404, 405, the fast routes' problems), inside
        # CORS and gzip as before: Starlette's own middleware, called as a function rather than stacked
        self.exceptions = ExceptionMiddleware(self._routed, handlers=dict(exception_handlers))
        self.gzip = PageCompressionMiddleware(self.exceptions).gzip
        self.inner: ASGIApp = ProblemCORSMiddleware(self._guarded, **cors) if cors else self._guarded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        metrics = self.metrics
        if metrics is not None:  # one request more in flight (see HttpMetrics.observe for the other end)
            metrics.active += 1
            if metrics.shared_in_flight is not None:
                metrics.shared_in_flight.inc(1)
        rid = request_id(scope)
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state["request_id"] = rid
        secure = security_headers(path_kind(scope["path"]))
        status = 500
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                # the model that answered (a per-model route sets it), else the default model
                model_version = state.get("model_version") or self.model_version()
                ours = [(b"x-request-id", rid.encode("latin-1")), (b"x-service-version", self.service_version)]
                if model_version:
                    ours.append((b"x-model-version", model_version.encode("latin-1")))
                ours += secure
                raw = message.get("headers")
                raw = [] if raw is None else raw if isinstance(raw, list) else list(raw)
                message["headers"] = raw
                if any(name in _OURS for name, _ in raw):  # replaced where the answer has them already
                    headers = MutableHeaders(scope=message)
                    for name, value in ours:
                        headers[name.decode()] = value.decode("latin-1")
                else:
                    raw += ours
            await send(message)

        try:
            await self.inner(scope, receive, send_with_headers)
        except Exception as exc:
            status = 500
            log_event(
                "unhandled_error",
                logging.ERROR,
                request_id=rid,
                method=scope.get("method"),
                route=route_template(scope),
                error_type=type(exc).__name__,
                where=where(exc),
            )
            if not started:
                response = problem_response(ServiceError(), instance=scope.get("path"), request_id=rid)
                await response(scope, receive, send_with_headers)
        finally:
            seconds = time.perf_counter() - start
            route = route_template(scope)
            if metrics is not None:
                metrics.observe(scope, route, status, seconds)  # and one request less in flight
            access_logger.info(
                "request",
                extra={
                    "fields": {
                        "request_id": rid,
                        "method": scope.get("method"),
                        "route": route,
                        "status": status,
                        "latency_ms": round(seconds * 1000, 3),
                        "api_key_id": state.get("api_key_id"),
                    }
                },
            )

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The refusals before anything is parsed (431, 401, 429, 413), then gzip where it applies."""
        refused = self.header_limits.refusal(scope) or self.keys.refusal(scope)
        if refused is not None:
            response = problem_response(refused, instance=scope.get("path"), request_id=request_id_of(scope))
            await response(scope, receive, send)
            return
        replay = await self.body_limits.buffered(scope, receive, send)
        if replay is None:
            return
        if compressed(scope):
            await self.gzip(scope, replay, send)
        else:
            await self.exceptions(scope, replay, send)

    async def _routed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The router, with FastAPI's exit stack for files; a POST to a fast route
        (:func:`service.api.routes.fast_table`) goes straight to it, with the scope the router would have given it."""
        if scope["method"] == "POST" and not scope.get("root_path"):
            fast = self.fast_routes.get(scope["path"])
            if fast is not None:
                route, app = fast
                scope["router"] = self.app
                scope["endpoint"] = getattr(route, "endpoint", None)
                scope["path_params"] = {}
                scope["route"] = route
                await app(scope, receive, send)
                return
        async with AsyncExitStack() as stack:
            scope["fastapi_middleware_astack"] = stack
            await self.app(scope, receive, send)


class ServiceApp(FastAPI):
    """FastAPI whose middleware stack is one :class:`ServiceLayer` (made by ``layer`` from the router and the
    app's exception handlers) instead of Starlette's and FastAPI's layers around the user's middlewares."""

    service_layer: Callable[[ASGIApp, Mapping[Any, Handler]], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        if self.service_layer is None:
            return super().build_middleware_stack()
        handlers = {k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)}
        if len(handlers) != len(self.exception_handlers):
            raise TypeError("a 500 handler is the service layer's catch-all, not the app's")
        return self.service_layer(self.router, handlers)
