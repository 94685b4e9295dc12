"""The metrics' overhead (``bench.py --metrics-overhead``): ``/predict`` and ``/explain`` with
GSHAP_METRICS_ENABLED true and false, over HTTP in alternating rounds, both servers loaded side by side, and in
process through the ASGI app.

    python scripts/bench.py --metrics-overhead --rounds 6 --concurrency 8
"""

from __future__ import annotations

import contextlib
import functools
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchkit.cells import CellResult, check_answer, measure_cell
from benchkit.common import HOST, SCHEMA_VERSION, dumps, log, publish
from benchkit.meta import run_meta
from benchkit.procs import cpu_seconds
from benchkit.rounds import Round, RoundsPlan, alternating_rounds, spread
from benchkit.servers import Server, free_port, running, serve_command, server_env, wait_idle
from benchkit.targets import Target, targets
from benchkit.wrk import run_wrk, wrk_lua_script

__all__ = ["asgi_overhead", "metrics_overhead", "overhead_summary", "run", "side_by_side_cpu"]


def run(plan: RoundsPlan) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="gshap-bench-"))
    t0 = time.perf_counter()
    meta = run_meta()  # before the run: the load average is the machine's, not the run's
    c, seconds, rounds = plan.concurrency, plan.seconds, plan.rounds
    log(f"bench: metrics overhead, {rounds} rounds × c={c}, {seconds} s/cell (+{plan.warmup} s warm-up)")
    found = metrics_overhead(
        plan.records, workdir, rounds=rounds, seconds=seconds, warmup=plan.warmup, concurrency=c,
        extra_env=plan.extra_env,
    )  # fmt: skip
    log(f"· in-process: CPU per request through the ASGI app, {plan.rounds} rounds")
    inproc = asgi_overhead(plan.records, rounds=plan.rounds, requests=400 if plan.quick else 2000)
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "meta": {**meta, "wall_seconds": round(time.perf_counter() - t0, 1)},
        "metrics_overhead": found,
        "metrics_overhead_inprocess": inproc,
    }
    lines = [
        f"| endpoint (c={c}, {seconds} s × {rounds} rounds each) | median cost | spread (min … max) "
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
        f"| endpoint, side by side (both servers loaded at once, c={max(1, c // 2)} each, {seconds} s × "
        f"{rounds} rounds) | server CPU µs/request on | off | median cost | spread (min … max) | pooled cost |",
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
        f"| endpoint, in-process ASGI ({inproc['requests_per_round']} interleaved request pairs × {plan.rounds} "
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
    publish(result, "\n".join(lines) + "\n", plan.json_path, plan.md_path)
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
            costs = spread([g["on"] / g["off"] - 1 for g in per_round])
            out[key] = {
                "cpu_us_on_median": statistics.median(g["on"] for g in per_round),
                "cpu_us_off_median": statistics.median(g["off"] for g in per_round),
                **{f"cost_{k}": v for k, v in costs.items()},
                "cost_pooled": sum(g["on"] for g in per_round) / sum(g["off"] for g in per_round) - 1,
                "cost_median_by_creation_order": by_order,
                "rounds": per_round,
            }
        return out

    result: dict[str, Any] = anyio.run(main)
    result["requests_per_round"] = requests
    return result


def overhead_summary(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Cost of the metrics from ``(rps with metrics, rps without)`` pairs measured back to back: per pair
    ``1 - on / off``; the median, the extremes and the pooled ratio (total on / total off)."""
    if not pairs:
        raise ValueError("no pairs")
    return {
        **spread([1.0 - on / off for on, off in pairs]),
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
    servers loaded at the same time (:func:`side_by_side_cpu`), which also cancels the drift within a round."""
    chosen = {t.key: t for t in targets(records) if t.key in ("predict", "explain")}
    servers: dict[str, Server] = {}
    for name, enabled in (("on", "true"), ("off", "false")):
        port = free_port()
        env = server_env({**extra_env, "GSHAP_METRICS_ENABLED": enabled})
        servers[name] = Server(
            f"metrics-{name}", serve_command(port), port, workdir / "logs" / f"metrics_{name}.log", env
        )
    runs: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        for server in servers.values():
            stack.enter_context(running(server))
            log(f"· {server.name}: ready in {server.cold_start_s:.2f} s")
        for key, target in chosen.items():
            script = workdir / f"overhead_{key}.lua"
            script.write_text(wrk_lua_script(target.path, target.bodies))
            for server in servers.values():
                check_answer(server, target)
            done = alternating_rounds(
                ("on", "off"),
                rounds,
                functools.partial(_measure_named, servers, target, script, concurrency, seconds, warmup),
                after=functools.partial(_log_round, key, rounds),
            )
            runs[key] = [{name: asdict(cell) for name, cell in rnd.results.items()} for rnd in done]
        side_by_side = {
            key: side_by_side_cpu(servers, target, workdir, rounds=rounds, seconds=seconds, warmup=warmup,
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


def side_by_side_cpu(
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
    costs = spread([g["on"]["cpu_us_per_request"] / g["off"]["cpu_us_per_request"] - 1 for g in per_round])

    def per_request(name: str) -> float:
        return sum(g[name]["cpu_s"] for g in per_round) / sum(g[name]["requests"] for g in per_round)

    return {
        "concurrency_each": concurrency,
        **{f"cpu_cost_{k}": v for k, v in costs.items()},
        "cpu_cost_pooled": per_request("on") / per_request("off") - 1,
        "cpu_us_per_request_on": per_request("on") * 1e6,
        "cpu_us_per_request_off": per_request("off") * 1e6,
        "rounds": per_round,
    }


def _measure_named(
    servers: Mapping[str, Server], target: Target, script: Path, concurrency: int, seconds: int, warmup: int, name: str
) -> CellResult:
    return measure_cell(servers[name], target, script, concurrency, seconds, warmup)


def _log_round(key: str, rounds: int, rnd: Round[CellResult]) -> None:
    on, off = rnd.results["on"].rps, rnd.results["off"].rps
    log(
        f"  {key:8s} round {rnd.index + 1}/{rounds}: on {on:8,.0f} req/s, off {off:8,.0f} "
        f"req/s, cost {(1 - on / off) * 100:+5.1f} %"
    )
