"""The servers a benchmark starts: a free port, spawn, wait for the ready path (the cold start), stop; their env."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from benchkit.common import HOST, ROOT
from benchkit.procs import cpu_seconds

__all__ = [
    "READY_TIMEOUT", "SERVE", "Server", "free_port", "http_get_status", "running", "serve_command", "server_env",
    "wait_idle",
]  # fmt: skip

READY_TIMEOUT = 120.0
SERVE = (sys.executable, "-m", "service.cli", "serve", "--host", HOST)
"""``gshap serve`` on the loopback host, as this Python runs it (add ``--port``, ``--workers``)."""


def serve_command(port: int, *extra: str) -> list[str]:
    """:data:`SERVE` with ``extra`` options on ``port``."""
    return [*SERVE, *extra, "--port", str(port)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def http_get_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """Status of ``GET path`` on 127.0.0.1, or None when nothing answers yet."""
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


@dataclass
class Server:
    """A server process started by a benchmark."""

    name: str
    command: list[str]
    port: int
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    cold_start_s: float = math.nan

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, ready_path: str = "/readyz") -> float:
        """Spawn and wait for ``ready_path`` to answer 200; returns the cold start in seconds."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = t0 + READY_TIMEOUT
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log: {self.log_path}")
            if http_get_status(self.port, ready_path, timeout=2.0) == 200:
                self.cold_start_s = time.perf_counter() - t0
                return self.cold_start_s
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {READY_TIMEOUT:.0f} s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


def server_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without GSHAP_* (the service's defaults), quiet logs, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSHAP_")}
    env["GSHAP_LOG_LEVEL"] = "warning"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def wait_idle(pid: int, timeout: float = 30.0, busy_share: float = 0.1) -> float:
    """Wait until the server's process tree uses less than ``busy_share`` of a core over 0.2 s; returns the wait.

    wrk closes its connections at the end of a run, but requests already inside the server keep it busy: without
    this, slow cells (batches at high concurrency) would measure the previous run's leftovers."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        c0 = cpu_seconds(pid)
        time.sleep(0.2)
        if cpu_seconds(pid) - c0 < busy_share * 0.2:
            break
    return time.perf_counter() - t0
