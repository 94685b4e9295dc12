"""Throughput and memory of `gshap serve --workers N`, for N = 1 and 2, on this machine.

    python scripts/bench_workers.py                  # /explain and /predict, 8 connections, 10 s a cell
    python scripts/bench_workers.py --workers 1 2 4 --seconds 20 --json docs/bench/workers.json

For each N a fresh server (``python -m service.cli serve --workers N``, its defaults otherwise) is loaded with
``wrk`` (POST of the specification's example patient, ``--connections`` connections, 2 wrk threads) for each
endpoint after a 2 s warm-up; then the RSS and USS of each uvicorn worker process (psutil lists them,
``benchkit.procs`` reads ``/proc``) and of the parent are read. Only 127.0.0.1 is loaded. Needs ``wrk``
(``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchkit.common import dumps  # noqa: E402
from benchkit.procs import status_kib, uss_kib  # noqa: E402
from benchkit.servers import Server, free_port, running, serve_command, server_env  # noqa: E402
from benchkit.wrk import run_wrk, wrk_lua_script  # noqa: E402

from service.model.store import load_bundle  # noqa: E402
from service.schemas import example_record  # noqa: E402


def wrk(url: str, path: str, seconds: int, connections: int, body: dict[str, Any]) -> float:
    """Requests/s of a ``wrk`` run with two threads (non-2xx answers make it fail)."""
    with tempfile.TemporaryDirectory(prefix="gshap-workers-") as tmp:
        script = Path(tmp) / "body.lua"
        script.write_text(wrk_lua_script(path, [dumps(body)]))
        got = run_wrk(url + path, script, connections, seconds, threads=2)
    if got["error_kinds"]["status"]:
        raise RuntimeError(f"{got['error_kinds']['status']} non-2xx answers from {path}")
    rps: float = got["rps"]
    return rps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    example = example_record(load_bundle().spec)  # the served default model's example patient
    logs = Path(tempfile.mkdtemp(prefix="gshap-workers-"))
    for n in args.workers:
        port = free_port()
        with running(
            Server(
                f"workers-{n}",
                serve_command(port, "--workers", str(n)),
                port,
                logs / f"workers-{n}.log",
                server_env({}),
            )
        ) as server:
            assert server.proc is not None
            row: dict[str, Any] = {"workers": n, "load_before": round(os.getloadavg()[0], 1)}
            for path in ("/explain", "/predict"):
                wrk(server.url, path, 2, args.connections, example)  # warm-up
                row[f"{path.strip('/')}_rps"] = round(wrk(server.url, path, args.seconds, args.connections, example))
            parent = psutil.Process(server.proc.pid)
            # uvicorn's workers, not multiprocessing's resource tracker
            kids = [p for p in parent.children() if "resource_tracker" not in " ".join(p.cmdline())]
            procs = kids if n > 1 else [parent]
            row["worker_rss_mb"] = [round(status_kib(p.pid, "VmRSS") / 1024) for p in procs]
            row["worker_uss_mb"] = [round(uss_kib(p.pid) / 1024) for p in procs]
            row["parent_rss_mb"] = round(status_kib(parent.pid, "VmRSS") / 1024) if n > 1 else None
            row["load_after"] = round(os.getloadavg()[0], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    shutil.rmtree(logs, ignore_errors=True)
    if args.json:
        args.json.write_text(
            json.dumps({"cpus": os.cpu_count(), "connections": args.connections, "results": rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
