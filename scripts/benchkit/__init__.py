"""The benchmarks' shared helpers: one percentile, one wrk wrapper, one process-memory reader.

Used by ``scripts/bench.py``, ``bench_goals.py``, ``soak.py``, ``bench_cds.py`` and the tests
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
