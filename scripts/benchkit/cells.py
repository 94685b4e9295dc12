"""One measured cell: a target loaded by wrk at one concurrency, with the server's and wrk's CPU."""

from __future__ import annotations

import http.client
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchkit.common import HOST
from benchkit.procs import cpu_seconds, machine_cpu, steal_share
from benchkit.servers import Server, wait_idle
from benchkit.targets import Target
from benchkit.wrk import run_wrk

__all__ = ["CellResult", "ServerResult", "check_answer", "measure_cell"]


@dataclass
class CellResult:
    """One (target, concurrency) measurement."""

    target: str
    server: str
    label: str
    concurrency: int
    seconds: float
    requests: int
    rps: float
    records_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    error_kinds: dict[str, int]
    server_cpu_share: float  # server CPU seconds / wall seconds (2.0 = both cores of this machine)
    wrk_cpu_share: float
    steal_share: float = math.nan  # the machine's CPU time stolen by the hypervisor during the cell (procs.steal_share)


@dataclass
class ServerResult:
    name: str
    command: list[str]
    cold_start_s: float
    cold_starts_s: list[float] = field(default_factory=list)
    memory_after_load: dict[str, float] = field(default_factory=dict)


def check_answer(server: Server, target: Target) -> None:
    """One request of the target's first body must answer 200 with JSON (else the load would measure errors)."""

    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request("POST", target.path, body=target.bodies[0], headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"{target.key}: POST {target.path} answered {resp.status}: {body[:500]!r}")
    if target.answer == "svg":
        if not body.startswith(b"<svg ") or resp.getheader("content-type") != "image/svg+xml":
            raise RuntimeError(f"{target.key}: POST {target.path} did not answer an SVG: {body[:200]!r}")
        return
    json.loads(body)


def measure_cell(
    server: Server, target: Target, script: Path, concurrency: int, seconds: int, warmup: int
) -> CellResult:
    assert server.proc is not None
    if warmup > 0:
        run_wrk(server.url + target.path, script, concurrency, warmup)
        wait_idle(server.proc.pid)
    machine0, cpu0, t0 = machine_cpu(), cpu_seconds(server.proc.pid), time.perf_counter()
    r = run_wrk(server.url + target.path, script, concurrency, seconds)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(server.proc.pid) - cpu0
    stolen = steal_share(machine0, machine_cpu())
    wait_idle(server.proc.pid)
    return CellResult(
        target=target.key,
        server=target.server,
        label=target.label,
        concurrency=concurrency,
        seconds=round(r["seconds"], 3),
        requests=r["requests"],
        rps=r["rps"],
        records_per_s=r["rps"] * target.records_per_request,
        p50_ms=r["p50_ms"],
        p95_ms=r["p95_ms"],
        p99_ms=r["p99_ms"],
        max_ms=r["max_ms"],
        errors=r["errors"],
        error_kinds=r["error_kinds"],
        server_cpu_share=cpu / wall,
        wrk_cpu_share=r["wrk_cpu_s"] / wall,
        steal_share=stolen,
    )
