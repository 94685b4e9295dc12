"""The benchmark harness's pieces (scripts/benchkit, bench.py, naive_peer.py, ceiling_app.py), without timing
anything."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from helpers import app_client, default_spec

from service.config import Settings
from service.schemas import example_record

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from benchkit.cells import CellResult  # noqa: E402
from benchkit.common import finite  # noqa: E402
from benchkit.goals import evaluate_goals  # noqa: E402
from benchkit.overhead import overhead_summary  # noqa: E402
from benchkit.report import markdown_table  # noqa: E402
from benchkit.responder import _TrivialProtocol  # noqa: E402
from benchkit.servers import free_port, http_get_status, server_env  # noqa: E402
from benchkit.stats import percentile  # noqa: E402
from benchkit.targets import BATCH_RECORDS, targets  # noqa: E402
from benchkit.v2 import v2_binary_body, v2_json_body, wrk_lua_binary_script  # noqa: E402
from benchkit.wrk import WRK_MARK, parse_wrk_output, wrk_lua_script  # noqa: E402


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_percentile_matches_numpy_linear() -> None:
    """Percentiles interpolate between closest ranks, as numpy's default does."""
    rng = np.random.default_rng(0)
    data = list(rng.exponential(5.0, size=101))
    for q in (0, 1, 50, 95, 99, 100):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)), rel=1e-12)
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 101)


def test_parse_wrk_output_rates_errors_and_milliseconds() -> None:
    """The done() line becomes requests/s, summed errors and latencies in milliseconds."""
    line = (
        'WRKJSON {"requests":5000,"duration_us":2000000,"bytes":1,'
        '"errors":{"connect":0,"read":1,"write":0,"status":2,"timeout":3},'
        '"latency_us":{"min":100,"max":9000,"mean":1500.0,"stdev":10.0,'
        '"p50":1200,"p90":2000,"p95":2500,"p99":4000,"p999":8000}}'
    )
    r = parse_wrk_output("Running 2s test\n" + line + "\n")
    assert r["rps"] == 2500.0
    assert r["errors"] == 6
    assert (r["p50_ms"], r["p95_ms"], r["p99_ms"]) == (1.2, 2.5, 4.0)
    empty = parse_wrk_output(line.replace('"requests":5000', '"requests":0'))
    assert empty["rps"] == 0.0
    assert math.isnan(empty["p99_ms"])
    with pytest.raises(ValueError, match="WRKJSON"):
        parse_wrk_output("no summary")


def test_wrk_script_rotates_the_bodies() -> None:
    """The Lua script embeds every body verbatim and reports with the marker parse_wrk_output looks for."""
    bodies = ['{"a":1}', '{"b":"x y"}']
    script = wrk_lua_script("/explain", bodies)
    assert all(f"[==[{b}]==]" in script for b in bodies)
    assert '"POST", "/explain"' in script
    assert WRK_MARK in script
    with pytest.raises(ValueError, match="terminator"):
        wrk_lua_script("/x", ["]==]"])


def test_trivial_responder_answers_split_and_pipelined_requests() -> None:
    """The capacity target answers each complete request once, whatever the chunking of its bytes."""

    class Transport:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.sent.append(data)

    body = b'{"glucose":148}'
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    proto = _TrivialProtocol()
    transport = Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]  # a stand-in: the protocol only writes to it
    proto.data_received(request[:10])
    proto.data_received(request[10:-3])
    assert transport.sent == []
    proto.data_received(request[-3:] + request + b"GET / HTTP/1.1\r\n\r\n")
    assert len(transport.sent) == 3
    assert transport.sent[0].startswith(b"HTTP/1.1 200 OK")


def test_targets_use_the_records_and_batch_size() -> None:
    """Every target sends valid JSON; the batch target carries 100 records and counts them."""
    records = [dict(example_record(default_spec()), age=20 + i) for i in range(150)]
    by_key = {t.key: t for t in targets(records)}
    assert {"ceiling", "peer", "predict", "explain", "explain_sampled", "explain_batch", "explain_plot"} <= set(by_key)
    assert by_key["explain_plot"].path == "/explain/plot"
    assert by_key["explain_plot"].answer == "svg"
    assert json.loads(by_key["explain_sampled"].bodies[0])["n_samples"] == 200
    batch = json.loads(by_key["explain_batch"].bodies[0])
    assert len(batch["records"]) == BATCH_RECORDS == by_key["explain_batch"].records_per_request


def _cell(target: str, rps: float, p99: float = 5.0, records: int = 1, server: str = "ours") -> Any:
    return CellResult(
        target=target,
        server=target if target in ("ceiling", "peer") else server,
        label=target,
        concurrency=8,
        seconds=1.0,
        requests=int(rps),
        rps=rps,
        records_per_s=rps * records,
        p50_ms=1.0,
        p95_ms=2.0,
        p99_ms=p99,
        max_ms=9.0,
        errors=0,
        error_kinds={},
        server_cpu_share=1.0,
        wrk_cpu_share=0.1,
    )


def test_goals_ratios_and_report() -> None:
    """Ratios against the ceiling and the peer, verdicts per goal, and a JSON-serialisable result."""
    cells = [
        _cell("ceiling", 4000),
        _cell("peer", 100),
        _cell("explain", 2500, p99=20.0),
        _cell("explain_sampled", 900),
        _cell("predict", 2000),
        _cell("explain_batch", 30, records=100),
    ]
    cells.append(_cell("explain", 5000, server="ours[fast]"))
    servers = {"ours": {"cold_start_s": 2.0, "memory_after_load": {"rss_mb": 400.0}}}
    ev = evaluate_goals(cells, servers, {"mismatches": 0, "batch_vs_single_mismatches": 0})
    variant = evaluate_goals(cells, servers, None, ours_name="ours[fast]")
    assert variant["ratios"]["explain_vs_ceiling_c8"] == pytest.approx(1.25)
    assert ev["ratios"]["explain_vs_ceiling_c8"] == pytest.approx(0.625)
    assert ev["ratios"]["explain_vs_peer_c8"] == pytest.approx(25.0)
    met = {g["goal"]: g["met"] for g in ev["goals"]}
    assert met == {
        "explain_c8_vs_ceiling": True,
        "explain_c8_vs_peer": True,
        "explain_c8_p99": True,
        "predict_c8_vs_ceiling": False,
        "batch_records_per_s": True,
        "cold_start": True,
        "rss_after_load": True,
        "no_errors": True,
        "same_results": True,
        "explain_plot_c8": None,  # not measured in this run
        "page_first_load": None,
    }
    plotted = evaluate_goals([*cells, _cell("explain_plot", 1250)], servers, None, page={"bytes": 101_000})
    verdicts = {g["goal"]: g["met"] for g in plotted["goals"]}
    assert verdicts["explain_plot_c8"] is True
    assert verdicts["page_first_load"] is False
    assert plotted["ratios"]["explain_plot_vs_explain_c8"] == pytest.approx(0.5)
    result = {
        "meta": {
            "date": "2025-01-01 00:00 UTC",
            "machine": {"summary": "test"},
            "git": "abc",
            "mode": "quick",
            "seconds_per_cell": 1,
            "warmup_seconds": 0,
            "loadavg_start": "0",
        },
        "cells": [vars(c) for c in cells],
        "servers": servers | {"ceiling": {"cold_start_s": math.nan}},
        "evaluation": ev,
        "variant_evaluations": {"ours[fast]": variant},
        "generator": {"concurrency": 8, "rps": 40000.0, "wrk_cpu_share": 0.9},
    }
    table = markdown_table(result)
    assert "| explain | 8 | 2,500.0 |" in table
    assert "10.0× the ceiling" in table
    assert json.loads(json.dumps(finite(result), allow_nan=False))["servers"]["ceiling"]["cold_start_s"] is None


def test_naive_peer_explains_one_record(bundle: Any) -> None:
    """The peer answers the service's record schema with Captum attributions that roughly add up."""
    peer = _load("naive_peer")
    with app_client(peer.create_peer_app(bundle)) as client:
        resp = client.post("/explain", json=example_record(default_spec()))
        assert resp.status_code == 200
        answer = resp.json()
        assert client.post("/explain", json={**example_record(default_spec()), "glucose": "high"}).status_code == 422
    assert list(answer["attributions"]) == list(bundle.spec.names)
    logit = float(bundle.model(bundle.to_model_space([example_record(default_spec())])).detach()[0, 0])
    assert answer["logit"] == pytest.approx(logit, abs=1e-5)
    assert all(math.isfinite(v) for v in answer["attributions"].values())


def test_ceiling_app_validates_without_the_model(bundle: Any) -> None:
    """The ceiling routes sit in the service's own app and validate the same patient body."""
    ceiling = _load("ceiling_app")
    app = ceiling.create_ceiling_app(Settings(log_level="warning"), bundle)
    with app_client(app) as client:
        for path in (ceiling.CEILING_PATH, ceiling.CEILING_DEF_PATH):
            ok = client.post(path, json=example_record(default_spec()))
            assert ok.status_code == 200
            assert ok.json() == {"ok": True, "features": len(bundle.spec.names)}
            bad = client.post(path, json={**example_record(default_spec()), "unknown": 1})
            assert bad.status_code == 422
            assert bad.headers["content-type"].startswith("application/problem+json")
        assert client.get("/readyz").status_code == 200


def test_metrics_overhead_summary() -> None:
    """The cost of metrics per pair is 1 - on/off; median, extremes and the pooled ratio; no pairs is an error."""
    s = overhead_summary([(97.0, 100.0), (100.0, 100.0), (110.0, 100.0)])
    assert s["pairs"] == 3
    assert math.isclose(s["median"], 0.0, abs_tol=1e-12)
    assert math.isclose(s["max"], 0.03)
    assert math.isclose(s["min"], -0.10)
    assert math.isclose(s["pooled"], 1 - 307 / 300)
    with pytest.raises(ValueError, match="no pairs"):
        overhead_summary([])


def test_v2_bench_requests_decode_to_the_record() -> None:
    """The V2 bench's requests (JSON tensors, and binary ones escaped into the wrk script) are what the service's
    V2 decoder reads back as the record's values, a feature not measured left out of both."""
    import re

    from service.api.v2_codec import decode_request

    record: dict[str, Any] = {**example_record(default_spec()), "insulin": None}
    measured = {k: float(v) for k, v in record.items() if v is not None}
    as_json = decode_request(v2_json_body(record).encode(), None)
    assert {t.name: t.values for t in as_json.inputs} == {k: [v] for k, v in measured.items()}
    body, length = v2_binary_body(record)
    as_binary = decode_request(body, str(length))
    assert as_binary.binary_output is True
    assert {t.name: t.values for t in as_binary.inputs} == {k: [v] for k, v in measured.items()}
    script = wrk_lua_binary_script("/v2/models/m/infer", [(body, length)])
    [escaped] = re.findall(r'^  "((?:\\\d{3})*)",$', script, flags=re.MULTILINE)
    assert bytes(int(d) for d in re.findall(r"\\(\d{3})", escaped)) == body
    assert f'lengths = {{"{length}"}}' in script
    assert WRK_MARK in script
    assert '"Inference-Header-Content-Length"' in script


# ---- issue 26: the echo reference, the KServe peer, the goals' rounds, the profile table ------------------------


def test_echo_app_validates_the_served_body_and_runs_as_the_service() -> None:
    """The echo app validates the default bundle's record with pydantic (422 on a wrong type or an unknown field),
    answers the validated record, and runs under the same uvicorn options as ``gshap serve``."""
    from service.api.app import uvicorn_options

    echo = _load("echo_app")
    record = example_record(default_spec())
    with app_client(echo.create_echo_app()) as client:
        ok = client.post(echo.ECHO_PATH, json=record)
        assert ok.status_code == 200
        assert ok.json() == {name: pytest.approx(value) for name, value in record.items()}
        assert client.post(echo.ECHO_PATH, json={**record, "glucose": "high"}).status_code == 422
        assert client.post(echo.ECHO_PATH, json={**record, "unknown": 1}).status_code == 422
        assert client.get("/readyz").json() == {"status": "ready"}

    def comparable(options: dict[str, Any]) -> dict[str, Any]:
        """The options with the header-capped protocol class (built per call) as its base and cap."""
        http = options.get("http")
        if isinstance(http, type):
            options = {**options, "http": (http.__mro__[1], getattr(http, "max_header_bytes", None))}
        return options

    for workers in (1, 2):
        service = uvicorn_options(Settings(host="127.0.0.1", port=8123, workers=workers))
        assert comparable(echo.server_options("127.0.0.1", 8123, workers)) == comparable(service)


def test_echo_app_imports_no_torch() -> None:
    """The reference is a plain app: building it imports neither torch nor the service's web layer."""
    import subprocess

    code = "import sys, echo_app; echo_app.create_echo_app(); print(sorted({'torch', 'service.api.app'} & set(sys.modules)))"  # noqa: E501
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=SCRIPTS, capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_goal_rounds_alternate_and_take_the_median() -> None:
    """Rounds alternate their order; each goal is judged on the median of the per-round values (min and max kept),
    and a goal whose server did not run is 'not measured', never met."""
    goals = _load("bench_goals")
    assert goals.round_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert goals.round_order(["a", "b", "c"], 1) == ["c", "b", "a"]

    def servers(echo: float, explain: float, predict: float, p99: float) -> dict[str, Any]:
        return {
            "echo": {"cold_start_s": 1.0, "cells": {"echo": {"rps": echo}}},
            "ours": {
                "cold_start_s": 2.0,
                "rss_at_ready": {"rss_mb": 180.0},
                "cells": {"explain": {"rps": explain, "p99_ms": p99}, "predict": {"rps": predict}},
            },
        }

    rounds = [
        {"values": goals.round_values(servers(1000, 400, 900, 6.0))},
        {"values": goals.round_values(servers(1000, 600, 700, 4.0))},
        {"values": goals.round_values(servers(1000, 550, 850, 4.5))},
    ]
    found = {g["goal"]: g for g in goals.evaluate(rounds)["goals"]}
    assert found["explain_vs_echo"]["median"] == pytest.approx(0.55)
    assert (found["explain_vs_echo"]["min"], found["explain_vs_echo"]["max"]) == pytest.approx((0.4, 0.6))
    assert found["explain_vs_echo"]["met"] is True
    assert found["predict_vs_echo"]["median"] == pytest.approx(0.85)
    assert found["explain_p99_ms"]["met"] is True
    assert found["cold_start_vs_echo"]["median"] == pytest.approx(2.0)
    assert found["rss_at_ready_mb"]["met"] is True
    assert found["explain_vs_kserve"]["met"] is None
    assert found["three_models_vs_one"]["median"] is None


def test_alternating_rounds_reverse_the_order_every_other_round() -> None:
    """Every round measures every contender, the order reversed every other round; each round keeps its results in
    the order measured and the load average before it; the hooks run around each round."""
    from benchkit.rounds import alternating_rounds

    calls: list[str] = []
    hooks: list[tuple[str, int, list[str]]] = []

    def measure(name: str) -> int:
        calls.append(name)
        return len(calls)

    done = alternating_rounds(
        ["a", "b", "c"],
        3,
        measure,
        before=lambda r, order, load: hooks.append(("before", r, order)),
        after=lambda rnd: hooks.append(("after", rnd.index, rnd.order)),
    )
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert [r.order for r in done] == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
    assert list(done[1].results.items()) == [("c", 4), ("b", 5), ("a", 6)]
    assert all(len(r.loadavg_before.split()) == 3 for r in done)
    assert [h[:2] for h in hooks] == [
        ("before", 0),
        ("after", 0),
        ("before", 1),
        ("after", 1),
        ("before", 2),
        ("after", 2),
    ]
    assert alternating_rounds(["a"], 0, measure) == []


def test_spread_is_the_median_and_extremes_of_what_was_measured() -> None:
    """Median (the mean of the middle two for an even count), min and max; NaN (not measured) is left out and
    nothing measured is all None."""
    from benchkit.rounds import spread

    assert spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0}
    assert spread([0.4, math.nan, 0.6, 0.55]) == pytest.approx({"median": 0.55, "min": 0.4, "max": 0.6})
    assert spread([math.nan]) == {"median": None, "min": None, "max": None}
    assert spread([]) == {"median": None, "min": None, "max": None}


def test_interleaved_takes_each_callables_median_after_one_warm_up() -> None:
    """One warm-up call each (not timed), then the callables in turn; the median of each one's times."""
    from benchkit.rounds import interleaved

    now = [0.0]
    calls: list[str] = []
    b_costs = iter([100.0, 3.0, 1.0, 2.0])  # the first is the warm-up

    def a() -> None:
        calls.append("a")
        now[0] += 1.0

    def b() -> None:
        calls.append("b")
        now[0] += next(b_costs)

    rounds: list[int] = []

    def progress(it: Iterable[int]) -> Iterable[int]:
        for i in it:
            rounds.append(i)
            yield i

    assert interleaved({"a": a, "b": b}, 3, progress=progress, clock=lambda: now[0]) == {"a": 1.0, "b": 2.0}
    assert calls == ["a", "b"] * 4
    assert rounds == [0, 1, 2]


def test_process_memory_and_cpu_of_this_process() -> None:
    """The process tree's memory (MB) and CPU seconds from /proc: this process is its own tree's root."""
    import os

    from benchkit.procs import cpu_seconds, memory_mb, process_tree, rss_kib, status_kib

    pid = os.getpid()
    assert process_tree(pid)[0] == pid
    mem = memory_mb(pid)
    assert set(mem) == {"rss_peak_mb", "rss_mb", "pss_mb", "processes"}
    assert min(mem["rss_peak_mb"], mem["rss_mb"], mem["processes"]) > 0
    assert status_kib(pid, "VmRSS") > 0
    assert rss_kib(pid) > 0
    assert status_kib(pid, "NoSuchField") == 0
    assert status_kib(2**22 + 1, "VmRSS") == 0  # no such process
    assert cpu_seconds(pid) > 0


def test_steal_share_is_the_stolen_part_of_the_machines_ticks() -> None:
    """The share of CPU ticks stolen between two readings of /proc/stat; NaN when no tick passed."""
    from benchkit.procs import machine_cpu, steal_share

    assert steal_share((10, 1000), (40, 1300)) == pytest.approx(0.1)
    assert math.isnan(steal_share((10, 1000), (10, 1000)))
    steal, total = machine_cpu()
    assert 0 <= steal <= total
    assert total > 0  # Linux: /proc/stat is there


def test_goal_rounds_report_the_echo_tail_and_the_steal() -> None:
    """Each round's row carries the echo app's own p99 and the CPU stolen during the /explain cell."""
    goals = _load("bench_goals")
    servers = {
        "echo": {"cold_start_s": 1.0, "cells": {"echo": {"rps": 1000.0, "p99_ms": 3.25, "steal_share": 0.02}}},
        "ours": {"cold_start_s": 2.0, "cells": {"explain": {"rps": 500.0, "p99_ms": 4.5, "steal_share": 0.3}}},
    }
    values = goals.round_values(servers)
    assert (values["echo_p99_ms"], values["steal_share_explain"], values["steal_share_echo"]) == (3.25, 0.3, 0.02)
    rounds = [{"order": ["echo", "ours"], "loadavg_before": "1.00 1.00 1.00", "values": values}]
    result = {
        "meta": {"date": "d", "machine": {"summary": "m"}, "git": "g", "rounds": 1, "seconds_per_cell": 1,
                 "warmup_seconds": 0, "machine_note": "n"},
        "rounds": rounds,
        "evaluation": goals.evaluate(rounds),
    }  # fmt: skip
    row = next(line for line in goals.goals_markdown(result).splitlines() if line.startswith("| 1 |"))
    assert "| 4.50 | 3.25 | 30% |" in row


def test_results_are_written_with_nan_as_null(tmp_path: Path) -> None:
    """NaN (not measured in this run) becomes null, in nested dicts, lists and tuples; folders are created."""
    from benchkit.common import write_json

    path = tmp_path / "a" / "b.json"
    write_json(path, {"x": math.nan, "y": [1.0, (math.nan, 2)], "z": {"w": math.nan}})
    assert json.loads(path.read_text()) == {"x": None, "y": [1.0, [None, 2]], "z": {"w": None}}


def test_bench_keeps_its_command_line() -> None:
    """bench.py's options and their defaults (make bench, make bench-v2 and the docs call them)."""
    bench = _load("bench")
    args = vars(bench.parse_args([]))
    assert args == {
        "quick": False,
        "seconds": None,
        "warmup": None,
        "concurrency": "1,8,32",
        "only": None,
        "workers": None,
        "server_env": [],
        "variant": [],
        "no_engine": False,
        "no_race": False,
        "no_cds": False,
        "json": "bench-results/latest.json",
        "md": None,
        "metrics_overhead": False,
        "rounds": 6,
        "v2": False,
        "serve_trivial": None,
        "goals": False,
    }
    v2 = bench.parse_args(["--v2", "--rounds", "2", "--concurrency", "8", "--json", "x.json", "--md", "x.md"])
    assert (v2.v2, v2.rounds, v2.concurrency, v2.json, v2.md) == (True, 2, "8", "x.json", "x.md")


def test_performance_page_block_is_replaced_in_place(tmp_path: Path) -> None:
    """The goals' Markdown replaces only the generated block of the performance page (appended once if absent)."""
    goals = _load("bench_goals")
    page = tmp_path / "PERFORMANCE.md"
    page.write_text("# Performance\n\nhand-written analysis\n")
    goals.update_performance_page("first run", page)
    goals.update_performance_page("second run", page)
    text = page.read_text()
    assert "hand-written analysis" in text
    assert "second run" in text
    assert "first run" not in text
    assert text.count(goals.BEGIN) == 1


def test_profile_table_attributes_samples_to_the_innermost_category(tmp_path: Path) -> None:
    """A sample counts for the innermost frame with a category (libc under the access log is logging, under
    uvicorn the server); start-up stacks (imports) and threads waiting (the loop in epoll, an idle executor thread)
    are left out; the shares add up to the total CPU per request."""
    prof = _load("profile_table")
    loop = "Loop__run (loop.c:1);RequestResponseCycle.run_asgi (uvicorn/protocols/http/httptools_impl.py:2)"
    raw = tmp_path / "x.raw"
    raw.write_text(
        f"{loop};explain (service/engine/exact_kernel.py:3);0x1 (libc.so.6) 3\n"
        f"{loop};Logger.info (logging/__init__.py:4);write (libc.so.6) 1\n"
        f"{loop};write (libc.so.6) 4\n"
        f"main (cli.py:1);_find_and_load (<frozen importlib._bootstrap>:1);<module> (torch/__init__.py:1) 50\n"
        f"Loop__run (loop.c:1);uv_run (libuv);uv__io_poll (linux.c:1);epoll_pwait (libc.so.6) 30\n"
        f"Thread.run (threading.py:1);_worker (thread.py:81);_queue_SimpleQueue_get (q.c:1);"
        f"PyThread_acquire_lock_timed (libpython);0x7f (libc.so.6) 20\n"
    )
    waits: list[tuple[list[str], int]] = []
    stacks = prof.request_stacks(prof.load_stacks(raw), waits)
    assert sum(n for _, n in stacks) == 8
    assert sum(n for _, n in waits) == 50  # the idle loop and the idle executor thread use no CPU
    md = prof.table(stacks, cpu_ms=0.8)
    assert "| kernel (exact C) | 3 | 37.5 % | 300 |" in md
    assert "| **total** | 8 | 100 % | 1,000 |" in prof.table(stacks, cpu_ms=0.8, extra=[("kernel threads", 0.2)])
    assert "| logging | 1 | 12.5 % | 100 |" in md
    assert "| server (uvicorn, uvloop, httptools) | 4 | 50.0 % | 400 |" in md
    import xml.etree.ElementTree as ET

    svg = ET.fromstring(prof.flame_svg(stacks, "t <&> title"))
    assert svg.tag.endswith("svg")


@pytest.mark.slow
def test_kserve_peer_explains_with_captum_from_its_own_environment(bundle: Any, tmp_path: Path) -> None:
    """The KServe peer (kserve's ModelServer in .venv-kserve/, torch and Captum from the project's environment)
    answers V1 explain requests with the bundle's logit and 200-sample GradientShap attributions per feature
    (finite, not all zero; the naive peer does not seed its draws, so their sum is not compared)."""
    import subprocess
    import sysconfig
    import time

    import httpx

    goals = _load("bench_goals")
    python = goals.kserve_python(install=True)
    assert python is not None, "could not create .venv-kserve/ with kserve"
    port = free_port()
    env = server_env({"KSERVE_PEER_FALLBACK_SITE": sysconfig.get_paths()["purelib"]})
    env.pop("VIRTUAL_ENV", None)
    with (tmp_path / "peer.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(python), str(SCRIPTS / "kserve_peer.py"), "--http_port", str(port)], env=env, stdout=log, stderr=log
        )
    try:
        url = f"http://127.0.0.1:{port}/v1/models/{bundle.name}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and http_get_status(port, f"/v1/models/{bundle.name}") != 200:
            assert proc.poll() is None, (tmp_path / "peer.log").read_text()[-2000:]
            time.sleep(0.2)
        record = example_record(default_spec())
        answer = httpx.post(url + ":explain", json={"instances": [record]}, timeout=60).json()["explanations"][0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    x = bundle.to_model_space([record])
    logit = float(bundle.model(x).detach()[0, 0])
    assert answer["logit"] == pytest.approx(logit, abs=1e-5)
    assert list(answer["attributions"]) == list(bundle.spec.names)
    assert all(math.isfinite(v) for v in answer["attributions"].values())
    assert any(v != 0 for v in answer["attributions"].values())  # Captum's draws are unseeded: no sum is checked
