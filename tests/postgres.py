"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package, a cluster in a temporary data directory,
listening on a free loopback port, stopped (and its directory removed) at the end.

``make test`` installs the package when it is missing and we are root (the ``postgres`` target, like ``browser``).
Without it the tests fail under CI (``CI=true``) and are skipped, saying what to install, elsewhere. As root, the
server runs as the ``postgres`` user (``runuser -u postgres -- ...``): PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from live_server import free_port

__all__ = ["PostgresServer", "find_bin", "running_postgres"]

INSTALL_HINT = (
    "the PostgreSQL tests need Debian's postgresql: sudo apt-get install postgresql (or run make test as root)"
)


def find_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding initdb and pg_ctl, or None."""
    found = [
        p.parent
        for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if (p.parent / "pg_ctl").is_file() and p.parent.parent.name.isdigit()
    ]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


def need_bin() -> Path:
    """Fail under CI, skip elsewhere, when PostgreSQL is not installed."""
    found = find_bin()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    return found


@dataclass
class PostgresServer:
    """One cluster: start, stop (``fast`` or ``immediate``: a crash), and its URL."""

    bin: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://gshap@127.0.0.1:{self.port}/gshap"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(
            [*prefix, *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            cwd=self.root,  # the postgres user may not enter the checkout's directory
        )

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "gshap",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.start()
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "gshap", "gshap")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def running(self) -> bool:
        return self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "status", check=False).returncode == 0

    def psql(self, sql: str) -> str:
        """Run SQL with Debian's psql (another client than the service's): its rows, ``|``-separated."""
        out = self._run(
            str(self.bin / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "gshap",
            "-d",
            "gshap",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        )
        return out.stdout.strip()


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A fresh cluster on a free loopback port, stopped and removed on the way out."""
    bin_dir = need_bin()
    root = Path(tempfile.mkdtemp(prefix="gshap-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = PostgresServer(bin=bin_dir, root=root, port=free_port())
    try:
        server.init()
        yield server
    finally:
        server.stop("fast")
        deadline = time.monotonic() + 10
        while server.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)
