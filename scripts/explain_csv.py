"""Explain every row of a CSV through the gshap-service API and write the attributions as a CSV.

    python scripts/explain_csv.py data/pima-indians-diabetes.csv --url http://127.0.0.1:8000 --out attributions.csv

The input's header names the features either as the API does (``glucose``, ``blood_pressure``) or as the
data set does (``Glucose``, ``BloodPressure``): the mapping is the model card's feature list (``GET /model``),
so a bundle trained on other data brings its own. Other columns (the outcome, ids) are ignored. An empty cell
means "not measured" (sent as null); a feature that may be missing may also be absent from the header.

Rows are sent with the client's ``explain_batch`` in chunks of ``--batch-size`` (at most the server's
``max_batch_records``), with a progress bar on stderr. One output row per input row, in order::

    row               0-based data row of the input CSV (header excluded), as in the bundle's split
    probability       predicted probability of the positive class (0-1)
    logit             the model's output, log-odds
    label             1 = positive (probability >= the model's threshold), 0 = negative
    base_value        expected output over the baseline distribution, in the unit of --output
    <feature> ...     one column a feature: its attribution, in the unit of --output (log-odds by default)
    completeness_gap  output - base_value - sum(attributions); about 0 for the exact method
    error             empty, or why the server refused the row (the other columns are then empty)

so that ``base_value + sum(attributions) + completeness_gap`` is the logit (with ``--output logit``). Exit
status: 0 if every row was explained, 1 if some were refused, 2 on an error that stopped the run.

A row that cannot be read is refused in its place without a request, its ``error`` saying why: more or fewer
cells than the header, a cell that is not UTF-8, a feature cell that is not a finite number (``NaN``, ``inf``,
``abc``: never read as "not measured"). The output is written to ``OUT.partial`` and renamed when complete; a run
that stops part-way leaves the rows done so far in ``OUT.partial`` and says so.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO, cast

from tqdm import tqdm

from service.client import GshapClient, GshapError, Retry
from service.schemas import BatchItemError, ExplanationBatchItem, FeatureCard

__all__ = ["RowError", "main", "output_columns", "read_records"]

Record = dict[str, int | float | None]


def _field_names(features: Sequence[FeatureCard]) -> list[str]:
    return [f.name for f in features]


def output_columns(features: Sequence[FeatureCard]) -> list[str]:
    """The header of the output CSV for a model with these features."""
    return ["row", "probability", "logit", "label", "base_value", *_field_names(features), "completeness_gap", "error"]


def _header_map(header: Sequence[str], features: Sequence[FeatureCard]) -> dict[str, str | None]:
    """Feature name → the input column holding it (its API name or its data-set column), or None if absent."""
    out: dict[str, str | None] = {}
    missing: list[str] = []
    for f in features:
        column = f.name if f.name in header else f.column if f.column in header else None
        if column is None and f.missing == "required":
            missing.append(f"{f.name} (or {f.column})")
        out[f.name] = column
    if missing:
        raise ValueError(f"the CSV has no column for the required feature(s): {', '.join(missing)}")
    return out


class RowError(ValueError):
    """A row that cannot be read: refused in its place, without a request."""


_SURROGATE = re.compile(r"[\udc80-\udcff]")


def _value(text: str, feature: FeatureCard, row: int) -> int | float | None:
    text = text.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        raise RowError(f"{feature.name}: {text[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise RowError(f"{feature.name}: {text[:40]!r} is not a finite number")
    # the API takes counts as JSON integers only: "6" and "6.0" are both the integer 6
    if feature.integer and number.is_integer():
        return int(number)
    return number


def read_records(stream: TextIO, features: Sequence[FeatureCard]) -> Iterator[tuple[int, Record | RowError]]:
    """(0-based data row, record keyed by feature name, or the :class:`RowError` that refuses the row) for each
    row of a CSV with a header.

    The header is checked at once (ValueError naming any required feature without a column); rows are read
    lazily, so a large file is never held in memory. Open the file with ``errors="surrogateescape"``: a cell that
    is not UTF-8 then refuses its row instead of stopping the run.
    """
    reader = csv.DictReader(stream)
    if reader.fieldnames is None:
        raise ValueError("the CSV is empty (no header row)")
    columns = _header_map(reader.fieldnames, features)

    width = len(reader.fieldnames)

    def rows() -> Iterator[tuple[int, Record | RowError]]:
        for row, cells in enumerate(reader):
            if None in cells or any(v is None for v in cells.values()):  # DictReader's marks of a ragged row
                count = width + len(cells.get(None) or []) - sum(v is None for k, v in cells.items() if k is not None)
                yield row, RowError(f"line {reader.line_num}: {count} cells, the header has {width}")
                continue
            try:
                record: Record = {}
                for f in features:
                    column = columns[f.name]
                    text = cells.get(column) or "" if column is not None else ""
                    if _SURROGATE.search(text):
                        raise RowError(f"{f.name}: the cell is not UTF-8 text")
                    record[f.name] = _value(text, f, row) if column is not None else None
            except RowError as exc:
                yield row, exc
                continue
            yield row, record

    return rows()


def _chunks(items: Iterator[tuple[int, Record | RowError]], size: int) -> Iterator[list[tuple[int, Record | RowError]]]:
    chunk: list[tuple[int, Record | RowError]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _output_row(row: int, result: ExplanationBatchItem | BatchItemError | RowError, names: Sequence[str]) -> list[Any]:
    if isinstance(result, RowError):
        return [row, "", "", "", "", *([""] * len(names)), "", str(result)]
    if isinstance(result, BatchItemError):
        errors = result.error.errors or []
        reason = "; ".join(f"{e.field}: {e.message}" for e in errors) or result.error.detail
        return [row, "", "", "", "", *([""] * len(names)), "", reason]
    by_name = {a.feature: a.attribution for a in result.attributions}
    p = result.prediction
    return [
        row,
        repr(p.probability),
        repr(p.logit),
        p.label,
        repr(result.base_value),
        *(repr(by_name[n]) for n in names),
        repr(result.completeness_gap),
        "",
    ]


def _count_rows(path: Path) -> int:
    with path.open(newline="", errors="surrogateescape") as fh:
        return max(0, sum(1 for _ in csv.reader(fh)) - 1)


def explain_csv(
    client: GshapClient,
    source: Path,
    out: Path,
    *,
    batch_size: int = 100,
    method: Literal["exact", "sampled", "quadrature"] | None = None,
    output: Literal["logit", "probability"] | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> tuple[int, int]:
    """Explain ``source`` row by row into ``out``; returns (rows explained, rows refused)."""
    card = client.model()
    features = card.features
    names = _field_names(features)
    size = max(1, min(batch_size, card.limits.get("max_batch_records", batch_size)))
    explained = refused = 0
    total = _count_rows(source)
    partial = out.with_name(out.name + ".partial")
    with source.open(newline="", errors="surrogateescape") as fh:
        records = read_records(fh, features)  # checks the header before the output file is created
        with (
            partial.open("w", newline="") as dst,
            tqdm(total=total, unit="row", desc="explaining", file=sys.stderr, disable=not progress) as bar,
        ):
            writer = csv.writer(dst)
            writer.writerow(output_columns(features))
            try:
                for chunk in _chunks(records, size):
                    valid = [(row, r) for row, r in chunk if not isinstance(r, RowError)]
                    results: dict[int, ExplanationBatchItem | BatchItemError | RowError] = {
                        row: r for row, r in chunk if isinstance(r, RowError)
                    }
                    if valid:
                        batch = [r for _, r in valid]
                        answer = client.explain_batch(batch, method=method, output=output, seed=seed)
                        if len(answer.results) != len(valid):
                            raise GshapError(
                                f"the server answered {len(answer.results)} results for {len(valid)} records"
                            )
                        ordered = sorted(answer.results, key=lambda r: r.index)
                        results |= {row: res for (row, _), res in zip(valid, ordered, strict=True)}
                        explained += answer.succeeded
                        refused += answer.failed
                    refused += len(chunk) - len(valid)
                    for row, _ in chunk:
                        writer.writerow(_output_row(row, results[row], names))
                    bar.update(len(chunk))
            except BaseException as exc:
                dst.flush()
                raise GshapError(f"{exc}; the rows done so far are in {partial}") from exc
    partial.replace(out)
    return explained, refused


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Explain every row of a CSV through the gshap-service API (POST /explain/batch).",
    )
    parser.add_argument("csv", type=Path, help="input CSV with a header row (API or data-set column names)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("GSHAP_CLIENT_API_KEY"),
        help="API key, sent as a bearer token (default: $GSHAP_CLIENT_API_KEY, so it stays out of `ps`)",
    )
    parser.add_argument("--batch-size", type=int, default=100, help="records per request (capped by the server)")
    parser.add_argument("--out", type=Path, default=None, help="output CSV (default: <input>.attributions.csv)")
    parser.add_argument("--method", choices=["exact", "sampled", "quadrature"], default=None)
    parser.add_argument("--output", choices=["logit", "probability"], default=None, help="scale explained")
    parser.add_argument("--seed", type=int, default=None, help="seed of the 'sampled' method")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print("explain_csv: --batch-size must be at least 1", file=sys.stderr)
        return 2
    out: Path = args.out or args.csv.with_suffix(".attributions.csv")
    try:
        with GshapClient(args.url, api_key=args.api_key, timeout=args.timeout, retry=Retry(max_attempts=5)) as client:
            explained, refused = explain_csv(
                client,
                args.csv,
                out,
                batch_size=args.batch_size,
                method=cast(Any, args.method),
                output=cast(Any, args.output),
                seed=args.seed,
                progress=not args.quiet,
            )
    except (GshapError, ValueError, OSError) as exc:
        print(f"explain_csv: {exc}", file=sys.stderr)
        return 2
    print(f"{explained} rows explained, {refused} refused; wrote {out}", file=sys.stderr)
    return 1 if refused else 0


if __name__ == "__main__":
    raise SystemExit(main())
