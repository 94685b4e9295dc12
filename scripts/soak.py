"""Soak the real service on loopback: many concurrent clients for a bounded time; zero errors, flat memory and
answers identical to the unloaded ones.

    python scripts/soak.py                                # 5 min after 20 s warm-up, 32 clients, own server
    python scripts/soak.py --duration 60 --clients 64 --max-growth-mb 25
    python scripts/soak.py --url http://127.0.0.1:8000 --pid 12345     # a server that is already running

``tests/api/test_load.py`` runs this same code for about 12 s (:func:`soak`). What one run does:

1. reference: every request of the mix (:data:`MIX`) once, one at a time, on the idle server: the answers;
2. warm-up: ``clients`` concurrent clients send the mix for ``warmup`` seconds; then the server's resident
   memory (VmRSS of the process and its children, from ``/proc``) is the baseline;
3. load: the same for ``duration`` seconds, sampling the RSS every second.

Every answer under load must be a 200 whose JSON body equals the reference answer exactly (floats compared
bit for bit: same seed, same attributions, however requests are interleaved or coalesced). Errors are transport
failures, other statuses and differing bodies. Memory growth is the last RSS sample minus the baseline; the
run fails if it exceeds ``--max-growth-mb``. Each client rotates through the mix from its own seeded offset.
Requests go to 127.0.0.1 only; the run is bounded by ``--duration`` (plus the warm-up and a request timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["MIX", "Request", "SoakReport", "rss_kib", "soak"]

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

from benchkit import rss_kib  # noqa: E402  (VmRSS of the process and its children, KiB)

REQUEST_TIMEOUT = 60.0
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class Request:
    """One request of the mix: a name for the figures, the method, the path and the JSON body."""

    name: str
    method: str
    path: str
    body: dict[str, Any] | None = None


def _record(i: int) -> dict[str, Any]:
    """A plausible patient, different for each ``i`` (deterministic), some values not measured."""
    rng = random.Random(i)
    return {
        "pregnancies": rng.randint(0, 12),
        "glucose": round(rng.uniform(70, 200), 1),
        "blood_pressure": None if i % 5 == 0 else round(rng.uniform(50, 100), 1),
        "skin_thickness": round(rng.uniform(10, 50), 1),
        "insulin": 0 if i % 3 == 0 else round(rng.uniform(20, 400), 1),
        "bmi": round(rng.uniform(18, 50), 2),
        "diabetes_pedigree_function": round(rng.uniform(0.1, 2.0), 3),
        "age": rng.randint(21, 80),
    }


def _mix() -> tuple[Request, ...]:
    batch = [_record(100 + i) for i in range(10)]
    return (
        *(Request(f"predict-{i}", "POST", "/predict", _record(i)) for i in range(8)),
        *(Request(f"explain-exact-{i}", "POST", "/explain", _record(i)) for i in range(4)),
        *(
            Request(f"explain-sampled-{i}", "POST", "/explain", {**_record(i), "method": "sampled", "seed": 7})
            for i in range(4, 8)
        ),
        Request("explain-probability", "POST", "/explain", {**_record(9), "output": "probability"}),
        Request("explain-batch", "POST", "/explain/batch", {"records": batch}),
        Request("predict-batch", "POST", "/predict/batch", {"records": batch}),
        Request("groups", "GET", "/groups"),
        Request("group-TP", "GET", "/groups/TP"),
        Request("model", "GET", "/model"),
    )


MIX: tuple[Request, ...] = _mix()
"""Predictions, explanations (exact, sampled with a fixed seed, on probabilities), both batches and the GETs."""


@dataclass
class SoakReport:
    """The figures of one run."""

    clients: int
    warmup_s: float
    duration_s: float
    requests: int = 0
    warmup_requests: int = 0
    by_request: Counter[str] = field(default_factory=Counter)
    transport_errors: int = 0
    bad_status: Counter[int] = field(default_factory=Counter)
    mismatches: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    rss_baseline_kib: int = 0
    rss_samples_kib: list[int] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.transport_errors + sum(self.bad_status.values()) + sum(self.mismatches.values())

    @property
    def rss_final_kib(self) -> int:
        return self.rss_samples_kib[-1] if self.rss_samples_kib else self.rss_baseline_kib

    @property
    def growth_mib(self) -> float:
        return (self.rss_final_kib - self.rss_baseline_kib) / 1024

    @property
    def peak_growth_mib(self) -> float:
        return (max(self.rss_samples_kib, default=self.rss_baseline_kib) - self.rss_baseline_kib) / 1024

    def summary(self) -> str:
        lat = sorted(self.latencies_ms) or [0.0]
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        return "\n".join(
            [
                f"soak: {self.clients} clients, {self.warmup_s:g} s warm-up ({self.warmup_requests} requests), "
                f"{self.duration_s:g} s measured",
                f"soak: requests {self.requests} ({self.requests / self.duration_s:.0f}/s), latency p50 "
                f"{p50:.1f} ms, p99 {p99:.1f} ms",
                f"soak: errors {self.errors} (transport {self.transport_errors}, status {dict(self.bad_status)}, "
                f"answers differing from the unloaded ones {dict(self.mismatches)})",
                f"soak: RSS after warm-up {self.rss_baseline_kib / 1024:.1f} MiB, at the end "
                f"{self.rss_final_kib / 1024:.1f} MiB, growth {self.growth_mib:+.1f} MiB (peak "
                f"{self.peak_growth_mib:+.1f} MiB over {len(self.rss_samples_kib)} samples)",
            ]
        )

    def as_dict(self) -> dict[str, Any]:
        # asdict() would rebuild the Counters from (key, value) pairs, counting the pairs
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "latencies_ms"}
        out = {k: dict(v) if isinstance(v, Counter) else v for k, v in out.items()}
        return {**out, "errors": self.errors, "growth_mib": self.growth_mib, "peak_growth_mib": self.peak_growth_mib}


def _check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"soak: refusing to load {host!r}: loopback only (127.0.0.1)")


async def _send(client: httpx.AsyncClient, req: Request) -> httpx.Response:
    return await client.request(req.method, req.path, json=req.body)


async def _reference(url: str, mix: Sequence[Request]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        out: dict[str, Any] = {}
        for req in mix:
            r = await _send(client, req)
            if r.status_code != 200:
                raise RuntimeError(f"soak: the idle server answered {req.name} with {r.status_code}: {r.text[:300]}")
            out[req.name] = r.json()
        return out


async def _client(
    i: int,
    url: str,
    mix: Sequence[Request],
    reference: dict[str, Any],
    until: float,
    report: SoakReport,
    *,
    count: bool,
) -> None:
    order = list(mix)
    random.Random(i).shuffle(order)
    k = 0
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        while time.monotonic() < until:
            req = order[k % len(order)]
            k += 1
            t0 = time.perf_counter()
            try:
                r = await _send(client, req)
            except httpx.TransportError:
                report.transport_errors += 1
                continue
            if not count:
                report.warmup_requests += 1
            else:
                report.requests += 1
                report.by_request[req.name] += 1
                report.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                report.bad_status[r.status_code] += 1
            elif r.json() != reference[req.name]:
                report.mismatches[req.name] += 1


async def _phase(
    url: str, mix: Sequence[Request], reference: dict[str, Any], seconds: float, report: SoakReport, *, count: bool
) -> None:
    until = time.monotonic() + seconds
    await asyncio.gather(*(_client(i, url, mix, reference, until, report, count=count) for i in range(report.clients)))


async def _sample_rss(pid: int, report: SoakReport, every: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except TimeoutError:
            report.rss_samples_kib.append(rss_kib(pid))


async def _soak(
    url: str, pid: int, *, clients: int, warmup: float, duration: float, mix: Sequence[Request], progress: bool
) -> SoakReport:
    report = SoakReport(clients=clients, warmup_s=warmup, duration_s=duration)
    reference = await _reference(url, mix)
    await _phase(url, mix, reference, warmup, report, count=False)
    report.rss_baseline_kib = rss_kib(pid)
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(pid, report, 1.0, stop))
    ticker = asyncio.create_task(_progress(report, stop)) if progress else None
    try:
        await _phase(url, mix, reference, duration, report, count=True)
    finally:
        stop.set()
        await sampler
        if ticker is not None:
            await ticker
    report.rss_samples_kib.append(rss_kib(pid))
    return report


async def _progress(report: SoakReport, stop: asyncio.Event, every: float = 10.0) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except TimeoutError:
            rss = report.rss_samples_kib[-1] if report.rss_samples_kib else report.rss_baseline_kib
            print(
                f"soak: {time.monotonic() - t0:5.0f} s  requests {report.requests}  errors {report.errors}  "
                f"RSS {rss / 1024:.1f} MiB ({(rss - report.rss_baseline_kib) / 1024:+.1f})",
                file=sys.stderr,
                flush=True,
            )


def soak(
    url: str,
    pid: int,
    *,
    clients: int = 32,
    warmup: float = 20.0,
    duration: float = 300.0,
    mix: Sequence[Request] = MIX,
    progress: bool = False,
) -> SoakReport:
    """Run the reference, warm-up and load phases against ``url`` (the server process is ``pid``)."""
    _check_loopback(url)
    return asyncio.run(_soak(url, pid, clients=clients, warmup=warmup, duration=duration, mix=mix, progress=progress))


@contextmanager
def _own_server(env: dict[str, str]) -> Iterator[tuple[str, int]]:
    # started exactly as the tests start it (a clean GSHAP_* environment, a free loopback port, bounded waits)
    sys.path.insert(0, str(ROOT / "tests"))
    from live_server import running_server

    with running_server(env) as server:
        yield server.url, server.pid


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=300.0, help="measured seconds (default 300)")
    parser.add_argument("--warmup", type=float, default=20.0, help="warm-up seconds before the baseline RSS")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--max-growth-mb", type=float, default=25.0, help="fail above this RSS growth (MiB)")
    parser.add_argument("--url", help="a running server on loopback (default: start one)")
    parser.add_argument("--pid", type=int, help="its process id, for the memory figures (with --url)")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE", help="for our server")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.clients < 1:
        parser.error("--duration must be positive, --warmup non-negative, --clients at least 1")
    if (args.url is None) != (args.pid is None):
        parser.error("--url and --pid go together")
    run = {"clients": args.clients, "warmup": args.warmup, "duration": args.duration, "progress": True}
    if args.url is not None:
        report = soak(args.url, args.pid, **run)
    else:
        env = dict(kv.split("=", 1) for kv in args.server_env)
        with _own_server(env) as (url, pid):
            report = soak(url, pid, **run)
    print(report.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    ok = report.errors == 0 and report.growth_mib <= args.max_growth_mb
    print(f"soak: {'PASS' if ok else 'FAIL'} (errors must be 0, growth at most {args.max_growth_mb:g} MiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
