"""One write per answer: the protocol's transport joins a response head to what follows it, and nothing else
changes (the bytes, their order, closing, half-closing); a real server answers HEAD, 100-continue and pipelined
requests as before."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from live_server import running_server

from service.api.http_limits import OneWriteTransport


class Recording:
    """A transport that records what is written to it, and when it is closed or half-closed."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []

    def write(self, data: bytes) -> None:
        self.events.append(("write", bytes(data)))

    def write_eof(self) -> None:
        self.events.append(("eof", b""))

    def close(self) -> None:
        self.events.append(("close", b""))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_a_head_and_its_body_go_out_in_one_write() -> None:
    """Property: a response head is held and written joined to the next write; other writes pass straight through;
    a head with nothing after it goes out at the end of the loop's turn; close and write_eof write it first."""

    async def main() -> list[list[tuple[str, bytes]]]:
        loop = asyncio.get_running_loop()
        out: list[list[tuple[str, bytes]]] = []
        inner = Recording()
        t = OneWriteTransport(inner, loop)
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert inner.events == []  # held
        t.write(b"{}")
        t.write(b"more")
        out.append(inner.events)

        inner = Recording()
        t = OneWriteTransport(inner, loop)
        t.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await asyncio.sleep(0)  # the end of the turn: written alone
        out.append(inner.events)

        for finish in ("close", "write_eof"):
            inner = Recording()
            t = OneWriteTransport(inner, loop)
            t.write(b"HTTP/1.1 431 Too Large\r\n\r\n")
            getattr(t, finish)()
            await asyncio.sleep(0)  # the scheduled flush finds nothing left
            out.append(inner.events)

        inner = Recording()
        t = OneWriteTransport(inner, loop)
        t.writelines([b"HTTP/1.1 200 OK\r\n\r\n", b"body"])
        t.write(b"tail")
        out.append(inner.events)
        assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # everything else is the transport's
        return out

    joined, alone, closed, half_closed, lines = asyncio.run(main())
    assert joined == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"), ("write", b"more")]
    assert alone == [("write", b"HTTP/1.1 204 No Content\r\n\r\n")]
    assert closed == [("write", b"HTTP/1.1 431 Too Large\r\n\r\n"), ("close", b"")]
    assert half_closed == [("write", b"HTTP/1.1 431 Too Large\r\n\r\n"), ("eof", b"")]
    assert lines == [("write", b"HTTP/1.1 200 OK\r\n\r\nbodytail")]  # writelines is one write: held, then joined


def _read_answers(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` HTTP/1.1 answers (head, body) read from ``sock`` (bodies by content-length)."""
    buf = b""
    out: list[tuple[bytes, bytes]] = []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} answers"
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if head.startswith(b"HTTP/1.1 100"):
            continue
        while len(buf) < length:
            buf += sock.recv(65536)
        out.append((head, buf[:length]))
        buf = buf[length:]
    return out


def test_a_real_server_answers_pipelined_head_and_expect_continue_requests() -> None:
    """Property: through the one-write transport a real `gshap serve` answers two pipelined requests in order, a
    HEAD without a body, and a POST sent with Expect: 100-continue (the 100 goes out before the body is sent)."""
    record = {
        "pregnancies": 2, "glucose": 120, "blood_pressure": 70, "skin_thickness": 20, "insulin": 80, "bmi": 30.5,
        "diabetes_pedigree_function": 0.5, "age": 40,
    }  # fmt: skip
    body = json.dumps(record).encode()
    with running_server() as server, socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        post = (
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        sock.sendall(post + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        (head1, body1), (head2, body2) = _read_answers(sock, 2)
        assert head1.startswith(b"HTTP/1.1 200")
        assert b"x-request-id" in head1.lower()
        assert 0.0 < json.loads(body1)["probability"] < 1.0
        assert head2.startswith(b"HTTP/1.1 200")
        assert json.loads(body2)["status"] == "ok"

        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        sock.settimeout(20)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, rest = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 ")
        assert rest == b""

        sock.sendall(
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nexpect: 100-continue\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        continued = sock.recv(65536)
        assert continued.startswith(b"HTTP/1.1 100 Continue"), continued
        sock.sendall(body)
        [(head3, body3)] = _read_answers(sock, 1)
        assert head3.startswith(b"HTTP/1.1 200")
        assert json.loads(body3)["probability"] == json.loads(body1)["probability"]
