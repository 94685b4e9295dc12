"""Logs and request context: JSON-lines logs, the request id, version headers, the access log, the catch-all.

What may be logged is decided here, once: the request id, the method, the route *template*
(``/groups/{group}``, never the raw path or query), the status, the latency, the API key's short id and, for
a failure, the exception's type and where it was raised. Never a body, a header value, an exception message or
anything else that could carry a patient's values.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
import uuid
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import ServiceError, problem_response
from service.api.metrics import HttpMetrics

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestContextMiddleware",
    "configure_logging",
    "log_event",
]

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HANDLER_NAME = "gshap-json"

logger = logging.getLogger("gshap")
access_logger = logging.getLogger("gshap.access")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``event`` and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        # exc_info is deliberately not rendered: exception messages may quote request values
        return orjson.dumps(out, default=str).decode()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for the service's and uvicorn's loggers; idempotent."""
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    for name in ("gshap", "uvicorn"):
        lg = logging.getLogger(name)
        lg.handlers = [h for h in lg.handlers if h.get_name() != _HANDLER_NAME]
        lg.addHandler(handler)
        lg.setLevel(level.upper())
    # uvicorn's own access log would print raw paths with query strings; ours replaces it
    logging.getLogger("uvicorn.access").disabled = True


def log_event(event: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Log a structured event on the ``gshap`` logger."""
    logger.log(level, event, extra={"fields": fields})


def _request_id(scope: Scope) -> str:
    given = Headers(scope=scope).get(REQUEST_ID_HEADER)
    # a caller's id is echoed only if it is short and plain: it goes into logs and headers
    if given and _VALID_REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def _where(exc: BaseException) -> list[str]:
    """``file:line in function`` of each frame: the traceback without any message or local value."""
    return [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)]


class RequestContextMiddleware:
    """Request id in and out, version headers, the access log line, the HTTP metrics and the catch-all 500 problem.

    Outermost of the service's middlewares (inside Starlette's own error middleware), so that every answer,
    including the ones produced by the other middlewares, carries the headers and is logged once.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service_version: str,
        model_version: Callable[[], str | None],
        metrics: HttpMetrics | None = None,
    ) -> None:
        self.app = app
        self.service_version = service_version.encode()
        self.model_version = model_version
        self.metrics = metrics  # requests, latency and in flight (None: metrics off)

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
        rid = _request_id(scope)
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state["request_id"] = rid
        status = 500
        started = False

        async def send_with_context(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = rid
                headers["X-Service-Version"] = self.service_version.decode()
                # the model that answered (a per-model route sets it), else the default model
                model_version = state.get("model_version") or self.model_version()
                if model_version:
                    headers["X-Model-Version"] = model_version
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        except Exception as exc:
            status = 500
            log_event(
                "unhandled_error",
                logging.ERROR,
                request_id=rid,
                method=scope.get("method"),
                route=_route_template(scope),
                error_type=type(exc).__name__,
                where=_where(exc),
            )
            if not started:
                response = problem_response(ServiceError(), instance=scope.get("path"), request_id=rid)
                await response(scope, receive, send_with_context)
        finally:
            seconds = time.perf_counter() - start
            route = _route_template(scope)
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


def _route_template(scope: Scope) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None
