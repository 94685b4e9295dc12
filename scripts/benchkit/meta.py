"""When, where and on what a run starts: the ``meta`` of every results file (machine, commit, load average)."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
import subprocess
from typing import Any

from benchkit.common import ROOT, loadavg

__all__ = ["git_describe", "machine_info", "run_meta"]


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
        "loadavg_start": loadavg(),
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
