"""Reading a training CSV against its feature specification, and the seeded stratified split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from service.model.features import FeatureSpec
from service.model.spec import SPECS, ModelSpec, load_spec

__all__ = [
    "DEFAULT_DATA",
    "DEFAULT_SPEC",
    "ROOT",
    "Dataset",
    "Split",
    "default_spec",
    "file_sha256",
    "load_dataset",
    "spec_data_path",
    "stratified_split",
]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPEC = SPECS / "pima-diabetes.yaml"
"""The default ``--spec`` of ``gshap train``: the Pima model."""
DEFAULT_DATA = ROOT / "data" / "pima-indians-diabetes.csv"
"""The data of the default spec (its ``training.data``)."""


def default_spec() -> ModelSpec:
    """The default spec (the shipped Pima model)."""
    return load_spec(DEFAULT_SPEC)


def spec_data_path(spec: ModelSpec, spec_file: str | Path | None = None) -> Path | None:
    """The spec's ``training.data`` file: relative to the spec file's folder if it is there, else to the
    repository root (as the shipped specs write it); None when the spec names no data."""
    name = spec.training.get("data")
    if not name:
        return None
    path = Path(str(name))
    if path.is_absolute():
        return path
    if spec_file is not None and (Path(spec_file).parent / path).is_file():
        return Path(spec_file).parent / path
    return ROOT / path


@dataclass(frozen=True)
class Dataset:
    """Raw values in original units: ``x`` is ``(N, F)`` float64 with NaN for "not measured"; ``y`` is ``(N,)``."""

    x: np.ndarray
    y: np.ndarray
    spec: FeatureSpec
    sha256: str
    path: str


@dataclass(frozen=True)
class Split:
    """Row indices (into the CSV, 0-based data rows) of the three parts; the test part is the evaluation set."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    def to_dict(self) -> dict[str, list[int]]:
        return {k: [int(i) for i in getattr(self, k)] for k in ("train", "validation", "test")}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def load_dataset(
    path: str | Path = DEFAULT_DATA, spec: FeatureSpec | None = None, *, require_outcome: bool = True
) -> Dataset:
    """Read every record of a CSV with a header row (the seed's notebook lost the first record here).

    Empty cells are "not measured" (NaN), and so are zeros in features whose zero means "not measured"; a
    feature whose rule is ``forbidden`` may have neither. The outcome column must hold two values, one of them
    the spec's positive value: ``y`` is 1 for it and 0 for the other. ``spec`` defaults to the Pima spec's
    features. Without ``require_outcome`` a CSV without the outcome column gets ``y`` of -1 everywhere.
    """
    spec = spec if spec is not None else default_spec().features
    frame = pd.read_csv(path, header=0)
    needed = [*spec.columns, *([spec.target_column] if require_outcome else [])]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} named by the feature specification are not in the CSV")
    try:
        x = frame[spec.columns].to_numpy(dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: every feature column must hold numbers ({exc})") from exc
    for j, feat in enumerate(spec.features):
        if feat.zero_means_missing:
            x[x[:, j] == 0, j] = np.nan
        elif feat.missing == "forbidden" and np.isnan(x[:, j]).any():
            rows = np.flatnonzero(np.isnan(x[:, j]))
            raise ValueError(
                f"{path}: column {feat.column!r} is empty in {len(rows)} rows (first: data row {int(rows[0]) + 1}), "
                "but its feature's missing rule is 'forbidden'"
            )
        if np.isinf(x[:, j]).any():
            raise ValueError(f"{path}: column {feat.column!r} holds an infinite value")
    if spec.target_column not in frame.columns:
        y = np.full(len(frame), -1, dtype=np.int64)
    else:
        y = _outcome(frame[spec.target_column], spec.target_positive, f"{path}: outcome column {spec.target_column!r}")
    return Dataset(x=x, y=y, spec=spec, sha256=file_sha256(path), path=str(path))


def _outcome(column: pd.Series, positive: object, where: str) -> np.ndarray:
    """1 where the outcome is ``positive``, 0 where it is the one other value; a clear error otherwise."""
    if column.isna().any():
        raise ValueError(f"{where} is empty in {int(column.isna().sum())} rows")
    values = column.to_numpy()
    is_positive = np.array([_same(v, positive) for v in values], dtype=bool)
    others = {str(v) for v in values[~is_positive]}
    if not is_positive.any():
        raise ValueError(f"{where} never holds the positive value {positive!r}")
    if len(others) != 1:
        shown = ", ".join(sorted(others)[:5])
        raise ValueError(f"{where} must hold two values, {positive!r} (positive) and one other; besides it: {shown}")
    return is_positive.astype(np.int64)


def _same(value: object, positive: object) -> bool:
    """The CSV's cell equals the spec's positive value (1 and 1.0 and "1" read from a CSV as numbers agree)."""
    if isinstance(positive, bool) or isinstance(value, bool | np.bool_):
        return str(value).lower() == str(positive).lower()
    if isinstance(positive, int | float) and isinstance(value, int | float | np.integer | np.floating):
        return float(value) == float(positive)
    return str(value) == str(positive)


def stratified_split(y: np.ndarray, seed: int, test_fraction: float = 0.2, validation_fraction: float = 0.2) -> Split:
    """Seeded, stratified train/validation/test split (default 60/20/20: 460/154/154 on Pima)."""
    idx = np.arange(len(y))
    n_test = round(test_fraction * len(y))
    n_val = round(validation_fraction * len(y))
    dev, test = train_test_split(idx, test_size=n_test, stratify=y, random_state=seed)
    train, val = train_test_split(dev, test_size=n_val, stratify=y[dev], random_state=seed + 1)
    return Split(train=np.sort(train), validation=np.sort(val), test=np.sort(test))
