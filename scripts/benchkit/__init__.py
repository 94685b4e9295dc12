"""The benchmarks' shared package; ``scripts/bench.py`` is its command line.

One module a concern: ``servers`` (spawn, ready, cold start, stop), ``procs`` (memory and CPU of a process tree),
``stats`` (one percentile), ``wrk`` (the load generator), ``responder`` (the trivial responder: wrk's capacity),
``targets`` and ``cells`` (what is sent, one measured cell), ``race``, ``engine``, ``page`` (page weight),
``goals`` and ``report`` (the goals and the Markdown), ``meta``, ``rounds`` (alternating rounds), ``overhead``
(``--metrics-overhead``) and ``v2`` (``--v2``). Used by ``bench.py``, ``bench_goals.py``, ``bench_repository.py``,
``bench_engine.py``, ``bench_workers.py``, ``bench_cohort.py``, ``soak.py``, ``bench_cds.py`` and the tests
(``tests/scripts/test_bench.py``).
"""

from __future__ import annotations

from benchkit.procs import cpu_seconds, memory_mb, process_tree, rss_kib
from benchkit.stats import percentile
from benchkit.wrk import WRK_MARK, parse_wrk_output, run_wrk, wrk_lua_script

__all__ = [
    "WRK_MARK",
    "cpu_seconds",
    "memory_mb",
    "parse_wrk_output",
    "percentile",
    "process_tree",
    "rss_kib",
    "run_wrk",
    "wrk_lua_script",
]
