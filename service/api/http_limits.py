"""The HTTP protocol with a cap on the request head (request line and headers), for uvicorn.

uvicorn's httptools protocol reads a header of any size: a 32 MB ``Authorization`` header is collected (the
parser appends each piece to the bytes it has, so the cost grows with the square of the size) before the app can
look at it, and the event loop is busy meanwhile. :class:`HeaderLimitedProtocol` counts the bytes of each request
head as they arrive and, once ``max_header_bytes`` came without the end of the headers, answers ``431`` with the
service's problem document and closes the connection, having parsed nothing more.

It also writes each answer's head together with the first piece of its body. uvicorn writes them in two calls
of the transport, and each is a system call and a TCP segment of its own: on the hot routes the second write was
the largest single cost of a request on the event loop (docs/bench/profile.md). :class:`OneWriteTransport` holds
a response head until the next write (or the end of the event loop's turn, for an answer without a body) and
writes both at once; the bytes and their order are unchanged.

``gshap serve`` uses it (:func:`http_protocol_options`): with one worker as a class bound to the setting, with
several as an import string whose limit the workers read from ``GSHAP_MAX_HEADER_BYTES`` (``serve`` puts every
setting in their environment). Without httptools, uvicorn's h11 protocol gets the same limit
(``h11_max_incomplete_event_size``); it answers a plain 400 instead.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

from service.api.errors import problem_body
from service.api.security import header_limit_problem

__all__ = ["DEFAULT_MAX_HEADER_BYTES", "OneWriteTransport", "http_protocol_options", "limited_protocol"]

DEFAULT_MAX_HEADER_BYTES = 32 * 1024
REFUSED_DRAIN_SECONDS = 1.0

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is part of the server extra
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def _refusal(limit: int) -> bytes:
    import orjson

    body = orjson.dumps(problem_body(header_limit_problem(limit), instance=None, request_id=None))
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/problem+json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n"
        b"x-content-type-options: nosniff\r\n"
        b"cache-control: no-store\r\n\r\n" + body
    )


class OneWriteTransport:
    """A connection's transport that writes a response head (bytes starting ``HTTP/1.1 ``) together with what is
    written next: the head is held, and written at the next ``write`` (joined to it), ``write_eof``, ``close`` or
    at the end of the event loop's current turn, whichever comes first. Every other call goes to the transport."""

    __slots__ = ("_head", "_loop", "_transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data.startswith(b"HTTP/1.1 "):
            self._head = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Write the held head, if any."""
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)

    def writelines(self, data: Any) -> None:
        self.write(b"".join(data))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


if HttpToolsProtocol is not None:

    class HeaderLimitedProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, refusing a request head over ``max_header_bytes`` with 431."""

        max_header_bytes = int(os.environ.get("GSHAP_MAX_HEADER_BYTES") or DEFAULT_MAX_HEADER_BYTES)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0
            self._refused = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(cast("asyncio.Transport", OneWriteTransport(transport, self.loop)))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True  # a next request on this connection starts its head

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if not self._in_head:
                super().data_received(data)
                return
            room = self.max_header_bytes - self._head_bytes
            if len(data) <= room:
                self._head_bytes += len(data)
                super().data_received(data)
                return
            if room > 0:  # the head may end within the bytes still allowed
                self._head_bytes += room
                super().data_received(data[:room])
            if self._in_head and not self._refused and not self.transport.is_closing():
                self._refused = True
                self.logger.warning("request head over %d bytes: 431", self.max_header_bytes)
                self.transport.write(_refusal(self.max_header_bytes))
                # half-close: the answer goes out with a FIN; what the client still sends is read and dropped for
                # a moment (closing with unread bytes would reset the connection and could lose the answer)
                if self.transport.can_write_eof():
                    self.transport.write_eof()
                self.loop.call_later(REFUSED_DRAIN_SECONDS, self.transport.close)
                return
            super().data_received(data[room:])
else:  # pragma: no cover
    HeaderLimitedProtocol = None  # type: ignore[assignment,misc]


def limited_protocol(max_header_bytes: int) -> type[Any]:
    """A :class:`HeaderLimitedProtocol` bound to ``max_header_bytes``."""
    assert HeaderLimitedProtocol is not None
    return type("HeaderLimitedProtocol", (HeaderLimitedProtocol,), {"max_header_bytes": max_header_bytes})


def http_protocol_options(max_header_bytes: int, workers: int = 1) -> dict[str, Any]:
    """uvicorn options that cap the request head at ``max_header_bytes``."""
    if HeaderLimitedProtocol is None:  # pragma: no cover
        return {"http": "h11", "h11_max_incomplete_event_size": max_header_bytes}
    if workers > 1:  # the workers import the class; their environment carries GSHAP_MAX_HEADER_BYTES
        return {"http": "service.api.http_limits:HeaderLimitedProtocol"}
    return {"http": limited_protocol(max_header_bytes)}
