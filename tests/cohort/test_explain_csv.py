"""scripts/explain_csv.py run as a command against the real server: one output row per input row, adding up."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import default_spec
from live_server import ROOT, LiveServer, running_server

from service.client import GshapClient
from service.schemas import example_record

SCRIPT = ROOT / "scripts" / "explain_csv.py"
PIMA = ROOT / "data" / "pima-indians-diabetes.csv"
FEATURES = list(example_record(default_spec()))
COLUMNS = ["row", "probability", "logit", "label", "base_value", *FEATURES, "completeness_gap", "error"]


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with running_server() as live:
        yield live


def run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # the checkout's root on the path, as for any script run from a source tree
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_pima_rows_are_explained_in_chunks_and_add_up(server: LiveServer, tmp_path: Path) -> None:
    """12 data-set rows (data-set column names) in chunks of 5 give 12 rows whose base + Σ attributions = logit."""
    with PIMA.open(newline="") as fh:
        lines = fh.readlines()[:13]
    source = tmp_path / "pima12.csv"
    source.write_text("".join(lines))
    out = tmp_path / "attributions.csv"
    proc = run_script(source, "--url", server.url, "--batch-size", "5", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "12 rows explained, 0 refused" in proc.stderr
    header, rows = read_rows(out)
    assert header == COLUMNS
    assert [int(r["row"]) for r in rows] == list(range(12))
    with GshapClient(server.url) as client:
        threshold = client.model().threshold
        direct = client.explain(example_record(default_spec()))  # the data set's first record is the spec's example
    for r in rows:
        attributions = [float(r[f]) for f in FEATURES]
        logit = float(r["logit"])
        assert math.isclose(float(r["base_value"]) + sum(attributions), logit, abs_tol=1e-6)
        assert abs(float(r["completeness_gap"])) < 1e-6
        assert math.isclose(float(r["probability"]), 1 / (1 + math.exp(-logit)), rel_tol=1e-9)
        assert int(r["label"]) == int(float(r["probability"]) >= threshold)
        assert r["error"] == ""
    assert [float(rows[0][f]) for f in FEATURES] == [a.attribution for a in direct.attributions]


def test_api_names_missing_cells_and_refused_rows(server: LiveServer, tmp_path: Path) -> None:
    """API column names work; an empty cell is "not measured"; a refused row keeps its place and names the field."""
    good = example_record(default_spec())
    rows_in = [
        {**good, "insulin": ""},  # not measured
        {**good, "glucose": 10_000},  # outside the valid range: refused by the server
        {**good, "age": 33},
    ]
    source = tmp_path / "api.csv"
    with source.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*FEATURES, "patient_id"])
        writer.writeheader()
        for i, row in enumerate(rows_in):
            writer.writerow({**row, "patient_id": f"p{i}"})
    out = tmp_path / "out.csv"
    proc = run_script(source, "--url", server.url, "--out", out, "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert "2 rows explained, 1 refused" in proc.stderr
    _, rows = read_rows(out)
    assert [r["row"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["error"] == ""
    assert rows[1]["error"].startswith("glucose:")
    assert rows[1]["probability"] == ""
    assert rows[2]["error"] == ""
    with GshapClient(server.url) as client:
        expected = client.explain({**good, "insulin": None})
    assert [float(rows[0][f]) for f in FEATURES] == [a.attribution for a in expected.attributions]


def test_missing_required_column_stops_with_its_name(server: LiveServer, tmp_path: Path) -> None:
    """A CSV without a required feature's column stops before any request (exit 2), naming both spellings."""
    source = tmp_path / "no_age.csv"
    source.write_text("Pregnancies,Glucose,BMI,DiabetesPedigreeFunction\n1,100,30,0.5\n")
    out = tmp_path / "out.csv"
    proc = run_script(source, "--url", server.url, "--out", out, "--quiet")
    assert proc.returncode == 2
    assert "age (or Age)" in proc.stderr
    assert not out.exists()


def test_unreadable_rows_are_refused_in_their_place(server: LiveServer, tmp_path: Path) -> None:
    """A ragged row (fewer and more cells), a cell that is not UTF-8, and NaN or text in a feature: each row is
    refused in its place with the reason, without a request (NaN is never read as "not measured"); the other rows
    are explained; exit 1; the output is complete (no .partial left)."""
    good = example_record(default_spec())
    line = ",".join(str(good[f]) for f in FEATURES)
    lines = [
        ",".join(FEATURES).encode(),
        line.encode(),
        b"1,2,3",  # too few cells
        (line + ",9").encode(),  # one too many
        line.replace(str(good["glucose"]), "NaN", 1).encode(),
        line.encode().replace(str(good["bmi"]).encode(), b"\xff\xfe", 1),
        line.replace(str(good["glucose"]), "abc", 1).encode(),
        line.encode(),
    ]
    source = tmp_path / "broken.csv"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.csv"
    proc = run_script(source, "--url", server.url, "--out", out, "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert "2 rows explained, 5 refused" in proc.stderr
    _, rows = read_rows(out)
    assert [r["row"] for r in rows] == [str(i) for i in range(7)]
    errors = [r["error"] for r in rows]
    assert errors[0] == errors[6] == ""
    assert "3 cells, the header has 8" in errors[1]
    assert "9 cells, the header has 8" in errors[2]
    assert errors[3].startswith("glucose:")
    assert "not a finite number" in errors[3]
    assert errors[4] == "bmi: the cell is not UTF-8 text"
    assert errors[5].startswith("glucose:")
    assert "not a number" in errors[5]
    assert rows[0]["probability"] == rows[6]["probability"] != ""
    assert not out.with_name(out.name + ".partial").exists()
