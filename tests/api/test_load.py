"""Load against the real server on loopback, short form (``scripts/soak.py`` is the long form, same code).

32 concurrent clients send a mix of predictions, explanations (exact and seeded), batches and the GET
endpoints for a bounded time: no error, every answer identical (bit for bit) to the unloaded one, and the
server's resident memory after the measured phase within ``MAX_GROWTH_MIB`` of what it was after warm-up.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from live_server import ROOT, LiveServer, running_server

CLIENTS = 32
WARMUP_S = 3.0
DURATION_S = 10.0
MAX_GROWTH_MIB = 25.0


def _soak_module() -> ModuleType:
    if "soak" in sys.modules:
        return sys.modules["soak"]
    spec = importlib.util.spec_from_file_location("soak", ROOT / "scripts" / "soak.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with running_server() as server:
        yield server


@pytest.mark.slow
def test_load_has_no_errors_same_answers_and_flat_memory(live: LiveServer) -> None:
    """32 clients for 10 s after a 3 s warm-up: 0 errors, identical answers, RSS growth under 25 MiB."""
    soak = _soak_module()
    report = soak.soak(live.url, live.pid, clients=CLIENTS, warmup=WARMUP_S, duration=DURATION_S)
    print(report.summary())
    assert report.rss_baseline_kib > 0
    assert report.errors == 0, report.summary()
    assert set(report.by_request) == {r.name for r in soak.MIX}  # every kind of request was sent under load
    assert report.requests >= 10 * len(soak.MIX)
    assert report.growth_mib < MAX_GROWTH_MIB, report.summary()


def test_soak_refuses_anything_but_loopback() -> None:
    """The soak script loads 127.0.0.1 only."""
    soak = _soak_module()
    with pytest.raises(SystemExit, match="loopback only"):
        soak.soak("http://10.0.0.1:8000", 1, duration=1)


def test_rss_of_this_process_is_read_from_proc() -> None:
    """The memory figure is VmRSS in KiB: this test process has some, a missing process has none."""
    import os

    soak = _soak_module()
    assert soak.rss_kib(os.getpid()) > 10_000
    assert soak.rss_kib(2**22 + 1) == 0
