"""The HTTP metrics: requests, latency and requests in flight, by route template, method and status.

A plain ASGI middleware (no ``BaseHTTPMiddleware``, whose task and stream per request would cost more than the
metrics), outermost of the app's, so that it counts every answer, the refusals of the other middlewares and the
catch-all 500 included. Labels come from fixed vocabularies only: the route *template* (``/groups/{group}``,
never the raw path; a path that matches no route is ``<unmatched>``), the method (``other`` for anything
unusual) and the status code. The instruments live in the app's :class:`~service.observe.metrics.Telemetry`
registry; the runtime records the model's metrics there itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.observe.metrics import LATENCY_BUCKETS, FastCounter, FastHistogram, Telemetry

__all__ = ["UNMATCHED_ROUTE", "HttpMetrics", "MetricsMiddleware"]

UNMATCHED_ROUTE = "<unmatched>"
_METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})


class HttpMetrics:
    """The HTTP instruments of one app, in its telemetry's registry (created once per app)."""

    def __init__(self, telemetry: Telemetry) -> None:
        r = telemetry.registry
        self.requests = Counter(
            "gshap_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "gshap_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "gshap_http_requests_in_flight",
            "HTTP requests being handled now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._children: dict[tuple[str, str, int], tuple[FastCounter, FastHistogram]] = {}
        gauge = FastCounter(self.in_flight)
        self.in_flight_inc = gauge.inc

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            labels = (route, method, str(status))
            children = (FastCounter(self.requests.labels(*labels)), FastHistogram(self.duration.labels(*labels)))
            self._children[key] = children
        counter, histogram = children
        counter.inc(1)
        histogram.observe(seconds)


class MetricsMiddleware:
    """Times and counts every HTTP request; ``routes`` returns the app's routes (to name refused requests)."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        in_flight = self.metrics.in_flight_inc
        in_flight(1)

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            in_flight(-1)
            method = scope.get("method", "")
            self.metrics.observe(
                self._route(scope),
                method if method in _METHODS else "other",
                status,
                time.perf_counter() - start,
            )

    def _route(self, scope: Scope) -> str:
        """The template of the route that answered, or that would have answered a request refused before
        routing (401, 413, 429); ``<unmatched>`` for a path no route matches."""
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        for candidate in _leaf_routes(self.routes()):
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                found = getattr(candidate, "path", None)
                if isinstance(found, str):
                    return found
        return UNMATCHED_ROUTE


def _leaf_routes(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """The routes with a template, looking into included routers (FastAPI keeps them as one route each)."""
    out: list[BaseRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            out += _leaf_routes(inner.routes)
        elif isinstance(getattr(route, "path", None), str):
            out.append(route)
    return out
