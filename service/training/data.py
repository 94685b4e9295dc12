"""Reading a training CSV against its feature specification, and the seeded stratified split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from service.model.features import PIMA_SPEC, FeatureSpec

__all__ = ["DEFAULT_DATA", "Dataset", "Split", "file_sha256", "load_dataset", "stratified_split"]

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "data" / "pima-indians-diabetes.csv"


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


def load_dataset(path: str | Path = DEFAULT_DATA, spec: FeatureSpec = PIMA_SPEC) -> Dataset:
    """Read every record of a CSV with a header row (the seed's notebook lost the first record here).

    Zeros in features whose zero means "not measured" become NaN. The target must be 0/1.
    """
    frame = pd.read_csv(path, header=0)
    missing = [c for c in [*spec.columns, spec.target_column] if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} named by the feature specification are not in the CSV")
    x = frame[spec.columns].to_numpy(dtype=np.float64, copy=True)
    for j, feat in enumerate(spec.features):
        if feat.zero_means_missing:
            x[x[:, j] == 0, j] = np.nan
    y_raw = frame[spec.target_column].to_numpy()
    if not np.isin(y_raw, (0, 1)).all():
        raise ValueError(f"{path}: target column {spec.target_column!r} must hold only 0 and 1")
    return Dataset(x=x, y=y_raw.astype(np.int64), spec=spec, sha256=file_sha256(path), path=str(path))


def stratified_split(y: np.ndarray, seed: int, test_fraction: float = 0.2, validation_fraction: float = 0.2) -> Split:
    """Seeded, stratified train/validation/test split (default 60/20/20: 460/154/154 on Pima)."""
    idx = np.arange(len(y))
    n_test = round(test_fraction * len(y))
    n_val = round(validation_fraction * len(y))
    dev, test = train_test_split(idx, test_size=n_test, stratify=y, random_state=seed)
    train, val = train_test_split(dev, test_size=n_val, stratify=y[dev], random_state=seed + 1)
    return Split(train=np.sort(train), validation=np.sort(val), test=np.sort(test))
