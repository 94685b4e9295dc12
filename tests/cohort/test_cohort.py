"""`gshap explain-cohort`: the input rules, the Parquet output, and the same numbers as a real `/explain/batch`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import default_spec
from live_server import ROOT, LiveServer, running_server

from service.cli import main
from service.cohort import CohortInputError, CohortWriter, inspect_input, output_schema
from service.cohort.engines import _rebatch, run_cohort
from service.cohort.table import attribution_column, parse_csv_cell
from service.runtime.inference import ExplainOptions

SPEC = default_spec()  # the columns are the served bundle's features: here the default bundle's
NAMES = SPEC.names


def cohort_rows(n: int = 36, seed: int = 0) -> list[dict[str, Any]]:
    """Seeded records (some not measured, some outside the training range) and five rows the API refuses."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        row: dict[str, Any] = {
            "id": f"R{i:03d}",
            "pregnancies": int(rng.integers(0, 12)),
            "glucose": float(rng.integers(70, 200)),
            "blood_pressure": float(rng.integers(50, 100)),
            "skin_thickness": float(rng.integers(10, 50)),
            "insulin": float(rng.integers(20, 400)),
            "bmi": round(float(rng.uniform(19, 50)), 1),
            "diabetes_pedigree_function": round(float(rng.uniform(0.08, 2.4)), 3),
            "age": float(rng.integers(21, 80)),
        }
        if i % 5 == 1:
            row["insulin"] = None  # not measured: imputed
        if i % 7 == 2:
            row["skin_thickness"] = 0.0  # 0 means not measured for this feature
        if i % 9 == 3:
            row["insulin"] = 1400.0  # inside the valid range, above the training range: a warning
        rows.append(row)
    bad = [
        (4, "glucose", 10_000.0),  # above the valid range
        (9, "pregnancies", 2.5),  # a count must be whole
        (15, "age", None),  # required
        (22, "bmi", float("inf")),
        (30, "glucose", -1.0),
    ]
    for i, name, value in bad:
        if i < n:
            rows[i][name] = value
    return rows


REFUSED = {4, 9, 15, 22, 30}


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    columns = {"id": pa.array([r["id"] for r in rows])}
    columns |= {n: pa.array([r[n] for r in rows], pa.float64()) for n in NAMES}
    pq.write_table(pa.table(columns), path)
    return path


def cell(value: Any) -> str:
    """A value as a CSV cell: empty for None, JSON's spelling of numbers (1e999 for infinity), text as is."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return "1e999" if value == float("inf") else repr(value)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", *NAMES])
        for r in rows:
            w.writerow([r["id"], *(cell(r[n]) for n in NAMES)])
    return path


def read(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return rows


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with running_server() as live:
        yield live


def api_batch(server: LiveServer, rows: list[dict[str, Any]], **settings: Any) -> list[dict[str, Any]]:
    records = [{k: v for k, v in r.items() if k != "id"} for r in rows]
    body = json.dumps({"records": records, **settings}, allow_nan=True).replace("Infinity", "1e999")
    answer = httpx.post(
        f"{server.url}/explain/batch", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    results: list[dict[str, Any]] = answer.json()["results"]
    return results


def assert_same_as_api(out: list[dict[str, Any]], api: list[dict[str, Any]]) -> None:
    assert len(out) == len(api)
    for row, item in zip(out, api, strict=True):
        if not item["ok"]:
            assert row["probability"] is None
            assert row[attribution_column("glucose")] is None
            mine = json.loads(row["error"])
            theirs = {k: v for k, v in item["error"].items() if k not in ("instance", "request_id")}
            assert mine == theirs
            continue
        assert row["error"] is None
        p = item["prediction"]
        assert (row["probability"], row["logit"], row["label"]) == (p["probability"], p["logit"], p["label"])
        assert (row["base_value"], row["completeness_gap"]) == (item["base_value"], item["completeness_gap"])
        assert [row[attribution_column(n)] for n in NAMES] == [a["attribution"] for a in item["attributions"]]
        assert row["imputed"] == p["imputed"]
        assert row["warnings"] == p["warnings"]


def test_csv_cells_are_read_as_json_numbers_or_left_as_text() -> None:
    """An empty cell is not measured, a JSON number is that number, and any other text stays text (refused)."""
    assert [parse_csv_cell(c) for c in (None, "", "148", "-3", "33.6", "1e2")] == [None, None, 148, -3, 33.6, 100.0]
    assert [parse_csv_cell(c) for c in ("abc", "NA", "NaN", "true", " 5", "0x10")] == [
        "abc", "NA", "NaN", "true", " 5", "0x10"
    ]  # fmt: skip
    assert parse_csv_cell("1e999") == float("inf")  # as JSON's 1e999 in the API, then refused by the schema


def test_output_has_the_contract_columns() -> None:
    """The output columns are id, the inputs, the prediction, base_value, completeness_gap, attribution_<f>, imputed,
    warnings and error, in that order."""
    expected = ["id", *NAMES, "probability", "logit", "label", "base_value", "completeness_gap"]
    expected += [f"attribution_{n}" for n in NAMES] + ["imputed", "warnings", "error"]
    assert output_schema(SPEC).names == expected


def test_parquet_cohort_matches_a_real_explain_batch(server: LiveServer, tmp_path: Path) -> None:
    """Every valid row's numbers equal /explain/batch's bit for bit; a refused row carries the API's problem."""
    rows = cohort_rows()
    result = run_cohort(
        inspect_input(write_parquet(rows, tmp_path / "in.parquet")), tmp_path / "out.parquet", batch_size=7,
        progress=False,
    )  # fmt: skip
    assert (result.rows, result.refused) == (len(rows), len(REFUSED))
    out = read(tmp_path / "out.parquet")
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert {i for i, r in enumerate(out) if r["error"] is not None} == REFUSED
    assert_same_as_api(out, api_batch(server, rows))
    assert out[1]["imputed"] == ["insulin"]
    assert out[3]["warnings"][0]["feature"] == "insulin"


def test_csv_cohort_with_other_settings_matches_the_api(server: LiveServer, tmp_path: Path) -> None:
    """A CSV explained with method sampled, a seed and the probability output gives the API's numbers for them."""
    rows = cohort_rows(24, seed=1)
    rows[5]["blood_pressure"] = "abc"  # text: the API refuses a string
    settings = {"method": "sampled", "n_samples": 16, "seed": 3, "output": "probability"}
    options = ExplainOptions(method="sampled", n_samples=16, seed=3, output="probability")
    src = write_csv(rows, tmp_path / "in.csv")
    run_cohort(inspect_input(src), tmp_path / "out.parquet", options=options, batch_size=5, progress=False)
    out = read(tmp_path / "out.parquet")
    assert_same_as_api(out, api_batch(server, rows, **settings))
    assert json.loads(out[5]["error"])["errors"][0]["field"] == "blood_pressure"
    meta = pq.read_schema(tmp_path / "out.parquet").metadata
    assert (meta[b"gshap.method"], meta[b"gshap.n_samples"], meta[b"gshap.output"]) == (
        b"sampled",
        b"16",
        b"probability",
    )


def test_csv_and_parquet_inputs_give_the_same_rows(tmp_path: Path) -> None:
    """The same records as CSV text and as typed Parquet give the same output, whatever the batch size."""
    rows = cohort_rows(20, seed=2)
    run_cohort(inspect_input(write_csv(rows, tmp_path / "a.csv")), tmp_path / "a.parquet", batch_size=3, progress=False)
    pq_in = write_parquet(rows, tmp_path / "b-in.parquet")
    run_cohort(inspect_input(pq_in), tmp_path / "b.parquet", batch_size=1000, progress=False)
    assert read(tmp_path / "a.parquet") == read(tmp_path / "b.parquet")


def test_nan_and_null_in_parquet_mean_not_measured(tmp_path: Path) -> None:
    """A null or NaN cell in a typed column is 'not measured' (imputed), and NaN in a required feature is refused."""
    rows = cohort_rows(3)
    table = pa.table(
        {"id": pa.array([1, 2, 3], pa.int32())} | {n: pa.array([r[n] for r in rows], pa.float64()) for n in NAMES}
    )
    table = table.set_column(NAMES.index("insulin") + 1, "insulin", pa.array([float("nan"), None, 90.0]))
    table = table.set_column(NAMES.index("age") + 1, "age", pa.array([30.0, 40.0, float("nan")]))
    pq.write_table(table, tmp_path / "in.parquet")
    run_cohort(inspect_input(tmp_path / "in.parquet"), tmp_path / "out.parquet", progress=False)
    out = read(tmp_path / "out.parquet")
    assert [r["id"] for r in out] == [1, 2, 3]  # the id's type is kept
    assert out[0]["imputed"] == out[1]["imputed"] == ["insulin"]
    assert out[0]["insulin"] is None
    assert json.loads(out[2]["error"])["errors"][0] == {
        "field": "age", "rule": "float_type", "message": "Input should be a valid number"
    }  # fmt: skip


def test_rows_without_an_id_are_numbered_and_absent_optional_features_are_not_measured(tmp_path: Path) -> None:
    """Without an id column the id is the 0-based row number; an absent optional feature column is imputed."""
    rows = cohort_rows(12)
    keep = [n for n in NAMES if n != "insulin"]
    pq.write_table(pa.table({n: pa.array([r[n] for r in rows], pa.float64()) for n in keep}), tmp_path / "in.parquet")
    run_cohort(inspect_input(tmp_path / "in.parquet"), tmp_path / "out.parquet", batch_size=5, progress=False)
    out = read(tmp_path / "out.parquet")
    assert [r["id"] for r in out] == list(range(12))
    assert all("insulin" in r["imputed"] for r in out if r["error"] is None)


def test_a_folder_of_parquet_files_is_one_cohort_in_file_order(tmp_path: Path) -> None:
    """A folder of Parquet files is read in file-name order, as one cohort."""
    rows = cohort_rows(30)
    (tmp_path / "in").mkdir()
    for k in range(3):
        write_parquet(rows[k * 10 : (k + 1) * 10], tmp_path / "in" / f"part-{k}.parquet")
    run_cohort(inspect_input(tmp_path / "in"), tmp_path / "dir.parquet", batch_size=4, progress=False)
    run_cohort(
        inspect_input(write_parquet(rows, tmp_path / "one.parquet")), tmp_path / "one-out.parquet", progress=False
    )
    assert read(tmp_path / "dir.parquet") == read(tmp_path / "one-out.parquet")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (["glucos", *NAMES], "unknown columns glucos"),
        (["Outcome", *NAMES], "unknown columns Outcome"),
        ([n for n in NAMES if n != "age"], "required feature columns are absent: age"),
        (["age", *NAMES], "columns given more than once: age"),
    ],
)
def test_input_layout_errors_stop_before_any_work(tmp_path: Path, header: list[str], message: str) -> None:
    """An unknown, missing required or duplicated column is refused by name before any row is explained."""
    path = tmp_path / "bad.csv"
    path.write_text(",".join(header) + "\n")
    with pytest.raises(CohortInputError, match=message):
        inspect_input(path)


def test_drop_ignores_named_columns(tmp_path: Path) -> None:
    """--drop names columns to ignore, e.g. the outcome of a training file."""
    path = tmp_path / "in.csv"
    path.write_text(",".join([*NAMES, "Outcome"]) + "\n" + "1,148,72,35,0,33.6,0.627,50,1\n")
    inp = inspect_input(path, drop=["Outcome"])
    assert inp.columns == list(NAMES)
    assert inp.rows == 1


def test_cli_exit_codes_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command exits 1 when rows were refused (0 when none), 2 with one line for a bad input or setting."""
    rows = cohort_rows(8)
    src = write_parquet(rows, tmp_path / "in.parquet")
    assert main(["explain-cohort", str(src), str(tmp_path / "o.parquet"), "--no-progress"]) == 1
    assert "8 rows (7 explained, 1 refused)" in capsys.readouterr().out
    good = write_parquet([r for i, r in enumerate(rows) if i != 4], tmp_path / "good.parquet")
    assert main(["explain-cohort", str(good), str(tmp_path / "g.parquet"), "--no-progress"]) == 0
    assert main(["explain-cohort", str(tmp_path / "nope.csv"), str(tmp_path / "x.parquet")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert (
        main(["explain-cohort", str(src), str(tmp_path / "x.parquet"), "--method", "sampled", "--n-samples", "1"]) == 2
    )
    assert "--n-samples must be at least 2" in capsys.readouterr().err
    assert main(["explain-cohort", str(src), str(tmp_path / "x.parquet"), "--seed", "-1"]) == 2
    assert "--seed" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_a_failed_job_leaves_no_output(tmp_path: Path) -> None:
    """The writer writes OUTPUT.partial and renames it only when complete; an aborted job leaves neither."""
    out = tmp_path / "out.parquet"
    writer = CohortWriter(out, output_schema(SPEC))
    assert writer.partial.exists()
    assert not out.exists()
    writer.abort()
    assert not writer.partial.exists()
    assert not out.exists()


def test_rebatch_gives_exact_batch_sizes() -> None:
    """Input blocks of any size are cut into batches of exactly N rows (the last one shorter), in order."""
    blocks = [pa.record_batch({"x": list(range(a, b))}) for a, b in ((0, 3), (3, 4), (4, 15), (15, 16))]
    tables = list(_rebatch(iter(blocks), 5))
    assert [t.num_rows for t in tables] == [5, 5, 5, 1]
    assert pa.concat_tables(tables).column("x").to_pylist() == list(range(16))


def test_the_command_runs_as_a_process_with_a_progress_bar(tmp_path: Path) -> None:
    """`python -m service.cli explain-cohort` (the console script's code) writes the file and a tqdm bar on stderr."""
    src = write_csv(cohort_rows(10), tmp_path / "in.csv")
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "explain-cohort", str(src), str(tmp_path / "o.parquet")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "explain-cohort: 100%" in proc.stderr
    assert "10.0/10.0" in proc.stderr
    assert pq.read_metadata(tmp_path / "o.parquet").num_rows == 10


@pytest.mark.parametrize("output", ["logit", "probability"])
def test_no_number_depends_on_the_batch_size(tmp_path: Path, output: str) -> None:
    """A row's numbers are the same in batches of 1, 5 or all rows (sampled estimator, both outputs)."""
    src = inspect_input(write_parquet(cohort_rows(24, seed=1), tmp_path / "in.parquet"))
    options = ExplainOptions(method="sampled", n_samples=16, seed=3, output=output)  # type: ignore[arg-type]
    files = []
    for size in (1, 5, 100):
        files.append(tmp_path / f"out-{size}.parquet")
        run_cohort(src, files[-1], options=options, batch_size=size, progress=False)
    assert read(files[0]) == read(files[1]) == read(files[2])


def test_the_cohort_job_loads_no_web_framework() -> None:
    """What a Ray worker imports (the cohort's modules, the CLI's cohort path) loads neither FastAPI, Starlette,
    uvicorn nor the web layer: the refused rows' problems come from service.problems."""
    code = (
        "import sys, service.cohort.engines, service.cohort.table; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'uvicorn'}), "
        "[m for m in sys.modules if m.startswith('service.api')])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] []"


# ---- broken files (issue 24) ---------------------------------------------------------------------------------------


def _csv_line(row: dict[str, Any]) -> str:
    return ",".join([row["id"], *("" if row[n] is None else repr(row[n]) for n in NAMES)])


def test_unreadable_csv_rows_are_refused_in_their_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ragged row, a row with bytes that are not UTF-8 deep in the file (in the third batch), and an integer
    cell of 5,000 digits: each row is refused with its problem in its place (exit 1, "some rows refused"),
    and every other row is explained exactly as in the same file without them."""
    rows = [r for i, r in enumerate(cohort_rows(3000, seed=3)) if i not in REFUSED]
    lines = [_csv_line(r) for r in rows]
    good = tmp_path / "good.csv"
    good.write_text("\n".join(["id," + ",".join(NAMES), *lines]) + "\n")
    head = ("id," + ",".join(NAMES) + "\n").encode()
    body = [line.encode() for line in lines]
    body.insert(10, b"X1,1,2,3")  # ragged: 4 cells
    body.insert(2500, "Xé,1,".encode() + b"\xff\xfe" + b",72,35,0,33.6,0.627,50")  # not UTF-8
    body.insert(2700, b"X3,1," + b"9" * 5000 + b",72,35,0,33.6,0.627,50")  # an integer Python will not read
    bad = tmp_path / "bad.csv"
    bad.write_bytes(head + b"\n".join(body) + b"\n")
    out_good, out_bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    assert main(["explain-cohort", str(good), str(out_good), "--no-progress"]) == 0
    assert main(["explain-cohort", str(bad), str(out_bad), "--no-progress"]) == 1
    assert f"{len(rows) + 3} rows ({len(rows)} explained, 3 refused)" in capsys.readouterr().out
    table = pq.read_table(out_bad).to_pylist()
    refused = {r["id"]: json.loads(r["error"]) for r in table if r["error"]}
    assert set(refused) == {None, "Xé", "X3"}
    rules = {k: {e["rule"] for e in v["errors"]} for k, v in refused.items()}
    assert rules[None] == {"ragged_row"}
    assert "line 12" in refused[None]["errors"][0]["message"]
    assert rules["Xé"] == {"not_utf8"}
    assert "glucose" in {e["field"] for e in refused["X3"]["errors"]}
    kept = [r for r in table if not r["error"]]
    assert kept == pq.read_table(out_good).to_pylist()


def test_output_is_checked_before_the_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """OUTPUT that is a folder: exit 2 at once with one line, before any row is explained; nothing is left."""
    src = write_parquet(cohort_rows(8), tmp_path / "in.parquet")
    folder = tmp_path / "out.parquet"
    folder.mkdir()
    assert main(["explain-cohort", str(src), str(folder), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "OUTPUT is a folder" in err[0]
    assert not (tmp_path / "out.parquet.partial").exists()
    assert list(folder.iterdir()) == []


def test_a_file_that_cannot_be_read_exits_2_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CSV whose header is not UTF-8, and a Parquet file that is not Parquet: exit 2 with the reason, no output."""
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_bytes(b"\xff\xfe" + ",".join(NAMES).encode() + b"\n1,2\n")
    not_parquet = tmp_path / "bad.parquet"
    not_parquet.write_bytes(b"PAR1 not really")
    for src in (bad_csv, not_parquet):
        assert main(["explain-cohort", str(src), str(tmp_path / "o.parquet"), "--no-progress"]) == 2
        assert "cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()
    assert not (tmp_path / "o.parquet.partial").exists()


def test_rows_explained_before_a_later_failure_are_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder of two Parquet files whose second turns out broken mid-job (its data pages overwritten, its footer
    intact, so the layout check passes): exit 2 naming OUTPUT.partial, which holds the first file's rows, all
    explained; OUTPUT itself is not written (the job is not complete)."""
    folder = tmp_path / "in"
    folder.mkdir()
    rows = cohort_rows(40)
    write_parquet(rows[:20], folder / "a.parquet")
    second = write_parquet(rows[20:], folder / "b.parquet")
    data = bytearray(second.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4 : len(data) - footer] = b"\x07" * (len(data) - footer - 4)
    second.write_bytes(bytes(data))
    out = tmp_path / "out.parquet"
    code = main(["explain-cohort", str(folder), str(out), "--no-progress", "--batch-size", "20"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "kept in" in err
    assert not out.exists()
    kept = pq.read_table(tmp_path / "out.parquet.partial").to_pylist()
    assert [r["id"] for r in kept] == [r["id"] for r in rows[:20]]
    assert all(r["probability"] is not None for r in kept if r["error"] is None)


def test_a_row_not_utf8_near_the_top_is_refused_not_the_file(tmp_path: Path) -> None:
    """A row that is not UTF-8 on line 2 (inside the first buffer the header check reads) refuses that row; only a
    header that is not UTF-8 makes the file unreadable (exit 2)."""
    rows = cohort_rows(6, seed=4)
    head = ("id," + ",".join(NAMES) + "\n").encode()
    src = tmp_path / "in.csv"
    src.write_bytes(head + b"X0,1,\xff,72,35,0,33.6,0.627,50\n" + "\n".join(_csv_line(r) for r in rows).encode())
    out = tmp_path / "out.parquet"
    assert main(["explain-cohort", str(src), str(out), "--no-progress"]) == 1
    table = pq.read_table(out).to_pylist()
    assert len(table) == 7
    assert [e["rule"] for e in json.loads(table[0]["error"])["errors"]] == ["not_utf8"]
