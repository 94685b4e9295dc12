"""`gshap explain-cohort --engine ray`: real Ray (2 CPUs, tiny data), the same file as the local engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from live_server import ROOT
from test_cohort import NAMES, REFUSED, _csv_line, cohort_rows, write_csv, write_parquet

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


def test_unreadable_csv_rows_are_refused_in_place_under_ray(ray_address: str, tmp_path: Path) -> None:
    """Under ray, as under local: a ragged row, a row that is not UTF-8 after the first block, and an integer cell
    of 5,000 digits are each refused in their place with the local engine's problem, the other rows explained (the
    two files equal row by row); the command exits 1 ("some rows refused"), not 2, and leaves no OUTPUT.partial."""
    rows = cohort_rows(40, seed=7)
    head = ("id," + ",".join(NAMES) + "\n").encode()
    body = [_csv_line(r).encode() for r in rows]
    body.insert(3, b"X1,1,2,3")  # ragged: 4 cells
    body.insert(25, b"X2,1," + b"\xff\xfe" + b",72,35,0,33.6,0.627,50")  # not UTF-8, in the third block
    body.insert(33, b"X3,1," + b"9" * 5000 + b",72,35,0,33.6,0.627,50")  # an integer Python will not read
    src = tmp_path / "bad.csv"
    src.write_bytes(head + b"\n".join(body) + b"\n")
    out = tmp_path / "ray.parquet"
    command = [sys.executable, "-m", "service.cli", "explain-cohort", str(src), str(out), "--engine", "ray"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(
        [*command, "--ray-address", ray_address, "--batch-size", "8", "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"{len(body)} rows ({len(body) - len(REFUSED) - 3} explained, {len(REFUSED) + 3} refused)" in proc.stdout
    assert not (tmp_path / "ray.parquet.partial").exists()
    run_cohort(inspect_input(src), tmp_path / "local.parquet", batch_size=8, progress=False)
    ray_rows, local_rows = rows_of(out), rows_of(tmp_path / "local.parquet")
    assert ray_rows == local_rows
    refused = {r["id"]: json.loads(r["error"]) for r in ray_rows if r["error"] and r["id"] in (None, "X2", "X3")}
    assert {k: {e["rule"] for e in v["errors"]} for k, v in refused.items() if k != "X3"} == {
        None: {"ragged_row"},
        "X2": {"not_utf8"},
    }
    assert "line 5" in refused[None]["errors"][0]["message"]
    assert "glucose" in {e["field"] for e in refused["X3"]["errors"]}


def test_a_ragged_row_is_refused_in_place_by_run_cohort_under_ray(ray_address: str, tmp_path: Path) -> None:
    """run_cohort(engine="ray") itself: a ragged row in the first block is one refused row, not a stopped job."""
    rows = cohort_rows(12, seed=8)
    lines = ["id," + ",".join(NAMES), *(_csv_line(r) for r in rows)]
    lines.insert(2, "X1,1,2,3,4,5,6,7,8,9,10,11")  # ragged: more cells than the header
    src = tmp_path / "in.csv"
    src.write_text("\n".join(lines) + "\n")
    inp = inspect_input(src)
    result = run_cohort(inp, tmp_path / "ray.parquet", engine="ray", batch_size=4, progress=False)
    run_cohort(inp, tmp_path / "local.parquet", batch_size=4, progress=False)
    assert result.rows == 13
    assert rows_of(tmp_path / "ray.parquet") == rows_of(tmp_path / "local.parquet")
    assert json.loads(rows_of(tmp_path / "ray.parquet")[1]["error"])["errors"][0]["rule"] == "ragged_row"


def test_an_unreadable_file_or_output_exits_2_before_ray_starts(tmp_path: Path) -> None:
    """--engine ray: a CSV whose header is not UTF-8, and OUTPUT that is a folder, exit 2 with the reason before
    any work (no Ray is started, nothing is written)."""
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_bytes(b"\xff\xfe" + ",".join(NAMES).encode() + b"\n1,2\n")
    good = write_csv(cohort_rows(4), tmp_path / "in.csv")
    folder = tmp_path / "folder.parquet"
    folder.mkdir()
    cases = [(bad_csv, tmp_path / "o.parquet", "cannot be read"), (good, folder, "OUTPUT is a folder")]
    for src, out, reason in cases:
        command = [sys.executable, "-m", "service.cli", "explain-cohort", str(src), str(out), "--engine", "ray"]
        proc = subprocess.run(
            [*command, "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 2, proc.stderr
        assert reason in proc.stderr
        assert "Ray" not in proc.stderr  # refused before Ray started
    assert not (tmp_path / "o.parquet").exists()
    assert not (tmp_path / "o.parquet.partial").exists()
    assert list(folder.iterdir()) == []
