"""One batch of cohort rows in, one batch of explained rows out (Arrow tables), and the input's layout.

Input rows: one column per API feature name (``glucose``, ``blood_pressure`` …, in the data set's units), an
optional ``id`` column passed through, nothing else (an unknown column is refused before any work, as the API
refuses an unknown field: a misspelled ``glucos`` would otherwise turn a measurement into a missing value;
``--drop COLUMN`` ignores a column on purpose). A feature that may be missing may be absent from the input: every
row then has it "not measured", as an omitted JSON field.

Cell values follow the API's rules (the record model :func:`service.schemas.patient_record_model` builds from the
bundle's feature specification, strict):

- CSV cells are text. An empty cell is "not measured" (JSON ``null``); a cell written as a JSON number
  (``148``, ``33.6``, ``1e2``) is that number, as the API's JSON parser reads it; anything else (``abc``, ``NA``,
  ``NaN``, ``true``) stays text and the row is refused for that field, as the API refuses ``"148"`` or ``true``.
- Parquet cells are typed. A null is "not measured"; so is a floating-point NaN (pandas' marker of a missing
  value, which JSON cannot carry); ±infinity, booleans and strings are refused as in the API.
- 0 means "not measured" for the features whose zero does (as in the API), and the row lists them in ``imputed``.

Output columns (:func:`output_schema`), one row per input row, in input order::

    id                        the input's id, or the 0-based row number when the input has no id column
    <feature> ...             the input values as numbers (null: not given, or not a number)
    probability, logit, label the prediction (label 1 when probability >= the model's threshold)
    base_value                expected output over the baseline distribution, in the unit of --output
    completeness_gap          output - base_value - sum of attributions
    attribution_<feature> ... one column per feature, in the unit of --output
    imputed                   the features not measured (imputed with the training median)
    warnings                  values outside the training range: {feature, code, message, value, train_min, train_max}
    error                     null, or the JSON text of the problem (RFC 9457) that /explain/batch gives the row

A refused row has null prediction and attribution columns; the job goes on. A CSV row that cannot be read is
refused the same way, with its problem, and the rows around it are explained: a ragged row (``ragged_row``: more
or fewer cells than the header), a cell that is not UTF-8 (``not_utf8``), an integer too long to read (refused as
text, as the API refuses it). The file's key-value metadata names the model version and the explanation settings
(``gshap.*`` keys).
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from service.model.features import FeatureSpec
from service.model.store import load_bundle
from service.problems import FieldError, field_errors, invalid_input, problem_body
from service.runtime.inference import (
    ExplainOptions,
    InferenceRuntime,
    RecordExplanation,
    configure_torch,
    ensure_compatible,
)
from service.schemas import patient_record_model

__all__ = [
    "ID_COLUMN",
    "ROW_PROBLEM_COLUMN",
    "CohortExplainer",
    "CohortInput",
    "CohortInputError",
    "CohortWriter",
    "NotUtf8",
    "attribution_column",
    "check_output",
    "cohort_metadata",
    "inspect_input",
    "output_schema",
    "parse_csv_cell",
    "with_row_numbers",
]

ID_COLUMN = "id"
ROW_PROBLEM_COLUMN = "__gshap_row_problem"  # set by the CSV reader for a row it could not read (JSON FieldErrors)
InputKind = Literal["csv", "parquet"]

WARNING_TYPE = pa.struct(
    [
        ("feature", pa.string()),
        ("code", pa.string()),
        ("message", pa.string()),
        ("value", pa.float64()),
        ("train_min", pa.float64()),
        ("train_max", pa.float64()),
    ]
)

# a JSON number (RFC 8259): what the API would read as a number, and nothing else ("NaN", "0x10", " 5" are text)
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_JSON_INTEGER = re.compile(r"-?(?:0|[1-9]\d*)")


class CohortInputError(ValueError):
    """The input cannot be read as a cohort (layout, not a row's values): the job stops before any work."""


def attribution_column(feature: str) -> str:
    """The output column of a feature's attribution."""
    return f"attribution_{feature}"


class NotUtf8:
    """A CSV cell whose bytes are not UTF-8: its row is refused (``not_utf8``)."""


def parse_csv_cell(text: str | bytes | None) -> Any:
    """A CSV cell as the API would receive it: ``None`` (empty: not measured), an int, a float, or the text
    (``bytes`` are decoded as UTF-8; :class:`NotUtf8` when they are not). An integer too long for Python to
    read (over 4,300 digits) stays text, and its row is refused like any text where a number belongs."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return NotUtf8()
    if text is None or text == "":
        return None
    if _JSON_INTEGER.fullmatch(text):
        try:
            return int(text)
        except ValueError:  # more digits than int() reads (sys.get_int_max_str_digits)
            return text
    if _JSON_NUMBER.fullmatch(text):
        return float(text)  # "1e999" is infinite here as in the API's JSON parser, which then refuses it
    return text


def check_output(path: str | os.PathLike[str]) -> Path:
    """OUTPUT checked before any work (:class:`CohortInputError` otherwise): not a folder, its folder creatable
    and writable, and no folder where ``OUTPUT.partial`` goes."""
    out = Path(path)
    if out.is_dir():
        raise CohortInputError(f"{out}: OUTPUT is a folder; name a file (e.g. {out / 'explained.parquet'})")
    partial = out.with_name(out.name + ".partial")
    if partial.is_dir():
        raise CohortInputError(f"{partial}: a folder is where the partial output goes")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CohortInputError(f"{parent}: cannot create the output's folder ({exc.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CohortInputError(f"{parent}: the output's folder is not writable")
    return out


def output_schema(spec: FeatureSpec, id_type: pa.DataType | None = None) -> pa.Schema:
    """The output's columns and types (``id_type``: the input's id type; None: row numbers, int64)."""
    fields: list[pa.Field] = [pa.field(ID_COLUMN, id_type if id_type is not None else pa.int64())]
    fields += [pa.field(f.name, pa.float64()) for f in spec]
    fields += [
        pa.field("probability", pa.float64()),
        pa.field("logit", pa.float64()),
        pa.field("label", pa.int8()),
        pa.field("base_value", pa.float64()),
        pa.field("completeness_gap", pa.float64()),
    ]
    fields += [pa.field(attribution_column(f.name), pa.float64()) for f in spec]
    fields += [
        pa.field("imputed", pa.list_(pa.string())),
        pa.field("warnings", pa.list_(WARNING_TYPE)),
        pa.field("error", pa.string()),
    ]
    return pa.schema(fields)


# ---- the input's layout -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CohortInput:
    """Where the rows are and which columns to read: ``features`` (present in the input, spec order), ``id``."""

    path: Path
    kind: InputKind
    files: tuple[Path, ...]
    features: tuple[str, ...]
    has_id: bool
    id_type: pa.DataType | None
    rows: int | None  # exact for Parquet (footer metadata); lines after the header for CSV (an estimate)

    @property
    def columns(self) -> list[str]:
        """The columns read from the input: the id (if any), then the features present."""
        return ([ID_COLUMN] if self.has_id else []) + list(self.features)


def _csv_header(path: Path) -> list[str]:
    """The header row, which must be UTF-8. The rows after it are not decoded here: the text reader decodes a whole
    buffer at a time, and a row that is not UTF-8 near the top must be refused in its place, not refuse the file."""
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise CohortInputError(f"{path}: the CSV has no header row")
    for cell in header:
        try:
            cell.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CohortInputError(f"{path}: cannot be read as CSV (its header row is not UTF-8: {exc})") from None
    return header


def _count_lines(path: Path) -> int:
    count = 0
    last = b"\n"
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def inspect_input(
    path: str | os.PathLike[str], spec: FeatureSpec | None = None, drop: Iterable[str] = ()
) -> CohortInput:
    """The layout of INPUT (a ``.csv`` file, a Parquet file or a folder of ``*.parquet`` files), checked against
    the feature specification ``spec`` of the model that will explain it (None: the default bundle's).

    Raises :class:`CohortInputError` for a missing or unreadable input, an unknown column (not a feature, not
    ``id``, not dropped), a duplicated column or a required feature that is absent.
    """
    p = Path(path)
    if not p.exists():
        raise CohortInputError(f"{p}: no such file or folder")
    files: tuple[Path, ...]
    id_type: pa.DataType | None = None
    rows: int | None
    try:
        if p.is_dir():
            files = tuple(sorted(q for q in p.rglob("*.parquet") if q.is_file()))
            if not files:
                raise CohortInputError(f"{p}: the folder holds no *.parquet file")
            kind: InputKind = "parquet"
        elif p.suffix.lower() == ".csv":
            files, kind = (p,), "csv"
        else:
            files, kind = (p,), "parquet"
        if kind == "csv":
            columns = _csv_header(p)
            rows = max(_count_lines(p) - 1, 0)
        else:
            schema = pq.read_schema(files[0])
            columns = list(schema.names)
            rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            if ID_COLUMN in columns:
                id_type = schema.field(ID_COLUMN).type
            for other in files[1:]:
                if pq.read_schema(other).names != columns:
                    raise CohortInputError(f"{other}: its columns differ from those of {files[0]}")
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        what = "CSV" if p.suffix.lower() == ".csv" else "Parquet"
        raise CohortInputError(f"{p}: cannot be read as {what} ({exc})") from exc
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise CohortInputError(f"{p}: columns given more than once: {', '.join(duplicates)}")
    if spec is None:
        spec = load_bundle().spec
    names = spec.names
    dropped = set(drop)
    unknown = [c for c in columns if c not in names and c != ID_COLUMN and c not in dropped]
    if unknown:
        raise CohortInputError(
            f"{p}: unknown columns {', '.join(unknown)}; the columns are the API's feature names "
            f"({', '.join(names)}) and an optional '{ID_COLUMN}' (ignore others with --drop)"
        )
    absent = [f.name for f in spec if f.name not in columns and not f.may_be_missing]
    if absent:
        raise CohortInputError(f"{p}: required feature columns are absent: {', '.join(absent)}")
    features = tuple(n for n in names if n in columns)
    has_id = ID_COLUMN in columns and ID_COLUMN not in dropped
    if kind == "csv" and has_id:
        id_type = pa.string()  # an identifier as written, never re-typed
    return CohortInput(path=p, kind=kind, files=files, features=features, has_id=has_id, id_type=id_type, rows=rows)


# ---- one batch --------------------------------------------------------------------------------------------


def cohort_metadata(model_version: str, threshold: float, options: ExplainOptions) -> dict[str, str]:
    """The output file's key-value metadata (``gshap.*``): the model version, its threshold and the settings."""
    return {
        "gshap.model_version": model_version,
        "gshap.threshold": repr(threshold),
        "gshap.method": options.method,
        "gshap.n_samples": "" if options.n_samples is None else str(options.n_samples),
        "gshap.seed": str(options.seed),
        "gshap.output": options.output,
    }


def _cell_value(value: Any) -> Any:
    # a NaN in a typed column is "not measured" (JSON cannot carry NaN; pandas writes it for a missing float)
    if type(value) is float and math.isnan(value):
        return None
    return value


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class CohortExplainer:
    """The per-batch function of both engines: an Arrow table of input rows → an Arrow table of output rows.

    Built once per process (a Ray worker builds it once): it loads the bundle, builds the API's record model from
    its specification and the :class:`InferenceRuntime`, and warms it up. Calling it validates each row with that
    record model (a refused row gets its problem in ``error``) and explains the valid rows with
    :meth:`InferenceRuntime.explain` in one call. A row's numbers never depend on its batch neighbours, so any
    batching gives the same file.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        method: str = "exact",
        n_samples: int | None = None,
        seed: int = 0,
        output: str = "logit",
        csv_text: bool = False,
    ) -> None:
        configure_torch(1)
        bundle = load_bundle(model_path)
        ensure_compatible(bundle, bundle.spec)
        self.record_model = patient_record_model(bundle.spec)
        self.runtime = InferenceRuntime(bundle)
        self.runtime.warm_up()
        self.spec = bundle.spec
        self.options = ExplainOptions(method=method, n_samples=n_samples, seed=seed, output=output)  # type: ignore[arg-type]
        self.csv_text = csv_text
        self.bundle_path = str(bundle.path)

    def metadata(self) -> dict[str, str]:
        """The output file's key-value metadata: the model and the explanation settings."""
        return cohort_metadata(self.runtime.model_version, float(self.runtime.bundle.threshold), self.options)

    def _row_problems(self, table: pa.Table, records: list[dict[str, Any]]) -> list[list[FieldError]]:
        """The reader's problems for each row (ragged, ...), and cells that are not UTF-8."""
        problems: list[list[FieldError]] = [[] for _ in records]
        if ROW_PROBLEM_COLUMN in table.column_names:
            for i, text in enumerate(table.column(ROW_PROBLEM_COLUMN).to_pylist()):
                if text:
                    problems[i] += [FieldError(**e) for e in orjson.loads(text)]
        for i, record in enumerate(records):
            for name, value in record.items():
                if isinstance(value, NotUtf8):
                    problems[i].append(FieldError(name, "not_utf8", "The cell is not UTF-8 text."))
                    record[name] = None
        return problems

    def _records(self, table: pa.Table) -> list[dict[str, Any]]:
        present = [f.name for f in self.spec if f.name in table.column_names]
        columns: list[list[Any]] = []
        for name in present:
            values = table.column(name).to_pylist()
            columns.append([parse_csv_cell(v) for v in values] if self.csv_text else [_cell_value(v) for v in values])
        if not present:
            return [{} for _ in range(table.num_rows)]
        return [dict(zip(present, row, strict=True)) for row in zip(*columns, strict=True)]

    def __call__(self, table: pa.Table) -> pa.Table:
        records = self._records(table)
        valid: list[tuple[int, dict[str, Any]]] = []
        errors: list[str | None] = [None] * len(records)
        unreadable = self._row_problems(table, records)
        for i, item in enumerate(records):
            if unreadable[i]:
                problem = problem_body(invalid_input(unreadable[i]), instance=None, request_id=None)
                problem.pop("request_id", None)
                errors[i] = orjson.dumps(problem).decode()
                continue
            try:
                valid.append((i, self.record_model.model_validate(item).model_dump()))
            except ValidationError as exc:
                problem = problem_body(invalid_input(field_errors(exc.errors())), instance=None, request_id=None)
                problem.pop("request_id", None)  # no request: a row is named by its id
                errors[i] = orjson.dumps(problem).decode()
        explanations = self.runtime.explain([r for _, r in valid], self.options)
        answers: list[RecordExplanation | None] = [None] * len(records)
        for (i, _), ex in zip(valid, explanations, strict=True):
            answers[i] = ex
        return self._table(table, records, answers, errors)

    def _table(
        self,
        table: pa.Table,
        records: Sequence[Mapping[str, Any]],
        answers: Sequence[RecordExplanation | None],
        errors: Sequence[str | None],
    ) -> pa.Table:
        id_type = table.schema.field(ID_COLUMN).type if ID_COLUMN in table.column_names else None
        ids: Any = table.column(ID_COLUMN) if id_type is not None else None
        if id_type is not None and pa.types.is_binary(id_type):  # a CSV id, read as bytes: text as written
            id_type = pa.string()
            ids = pa.array(
                [None if v is None else v.decode("utf-8", "replace") for v in ids.to_pylist()], type=pa.string()
            )
        schema = output_schema(self.spec, id_type)
        names = self.spec.names
        cols: dict[str, Any] = {}
        if id_type is not None:
            cols[ID_COLUMN] = ids
        for name in names:
            cols[name] = [_as_number(r.get(name)) for r in records]

        def pred(get: Any) -> list[Any]:
            return [None if a is None else get(a) for a in answers]

        cols["probability"] = pred(lambda a: a.prediction.probability)
        cols["logit"] = pred(lambda a: a.prediction.logit)
        cols["label"] = pred(lambda a: a.prediction.label)
        cols["base_value"] = pred(lambda a: a.base_value)
        cols["completeness_gap"] = pred(lambda a: a.completeness_gap)
        for j, name in enumerate(names):
            cols[attribution_column(name)] = pred(lambda a, j=j: a.attributions[j].attribution)
        cols["imputed"] = pred(lambda a: list(a.prediction.imputed))
        cols["warnings"] = pred(
            lambda a: [
                {
                    "feature": w.feature,
                    "code": w.code,
                    "message": w.message,
                    "value": w.value,
                    "train_min": w.train_min,
                    "train_max": w.train_max,
                }
                for w in a.prediction.warnings
            ]
        )
        cols["error"] = list(errors)
        arrays = []
        for field in schema:
            if field.name not in cols:
                continue
            value = cols[field.name]
            arrays.append(value if isinstance(value, pa.ChunkedArray | pa.Array) else pa.array(value, type=field.type))
        present = schema if id_type is not None else pa.schema([f for f in schema if f.name != ID_COLUMN])
        return pa.Table.from_arrays(arrays, schema=present)


def with_row_numbers(table: pa.Table, first_row: int) -> pa.Table:
    """``table`` with the ``id`` column first: the input's, or row numbers from ``first_row`` (no id column)."""
    if ID_COLUMN in table.column_names:
        return table
    return table.add_column(
        0, pa.field(ID_COLUMN, pa.int64()), pa.array(range(first_row, first_row + table.num_rows), pa.int64())
    )


# ---- the output -------------------------------------------------------------------------------------------


class CohortWriter:
    """One Parquet file written in order, batch after batch, in row groups of about ``row_group_rows`` rows.

    It writes to ``OUTPUT.partial`` and renames it to OUTPUT on :meth:`close`, so that a stopped job never
    leaves a file that looks complete. Memory: at most one row group's rows are held.
    """

    def __init__(self, path: str | os.PathLike[str], schema: pa.Schema, *, row_group_rows: int = 65_536) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.row_group_rows = row_group_rows
        self._writer = pq.ParquetWriter(self.partial, schema, compression="zstd")
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0
        self.refused = 0

    def write(self, table: pa.Table) -> None:
        """Append ``table``'s rows (columns and types as the schema's)."""
        table = table.select(self.schema.names).cast(self.schema)
        self.rows += table.num_rows
        self.refused += table.num_rows - table.column("error").null_count
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self.row_group_rows)
        self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        """Write what is left, close the file and move it to OUTPUT."""
        self._flush()
        self._writer.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        """Close and delete the partial file (the job failed)."""
        try:
            self._writer.close()
        finally:
            self.partial.unlink(missing_ok=True)

    def keep_partial(self) -> Path | None:
        """The job stopped part-way: write what is held and close ``OUTPUT.partial`` as a readable file of the rows
        explained so far (never renamed to OUTPUT: it is not the whole input). None if it holds no row."""
        try:
            self._flush()
        finally:
            self._writer.close()
        if self.rows == 0:
            self.partial.unlink(missing_ok=True)
            return None
        return self.partial
