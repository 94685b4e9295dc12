"""What a model repository costs: reloads under load, and memory, start-up and throughput with 1, 3 and 10 bundles.

Two measurements against real ``gshap serve`` processes (one worker, the defaults) on a copy of the shipped store in
a temporary folder:

- ``reload``: ``--concurrency`` clients (default 8) send ``POST /explain`` (the default model, exact) for
  ``--seconds`` (default 30) without reloads, then as long again while the server gets a SIGHUP every
  ``--reload-every`` seconds (default 1); between two signals a version ``pima-diabetes/1.2.0`` is added to the
  store or removed again, so every reload really loads, warms up and swaps in (or retires) a runtime. It reports
  requests, failed requests (any non-200 answer or transport error) and the latency percentiles of both phases.
- ``models``: for 1, 3 and 10 loaded bundles (copies of pima-diabetes 1.1.0 under other model names), the
  start-up time (process start to the first 200 of ``/readyz``), the server's resident memory once ready
  (VmRSS, and the USS: memory no other process shares), and the default model's throughput with ``--concurrency``
  clients for ``--seconds`` on ``/predict`` and ``/explain``.

The load generator runs in this process (httpx, asyncio) on the same machine as the server: on a small or busy
machine the two compete for cores, so compare the phases of one run rather than runs on different days. The
results go to ``--json`` (default ``bench-results/repository.json``) with the machine's load average at the start.

One line re-runs everything::

    python scripts/bench_repository.py            # about 4 minutes; --quick: about 1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from benchkit.common import loadavg, write_json  # noqa: E402
from benchkit.meta import run_meta  # noqa: E402
from benchkit.procs import status_kib, uss_kib  # noqa: E402
from benchkit.servers import Server, free_port, serve_command, server_env  # noqa: E402
from benchkit.stats import percentile  # noqa: E402
from helpers import record  # noqa: E402

from service.model.store import _write_checksums  # noqa: E402

STORE = ROOT / "model_store"


def make_store(folder: Path, models: int) -> Path:
    """A store with pima-diabetes 1.0.0 and 1.1.0 (``models`` = 0: the shipped layout) or with ``models``
    bundles: pima-diabetes 1.1.0 and copies of it named pima-copy-2, pima-copy-3, ..."""
    store = folder / "store"
    shutil.rmtree(store, ignore_errors=True)
    versions = ("1.0.0", "1.1.0") if models == 0 else ("1.1.0",)
    for v in versions:
        shutil.copytree(STORE / "pima-diabetes" / v, store / "pima-diabetes" / v)
    (store / "pima-diabetes" / "DEFAULT").write_text("1.1.0\n")
    (store / "DEFAULT").write_text("pima-diabetes\n")
    for i in range(2, models + 1):
        copy_version(store, f"pima-copy-{i}", "1.1.0")
    return store


def copy_version(store: Path, name: str, version: str) -> Path:
    """pima-diabetes 1.1.0's files as ``name/version`` (manifest renamed, checksums rewritten)."""
    folder = store / name / version
    shutil.copytree(STORE / "pima-diabetes" / "1.1.0", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["name"], manifest["version"] = name, version
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _write_checksums(folder)
    if not (store / name / "DEFAULT").exists():
        (store / name / "DEFAULT").write_text(version + "\n")
    return folder


def start_server(store: Path, log: Path) -> Server:
    """``gshap serve`` (one worker, the defaults) on a free port with the store at ``store``, ready; its
    ``cold_start_s`` is process start to the first 200 of ``/readyz``."""
    port = free_port()
    server = Server("ours", serve_command(port), port, log, server_env({"GSHAP_MODEL_STORE": str(store)}))
    server.start()
    return server


def memory_mb(server: Server) -> dict[str, float]:
    """VmRSS (with shared pages) and USS (private pages only) of the server process, in MB."""
    assert server.proc is not None
    pid = server.proc.pid
    return {"rss_mb": round(status_kib(pid, "VmRSS") / 1024, 1), "uss_mb": round(uss_kib(pid) / 1024, 1)}


async def load(url: str, path: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` clients posting the example record to ``path`` for ``seconds``: counts and latencies."""
    body = record()
    latencies: list[float] = []
    failed = 0
    errors: dict[str, int] = {}
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one_client() -> None:
            nonlocal failed
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    ok = r.status_code == 200
                    why = str(r.status_code)
                except httpx.TransportError as exc:
                    ok, why = False, type(exc).__name__
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failed += 1
                    errors[why] = errors.get(why, 0) + 1

        t_start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t_start
    latencies.sort()

    def pct(q: float) -> float | None:
        return round(percentile(latencies, q) * 1000, 2) if latencies else None

    return {
        "path": path,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "requests": len(latencies) + failed,
        "failed": failed,
        "errors": errors,
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
    }


def reload_run(tmp: Path, concurrency: int, seconds: float, every: float) -> dict[str, Any]:
    """The ``reload`` measurement (see the module's docstring)."""
    store = make_store(tmp, 0)
    server = start_server(store, tmp / "reload.log")
    try:
        asyncio.run(load(server.url, "/explain", concurrency, 2.0))  # warm the path up
        quiet = asyncio.run(load(server.url, "/explain", concurrency, seconds))
        stop = threading.Event()
        signals = 0

        def reloader() -> None:
            nonlocal signals
            while not stop.wait(every):
                folder = store / "pima-diabetes" / "1.2.0"
                if folder.exists():
                    shutil.rmtree(folder)
                else:
                    copy_version(store, "pima-diabetes", "1.2.0")
                assert server.proc is not None
                os.kill(server.proc.pid, signal.SIGHUP)
                signals += 1

        thread = threading.Thread(target=reloader, daemon=True)
        thread.start()
        reloading = asyncio.run(load(server.url, "/explain", concurrency, seconds))
        stop.set()
        thread.join()
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        reloads = {
            line.split("}")[0].split('"')[1]: float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("gshap_model_reloads_total{")
        }
        alive = server.proc is not None and server.proc.poll() is None
    finally:
        server.stop()
    return {
        "without_reloads": quiet,
        "with_reloads": reloading,
        "sighups_sent": signals,
        "reloads_counted": reloads,
        "server_alive_after": alive,
    }


def models_run(tmp: Path, counts: Sequence[int], concurrency: int, seconds: float) -> list[dict[str, Any]]:
    """The ``models`` measurement (see the module's docstring)."""
    out = []
    for n in counts:
        store = make_store(tmp, n)
        server = start_server(store, tmp / f"models-{n}.log")
        try:
            listing = httpx.get(f"{server.url}/models", timeout=10).json()
            served = sum(len(m["versions"]) for m in listing["models"])
            memory = memory_mb(server)
            asyncio.run(load(server.url, "/explain", concurrency, 1.0))
            predict = asyncio.run(load(server.url, "/predict", concurrency, seconds))
            explain = asyncio.run(load(server.url, "/explain", concurrency, seconds))
            out.append(
                {
                    "bundles": served,
                    "startup_s": round(server.cold_start_s, 2),
                    **memory,
                    "predict_rps": predict["throughput_rps"],
                    "predict_p99_ms": predict["p99_ms"],
                    "explain_rps": explain["throughput_rps"],
                    "explain_p99_ms": explain["p99_ms"],
                    "failed": predict["failed"] + explain["failed"],
                }
            )
        finally:
            server.stop()
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="5 s phases, 3 s throughput cells")
    p.add_argument("--seconds", type=float, default=None, help="seconds of each reload phase (default 30)")
    p.add_argument("--cell-seconds", type=float, default=None, help="seconds of each throughput cell (default 10)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--reload-every", type=float, default=1.0, help="seconds between two SIGHUPs")
    p.add_argument("--models", default="1,3,10", help="comma-separated bundle counts")
    p.add_argument("--only", choices=["reload", "models"], default=None)
    p.add_argument("--json", default="bench-results/repository.json")
    args = p.parse_args(argv)
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    cell = args.cell_seconds or (3.0 if args.quick else 10.0)
    results: dict[str, Any] = {"meta": {**run_meta(), "concurrency": args.concurrency}}
    with tempfile.TemporaryDirectory(prefix="gshap-bench-repo-") as tmp:
        if args.only in (None, "reload"):
            results["reload"] = reload_run(Path(tmp), args.concurrency, seconds, args.reload_every)
            print(json.dumps(results["reload"], indent=1), flush=True)
        if args.only in (None, "models"):
            counts = [int(c) for c in args.models.split(",")]
            results["models"] = models_run(Path(tmp), counts, args.concurrency, cell)
    results["meta"]["loadavg_end"] = loadavg()
    out = Path(args.json)
    write_json(out, results)
    print(f"wrote {out}")
    failed = results.get("reload", {}).get("with_reloads", {}).get("failed", 0)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
