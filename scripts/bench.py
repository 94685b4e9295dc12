"""Load-test the service against its ceiling and a naive peer, in one run, on this machine.

    python scripts/bench.py            # full run (~6 min): concurrency 1, 8, 32; 10 s per cell after 2 s warm-up
    python scripts/bench.py --quick    # under a minute: 1 s per cell, fewer repetitions
    python scripts/bench.py --json bench-results/latest.json --md bench-results/latest.md
    python scripts/bench.py --metrics-overhead --rounds 6 --concurrency 8   # metrics on vs off only
    python scripts/bench.py --v2 --rounds 6 --concurrency 8   # V2 infer vs /predict, V2 explainer vs /explain only

What one run does, one server at a time, each started fresh by this script and stopped after it:

1. generator capacity: ``wrk`` against a trivial asyncio HTTP responder started here, to show that the load
   generator can send far more requests per second than any target needs (and its CPU share per cell);
2. ceiling: ``scripts/ceiling_app.py``, the service's own app stack plus ``POST /ceiling``, which validates
   the patient body and answers a small JSON document without touching the model;
3. naive peer: ``scripts/naive_peer.py``, a FastAPI ``def`` endpoint calling Captum's ``GradientShap`` per
   request with 200 samples;
4. ours: ``gshap serve`` (``python -m service.cli serve``) with its default settings: ``/predict``,
   ``/explain`` (default settings, and ``method=sampled, n_samples=200``), ``/explain/batch`` of 100
   records and ``/explain/plot`` (the SVG waterfall); the bytes the page at ``/`` transfers on its first load,
   measured in headless Chromium (the browser's resource timing: HTML, script, style sheet, icon and the
   ``/model`` and ``/groups`` JSON it fetches; without Chromium, the same files fetched over HTTP); then a race
   check: the same requests sent one at a time and then all at once, while ``wrk`` loads ``/explain``, must
   give byte-identical attributions.

For every (target, concurrency): requests/s, p50/p95/p99 latency, errors (connect/read/write/timeout and any
non-2xx answer), the server's CPU share and wrk's own CPU share. For every server: cold start (process spawn
to the first ``200`` from ``/readyz``), peak RSS (VmHWM, summed over the process and its children) and RSS
after the load. In-process: explanations per second of the engine vs Captum's ``GradientShap`` at the same
sample count on the evaluation set. It prints a table, the ratios ours/ceiling and ours/peer and the goals,
and writes everything as JSON (and the table as Markdown with ``--md``).

Requests rotate over the evaluation set's records (raw units, as a client sends them). Servers get this
process's environment without any ``GSHAP_*`` variable (their defaults), plus ``--server-env KEY=VALUE``.
Load goes to 127.0.0.1 only. Needs ``wrk`` on the PATH (Debian/Ubuntu: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = [
    "GOALS",
    "CellResult",
    "evaluate_goals",
    "markdown_table",
    "parse_wrk_output",
    "percentile",
    "wrk_lua_script",
]

HOST = "127.0.0.1"
SCHEMA_VERSION = 1
BATCH_RECORDS = 100
SAMPLED = {"method": "sampled", "n_samples": 200, "seed": 0}
CEILING_DEF_PATH = "/ceiling/def"
WRK_MARK = "WRKJSON "
READY_TIMEOUT = 120.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    """Progress on stderr (stdout carries only the final table)."""
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# ---------------------------------------------------------------------------------------------------------------
# The load generator: wrk with a Lua script that rotates pre-built requests and prints JSON at the end
# ---------------------------------------------------------------------------------------------------------------

_LUA_TEMPLATE = """\
-- generated by scripts/bench.py: rotate over pre-formatted POST requests, report JSON when done
local bodies = {
%(bodies)s
}
local requests_ = {}
local n = 0
init = function(args)
  for i, body in ipairs(bodies) do
    requests_[i] = wrk.format("%(method)s", "%(path)s", {["Content-Type"] = "application/json"}, body)
  end
  n = #requests_
end
local i = 0
request = function()
  i = i %% n + 1
  return requests_[i]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"duration_us":%%d,"bytes":%%d,' ..
    '"errors":{"connect":%%d,"read":%%d,"write":%%d,"status":%%d,"timeout":%%d},' ..
    '"latency_us":{"min":%%d,"max":%%d,"mean":%%.1f,"stdev":%%.1f,' ..
    '"p50":%%d,"p90":%%d,"p95":%%d,"p99":%%d,"p999":%%d}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


def wrk_lua_script(path: str, bodies: Sequence[str], method: str = "POST") -> str:
    """A wrk script that sends ``bodies`` (JSON strings) to ``path`` in turn and prints a JSON summary line."""
    if not bodies:
        raise ValueError("at least one body")
    quoted = []
    for body in bodies:
        if "]==]" in body:
            raise ValueError("a body contains the Lua long-bracket terminator")
        quoted.append(f"  [==[{body}]==],")
    return _LUA_TEMPLATE % {"bodies": "\n".join(quoted), "method": method, "path": path, "mark": WRK_MARK}


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    """The JSON summary line of :func:`wrk_lua_script`'s ``done``, as a dict with derived rates in SI units."""
    for line in stdout.splitlines():
        if line.startswith(WRK_MARK):
            raw = json.loads(line[len(WRK_MARK) :])
            break
    else:
        raise ValueError(f"no {WRK_MARK.strip()} line in wrk's output:\n{stdout[-2000:]}")
    seconds = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    if raw["requests"] == 0:  # nothing completed within the run: wrk's histogram is empty, its zeros mean nothing
        lat = {k: math.nan for k in lat}
    return {
        "requests": raw["requests"],
        "seconds": seconds,
        "rps": raw["requests"] / seconds if seconds > 0 else 0.0,
        "errors": sum(raw["errors"].values()),
        "error_kinds": raw["errors"],
        "p50_ms": lat["p50"] / 1000,
        "p90_ms": lat["p90"] / 1000,
        "p95_ms": lat["p95"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "p999_ms": lat["p999"] / 1000,
        "max_ms": lat["max"] / 1000,
        "mean_ms": lat["mean"] / 1000,
    }


def run_wrk(url: str, script: Path, concurrency: int, seconds: int, timeout_s: float = 10.0) -> dict[str, Any]:
    """Run wrk (one thread) and return :func:`parse_wrk_output`'s dict plus wrk's own CPU seconds."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds}s",
        f"--timeout={max(1, math.ceil(timeout_s))}s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    # wait4 rather than wait(): it returns the child's CPU time, which shows whether wrk was the bottleneck
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{out[-2000:]}")
    result = parse_wrk_output(out)
    result["wrk_cpu_s"] = usage.ru_utime + usage.ru_stime
    return result


# ---------------------------------------------------------------------------------------------------------------
# Servers: spawn, cold start, CPU and memory of the process tree, stop
# ---------------------------------------------------------------------------------------------------------------


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


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (uvicorn's worker processes)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    return tree


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_mb(pid: int) -> dict[str, float]:
    """Peak RSS (VmHWM), current RSS and PSS of the process tree, summed, in MB (10^6 bytes)."""
    tree = process_tree(pid)
    return {
        "rss_peak_mb": sum(_status_kb(p, "VmHWM") for p in tree) * 1024 / 1e6,
        "rss_mb": sum(_status_kb(p, "VmRSS") for p in tree) * 1024 / 1e6,
        "pss_mb": sum(_pss_kb(p) for p in tree) * 1024 / 1e6,
        "processes": len(tree),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process tree so far."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, IndexError, ValueError):
            continue
    return total / CLK_TCK


@dataclass
class Server:
    """A server process started by this script."""

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


# ---------------------------------------------------------------------------------------------------------------
# A trivial HTTP responder: the generator's capacity is measured against it
# ---------------------------------------------------------------------------------------------------------------

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
# ---------------------------------------------------------------------------------------------------------------


def eval_records(limit: int | None = None) -> list[dict[str, Any]]:
    """The default bundle's evaluation records in raw units, ``None`` where not measured; counts as integers."""
    from service.model.store import load_bundle

    bundle = load_bundle()
    out = []
    for row in bundle.eval_raw[:limit]:
        rec: dict[str, Any] = {}
        for feat, v in zip(bundle.spec, row, strict=True):
            if math.isnan(v):
                rec[feat.name] = None
            else:
                rec[feat.name] = int(v) if feat.integer else float(v)
        out.append(rec)
    return out


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


@dataclass(frozen=True)
class Target:
    """One endpoint to load: which server, path, request bodies, and records per request."""

    key: str
    server: str
    label: str
    path: str
    bodies: tuple[str, ...]
    records_per_request: int = 1
    answer: str = "json"  # what a 200 carries: "json" or "svg"


def targets(records: Sequence[dict[str, Any]]) -> list[Target]:
    singles = tuple(dumps(r) for r in records)
    sampled = tuple(dumps({**r, **SAMPLED}) for r in records)
    n_batches = max(1, min(4, len(records) // BATCH_RECORDS))
    batches = tuple(
        dumps({"records": [records[(b * BATCH_RECORDS + i) % len(records)] for i in range(BATCH_RECORDS)]})
        for b in range(n_batches)
    )
    return [
        Target("ceiling", "ceiling", "ceiling POST /ceiling (validate, no model)", "/ceiling", singles),
        Target("ceiling_def", "ceiling", "ceiling as a def route (threadpool; reference)", CEILING_DEF_PATH, singles),
        Target("peer", "peer", "naive peer POST /explain (Captum, 200 samples)", "/explain", singles),
        Target("predict", "ours", "ours POST /predict", "/predict", singles),
        Target("explain", "ours", "ours POST /explain (defaults: exact)", "/explain", singles),
        Target("explain_sampled", "ours", "ours POST /explain (sampled, n_samples=200)", "/explain", sampled),
        Target(
            "explain_batch",
            "ours",
            f"ours POST /explain/batch ({BATCH_RECORDS} records)",
            "/explain/batch",
            batches,
            BATCH_RECORDS,
        ),
        Target("explain_plot", "ours", "ours POST /explain/plot (SVG waterfall)", "/explain/plot", singles, 1, "svg"),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------


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


@dataclass
class ServerResult:
    name: str
    command: list[str]
    cold_start_s: float
    cold_starts_s: list[float] = field(default_factory=list)
    memory_after_load: dict[str, float] = field(default_factory=dict)


def check_answer(server: Server, target: Target) -> None:
    """One request of the target's first body must answer 200 with JSON (else the load would measure errors)."""
    import http.client

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


def measure_cell(
    server: Server, target: Target, script: Path, concurrency: int, seconds: int, warmup: int
) -> CellResult:
    assert server.proc is not None
    if warmup > 0:
        run_wrk(server.url + target.path, script, concurrency, warmup)
        wait_idle(server.proc.pid)
    cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
    r = run_wrk(server.url + target.path, script, concurrency, seconds)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(server.proc.pid) - cpu0
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
    )


def generator_capacity(workdir: Path, body: str, seconds: int, concurrency: int) -> dict[str, Any]:
    """wrk's rate against the trivial responder (a Python process on the same 2 cores: a lower bound)."""
    port = free_port()
    server = Server(
        "trivial",
        [sys.executable, str(Path(__file__).resolve()), "--serve-trivial", str(port)],
        port,
        workdir / "logs" / "trivial.log",
        server_env({}),
    )
    script = workdir / "trivial.lua"
    script.write_text(wrk_lua_script("/", [body]))
    server.command = [*server.command]
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


def race_check(server: Server, records: Sequence[dict[str, Any]], script: Path, n_records: int) -> dict[str, Any]:
    """Same requests one at a time, then all at once under wrk load: the attributions must be byte-identical."""
    import httpx

    recs = list(records[:n_records])
    variants: list[dict[str, Any]] = [{}, dict(SAMPLED), {**SAMPLED, "seed": 7, "n_samples": 64}]

    def key(answer: dict[str, Any]) -> str:
        return dumps([a["attribution"] for a in answer["attributions"]] + [answer["output_value"]])

    with httpx.Client(base_url=server.url, timeout=60) as client:
        reference = {}
        for i, rec in enumerate(recs):
            for v, extra in enumerate(variants):
                resp = client.post("/explain", json={**rec, **extra})
                resp.raise_for_status()
                reference[(i, v)] = key(resp.json())
        batch = client.post("/explain/batch", json={"records": recs, **SAMPLED})
        batch.raise_for_status()
        batch_keys = {i: key(item) for i, item in enumerate(batch.json()["results"])}

    async def burst() -> list[tuple[tuple[int, int], str | None, float]]:
        limits = httpx.Limits(max_connections=len(reference), max_keepalive_connections=len(reference))
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:

            async def one(i: int, v: int) -> tuple[tuple[int, int], str | None, float]:
                t0 = time.perf_counter()
                resp = await client.post("/explain", json={**recs[i], **variants[v]})
                ms = (time.perf_counter() - t0) * 1000
                return (i, v), (key(resp.json()) if resp.status_code == 200 else None), ms

            jobs = [one(i, v) for (i, v) in reference] * 2
            return await asyncio.gather(*jobs)

    holder: dict[str, Any] = {}
    loader = threading.Thread(
        target=lambda: holder.update(run_wrk(server.url + "/explain", script, 8, 3)), name="race-load"
    )
    loader.start()
    time.sleep(0.5)
    answers = asyncio.run(burst())
    loader.join()
    mismatches = sum(1 for k, got, _ in answers if got != reference[k])
    sampled_idx = variants.index(dict(SAMPLED))
    batch_mismatches = sum(1 for i in range(len(recs)) if batch_keys[i] != reference[(i, sampled_idx)])
    latencies = [ms for *_, ms in answers]
    return {
        "concurrent_requests": len(answers),
        "distinct_requests": len(reference),
        "mismatches": mismatches,
        "batch_vs_single_mismatches": batch_mismatches,
        "burst_p50_ms": percentile(latencies, 50),
        "burst_p99_ms": percentile(latencies, 99),
        "background_load_rps": holder.get("rps", math.nan),
        "background_load_errors": holder.get("errors", -1),
    }


def engine_inprocess(repeats: int, n_samples: int = 200) -> dict[str, Any]:
    """Explanations per second on the evaluation set: the engine vs Captum's GradientShap, same sample count,
    one torch thread (as the service runs)."""
    import torch
    from captum.attr import GradientShap

    from service.engine.gradient_shap import GradientShapEngine
    from service.model.store import load_bundle
    from service.training.captum_reference import captum_baselines

    torch.set_num_threads(1)  # as the service runs its engine (GSHAP_TORCH_THREADS default)
    bundle = load_bundle()
    x = bundle.eval_x
    model = bundle.model.eval()
    engine = GradientShapEngine(model, bundle.baselines, bundle.baseline_weights)
    base = captum_baselines(engine)
    gs = GradientShap(model)

    def captum_batch() -> None:
        torch.manual_seed(0)
        gs.attribute(x, baselines=base, n_samples=n_samples)

    def captum_per_record() -> None:
        torch.manual_seed(0)
        for row in x:
            gs.attribute(row[None, :], baselines=base, n_samples=n_samples)

    cases: dict[str, Callable[[], object]] = {
        "engine_exact": lambda: engine.explain(x),
        f"engine_sampled_{n_samples}": lambda: engine.explain(x, method="sampled", n_samples=n_samples),
        f"captum_{n_samples}_batch": captum_batch,
        f"captum_{n_samples}_per_record": captum_per_record,
    }
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):  # interleaved, so that machine noise hits every case alike
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"records": len(x), "n_samples": n_samples, "torch_threads": torch.get_num_threads()}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"seconds": med, "explanations_per_s": len(x) / med}
    eng = out[f"engine_sampled_{n_samples}"]["explanations_per_s"]
    out["speedup_sampled_vs_captum_batch"] = eng / out[f"captum_{n_samples}_batch"]["explanations_per_s"]
    out["speedup_sampled_vs_captum_per_record"] = eng / out[f"captum_{n_samples}_per_record"]["explanations_per_s"]
    out["speedup_exact_vs_captum_per_record"] = (
        out["engine_exact"]["explanations_per_s"] / out[f"captum_{n_samples}_per_record"]["explanations_per_s"]
    )
    return out


# ---------------------------------------------------------------------------------------------------------------
# Goals and reporting
# ---------------------------------------------------------------------------------------------------------------

PAGE_BUDGET_BYTES = 100_000
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def page_first_load(url: str) -> dict[str, Any]:
    """Bytes the page at ``url``/ transfers on a first load (cold cache), until its form is built.

    In headless Chromium: the sum of ``transferSize`` (headers and body) of the navigation and every resource
    (script, style sheet, icon, the /model and /groups JSON). Without Chromium: the same files fetched over HTTP
    (bodies plus header bytes), the JSON named by the page's own script."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        with contextlib.suppress(ImportError):
            return _page_in_browser(url)
    return _page_over_http(url)


def _page_in_browser(url: str) -> dict[str, Any]:
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    profile = tempfile.mkdtemp(prefix="gshap-bench-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.get(url + "/")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements("css selector", "#fields input"))
        entries = driver.execute_script(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
            ".map(e => [e.name, e.transferSize, e.encodedBodySize])"
        )
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    files = {re.sub(r"^https?://[^/]+", "", name): int(size) for name, size, _ in entries}
    return {"method": "chromium resource timing (transferSize)", "bytes": sum(files.values()), "files": files}


def _page_over_http(url: str) -> dict[str, Any]:
    import http.client

    def get(path: str) -> int:
        conn = http.client.HTTPConnection(HOST, int(url.rsplit(":", 1)[1]), timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            headers = sum(len(k) + len(v) + 4 for k, v in resp.getheaders()) + 17
            if resp.status != 200:
                raise RuntimeError(f"GET {path} answered {resp.status}")
            sizes[path] = len(body) + headers
            return len(body)
        finally:
            conn.close()

    sizes: dict[str, int] = {}
    conn = http.client.HTTPConnection(HOST, int(url.rsplit(":", 1)[1]), timeout=30)
    conn.request("GET", "/")
    html = conn.getresponse().read().decode()
    conn.close()
    get("/")
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        get(asset)
    script = (ROOT / "service" / "api" / "static" / "page.js").read_text()
    for path in sorted(set(re.findall(r'api\("GET", "(/[a-z]+)"\)', script))):
        get(path)
    return {"method": "HTTP (bodies + headers)", "bytes": sum(sizes.values()), "files": sizes}


GOALS: list[tuple[str, str]] = [
    ("explain_c8_vs_ceiling", "/explain c=8 throughput ≥ 50 % of the ceiling"),
    ("explain_c8_vs_peer", "/explain c=8 throughput ≥ 10× the naive peer"),
    ("explain_c8_p99", "/explain c=8 p99 ≤ 25 ms"),
    ("predict_c8_vs_ceiling", "/predict c=8 throughput ≥ 70 % of the ceiling"),
    ("batch_records_per_s", "/explain/batch (100 records) ≥ 2,000 records/s"),
    ("cold_start", "cold start ≤ 4 s"),
    ("rss_after_load", "server RSS ≤ 450 MB after the load (summed over its processes)"),
    ("no_errors", "no error under any load"),
    ("same_results", "same results under load (racing requests, same seed)"),
    ("explain_plot_c8", "/explain/plot (SVG) c=8 ≥ 200 req/s"),
    ("page_first_load", "the page's first load transfers ≤ 100 kB"),
]


def _cell(cells: Sequence[CellResult], target: str, concurrency: int, server: str | None = None) -> CellResult | None:
    return next(
        (
            c
            for c in cells
            if c.target == target and c.concurrency == concurrency and (server is None or c.server == server)
        ),
        None,
    )


def evaluate_goals(
    cells: Sequence[CellResult],
    servers: Mapping[str, Mapping[str, Any]],
    race: Mapping[str, Any] | None,
    goal_concurrency: int = 8,
    ours_name: str = "ours",
    page: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Ratios and each goal's measured value and verdict (``met`` None when not measured in this run).

    ``ours_name`` picks the configuration of the service evaluated (``ours`` or a ``--variant``)."""
    c = goal_concurrency

    def rps(target: str) -> float:
        cell = _cell(cells, target, c, None if target in ("ceiling", "peer") else ours_name)
        return cell.rps if cell else math.nan

    ceiling, peer = rps("ceiling"), rps("peer")
    ratios = {
        f"explain_vs_ceiling_c{c}": rps("explain") / ceiling,
        f"explain_vs_peer_c{c}": rps("explain") / peer,
        f"explain_sampled_vs_ceiling_c{c}": rps("explain_sampled") / ceiling,
        f"explain_sampled_vs_peer_c{c}": rps("explain_sampled") / peer,
        f"predict_vs_ceiling_c{c}": rps("predict") / ceiling,
        f"explain_plot_vs_explain_c{c}": rps("explain_plot") / rps("explain"),
    }
    explain = _cell(cells, "explain", c, ours_name)
    batch = _cell(cells, "explain_batch", c, ours_name)
    ours = servers.get(ours_name, {})
    measured: dict[str, tuple[float, float, bool]] = {}  # name: (value, bound, higher is better)
    measured["explain_c8_vs_ceiling"] = (ratios[f"explain_vs_ceiling_c{c}"], 0.5, True)
    measured["explain_c8_vs_peer"] = (ratios[f"explain_vs_peer_c{c}"], 10.0, True)
    measured["explain_c8_p99"] = (explain.p99_ms if explain else math.nan, 25.0, False)
    measured["predict_c8_vs_ceiling"] = (ratios[f"predict_vs_ceiling_c{c}"], 0.7, True)
    measured["batch_records_per_s"] = (batch.records_per_s if batch else math.nan, 2000.0, True)
    measured["cold_start"] = (ours.get("cold_start_s", math.nan), 4.0, False)
    measured["rss_after_load"] = (ours.get("memory_after_load", {}).get("rss_mb", math.nan), 450.0, False)
    mine = [cell for cell in cells if cell.server in (ours_name, "ceiling", "peer")]
    measured["no_errors"] = (float(sum(cell.errors for cell in mine)), 0.0, False)
    if race is not None:
        measured["same_results"] = (float(race["mismatches"] + race["batch_vs_single_mismatches"]), 0.0, False)
    measured["explain_plot_c8"] = (rps("explain_plot"), 200.0, True)
    if page is not None:
        measured["page_first_load"] = (float(page["bytes"]), float(PAGE_BUDGET_BYTES), False)
    goals: list[dict[str, Any]] = []
    for name, text in GOALS:
        if name not in measured or math.isnan(measured[name][0]):
            goals.append({"goal": name, "text": text, "value": None, "bound": None, "met": None})
            continue
        value, bound, higher = measured[name]
        met = value >= bound if higher else value <= bound
        goals.append({"goal": name, "text": text, "value": value, "bound": bound, "met": met})
    return {"goal_concurrency": c, "ours": ours_name, "ratios": ratios, "goals": goals}


def _fmt(x: float, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def markdown_table(result: Mapping[str, Any]) -> str:
    """The run as Markdown: the load table, servers, ratios, goals, in-process engine, generator capacity."""
    meta = result["meta"]
    lines = [
        f"Run {meta['date']} on {meta['machine']['summary']}; commit {meta['git']}; mode {meta['mode']} "
        f"({meta['seconds_per_cell']} s per cell after {meta['warmup_seconds']} s warm-up); load generator wrk "
        f"(1 thread); load average at start {meta['loadavg_start']}.",
        "",
        "| target | conc. | req/s | records/s | p50 ms | p95 ms | p99 ms | errors | server CPU | wrk CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in result["cells"]:
        lines.append(
            f"| {cell['label']} | {cell['concurrency']} | {_fmt(cell['rps'])} | {_fmt(cell['records_per_s'])} | "
            f"{_fmt(cell['p50_ms'], 2)} | {_fmt(cell['p95_ms'], 2)} | {_fmt(cell['p99_ms'], 2)} | {cell['errors']} | "
            f"{cell['server_cpu_share'] * 100:.0f} % | {cell['wrk_cpu_share'] * 100:.0f} % |"
        )
    lines += [
        "",
        "| server | cold start s | peak RSS MB | RSS after load MB | PSS MB | processes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in result["servers"].items():
        mem = s.get("memory_after_load", {})
        starts = s.get("cold_starts_s") or [s["cold_start_s"]]
        shown = _fmt(s["cold_start_s"], 2) + (f" (median of {len(starts)})" if len(starts) > 1 else "")
        lines.append(
            f"| {name} | {shown} | {_fmt(mem.get('rss_peak_mb', math.nan), 0)} | "
            f"{_fmt(mem.get('rss_mb', math.nan), 0)} | {_fmt(mem.get('pss_mb', math.nan), 0)} | "
            f"{mem.get('processes', '–')} |"
        )
    evs = [result["evaluation"], *result.get("variant_evaluations", {}).values()]
    names = " | ".join(ev["ours"] for ev in evs)
    lines += ["", f"| ratio | {names} |", "|---|" + "---:|" * len(evs)]
    for k in evs[0]["ratios"]:
        lines.append(f"| {k} | " + " | ".join(_fmt(ev["ratios"][k], 2) for ev in evs) + " |")
    lines += ["", f"| goal | {names} |", "|---|" + "---|" * len(evs)]
    for i, g in enumerate(evs[0]["goals"]):
        row = []
        for ev in evs:
            gi = ev["goals"][i]
            met = "–" if gi["met"] is None else ("met" if gi["met"] else "**not met**")
            row.append(f"{_fmt(gi['value'], 2) if gi['value'] is not None else '–'} ({met})")
        lines.append(f"| {g['text']} | " + " | ".join(row) + " |")
    page = result.get("page")
    if page:
        parts = ", ".join(f"{path} {size:,}" for path, size in page["files"].items())
        lines += ["", f"Page first load: {page['bytes']:,} bytes by {page['method']}: {parts}."]
    for name, race in (result.get("races") or {}).items():
        lines += [
            "",
            f"Race check ({name}): {race['concurrent_requests']} concurrent /explain requests "
            f"({race['distinct_requests']} distinct, 3 settings incl. seeded sampled) under wrk load "
            f"({_fmt(race['background_load_rps'])} req/s): {race['mismatches']} differ from the unloaded answers; "
            f"/explain/batch vs single: {race['batch_vs_single_mismatches']} differ.",
        ]
    eng = result.get("engine")
    if eng:
        n = eng["n_samples"]
        lines += [
            "",
            f"In-process, {eng['records']} evaluation records, torch threads {eng['torch_threads']}:",
            "",
            "| estimator | explanations/s |",
            "|---|---:|",
        ]
        for name in ("engine_exact", f"engine_sampled_{n}", f"captum_{n}_batch", f"captum_{n}_per_record"):
            lines.append(f"| {name} | {_fmt(eng[name]['explanations_per_s'])} |")
        lines.append(
            f"\nengine sampled/{n} vs Captum/{n}: ×{_fmt(eng['speedup_sampled_vs_captum_batch'], 1)} (whole set in "
            f"one call), ×{_fmt(eng['speedup_sampled_vs_captum_per_record'], 1)} (one record per call)."
        )
    gen = result.get("generator")
    if gen:
        ceiling = _cell([CellResult(**c) for c in result["cells"]], "ceiling", gen["concurrency"])
        vs = f", {gen['rps'] / ceiling.rps:.1f}× the ceiling's rate" if ceiling and ceiling.rps else ""
        lines.append(
            f"\nLoad generator capacity: wrk reached {_fmt(gen['rps'], 0)} req/s against a trivial responder at "
            f"c={gen['concurrency']} (wrk CPU {gen['wrk_cpu_share'] * 100:.0f} % of a core){vs}."
        )
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = math.nan
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 2**20
    cores = os.cpu_count() or 0
    import torch

    return {
        "cpu": model,
        "cores": cores,
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "summary": f"{cores} cores ({model}), {mem_gib:.0f} GiB, Linux {platform.release()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}",
    }


def run_meta() -> dict[str, Any]:
    """When, where and on what a run starts (the ``meta`` of every results file)."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "git": git_describe(),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def git_describe() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "service"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (service/ modified)" if dirty else "")


def print_table(result: Mapping[str, Any]) -> None:
    print(markdown_table(result))


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 s per cell, fewer repetitions: under a minute")
    p.add_argument("--seconds", type=int, default=None, help="measured seconds per cell (default 10, quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up seconds per cell (default 2, quick 0)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated connection counts")
    p.add_argument("--only", default=None, help="comma-separated target keys (e.g. explain,predict)")
    p.add_argument("--workers", type=int, default=None, help="uvicorn workers of ours and the ceiling")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE", help="extra server env")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also measure ours with these settings, as ours[NAME] (e.g. procs2:GSHAP_ENGINE_PROCESSES=2)",
    )
    p.add_argument("--no-engine", action="store_true", help="skip the in-process engine comparison")
    p.add_argument("--no-race", action="store_true", help="skip the race check")
    p.add_argument("--no-cds", action="store_true", help="skip the CDS Hooks latency run (scripts/bench_cds.py)")
    p.add_argument("--json", default="bench-results/latest.json", help="where to write the results")
    p.add_argument("--md", default=None, help="also write the Markdown table here")
    p.add_argument(
        "--metrics-overhead",
        action="store_true",
        help="only measure /predict and /explain with metrics on and off, alternating (see --rounds)",
    )
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds of --metrics-overhead and --v2")
    p.add_argument(
        "--v2",
        action="store_true",
        help="only measure the V2 protocol against the JSON API on one server, alternating (see --rounds)",
    )
    p.add_argument("--serve-trivial", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_trivial is not None:
        serve_trivial(args.serve_trivial)
        return 0
    if shutil.which("wrk") is None:
        log("wrk is not on the PATH: install it (Debian/Ubuntu: apt-get install wrk)")
        return 2
    seconds = args.seconds or (1 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 2)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    goal_c = 8 if 8 in levels else levels[0]
    extra_env = dict(kv.split("=", 1) for kv in args.server_env)
    t_start = time.perf_counter()

    records = eval_records()
    if args.metrics_overhead:
        return _metrics_overhead_main(args, records, seconds, warmup, goal_c, extra_env)
    if args.v2:
        return _v2_main(args, records, seconds, warmup, goal_c, extra_env)
    all_targets = targets(records)
    if args.only:
        keep = set(args.only.split(","))
        all_targets = [t for t in all_targets if t.key in keep]

    out_path = ROOT / args.json
    workdir = Path(tempfile.mkdtemp(prefix="gshap-bench-"))
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "meta": {
            **run_meta(),
            "mode": "quick" if args.quick else "full",
            "seconds_per_cell": seconds,
            "warmup_seconds": warmup,
            "concurrency": levels,
            "workers": args.workers,
            "server_env": extra_env,
            "generator": "wrk -t1 (Lua: rotating pre-formatted requests)",
        },
    }
    log(f"bench: {len(all_targets)} targets × concurrency {levels}, {seconds} s/cell (+{warmup} s warm-up)")

    log("· generator capacity: wrk vs a trivial responder")
    result["generator"] = generator_capacity(workdir, all_targets[0].bodies[0], max(1, min(seconds, 3)), goal_c)
    log(f"  {result['generator']['rps']:,.0f} req/s at c={goal_c}")

    workers = ["--workers", str(args.workers)] if args.workers else []
    commands = {
        "ceiling": [sys.executable, str(ROOT / "scripts" / "ceiling_app.py"), *workers],
        "peer": [sys.executable, str(ROOT / "scripts" / "naive_peer.py")],
        "ours": [sys.executable, "-m", "service.cli", "serve", "--host", HOST, *workers],
    }
    variants: dict[str, dict[str, str]] = {}
    for spec in args.variant:
        vname, _, assignments = spec.partition(":")
        variants[f"ours[{vname}]"] = dict(kv.split("=", 1) for kv in assignments.split(",") if kv)
        commands[f"ours[{vname}]"] = commands["ours"]
    cells: list[CellResult] = []
    servers: dict[str, ServerResult] = {}
    races: dict[str, Any] = {}
    ours_targets = [t for t in all_targets if t.server == "ours"]
    total = len(all_targets) * len(levels) + len(ours_targets) * len(levels) * len(variants)
    done = 0
    for name in ("ceiling", "peer", "ours", *variants):
        if name in variants:
            mine = [replace(t, server=name, label=t.label.replace("ours", name, 1)) for t in ours_targets]
        else:
            mine = [t for t in all_targets if t.server == name]
        if not mine:
            continue
        port = free_port()
        env = server_env({**extra_env, **variants.get(name, {})})
        log_name = re.sub(r"\W+", "_", name)
        server = Server(name, [*commands[name], "--port", str(port)], port, workdir / "logs" / f"{log_name}.log", env)
        cold_starts: list[float] = []
        if name.startswith("ours") and not args.quick:
            for _ in range(2):  # extra cold starts: the median of three is less at the mercy of a noisy moment
                with running(server):
                    cold_starts.append(server.cold_start_s)
        with running(server):
            cold_starts.append(server.cold_start_s)
            log(f"· {name}: ready in {server.cold_start_s:.2f} s (pid {server.proc.pid if server.proc else '?'})")
            for target in mine:
                check_answer(server, target)
                script = workdir / f"{log_name}_{target.key}.lua"
                script.write_text(wrk_lua_script(target.path, target.bodies))
                for c in levels:
                    done += 1
                    cell = measure_cell(server, target, script, c, seconds, warmup)
                    cells.append(cell)
                    log(
                        f"  [{done}/{total}] {target.key:16s} c={c:<3d} {cell.rps:9,.1f} req/s "
                        f"p50 {cell.p50_ms:7.2f} p99 {cell.p99_ms:7.2f} ms  errors {cell.errors}  "
                        f"server CPU {cell.server_cpu_share * 100:3.0f} %  wrk CPU {cell.wrk_cpu_share * 100:3.0f} %"
                    )
            if name == "ours":
                page = page_first_load(server.url)
                result["page"] = page
                log(f"· page first load: {page['bytes']:,} bytes ({page['method']})")
            if name.startswith("ours") and not args.no_race and any(t.key == "explain" for t in mine):
                script = workdir / f"{log_name}_explain.lua"
                race = race_check(server, records, script, n_records=16 if args.quick else 32)
                races[name] = race
                log(
                    f"· race check: {race['mismatches']} of {race['concurrent_requests']} racing answers differ, "
                    f"batch vs single {race['batch_vs_single_mismatches']}"
                )
            assert server.proc is not None
            memory = memory_mb(server.proc.pid)
        servers[name] = ServerResult(
            name=name,
            command=[Path(c).name if c == sys.executable else c for c in server.command],
            cold_start_s=statistics.median(cold_starts),
            cold_starts_s=cold_starts,
            memory_after_load=memory,
        )
        log(f"  {name}: peak RSS {memory['rss_peak_mb']:.0f} MB, RSS {memory['rss_mb']:.0f} MB")

    if not args.no_engine:
        log("· in-process: engine vs Captum GradientShap on the evaluation set")
        result["engine"] = engine_inprocess(repeats=1 if args.quick else 3)

    result["cells"] = [asdict(c) for c in cells]
    result["servers"] = {k: asdict(v) for k, v in servers.items()}
    result["races"] = races
    result["evaluation"] = evaluate_goals(cells, result["servers"], races.get("ours"), goal_c, page=result.get("page"))
    result["variant_evaluations"] = {
        name: evaluate_goals(cells, result["servers"], races.get(name), goal_c, ours_name=name) for name in variants
    }
    result["meta"]["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
    table = markdown_table(result)
    if args.md:
        md_path = ROOT / args.md
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(table)
    print(table)
    log(f"bench: {result['meta']['wall_seconds']} s; results in {out_path}")
    shutil.rmtree(workdir, ignore_errors=True)
    if not args.no_cds:
        log("· CDS Hooks: p50/p99 with prefetch and with the FHIR-server fallback (scripts/bench_cds.py)")
        sys.path.insert(0, str(ROOT / "scripts"))
        import bench_cds

        cds_json = str(Path(args.json).with_name(Path(args.json).stem + "_cds.json"))
        bench_cds.main(["--calls", "100" if args.quick else "400", "--json", cds_json])
    return 0


def _metrics_overhead_main(
    args: argparse.Namespace,
    records: Sequence[dict[str, Any]],
    seconds: int,
    warmup: int,
    concurrency: int,
    extra_env: Mapping[str, str],
) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="gshap-bench-"))
    t0 = time.perf_counter()
    meta = run_meta()  # before the run: the load average is the machine's, not the run's
    log(f"bench: metrics overhead, {args.rounds} rounds × c={concurrency}, {seconds} s/cell (+{warmup} s warm-up)")
    found = metrics_overhead(
        records, workdir, rounds=args.rounds, seconds=seconds, warmup=warmup, concurrency=concurrency,
        extra_env=extra_env,
    )  # fmt: skip
    log(f"· in-process: CPU per request through the ASGI app, {args.rounds} rounds")
    inproc = asgi_overhead(records, rounds=args.rounds, requests=400 if args.quick else 2000)
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "meta": {**meta, "wall_seconds": round(time.perf_counter() - t0, 1)},
        "metrics_overhead": found,
        "metrics_overhead_inprocess": inproc,
    }
    out_path = ROOT / args.json
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
    lines = [
        f"| endpoint (c={concurrency}, {seconds} s × {args.rounds} rounds each) | median cost | spread (min … max) "
        "| pooled cost | req/s on (median) | req/s off (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, s in found["summary"].items():
        on = statistics.median(run["on"]["rps"] for run in found["runs"][key])
        off = statistics.median(run["off"]["rps"] for run in found["runs"][key])
        lines.append(
            f"| POST /{key} | {s['median'] * 100:+.1f} % | {s['min'] * 100:+.1f} % … {s['max'] * 100:+.1f} % "
            f"| {s['pooled'] * 100:+.1f} % | {on:,.0f} | {off:,.0f} |"
        )
    lines += [
        "",
        f"| endpoint, side by side (both servers loaded at once, c={max(1, concurrency // 2)} each, {seconds} s × "
        f"{args.rounds} rounds) | server CPU µs/request on | off | median cost | spread (min … max) | pooled cost |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, sbs in found["side_by_side"].items():
        lines.append(
            f"| POST /{key} | {sbs['cpu_us_per_request_on']:.1f} | {sbs['cpu_us_per_request_off']:.1f} "
            f"| {sbs['cpu_cost_median'] * 100:+.1f} % | {sbs['cpu_cost_min'] * 100:+.1f} % … "
            f"{sbs['cpu_cost_max'] * 100:+.1f} % | {sbs['cpu_cost_pooled'] * 100:+.1f} % |"
        )
    lines += [
        "",
        f"| endpoint, in-process ASGI ({inproc['requests_per_round']} interleaved request pairs × {args.rounds} "
        "rounds) | CPU µs/request on | off | median cost | spread (min … max) | pooled cost |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in ("predict", "explain"):
        e = inproc[key]
        lines.append(
            f"| POST /{key} | {e['cpu_us_on_median']:.1f} | {e['cpu_us_off_median']:.1f} "
            f"| {e['cost_median'] * 100:+.1f} % | {e['cost_min'] * 100:+.1f} % … {e['cost_max'] * 100:+.1f} % "
            f"| {e['cost_pooled'] * 100:+.1f} % |"
        )
    table = "\n".join(lines) + "\n"
    if args.md:
        (ROOT / args.md).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / args.md).write_text(table)
    print(table)
    log(f"bench: {result['meta']['wall_seconds']} s; results in {out_path}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def asgi_overhead(records: Sequence[dict[str, Any]], *, rounds: int, requests: int) -> dict[str, Any]:
    """CPU microseconds per request through the whole app (middlewares, routing, validation, runtime, engine),
    in this process, with metrics on and off: two apps started side by side, called directly over ASGI (no
    network, no load generator). Each round sends ``requests`` pairs of requests, the same body to both apps, one
    pair at a time in a random order (seeded), and adds up each app's CPU time: interleaving request by request
    puts the machine's drift, even within a round, on both apps alike (a round of 2,000 requests to one app, then
    to the other, spread ±10 % on the shared machine; interleaved, ±1 %). Half the rounds run on two apps created
    metrics-on first, half on two fresh apps created metrics-off first: which app is created first changes the
    figure (see ``main``). ``time.process_time`` counts every thread
    of the process (the engine thread too), and another process's load slows the wall clock, not this process's
    CPU time. The apps' own HTTP server work (parsing, sockets) is not in it, so the cost relative to the whole
    request served over HTTP is smaller than this ratio."""
    import anyio

    from service.api.app import create_app
    from service.config import Settings

    bodies = {
        "predict": [dumps(r).encode() for r in records],
        "explain": [dumps(r).encode() for r in records],
    }

    async def call(app: Any, path: str, body: bytes) -> int:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status = 0

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000), "server": (HOST, 8000),
        }  # fmt: skip
        await app(scope, receive, send)
        return status

    async def measure(
        order: tuple[str, str], key: str, path: str, rounds: int, rng: random.Random
    ) -> list[dict[str, float]]:
        """``rounds`` rounds of ``requests`` interleaved pairs on two fresh apps created in ``order``."""
        apps = {name: create_app(Settings(log_level="warning", metrics_enabled=name == "on")) for name in order}
        per_round: list[dict[str, float]] = []
        clock = time.process_time
        async with contextlib.AsyncExitStack() as stack:
            for app in apps.values():
                await stack.enter_async_context(app.router.lifespan_context(app))
            for app in apps.values():  # warm-up
                for body in bodies[key][:50]:
                    assert await call(app, path, body) == 200
            for _ in range(rounds):
                spent = {"on": 0.0, "off": 0.0}
                for i in range(requests):
                    body = bodies[key][i % len(bodies[key])]
                    for name in ("on", "off") if rng.random() < 0.5 else ("off", "on"):
                        c0 = clock()
                        await call(apps[name], path, body)
                        spent[name] += clock() - c0
                per_round.append({name: spent[name] / requests * 1e6 for name in spent})
        return per_round

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        rng = random.Random(0)
        for key, path in (("predict", "/predict"), ("explain", "/explain")):
            per_round: list[dict[str, float]] = []
            by_order: dict[str, float] = {}
            # the app created first runs measurably differently (about 1 % in an A/A check, more for /explain,
            # whose engine thread is placed by the scheduler): half the rounds with each creation order
            for order in (("on", "off"), ("off", "on")):
                half = await measure(order, key, path, max(1, rounds // 2), rng)
                for r, got in enumerate(half):
                    log(
                        f"  in-process {key:8s} {order[0]}-first round {r + 1}/{len(half)}: on {got['on']:6.1f} µs, "
                        f"off {got['off']:6.1f} µs CPU a request, cost {got['on'] / got['off'] - 1:+.1%}"
                    )
                by_order[f"{order[0]}_first"] = statistics.median(g["on"] / g["off"] - 1 for g in half)
                per_round += half
            costs = [g["on"] / g["off"] - 1 for g in per_round]
            out[key] = {
                "cpu_us_on_median": statistics.median(g["on"] for g in per_round),
                "cpu_us_off_median": statistics.median(g["off"] for g in per_round),
                "cost_median": statistics.median(costs),
                "cost_min": min(costs),
                "cost_max": max(costs),
                "cost_pooled": sum(g["on"] for g in per_round) / sum(g["off"] for g in per_round) - 1,
                "cost_median_by_creation_order": by_order,
                "rounds": per_round,
            }
        return out

    result: dict[str, Any] = anyio.run(main)
    result["requests_per_round"] = requests
    return result


def overhead_summary(pairs: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Cost of the metrics from ``(rps with metrics, rps without)`` pairs measured back to back: per pair
    ``1 - on / off``; the median, the extremes and the pooled ratio (total on / total off)."""
    if not pairs:
        raise ValueError("no pairs")
    costs = [1.0 - on / off for on, off in pairs]
    return {
        "median": statistics.median(costs),
        "min": min(costs),
        "max": max(costs),
        "pooled": 1.0 - sum(on for on, _ in pairs) / sum(off for _, off in pairs),
        "pairs": len(pairs),
    }


def metrics_overhead(
    records: Sequence[dict[str, Any]],
    workdir: Path,
    *,
    rounds: int,
    seconds: int,
    warmup: int,
    concurrency: int,
    extra_env: Mapping[str, str],
) -> dict[str, Any]:
    """``/predict`` and ``/explain`` throughput with GSHAP_METRICS_ENABLED true and false, two servers started side
    by side (the idle one uses no CPU), measured alternately: in each round both are measured back to back, the
    order swapped every round, so that the machine's drift between rounds falls on both alike. Then the same
    servers loaded at the same time (:func:`_side_by_side`), which also cancels the drift within a round."""
    chosen = {t.key: t for t in targets(records) if t.key in ("predict", "explain")}
    servers: dict[str, Server] = {}
    for name, enabled in (("on", "true"), ("off", "false")):
        port = free_port()
        env = server_env({**extra_env, "GSHAP_METRICS_ENABLED": enabled})
        command = [sys.executable, "-m", "service.cli", "serve", "--host", HOST, "--port", str(port)]
        servers[name] = Server(f"metrics-{name}", command, port, workdir / "logs" / f"metrics_{name}.log", env)
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in chosen}
    with contextlib.ExitStack() as stack:
        for server in servers.values():
            stack.enter_context(running(server))
            log(f"· {server.name}: ready in {server.cold_start_s:.2f} s")
        for key, target in chosen.items():
            script = workdir / f"overhead_{key}.lua"
            script.write_text(wrk_lua_script(target.path, target.bodies))
            for server in servers.values():
                check_answer(server, target)
            for r in range(rounds):
                order = ("on", "off") if r % 2 == 0 else ("off", "on")
                got: dict[str, CellResult] = {}
                for name in order:
                    got[name] = measure_cell(servers[name], target, script, concurrency, seconds, warmup)
                runs[key].append({name: asdict(cell) for name, cell in got.items()})
                cost = 1 - got["on"].rps / got["off"].rps
                log(
                    f"  {key:8s} round {r + 1}/{rounds}: on {got['on'].rps:8,.0f} req/s, off {got['off'].rps:8,.0f} "
                    f"req/s, cost {cost * 100:+5.1f} %"
                )
        side_by_side = {
            key: _side_by_side(servers, target, workdir, rounds=rounds, seconds=seconds, warmup=warmup,
                               concurrency=max(1, concurrency // 2))
            for key, target in chosen.items()
        }  # fmt: skip
    summary = {
        key: overhead_summary([(run["on"]["rps"], run["off"]["rps"]) for run in key_runs])
        for key, key_runs in runs.items()
    }
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "rounds": rounds,
        "summary": summary,
        "runs": runs,
        "side_by_side": side_by_side,
    }


def _side_by_side(
    servers: Mapping[str, Server],
    target: Target,
    workdir: Path,
    *,
    rounds: int,
    seconds: int,
    warmup: int,
    concurrency: int,
) -> dict[str, Any]:
    """Both servers loaded at the same time, each by its own wrk (``concurrency`` connections), ``rounds`` times:
    whatever the shared machine does during a round falls on both alike. The cost is the server's CPU time per
    request served over HTTP (the process tree's, from /proc), on vs off: unlike throughput it does not depend on
    how the scheduler splits the two cores between the servers."""
    script = workdir / f"side_by_side_{target.key}.lua"
    script.write_text(wrk_lua_script(target.path, target.bodies))
    per_round: list[dict[str, dict[str, float]]] = []

    def load_both(secs: int) -> dict[str, dict[str, Any]]:
        got: dict[str, dict[str, Any]] = {}

        def one(name: str) -> None:
            got[name] = run_wrk(servers[name].url + target.path, script, concurrency, secs)

        threads = [threading.Thread(target=one, args=(name,)) for name in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if set(got) != set(servers):
            raise RuntimeError("a load generator failed")
        return got

    pids: dict[str, int] = {}
    for name, server in servers.items():
        assert server.proc is not None
        pids[name] = server.proc.pid
    for r in range(rounds):
        if warmup > 0:
            load_both(warmup)
        for pid in pids.values():
            wait_idle(pid)
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        got = load_both(seconds)
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        row = {
            name: {
                "requests": float(got[name]["requests"]),
                "rps": float(got[name]["rps"]),
                "errors": float(got[name]["errors"]),
                "cpu_s": cpu[name],
                "cpu_us_per_request": cpu[name] / max(1, got[name]["requests"]) * 1e6,
            }
            for name in servers
        }
        per_round.append(row)
        log(
            f"  {target.key:8s} side by side {r + 1}/{rounds}: CPU a request on {row['on']['cpu_us_per_request']:6.1f} "
            f"µs, off {row['off']['cpu_us_per_request']:6.1f} µs, cost "
            f"{row['on']['cpu_us_per_request'] / row['off']['cpu_us_per_request'] - 1:+.1%} "
            f"({row['on']['rps']:,.0f} and {row['off']['rps']:,.0f} req/s)"
        )
    costs = [g["on"]["cpu_us_per_request"] / g["off"]["cpu_us_per_request"] - 1 for g in per_round]

    def per_request(name: str) -> float:
        return sum(g[name]["cpu_s"] for g in per_round) / sum(g[name]["requests"] for g in per_round)

    return {
        "concurrency_each": concurrency,
        "cpu_cost_median": statistics.median(costs),
        "cpu_cost_min": min(costs),
        "cpu_cost_max": max(costs),
        "cpu_cost_pooled": per_request("on") / per_request("off") - 1,
        "cpu_us_per_request_on": per_request("on") * 1e6,
        "cpu_us_per_request_off": per_request("off") * 1e6,
        "rounds": per_round,
    }


def _finite(obj: Any) -> Any:
    """``obj`` with NaN (not measured in this run) as JSON null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------------------------
# The Open Inference Protocol (V2) against the JSON API: the same records, the same server, alternating rounds
# ---------------------------------------------------------------------------------------------------------------

_LUA_BINARY_TEMPLATE = """\
-- generated by scripts/bench.py: rotate over pre-built V2 binary requests, report JSON when done
local bodies = {
%(bodies)s
}
local lengths = {%(lengths)s}
local requests_ = {}
local n = 0
init = function(args)
  for i, body in ipairs(bodies) do
    requests_[i] = wrk.format("POST", "%(path)s",
      {["Content-Type"] = "application/octet-stream", ["Inference-Header-Content-Length"] = lengths[i]}, body)
  end
  n = #requests_
end
"""


def v2_json_body(record: Mapping[str, Any]) -> str:
    """One record as a V2 request of JSON tensors: FP64 [1] per measured feature (the others left out)."""
    inputs = [
        {"name": k, "datatype": "FP64", "shape": [1], "data": [float(v)]} for k, v in record.items() if v is not None
    ]
    return dumps({"inputs": inputs})


def v2_binary_body(record: Mapping[str, Any]) -> tuple[bytes, int]:
    """The same request as tritonclient sends it by default: binary inputs, binary outputs; (bytes, JSON length)."""
    import struct

    measured = [(k, float(v)) for k, v in record.items() if v is not None]
    head = dumps(
        {
            "inputs": [
                {"name": k, "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 8}}
                for k, _ in measured
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return head + b"".join(struct.pack("<d", v) for _, v in measured), len(head)


def wrk_lua_binary_script(path: str, bodies: Sequence[tuple[bytes, int]]) -> str:
    """A wrk script that sends binary V2 bodies (every byte escaped) with their Inference-Header-Content-Length."""
    quoted = ['  "' + "".join(f"\\{b:03d}" for b in body) + '",' for body, _ in bodies]
    lengths = ", ".join(f'"{length}"' for _, length in bodies)
    head = _LUA_BINARY_TEMPLATE % {"bodies": "\n".join(quoted), "lengths": lengths, "path": path}
    # the request rotation and the JSON summary are the JSON script's own
    tail = _LUA_TEMPLATE[_LUA_TEMPLATE.index("local i = 0") :] % {"mark": WRK_MARK, "method": "", "path": ""}
    return head + tail


def v2_targets(records: Sequence[dict[str, Any]], model: str) -> list[tuple[Target, str | None]]:
    """The JSON API's /predict and /explain and their V2 counterparts, with the Lua script of each (None: JSON)."""
    singles = tuple(dumps(r) for r in records)
    v2 = tuple(v2_json_body(r) for r in records)
    infer, explainer = f"/v2/models/{model}/infer", f"/v2/models/{model}-explainer/infer"
    binary = [v2_binary_body(r) for r in records]
    return [
        (Target("predict", "ours", "POST /predict", "/predict", singles), None),
        (Target("v2_infer", "ours", f"POST {infer} (JSON tensors)", infer, v2), None),
        (
            Target("v2_infer_binary", "ours", f"POST {infer} (binary tensors)", infer, v2),
            wrk_lua_binary_script(infer, binary),
        ),
        (Target("explain", "ours", "POST /explain (exact)", "/explain", singles), None),
        (Target("v2_explain", "ours", f"POST {explainer} (JSON tensors, exact)", explainer, v2), None),
    ]


V2_PAIRS = {"v2_infer": "predict", "v2_infer_binary": "predict", "v2_explain": "explain"}
"""Each V2 target and the JSON API target it is compared with."""


def _v2_main(
    args: argparse.Namespace,
    records: Sequence[dict[str, Any]],
    seconds: int,
    warmup: int,
    concurrency: int,
    extra_env: Mapping[str, str],
) -> int:
    """V2 ``infer`` (JSON and binary tensors) against ``/predict``, and the V2 explainer against ``/explain``, on
    one server at ``concurrency``: every round measures every target, the order reversed every other round, so
    that the machine's drift falls on both sides of each ratio alike. Ratios per round: requests/s of V2 over the
    JSON API's, and server CPU per request of V2 over the JSON API's."""
    from service.model.store import load_bundle

    model = load_bundle().name
    workdir = Path(tempfile.mkdtemp(prefix="gshap-bench-"))
    t0 = time.perf_counter()
    meta = run_meta()  # before the run: the load average is the machine's, not the run's
    chosen = v2_targets(records, model)
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--host", HOST, "--port", str(port)]
    server = Server("ours", command, port, workdir / "logs" / "v2.log", server_env(extra_env))
    log(f"bench: V2 vs JSON API, {args.rounds} rounds × c={concurrency}, {seconds} s/cell (+{warmup} s warm-up)")
    runs: list[dict[str, dict[str, Any]]] = []
    with running(server):
        scripts: dict[str, Path] = {}
        for target, lua in chosen:
            scripts[target.key] = workdir / f"v2_{target.key}.lua"
            scripts[target.key].write_text(lua or wrk_lua_script(target.path, target.bodies))
            if lua is None:
                check_answer(server, target)
        for r in range(args.rounds):
            order = chosen if r % 2 == 0 else chosen[::-1]
            got: dict[str, dict[str, Any]] = {}
            for target, _ in order:
                cell = measure_cell(server, target, scripts[target.key], concurrency, seconds, warmup)
                if cell.errors:
                    raise RuntimeError(
                        f"{target.key}: {cell.errors} errors ({cell.error_kinds}); log: {server.log_path}"
                    )
                got[target.key] = {**asdict(cell), "cpu_us_per_request": cell.server_cpu_share * 1e6 / cell.rps}
            runs.append(got)
            log(
                f"  round {r + 1}/{args.rounds}: "
                + ", ".join(f"{k} {v['rps']:,.0f} req/s {v['cpu_us_per_request']:,.0f} µs" for k, v in got.items())
            )
    summary: dict[str, dict[str, Any]] = {}
    for v2_key, json_key in V2_PAIRS.items():
        rps = [run[v2_key]["rps"] / run[json_key]["rps"] for run in runs]
        cpu = [run[v2_key]["cpu_us_per_request"] / run[json_key]["cpu_us_per_request"] for run in runs]
        summary[v2_key] = {
            "against": json_key,
            "rps_ratio_median": statistics.median(rps),
            "rps_ratio_min": min(rps),
            "rps_ratio_max": max(rps),
            "cpu_ratio_median": statistics.median(cpu),
            "cpu_ratio_min": min(cpu),
            "cpu_ratio_max": max(cpu),
            "rps_median": statistics.median(run[v2_key]["rps"] for run in runs),
            "json_rps_median": statistics.median(run[json_key]["rps"] for run in runs),
            "p99_ms_median": statistics.median(run[v2_key]["p99_ms"] for run in runs),
            "json_p99_ms_median": statistics.median(run[json_key]["p99_ms"] for run in runs),
        }
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "meta": {
            **meta,
            "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "concurrency": concurrency,
            "seconds_per_cell": seconds,
            "rounds": args.rounds,
        },
        "v2": {"summary": summary, "runs": runs},
    }
    out_path = ROOT / args.json
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
    lines = [
        f"Load average at the start {meta['loadavg_start']}, at the end {result['meta']['loadavg_end']} "
        f"({os.cpu_count()} CPUs); c={concurrency}, {seconds} s per cell, {args.rounds} alternating rounds.",
        "",
        "| V2 target | against | req/s V2 / JSON (median, min … max) | server CPU per request V2 / JSON (median, "
        "min … max) | req/s V2 | req/s JSON | p99 ms V2 | p99 ms JSON |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, s in summary.items():
        lines.append(
            f"| {key} | {s['against']} | {s['rps_ratio_median']:.3f} ({s['rps_ratio_min']:.3f} … "
            f"{s['rps_ratio_max']:.3f}) | {s['cpu_ratio_median']:.3f} ({s['cpu_ratio_min']:.3f} … "
            f"{s['cpu_ratio_max']:.3f}) | {s['rps_median']:,.0f} | {s['json_rps_median']:,.0f} "
            f"| {s['p99_ms_median']:.1f} | {s['json_p99_ms_median']:.1f} |"
        )
    table = "\n".join(lines) + "\n"
    if args.md:
        (ROOT / args.md).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / args.md).write_text(table)
    print(table)
    log(f"bench: {result['meta']['wall_seconds']} s; results in {out_path}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
