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

This file is the command line; the pieces are the package ``scripts/benchkit`` (servers, wrk, the trivial
responder, targets, cells, race check, page weight, goals, Markdown, alternating rounds, the metrics overhead
and the V2 comparison).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT), str(ROOT / "scripts")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from benchkit import overhead, v2  # noqa: E402
from benchkit.cells import CellResult, ServerResult, check_answer, measure_cell  # noqa: E402
from benchkit.common import SCHEMA_VERSION, log, publish  # noqa: E402
from benchkit.engine import engine_inprocess  # noqa: E402
from benchkit.goals import evaluate_goals  # noqa: E402
from benchkit.meta import run_meta  # noqa: E402
from benchkit.page import page_first_load  # noqa: E402
from benchkit.procs import memory_mb  # noqa: E402
from benchkit.race import race_check  # noqa: E402
from benchkit.report import markdown_table  # noqa: E402
from benchkit.responder import generator_capacity, serve_trivial  # noqa: E402
from benchkit.rounds import RoundsPlan  # noqa: E402
from benchkit.servers import SERVE, Server, free_port, running, server_env  # noqa: E402
from benchkit.targets import eval_records, targets  # noqa: E402
from benchkit.wrk import wrk_lua_script  # noqa: E402

__all__ = ["main", "parse_args"]


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
    p.add_argument(
        "--goals",
        action="store_true",
        help="then the fast-path goals' alternating rounds (scripts/bench_goals.py: echo app, KServe peer, 3 models, "
        "--workers 2; docs/bench/goals.*, docs/PERFORMANCE.md)",
    )
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
    plan = RoundsPlan(
        records, args.rounds, seconds, warmup, goal_c, extra_env, ROOT / args.json, ROOT / args.md if args.md else None,
        args.quick,
    )  # fmt: skip
    if args.metrics_overhead:
        return overhead.run(plan)
    if args.v2:
        return v2.run(plan)
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
        "ours": [*SERVE, *workers],
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
    publish(result, markdown_table(result), out_path, ROOT / args.md if args.md else None)
    shutil.rmtree(workdir, ignore_errors=True)
    if not args.no_cds:
        log("· CDS Hooks: p50/p99 with prefetch and with the FHIR-server fallback (scripts/bench_cds.py)")
        sys.path.insert(0, str(ROOT / "scripts"))
        import bench_cds

        cds_json = str(Path(args.json).with_name(Path(args.json).stem + "_cds.json"))
        bench_cds.main(["--calls", "100" if args.quick else "400", "--json", cds_json])
    if args.goals:
        sys.path.insert(0, str(ROOT / "scripts"))
        import bench_goals

        # a quick run is a smoke test: it never rewrites the performance page or docs/bench/goals.*
        quick = ["--quick", "--no-docs", "--json", "bench-results/goals.json", "--md", "bench-results/goals.md"]
        return bench_goals.main(quick if args.quick else [])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
