"""What every benchmark script shares: the repository's root, the loopback host, progress lines, JSON results."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["HOST", "ROOT", "SCHEMA_VERSION", "dumps", "finite", "loadavg", "log", "publish", "write_json", "write_text"]

ROOT = Path(__file__).resolve().parent.parent.parent
HOST = "127.0.0.1"
SCHEMA_VERSION = 1


def log(msg: str) -> None:
    """Progress on stderr (stdout carries only the final table)."""
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as the results files print them ("4.54 3.00 1.33")."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def dumps(obj: Any) -> str:
    """Compact JSON, as a client sends it."""
    return json.dumps(obj, separators=(",", ":"))


def finite(obj: Any) -> Any:
    """``obj`` with NaN (not measured in this run) as JSON null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def write_json(path: Path, result: Any) -> None:
    """``result`` as indented JSON (NaN as null) at ``path``, its folder created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(result), indent=2, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """``text`` at ``path``, its folder created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(result: Mapping[str, Any], table: str, json_path: Path, md_path: Path | None) -> None:
    """A run's end: the results as JSON, the table as Markdown (when asked), the table on stdout, where it went."""
    write_json(json_path, result)
    if md_path is not None:
        write_text(md_path, table)
    print(table)
    log(f"bench: {result['meta']['wall_seconds']} s; results in {json_path}")
