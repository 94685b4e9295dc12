"""A trivial HTTP responder, and wrk's capacity measured against it (to show the load generator is not the limit).

``scripts/bench.py --serve-trivial PORT`` runs the responder in a process of its own."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchkit.common import HOST, ROOT
from benchkit.servers import Server, free_port, server_env
from benchkit.wrk import run_wrk, wrk_lua_script

__all__ = ["generator_capacity", "serve_trivial"]

BENCH = ROOT / "scripts" / "bench.py"
"""The script whose ``--serve-trivial PORT`` runs :func:`serve_trivial`."""

_TRIVIAL_ANSWER = b'{"ok":true}'
_TRIVIAL_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_TRIVIAL_ANSWER)).encode()
    + b"\r\n\r\n"
    + _TRIVIAL_ANSWER
)


class _TrivialProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1: answers every complete request (headers + content-length body) with ``{"ok":true}``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            match = re.search(rb"content-length:\s*(\d+)", head)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            self.transport.write(_TRIVIAL_RESPONSE)


def serve_trivial(port: int) -> None:
    """Run the trivial responder until killed (``bench.py --serve-trivial PORT``)."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_TrivialProtocol, HOST, port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------------
# Requests: the evaluation set's records, as a client sends them


def generator_capacity(workdir: Path, body: str, seconds: int, concurrency: int) -> dict[str, Any]:
    """wrk's rate against the trivial responder (a Python process on the same 2 cores: a lower bound)."""
    port = free_port()
    server = Server(
        "trivial",
        [sys.executable, str(BENCH), "--serve-trivial", str(port)],
        port,
        workdir / "logs" / "trivial.log",
        server_env({}),
    )
    script = workdir / "trivial.lua"
    script.write_text(wrk_lua_script("/", [body]))
    try:
        server.proc = subprocess.Popen(
            server.command, cwd=ROOT, env=server.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.perf_counter() + 20
        while time.perf_counter() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
                break
            time.sleep(0.02)
        run_wrk(server.url + "/", script, concurrency, 1)
        r = run_wrk(server.url + "/", script, concurrency, seconds)
    finally:
        server.stop()
    return {
        "concurrency": concurrency,
        "rps": r["rps"],
        "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"],
        "errors": r["errors"],
        "wrk_cpu_share": r["wrk_cpu_s"] / r["seconds"],
    }
