"""The two engines of ``gshap explain-cohort``: ``local`` (streaming, in this process) and ``ray`` (Ray Data).

Both apply the same :class:`~service.cohort.table.CohortExplainer` to batches of input rows and write the results
in input order through one :class:`~service.cohort.table.CohortWriter`, so their files hold the same values.

OUTPUT is checked before any work (:func:`~service.cohort.table.check_output`). A job that stops part-way (an
input that turns unreadable) keeps the rows already explained: ``OUTPUT.partial`` is closed as a readable Parquet
file of them, never renamed to OUTPUT, and :class:`CohortStoppedError` says where it is.

- ``local`` reads the input as a stream of Arrow batches (a CSV row by row with Python's ``csv`` module, so that
  a row that cannot be read, ragged or not UTF-8, is refused on its own in its place; or a Parquet dataset scanner
  with little read-ahead), explains each batch and appends it to the output: memory holds a few batches and one
  row group whatever the input's size. One core computes (the exact kernel is single-threaded per call).
- ``ray`` builds a Ray Data dataset over the input (a CSV read by the local engine's row reader, in one streaming
  read task, so that unreadable rows are refused alike; ``read_parquet``) and maps it with
  ``map_batches(CohortExplainer, concurrency=W)``: W actors, each loading the bundle and warming up the engine
  once, explain batches in parallel; the driver (this process) streams the results back in order
  (``preserve_order``) and writes the file. Without ``ray_address`` it starts a local Ray (``num_cpus`` CPUs,
  no dashboard, usage statistics off) and shuts it down at the end; with one it joins that cluster, whose
  workers need this package and the bundle at the same path. If Ray is already initialised in this process
  (a test session), that Ray is used and left running.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import orjson
import pyarrow as pa

from service.cohort.table import (
    ROW_PROBLEM_COLUMN,
    CohortExplainer,
    CohortInput,
    CohortInputError,
    CohortWriter,
    check_output,
    cohort_metadata,
    output_schema,
    with_row_numbers,
)
from service.contract import ServedMethod
from service.model.store import load_bundle
from service.runtime.inference import ExplainOptions, ensure_compatible

__all__ = ["DEFAULT_BATCH_SIZE", "CohortResult", "CohortStoppedError", "Engine", "run_cohort"]

Engine = Literal["local", "ray"]
DEFAULT_BATCH_SIZE = 1024
# the local Ray's shared-memory object store: batches in flight, not the data set (Ray Data streams and spills)
LOCAL_OBJECT_STORE_BYTES = 512 * 1024 * 1024
RAY_BLOCK_BYTES = 256 * 1024


class CohortStoppedError(RuntimeError):
    """The job stopped part-way; ``partial`` holds the rows explained before (None: none), ``rows`` of them."""

    def __init__(self, message: str, partial: Path | None, rows: int) -> None:
        self.partial = partial
        self.rows = rows
        kept = f"; the {rows} rows explained before are kept in {partial}" if partial else "; no row was explained"
        super().__init__(message + kept)


@dataclass(frozen=True)
class CohortResult:
    """What a run did: rows written, rows refused, wall time and the engine's workers."""

    output: Path
    rows: int
    refused: int
    seconds: float
    engine: str
    workers: int

    @property
    def records_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


def _rebatch(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Tables of exactly ``size`` rows (the last one shorter) from batches of any size."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


def _row_problem(rule: str, message: str) -> str:
    return orjson.dumps([{"field": "row", "rule": rule, "message": message}]).decode()


def csv_batches(inp: CohortInput, batch_size: int) -> Iterator[pa.Table]:
    """A CSV's rows as tables of ``batch_size`` rows (cells as bytes, as written), read row by row: a ragged row
    or one the CSV parser refuses stays in its place with its problem in ``ROW_PROBLEM_COLUMN``; a cell that is not
    UTF-8 keeps its bytes (the explainer refuses its row)."""
    columns = inp.columns
    with inp.path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        where = [header.index(c) for c in columns]
        pending: list[tuple[list[bytes | None], str | None]] = []
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # e.g. a field over the parser's size limit
                pending.append(
                    ([None] * len(columns), _row_problem("unreadable_row", f"line {reader.line_num}: {exc}"))
                )
                row = None
            if row is not None:
                if not row:
                    continue  # an empty line, skipped as pyarrow's reader does
                if len(row) != len(header):
                    message = f"line {reader.line_num}: {len(row)} cells, the header has {len(header)}"
                    pending.append(([None] * len(columns), _row_problem("ragged_row", message)))
                else:
                    cells = [row[j] for j in where]
                    pending.append(([c.encode("utf-8", "surrogateescape") if c else None for c in cells], None))
            if len(pending) == batch_size:
                yield _csv_table(columns, pending)
                pending = []
        if pending:
            yield _csv_table(columns, pending)


def _csv_table(columns: list[str], rows: list[tuple[list[bytes | None], str | None]]) -> pa.Table:
    data: dict[str, pa.Array] = {
        name: pa.array([cells[j] for cells, _ in rows], type=pa.binary()) for j, name in enumerate(columns)
    }
    data[ROW_PROBLEM_COLUMN] = pa.array([problem for _, problem in rows], type=pa.string())
    return pa.table(data)


def local_batches(inp: CohortInput, batch_size: int) -> Iterator[pa.Table]:
    """The input's rows as a stream of tables of ``batch_size`` rows, holding a few blocks at a time."""
    if inp.kind == "csv":
        yield from csv_batches(inp, batch_size)
        return
    import pyarrow.dataset as pads

    dataset = pads.dataset([str(f) for f in inp.files], format="parquet")
    scanner = dataset.to_batches(columns=inp.columns, batch_size=batch_size, batch_readahead=1, fragment_readahead=1)
    yield from _rebatch(scanner, batch_size)


def _progress(total: int | None, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="rec",
        unit_scale=True,
        desc="explain-cohort",
        file=sys.stderr,
        disable=disable,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def run_cohort(
    inp: CohortInput,
    output: str | os.PathLike[str],
    *,
    engine: Engine = "local",
    model_path: str | Path | None = None,
    options: ExplainOptions | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> CohortResult:
    """Explain every row of ``inp`` into the Parquet file ``output`` with ``engine``; see the module docstring.

    ``num_cpus``: CPUs of the local Ray this starts (default: this machine's); ``workers``: Ray actors (default:
    the cluster's CPUs). Raises :class:`~service.model.store.BundleError` for a bundle that cannot be served.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    check_output(output)  # a folder, or no way to write there: refused before any work
    # the bundle is checked here once, before any worker starts, and its resolved path is what the workers load
    bundle = load_bundle(model_path)
    ensure_compatible(bundle, bundle.spec)
    options = options or ExplainOptions(method=cast(ServedMethod, bundle.default_method))
    unknown = [name for name in inp.features if name not in bundle.spec.names]
    if unknown:
        raise CohortInputError(f"columns {', '.join(unknown)} are not features of {bundle.name}/{bundle.version}")
    schema = output_schema(bundle.spec, inp.id_type).with_metadata(
        cohort_metadata(f"{bundle.name}/{bundle.version}", float(bundle.threshold), options)
    )
    explainer_kwargs: dict[str, Any] = {
        "model_path": str(bundle.path),
        "method": options.method,
        "n_samples": options.n_samples,
        "seed": options.seed,
        "output": options.output,
        "csv_text": inp.kind == "csv",
    }
    del bundle
    writer = CohortWriter(output, schema)
    started = time.perf_counter()
    bar = _progress(inp.rows, disable=not progress)
    try:
        if engine == "local":
            explainer = CohortExplainer(**explainer_kwargs)
            results: Iterator[pa.Table] = (explainer(t) for t in local_batches(inp, batch_size))
            n_workers = 1
            _drain(results, writer, bar)
        elif engine == "ray":
            n_workers = _run_ray(inp, writer, bar, explainer_kwargs, batch_size, ray_address, num_cpus, workers)
        else:
            raise ValueError(f"unknown engine {engine!r}: 'local' or 'ray'")
    except Exception as exc:
        bar.close()
        partial = writer.keep_partial()
        raise CohortStoppedError(
            f"the job stopped ({type(exc).__name__}: {str(exc)[:300]})", partial, writer.rows
        ) from exc
    except BaseException:
        bar.close()
        writer.keep_partial()
        raise
    bar.close()
    writer.close()
    return CohortResult(
        output=Path(output),
        rows=writer.rows,
        refused=writer.refused,
        seconds=time.perf_counter() - started,
        engine=engine,
        workers=n_workers,
    )


def _drain(results: Iterable[pa.Table], writer: CohortWriter, bar: Any) -> None:
    for table in results:
        writer.write(with_row_numbers(table, writer.rows))
        bar.update(table.num_rows)


def _csv_rows_datasource(inp: CohortInput, batch_size: int) -> Any:
    """A Ray Data datasource of the CSV's rows as :func:`csv_batches` reads them (cells as bytes, the reader's
    problem column): one read task streams the file from its first line to its last (so a problem's line number is
    the file's) and yields a block per ``batch_size`` rows, which Ray Data hands to the actors as they come; the
    file is never held whole, in the driver or anywhere else. The file must be at the same path on the worker that
    reads it (as with ``read_csv``)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    size = inp.path.stat().st_size

    class CsvRows(Datasource):
        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]

        def estimate_inmemory_data_size(self) -> int:
            return size

        def get_read_tasks(self, parallelism: int, *args: Any, **kwargs: Any) -> list[ReadTask]:
            meta = BlockMetadata(num_rows=None, size_bytes=size, exec_stats=None, input_files=(str(inp.path),))
            return [ReadTask(lambda: csv_batches(inp, batch_size), meta)]

    return CsvRows()


class _RayExplainer:
    """The Ray actor's callable: one :class:`CohortExplainer` per actor, built in the actor."""

    def __init__(self, **kwargs: Any) -> None:
        self.explainer = CohortExplainer(**kwargs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.explainer(batch)


def _settle_fsspec_http() -> None:
    """Mark fsspec's HTTP filesystem absent when aiohttp is: Ray Data looks it up from several threads at once,
    and the failed import in one thread showed in another as a half-initialised module (an ImportError that Ray
    does not expect, seen once in the tests); an absent module is a clean ModuleNotFoundError everywhere."""
    import importlib.util

    if importlib.util.find_spec("aiohttp") is None:
        sys.modules.setdefault("fsspec.implementations.http", None)  # type: ignore[arg-type]


def _ray_init(ray: Any, ray_address: str | None, num_cpus: int | None) -> bool:
    """Connect to (or start) Ray; True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    if ray_address:
        ray.init(address=ray_address, **common)
    else:
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            **common,
        )
    return True


def _run_ray(
    inp: CohortInput,
    writer: CohortWriter,
    bar: Any,
    explainer_kwargs: dict[str, Any],
    batch_size: int,
    ray_address: str | None,
    num_cpus: int | None,
    workers: int | None,
) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves this machine
    import ray
    import ray.data

    _settle_fsspec_http()
    started = _ray_init(ray, ray_address, num_cpus)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the output in input order, as the local engine's
        context.enable_progress_bars = False  # the driver's own bar counts written rows
        # small blocks, so that the actors share the input even when it is one file of one row group (Ray hands an
        # actor whole blocks: one 128 MiB block, Ray's default, would be one actor's work)
        context.target_max_block_size = RAY_BLOCK_BYTES
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        n_workers = workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)  # type: ignore[no-untyped-call]
        # The actors hold one CPU each. Reading (mostly I/O and parsing) asks for none, and the pool starts with
        # one actor and grows to n_workers as batches queue up: Ray Data's file listing takes a whole CPU that
        # can't be configured, so a pool that took every CPU at the start would wait for it forever.
        if inp.kind == "csv":
            # the local engine's row reader, in one streaming read task: a ragged, undecodable or unparsable row
            # is refused in its place with the local engine's problem (pyarrow's read_csv stops the whole file)
            ds = ray.data.read_datasource(_csv_rows_datasource(inp, batch_size), num_cpus=0, override_num_blocks=1)
        else:
            ds = ray.data.read_parquet([str(f) for f in inp.files], num_cpus=0).select_columns(inp.columns)
        mapped = ds.map_batches(
            _RayExplainer,
            fn_constructor_kwargs=explainer_kwargs,
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=n_workers),
            num_cpus=1,
        )
        _drain(mapped.iter_batches(batch_size=None, batch_format="pyarrow"), writer, bar)
    finally:
        if started:
            ray.shutdown()
    return n_workers
