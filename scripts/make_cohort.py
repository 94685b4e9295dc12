"""Write a synthetic cohort drawn from the training distribution, for ``gshap explain-cohort`` and its benchmark.

    python scripts/make_cohort.py 1000000 cohort-1m.parquet            # Parquet (one file, row groups of 64k)
    python scripts/make_cohort.py 10000 cohort-10k.csv --seed 7        # CSV
    python scripts/make_cohort.py 20000 cohort-dir --files 4           # a folder of 4 Parquet files

Each row is a row of the bundle's training split (``manifest.json`` → ``data.split_rows.train``), drawn with
replacement, with every measured value jittered by Gaussian noise of ``--jitter`` (default 0.1) times the
feature's standard deviation in the training split, rounded like the data (whole numbers for integer features,
the data's decimals otherwise) and clipped to the feature's valid range. A value that is "not measured" in the
training row (a 0 that means missing) stays not measured (an empty cell / null), so the cohort has the
training data's share of missing values. Columns: ``id`` (``P0000000`` …) and the API's feature names.
``--bad F`` makes a share F of rows invalid (the first real-valued feature, glucose for Pima, far above its range)
to exercise the per-row refusals. Seeded: the same arguments write the same rows. Memory: one chunk of rows at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.model.store import load_bundle  # noqa: E402
from service.training.data import DEFAULT_DATA, load_dataset  # noqa: E402

CHUNK = 65_536
DECIMALS = {"bmi": 1, "diabetes_pedigree_function": 3}


def training_rows(model: str | None = None) -> np.ndarray:
    """The bundle's training rows, raw units, NaN = not measured."""
    bundle = load_bundle(model)
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    data = load_dataset(DEFAULT_DATA, bundle.spec)
    train = np.asarray(manifest["data"]["split_rows"]["train"], dtype=np.int64)
    rows: np.ndarray = data.x[train]
    return rows


def iter_chunks(n: int, seed: int, jitter: float, bad: float, model: str | None = None) -> Iterator[pa.Table]:
    """The cohort's rows as tables of at most CHUNK rows."""
    base = training_rows(model)
    spec = load_bundle(model).spec
    sd = np.nanstd(base, axis=0)
    rng = np.random.default_rng(seed)
    lo = np.array([f.valid_min for f in spec])
    hi = np.array([f.valid_max for f in spec])
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        x = base[rng.integers(0, len(base), m)] + rng.normal(0.0, 1.0, (m, len(spec))) * sd * jitter
        x = np.clip(x, lo, hi)
        columns: dict[str, pa.Array] = {"id": pa.array([f"P{i:07d}" for i in range(start, start + m)])}
        for j, feat in enumerate(spec):
            col = np.round(x[:, j]) if feat.integer else np.round(x[:, j], DECIMALS.get(feat.name, 0))
            if feat.zero_means_missing:
                col[col == 0] = 1  # a measured value jittered to 0 would read "not measured": keep it measured
            mask = np.isnan(col)
            arr = pa.array(col.astype(np.int64) if feat.integer else col, mask=mask)
            columns[feat.name] = arr
        if bad > 0:
            refuse = rng.random(m) < bad
            target = next(f for f in spec if not f.integer)  # a refused row: this feature far above its valid range
            values = columns[target.name].to_numpy(zero_copy_only=False).copy()
            values[refuse] = 10 * target.valid_max + 1
            columns[target.name] = pa.array(values, mask=np.isnan(values))
        yield pa.table(columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="rows")
    parser.add_argument("out", type=Path, help="a .csv or .parquet file, or a folder (with --files)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jitter", type=float, default=0.1, help="noise, in training standard deviations")
    parser.add_argument("--bad", type=float, default=0.0, help="share of rows made invalid")
    parser.add_argument("--files", type=int, default=0, help="write a folder of this many Parquet files")
    parser.add_argument("--model", default=None, help="bundle whose training split is sampled")
    args = parser.parse_args(argv)
    out: Path = args.out
    tables = iter_chunks(args.n, args.seed, args.jitter, args.bad, args.model)
    if args.files:
        out.mkdir(parents=True, exist_ok=True)
        per_file = -(-args.n // args.files)
        writer, index, rows_in_file = None, 0, 0
        for table in tables:
            rest = table
            while rest.num_rows:
                if writer is None:
                    writer = pq.ParquetWriter(out / f"part-{index:05d}.parquet", table.schema)
                take = min(rest.num_rows, per_file - rows_in_file)
                writer.write_table(rest.slice(0, take))
                rest, rows_in_file = rest.slice(take), rows_in_file + take
                if rows_in_file == per_file:
                    writer.close()
                    writer, index, rows_in_file = None, index + 1, 0
        if writer is not None:
            writer.close()
    else:
        first = next(tables)
        csv_out = out.suffix.lower() == ".csv"
        sink = pacsv.CSVWriter(out, first.schema) if csv_out else pq.ParquetWriter(out, first.schema)
        with sink:
            sink.write_table(first)
            for table in tables:
                sink.write_table(table)
    print(f"wrote {args.n} rows to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
