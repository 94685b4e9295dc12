"""The real service in a subprocess, for the tests that talk HTTP to it (client, CSV script, container command).

:func:`running_server` starts ``python -m service.cli serve`` (the code behind the ``gshap`` console script)
on a free loopback port with a clean ``GSHAP_*`` environment plus the overrides given, waits for ``/readyz``
with a bounded timeout and always stops the process on the way out. The server's log goes to a file that is
quoted when start-up fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["ROOT", "LiveServer", "free_port", "running_server"]

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class LiveServer:
    """A started server: its base URL, port, the environment it runs with, its log and its process."""

    url: str
    port: int
    env: Mapping[str, str]
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any GSHAP_* variable, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSHAP_")}
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update(overrides or {})
    return env


@contextmanager
def running_server(
    env: Mapping[str, str] | None = None,
    *,
    command: Sequence[str] = ("serve", "--host", "127.0.0.1"),
    program: Sequence[str] = (sys.executable, "-m", "service.cli"),
    timeout: float = START_TIMEOUT,
) -> Iterator[LiveServer]:
    """Run ``<program> <command>`` (by default ``gshap serve`` via ``-m``) in a subprocess until the block ends.

    ``env`` adds GSHAP_* settings to a clean environment; GSHAP_PORT is always set, to a free port.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gshap-server-") as tmp:
        # CDS feedback goes to the test's own temporary file, never to the user's state directory
        defaults = {"GSHAP_LOG_LEVEL": "warning", "GSHAP_CDS_FEEDBACK_DB": str(Path(tmp) / "cds-feedback.sqlite3")}
        full_env = clean_env({**defaults, **(env or {}), "GSHAP_PORT": str(port)})
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*program, *command],
                cwd=ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                url = f"http://127.0.0.1:{port}"
                _wait_ready(proc, url, log, timeout)
                yield LiveServer(url=url, port=port, env=full_env, log=log, process=proc)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=STOP_TIMEOUT)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=2.0) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode} before it was ready:\n{log.read_text()}")
            try:
                if http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"the server was not ready within {timeout} s:\n{log.read_text()}")
