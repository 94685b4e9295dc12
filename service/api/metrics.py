"""The HTTP metrics: requests, latency and requests in flight, by route template, method and status.

Recorded by the service's one pure ASGI layer, :class:`~service.api.stack.ServiceLayer` (no ``BaseHTTPMiddleware``,
whose task and stream per request would cost more than the metrics), around everything else the service does,
so that every answer is counted, the refusals before routing (401, 413, 429, 431) and the catch-all 500 included. Labels
come from fixed vocabularies only: the route *template* (``/groups/{group}``, never the raw path; a path that
matches no route is ``<unmatched>``), the method (``other`` for anything unusual) and the status code. The
instruments live in the app's :class:`~service.observe.metrics.Telemetry` registry; the runtime records the
model's metrics there itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from service.observe.metrics import LATENCY_BUCKETS, FastCounter, FastHistogram, Telemetry

__all__ = ["UNMATCHED_ROUTE", "HttpMetrics", "leaf_routes"]

UNMATCHED_ROUTE = "<unmatched>"
_METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})


class HttpMetrics:
    """The HTTP instruments of one app, in its telemetry's registry (created once per app), recorded by
    :class:`~service.api.stack.ServiceLayer`, which already times every request and knows its
    status: no middleware layer of its own (one more ASGI layer cost more than the metrics).

    ``routes`` returns the app's routes, to name the template of a request refused before routing."""

    def __init__(self, telemetry: Telemetry, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        r = telemetry.registry
        self.routes = routes
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
        # requests in flight in this process, counted by the middleware: read at each scrape in one process; with
        # several, each process also writes it to its file (shared_in_flight) for the others' scrapes to add up
        self.active = 0
        self.shared_in_flight: FastCounter | None = None
        if telemetry.multiprocess_dir is not None:
            self.shared_in_flight = FastCounter(self.in_flight)
        else:
            self.in_flight.set_function(lambda: self.active)

    def observe(self, scope: Scope, route: str | None, status: int, seconds: float) -> None:
        """Count one answered request (``route``: its template if it was routed) and its duration, and take it
        off the requests in flight (counted in by the middleware as it arrived: ``active`` and ``shared_in_flight``)."""
        self.active -= 1
        if self.shared_in_flight is not None:
            self.shared_in_flight.inc(-1)
        method = scope.get("method", "")
        if method not in _METHODS:  # normalised before the key: a client's made-up methods must not grow the cache
            method = "other"
        key = (route or self._template(scope), method, status)
        children = self._children.get(key)
        if children is None:
            labels = (key[0], method, str(status))
            children = (FastCounter(self.requests.labels(*labels)), FastHistogram(self.duration.labels(*labels)))
            self._children[key] = children
        counter, histogram = children
        counter.inc(1)
        histogram.observe(seconds)

    def _template(self, scope: Scope) -> str:
        """The template of the route that would have answered a request refused before routing (401, 413, 429);
        ``<unmatched>`` for a path no route matches."""
        for candidate in leaf_routes(self.routes()):
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                found = getattr(candidate, "path", None)
                if isinstance(found, str):
                    return found
        return UNMATCHED_ROUTE


def leaf_routes(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """The routes with a template, looking into included routers (FastAPI keeps them as one route each)."""
    out: list[BaseRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            out += leaf_routes(inner.routes)
        elif isinstance(getattr(route, "path", None), str):
            out.append(route)
    return out
