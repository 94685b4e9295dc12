"""Logs and request context: JSON-lines logs, the request id, the access log (written by
:class:`service.api.stack.ServiceLayer`, with the version headers and the catch-all).

What may be logged is decided here, once: the request id, the method, the route *template*
(``/groups/{group}``, never the raw path or query), the status, the latency, the API key's short id and, for
a failure, the exception's type and where it was raised. Never a body, a header value, an exception message or
anything else that could carry a patient's values.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import Scope

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "access_logger",
    "configure_logging",
    "log_event",
    "request_id",
    "route_template",
    "where",
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


def request_id(scope: Scope) -> str:
    """The caller's X-Request-ID if it is short and plain, else a new one."""
    given: str | None = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
    # a caller's id is echoed only if it is short and plain: it goes into logs and headers
    if given and _VALID_REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


def new_request_id() -> str:
    """``uuid.uuid4().hex``, without building a :class:`uuid.UUID` (a few microseconds of Python a request): 16
    random bytes with the version (4) and variant (RFC 4122) bits set as ``uuid4`` sets them."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return b.hex()


def where(exc: BaseException) -> list[str]:
    """``file:line in function`` of each frame: the traceback without any message or local value."""
    return [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)]


def route_template(scope: Scope) -> str | None:
    """The template of the route that answered (None before routing)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None
