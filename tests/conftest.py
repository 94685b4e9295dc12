"""Shared fixtures: the committed default bundle, loaded once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.manual_seed(0)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def bundle():  # type: ignore[no-untyped-def]
    from service.model.store import load_bundle

    return load_bundle()


@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    """A real PostgreSQL server (Debian's) for the session, in a temporary directory on a free loopback port
    (tests/postgres.py), stopped at the end."""
    from postgres import running_postgres

    with running_postgres() as server:
        yield server


@pytest.fixture
def pg_url(postgres) -> str:  # type: ignore[no-untyped-def]
    """The URL of a new, empty database on the session's PostgreSQL server (one per test)."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres.psql(f"CREATE DATABASE {name}")
    return f"postgresql://gshap@127.0.0.1:{postgres.port}/{name}"
