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
