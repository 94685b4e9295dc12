"""Benchmark ``gshap explain-cohort``: records/s and peak memory of the local and the Ray engine, by cohort size.

    python scripts/bench_cohort.py                              # 10k and 1M records, both engines (~1 h on 2 cores)
    python scripts/bench_cohort.py --sizes 10000 --engines local
    python scripts/bench_cohort.py --json docs/bench/cohort.json --md docs/bench/cohort.md

For each size N, a synthetic cohort is drawn from the training distribution (``scripts/make_cohort.py``, seed 0,
1% invalid rows, Parquet, cached in ``--work``), then for each engine the command runs in a fresh process::

    python -m service.cli explain-cohort COHORT OUT --engine E --no-progress [--num-cpus C]

and this script measures, while it runs (psutil, every 0.5 s, over the process and all its descendants, so the
local Ray's raylet, GCS and actors count too): the peak of the summed RSS and of the summed USS (memory that only
that process holds: RSS counts the shared object store and shared libraries once per process), and the command's
own peak RSS (``ru_maxrss`` from ``wait4``). Records/s is the command's own figure (rows / time from the bundle
check to the closed file, Ray's start-up included); ``wall_s`` is the whole process, imports included. The two
engines' files are compared value for value (they must be equal). It writes JSON and, with ``--md``, a table.
The machine is shared: the load average at the start and end of each run is recorded next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

from benchkit.procs import process_tree, rss_kib, uss_kib  # noqa: E402


def cohort(n: int, work: Path) -> Path:
    """The cached synthetic cohort of ``n`` rows (Parquet)."""
    path = work / f"cohort-{n}.parquet"
    if not path.exists():
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "make_cohort.py"), str(n), str(path), "--bad", "0.01"],
            check=True,
        )
    return path


def _tree_memory(pid: int) -> tuple[int, int]:
    """RSS and USS of the process and its descendants (Ray's workers), summed, in bytes."""
    tree = process_tree(pid)
    return rss_kib(pid) * 1024, sum(uss_kib(p) for p in tree) * 1024


def run_one(engine: str, source: Path, out: Path, num_cpus: int | None, batch_size: int) -> dict[str, Any]:
    """One run of the command, measured."""
    cmd = [sys.executable, "-m", "service.cli", "explain-cohort", str(source), str(out), "--engine", engine]
    cmd += ["--no-progress", "--batch-size", str(batch_size)]
    if engine == "ray" and num_cpus:
        cmd += ["--num-cpus", str(num_cpus)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_rss = peak_uss = 0
    while True:
        pid, status, rusage = os.wait4(popen.pid, os.WNOHANG)
        if pid:
            break
        rss, uss = _tree_memory(popen.pid)
        peak_rss, peak_uss = max(peak_rss, rss), max(peak_uss, uss)
        time.sleep(0.5)
    wall = time.perf_counter() - started
    popen.returncode = usage = os.waitstatus_to_exitcode(status)
    stdout = popen.stdout.read() if popen.stdout else ""
    match = re.search(r"^(\d+) rows .* in ([\d.]+) s, (\d+) records/s", stdout, re.MULTILINE)
    if usage not in (0, 1) or match is None:
        raise RuntimeError(f"{' '.join(cmd)} failed ({usage}): {stdout}")
    return {
        "engine": engine,
        "rows": int(match.group(1)),
        "seconds": float(match.group(2)),
        "records_per_s": int(match.group(3)),
        "wall_s": round(wall, 1),
        "peak_rss_self_mb": round(rusage.ru_maxrss / 1024),  # kB on Linux
        "peak_rss_tree_mb": round(peak_rss / 2**20),
        "peak_uss_tree_mb": round(peak_uss / 2**20),
        "load_before": round(load_before, 1),
        "load_after": round(os.getloadavg()[0], 1),
        "command": " ".join(cmd[1:]),
    }


def same_values(a: Path, b: Path) -> bool:
    """Both files hold the same rows (every column, value for value)."""
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    return bool(ta.schema == tb.schema and ta.equals(tb))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gshap-cohort-bench"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for n in args.sizes:
        source = cohort(n, args.work)
        outs: dict[str, Path] = {}
        for engine in args.engines:
            outs[engine] = args.work / f"out-{n}-{engine}.parquet"
            row = {"size": n, **run_one(engine, source, outs[engine], args.num_cpus, args.batch_size)}
            results.append(row)
            print(json.dumps(row), flush=True)
        if len(outs) == 2:
            equal = same_values(outs["local"], outs["ray"])
            for row in results[-2:]:
                row["engines_equal"] = equal
            print(f"size {n}: local and ray files equal: {equal}", flush=True)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "ram_gb": round(psutil.virtual_memory().total / 2**30),
        },
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    table = [
        "| records | engine | records/s | time (s) | peak RSS, command (MB) | peak RSS, all processes (MB) | "
        "peak USS, all processes (MB) | load avg before/after |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        table.append(
            f"| {r['size']:,} | {r['engine']} | {r['records_per_s']:,} | {r['seconds']:.0f} | "
            f"{r.get('peak_rss_self_mb', '')} | {r['peak_rss_tree_mb']:,} | {r['peak_uss_tree_mb']:,} | "
            f"{r['load_before']} / {r['load_after']} |"
        )
    print("\n".join(table))
    if args.md:
        args.md.write_text("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
