"""`gshap explain-cohort --engine ray`: real Ray (2 CPUs, tiny data), the same file as the local engine."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from live_server import ROOT
from test_cohort import cohort_rows, write_csv, write_parquet

from service.cohort import inspect_input
from service.cohort.engines import run_cohort
from service.runtime.inference import ExplainOptions


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """A local Ray for the whole session (2 CPUs, no dashboard, no usage statistics), shut down at its end."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray = pytest.importorskip("ray")
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    try:
        yield str(context.address_info["gcs_address"])
    finally:
        ray.shutdown()


def rows_of(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return out


def test_ray_engine_writes_the_local_engines_file(ray_address: str, tmp_path: Path) -> None:
    """Ray Data (map_batches over two actors) gives the local engine's rows, in input order, refusals included."""
    rows = cohort_rows(40, seed=5)
    (tmp_path / "in").mkdir()
    for k in range(4):  # a folder of files: several blocks for the two actors
        write_parquet(rows[k * 10 : (k + 1) * 10], tmp_path / "in" / f"part-{k}.parquet")
    inp = inspect_input(tmp_path / "in")
    options = ExplainOptions(method="sampled", n_samples=8, seed=2, output="probability")
    ray_run = run_cohort(inp, tmp_path / "ray.parquet", engine="ray", options=options, batch_size=4, progress=False)
    run_cohort(inp, tmp_path / "local.parquet", options=options, batch_size=64, progress=False)
    assert (ray_run.rows, ray_run.refused, ray_run.workers) == (40, 5, 2)
    assert rows_of(tmp_path / "ray.parquet") == rows_of(tmp_path / "local.parquet")


def test_command_joins_a_cluster_at_ray_address(ray_address: str, tmp_path: Path) -> None:
    """`gshap explain-cohort --engine ray --ray-address ADDR` runs on that cluster and matches the local engine."""
    src = write_csv(cohort_rows(12, seed=6), tmp_path / "in.csv")
    command = [sys.executable, "-m", "service.cli", "explain-cohort", str(src)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_cmd = [*command, str(tmp_path / "ray.parquet"), "--engine", "ray", "--ray-address", ray_address]
    proc = subprocess.run(
        [*ray_cmd, "--batch-size", "3", "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # two refused rows (4 and 9)
    assert "12 rows (10 explained, 2 refused)" in proc.stdout
    assert "engine ray (2 workers)" in proc.stdout
    run_cohort(inspect_input(src), tmp_path / "local.parquet", progress=False)
    assert rows_of(tmp_path / "ray.parquet") == rows_of(tmp_path / "local.parquet")
