"""A server's process tree from ``/proc``: its processes, memory (RSS, peak, PSS) and CPU time."""

from __future__ import annotations

import contextlib
import math
import os

__all__ = [
    "cpu_seconds", "machine_cpu", "memory_mb", "process_tree", "rss_kib", "status_kib", "steal_share", "uss_kib",
]  # fmt: skip

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def status_kib(pid: int, key: str) -> int:
    """One ``/proc/PID/status`` field in KiB (``VmRSS``, ``VmHWM``, ...) of ``pid`` alone; 0 when unreadable."""
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
        "rss_peak_mb": sum(status_kib(p, "VmHWM") for p in tree) * 1024 / 1e6,
        "rss_mb": sum(status_kib(p, "VmRSS") for p in tree) * 1024 / 1e6,
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


def rss_kib(pid: int) -> int:
    """Resident memory (VmRSS) of ``pid`` and its descendants, in KiB."""
    return sum(status_kib(p, "VmRSS") for p in process_tree(pid))


def uss_kib(pid: int) -> int:
    """Unique set size of ``pid`` alone (its private pages: memory no other process shares), in KiB."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        pass
    return total


def machine_cpu() -> tuple[int, int]:
    """The whole machine's (steal, total) CPU ticks so far, from ``/proc/stat``; ``(0, 0)`` where it is unreadable.

    Steal is the time the hypervisor ran something else while this virtual machine had work: on a shared host it
    slows every server of a benchmark alike, which a ratio cancels and an absolute latency does not."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return 0, 0
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (ticks[7], sum(ticks)) if len(ticks) == 8 else (0, 0)


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's CPU time stolen between two :func:`machine_cpu` readings (NaN: unknown)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else math.nan
