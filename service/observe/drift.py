"""Input and output drift: recent requests against the bundle's evaluation set, as population stability indices.

What is kept is counts, never values. :class:`DriftReference` fixes, once per bundle, the bins of every monitored
variable (each feature, and the served probability) from the *evaluation set*:

- the bin edges are the evaluation set's deciles of the variable's measured values (``numpy.quantile``, linear
  interpolation), duplicates removed, so a variable has at most 10 value bins (fewer where values tie, e.g. a
  count); a value equal to an edge goes to the bin above it (``searchsorted(..., side="right")``);
- a feature that may be missing has one more bin, *missing*: more unmeasured values is drift too;
- the expected share of a bin is its share of the evaluation set.

:class:`DriftWindow` adds each served record to one count per variable in the current time bucket
(``bucket_seconds`` wide; a ring of ``buckets`` of them is the rolling window). Nothing else about a record is
kept: the bin index is computed and the value forgotten in the same call. With several processes (uvicorn
workers) each writes its ring into a file of its own in a shared folder and a reader adds up every file
(:func:`read_counts`), so ``/monitoring`` and ``/metrics`` show the whole server whichever worker answers.

The population stability index of a variable is ``PSI = Σ (a_i − e_i) · ln(a_i / e_i)`` over its bins, where
``a_i`` and ``e_i`` are the recent and the expected shares, each smoothed as ``(count + 0.5) / (n + 0.5 k)``
(``k`` bins) so that an empty bin gives a finite index. Rules of thumb: below 0.1 stable, 0.1–0.25 worth
watching, above 0.25 a shift to act on (:data:`PSI_WATCH`, :data:`PSI_ACT`); with fewer than ``min_records``
recent records there is no verdict (``insufficient_data``): the index of a few dozen records is mostly noise.

No web framework here (this module is below the runtime).
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import add, le
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "PSI_ACT",
    "PSI_WATCH",
    "DriftReference",
    "DriftReport",
    "DriftStatus",
    "DriftWindow",
    "VariableDrift",
    "psi",
    "read_counts",
    "status_of",
]

PSI_WATCH = 0.1
PSI_ACT = 0.25
DECILES = tuple(i / 10 for i in range(1, 10))
PROBABILITY = "probability"
_SMOOTHING = 0.5
_FILE_PREFIX = "monitoring_"
_FILE_SUFFIX = ".bin"
# up to this many records at once are counted in plain Python, more with numpy (measured crossover: ~20)
_PYTHON_MAX_RECORDS = 16

# bumped in a forked child: a window then reopens its ring (a child must not write into its parent's file);
# cheaper than asking os.getpid() (a system call) on every record
_fork_generation = 0


def _after_fork() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork)

DriftStatus = Literal["stable", "watch", "act", "insufficient_data"]


def psi(recent: np.ndarray, expected: np.ndarray) -> float:
    """The population stability index of bin counts ``recent`` against bin counts ``expected`` (smoothed)."""
    recent = np.asarray(recent, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    k = len(expected)
    a = (recent + _SMOOTHING) / (recent.sum() + _SMOOTHING * k)
    e = (expected + _SMOOTHING) / (expected.sum() + _SMOOTHING * k)
    return float(np.sum((a - e) * np.log(a / e)))


def status_of(index: float, n: int, min_records: int) -> DriftStatus:
    """The verdict on one index: ``insufficient_data`` under ``min_records`` records, else by the thresholds."""
    if n < min_records:
        return "insufficient_data"
    if index > PSI_ACT:
        return "act"
    if index >= PSI_WATCH:
        return "watch"
    return "stable"


@dataclass(frozen=True)
class _Variable:
    name: str
    edges: tuple[float, ...]  # inner edges: len(edges) + 1 value bins
    has_missing_bin: bool
    offset: int  # first column of this variable in a bucket's row

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 1 + int(self.has_missing_bin)


def _edges(values: np.ndarray) -> tuple[float, ...]:
    measured = values[~np.isnan(values)]
    if len(measured) == 0:
        return ()
    return tuple(float(v) for v in np.unique(np.quantile(measured, DECILES)))


class DriftReference:
    """The bins of every monitored variable and the evaluation set's counts in them.

    Args:
        features: the feature names, in the order of the columns of ``eval_raw``.
        may_be_missing: per feature, whether it may be missing (then it has a *missing* bin).
        eval_raw: the evaluation set in original units, ``(N, F)``, NaN = not measured.
        eval_probability: the served probability of each evaluation record, ``(N,)``.
        train_min, train_max: per feature, the range seen in training (a value outside it is *out of range*).
        identity: what the reference belongs to (e.g. the model version); part of :attr:`fingerprint`.
    """

    def __init__(
        self,
        features: Sequence[str],
        may_be_missing: Sequence[bool],
        eval_raw: np.ndarray,
        eval_probability: np.ndarray,
        train_min: Sequence[float] | np.ndarray,
        train_max: Sequence[float] | np.ndarray,
        identity: str = "",
    ) -> None:
        eval_raw = np.asarray(eval_raw, dtype=np.float64)
        eval_probability = np.asarray(eval_probability, dtype=np.float64)
        if eval_raw.ndim != 2 or eval_raw.shape[1] != len(features) or len(may_be_missing) != len(features):
            raise ValueError("eval_raw must be (N, F) with one column per feature")
        if eval_probability.shape != (len(eval_raw),):
            raise ValueError("eval_probability must have one value per evaluation record")
        self.features = tuple(features)
        variables: list[_Variable] = []
        offset = 0
        for j, name in enumerate(features):
            v = _Variable(name, _edges(eval_raw[:, j]), bool(may_be_missing[j]), offset)
            variables.append(v)
            offset += v.n_bins
        prob = _Variable(PROBABILITY, _edges(eval_probability), False, offset)
        variables.append(prob)
        self.variables = tuple(variables)
        self.width = offset + prob.n_bins
        self.n_reference = len(eval_raw)
        columns = [*(eval_raw[:, j] for j in range(len(features))), eval_probability]
        self.expected = self._bin_counts(columns)
        self.reference_missing_rate = tuple(float(np.isnan(eval_raw[:, j]).mean()) for j in range(len(features)))
        self.train_min = np.asarray(train_min, dtype=np.float64)
        self.train_max = np.asarray(train_max, dtype=np.float64)
        outside = self.out_of_range(eval_raw)
        self.reference_out_of_range_rate = tuple(float(outside[:, j].mean()) for j in range(len(features)))
        self._inner = [np.asarray(v.edges, dtype=np.float64) for v in self.variables]
        # the same as Python lists, for counting a few records without numpy
        self.edge_lists = [list(v.edges) for v in self.variables]
        self.offsets = [v.offset for v in self.variables]
        # a feature that may not be missing has no missing bin; its NaN never reaches the window (refused upstream)
        self.missing_columns = [v.offset + v.n_bins - 1 if v.has_missing_bin else -1 for v in self.variables]
        self.train_min_list = [float(x) for x in self.train_min]
        self.train_max_list = [float(x) for x in self.train_max]
        # per feature: (first column, inner edges, missing column or -1, training min, training max)
        self.row_plan = [
            (v.offset, self.edge_lists[k], self.missing_columns[k], self.train_min_list[k], self.train_max_list[k])
            for k, v in enumerate(self.variables[: len(self.features)])
        ]
        # per feature, the column of its first value bin in a bucket's row (after the bucket number and the count)
        self.value_columns = [2 + v.offset for v in self.variables[: len(self.features)]]
        spec = repr((identity, [(v.name, v.edges, v.has_missing_bin) for v in self.variables]))
        self.fingerprint = hashlib.sha256(spec.encode()).hexdigest()[:16]

    def out_of_range(self, raw: np.ndarray) -> np.ndarray:
        """``(N, F)``: which values of ``raw`` lie outside the training range (a missing value does not)."""
        return (raw < self.train_min) | (raw > self.train_max)

    @property
    def names(self) -> tuple[str, ...]:
        """The monitored variables: every feature, then ``probability``."""
        return tuple(v.name for v in self.variables)

    def _bin_counts(self, columns: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros(self.width, dtype=np.int64)
        for v, column in zip(self.variables, columns, strict=True):
            col = np.asarray(column, dtype=np.float64)
            missing = np.isnan(col)
            idx = np.searchsorted(np.asarray(v.edges, dtype=np.float64), col[~missing], side="right")
            np.add.at(out, v.offset + idx, 1)
            if v.has_missing_bin:
                out[v.offset + v.n_bins - 1] += int(missing.sum())
        return out

    def columns_of(self, raw: np.ndarray, probability: np.ndarray) -> np.ndarray:
        """The columns (bins) that records ``raw`` ``(N, F)`` with served ``probability`` ``(N,)`` fall in:
        ``(N, F + 1)`` indices into a bucket's row. Values are not kept: only these indices are."""
        n = len(raw)
        out = np.empty((n, len(self.variables)), dtype=np.int64)
        for k, v in enumerate(self.variables):
            col = raw[:, k] if k < len(self.features) else probability
            missing = np.isnan(col)
            idx = np.searchsorted(self._inner[k], np.where(missing, 0.0, col), side="right")
            if v.has_missing_bin:
                idx = np.where(missing, v.n_bins - 1, idx)
            out[:, k] = v.offset + idx
        return out


@dataclass(frozen=True)
class VariableDrift:
    """One variable's recent distribution against the evaluation set's."""

    name: str
    psi: float
    status: DriftStatus
    bins: int
    recent_missing_rate: float | None
    reference_missing_rate: float | None
    recent_out_of_range_rate: float | None
    reference_out_of_range_rate: float | None


@dataclass(frozen=True)
class DriftReport:
    """Every variable's drift over the window, and what the verdicts rest on."""

    window_seconds: float
    records: int
    min_records: int
    reference_records: int
    variables: tuple[VariableDrift, ...]

    @property
    def status(self) -> DriftStatus:
        """The worst verdict of any variable (``insufficient_data`` if there are too few records)."""
        order: tuple[DriftStatus, ...] = ("insufficient_data", "act", "watch", "stable")
        found = {v.status for v in self.variables}
        return next((s for s in order if s in found), "insufficient_data")


class DriftWindow:
    """A rolling window of bin counts: ``buckets`` time buckets of ``bucket_seconds``, as a ring.

    Row ``r`` of the ring holds, in column 0, the number of the time bucket it counts (``floor(t /
    bucket_seconds)``), in column 1 the records counted, then one count per bin of every variable, then per
    feature the count of values out of the training range. A row whose
    bucket is older than the window is reset before it is reused and ignored when read. With ``folder`` the ring
    is a memory-mapped file of this process in that folder (``monitoring_<fingerprint>_<pid>.bin``), which
    :func:`read_counts` adds up with the other processes' files; without it, an array in memory.
    """

    def __init__(
        self,
        reference: DriftReference,
        *,
        window_seconds: float = 3600.0,
        buckets: int = 60,
        folder: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_seconds <= 0 or buckets < 1:
            raise ValueError("window_seconds must be positive and buckets at least 1")
        self.reference = reference
        self.window_seconds = float(window_seconds)
        self.buckets = buckets
        self.bucket_seconds = self.window_seconds / buckets
        self.clock = clock
        self.folder = folder
        self._lock = threading.Lock()
        self._pid = -1
        self._generation = -1
        self._bucket: int | None = None  # the time bucket :attr:`_row` counts, at :attr:`_row_index` of the ring
        self._row_index = 0
        self._row = memoryview(b"")
        self.row_width = 2 + reference.width + len(reference.features)
        self._ring: np.ndarray = np.zeros((buckets, self.row_width), dtype=np.int64)
        self._flat = self._ring.data.cast("B").cast("q")
        self._open()

    def _open(self) -> None:
        """(Re)open this process's ring: after a fork a child must not write into its parent's file."""
        self._pid = os.getpid()
        self._generation = _fork_generation
        shape = (self.buckets, self.row_width)
        if self.folder is None:
            ring = np.zeros(shape, dtype=np.int64)
        else:
            path = self.folder / f"{_FILE_PREFIX}{self.reference.fingerprint}_{self._pid}{_FILE_SUFFIX}"
            ring = np.memmap(path, dtype=np.int64, mode="w+", shape=shape)
            ring[:] = 0
        ring[:, 0] = -1
        self._ring = ring
        # the same memory as a flat sequence of Python ints: a few records are counted without numpy calls
        self._flat = ring.data.cast("B").cast("q")
        self._bucket = None
        self._row = self._flat[0:0]

    def _current_row(self, bucket: int) -> memoryview:
        """The row of the ring of time bucket ``bucket`` (now), as a flat view of Python ints (reset first if it
        counted an older bucket). Kept between calls: only this process writes its ring, so a row is only reset
        here."""
        if bucket == self._bucket:
            return self._row
        r = bucket % self.buckets
        start = r * self.row_width
        if self._flat[start] != bucket:
            self._ring[r] = 0
            self._flat[start] = bucket
        self._bucket = bucket
        self._row_index = r
        self._row = self._flat[start : start + self.row_width]
        return self._row

    def add(
        self,
        raw: np.ndarray,
        probability: Sequence[float] | np.ndarray,
        rows: Sequence[Sequence[float]] | None = None,
    ) -> tuple[list[int], list[int], list[int]]:
        """Count records ``raw`` ``(N, F)`` (original units, NaN = missing) with served ``probability``; returns,
        per feature, how many values were missing, below and above the training range. ``rows``: the same records
        as Python lists, if the caller has them (saves converting them again).

        A few records are counted in plain Python (a numpy call costs more than a record's work), a batch with
        numpy; both count the same (tested)."""
        n = len(raw)
        f = len(self.reference.features)
        if n == 0:
            return [0] * f, [0] * f, [0] * f
        if n <= _PYTHON_MAX_RECORDS:
            probs = probability.tolist() if isinstance(probability, np.ndarray) else list(probability)
            events = self.add_rows(raw.tolist() if rows is None else rows, probs)
            return events if events is not None else ([0] * f, [0] * f, [0] * f)
        ref = self.reference
        columns = ref.columns_of(raw, np.asarray(probability, dtype=np.float64))
        below = raw < ref.train_min
        above = raw > ref.train_max
        missing = np.isnan(raw)
        counts = np.bincount(columns.ravel(), minlength=ref.width)
        outside = (below | above).sum(axis=0)
        with self._lock:
            if self._generation != _fork_generation:
                self._open()
            self._current_row(math.floor(self.clock() / self.bucket_seconds))
            row = self._ring[self._row_index]
            row[1] += n
            row[2 : 2 + ref.width] += counts
            row[2 + ref.width :] += outside
        return missing.sum(axis=0).tolist(), below.sum(axis=0).tolist(), above.sum(axis=0).tolist()

    def add_rows(
        self, rows: Sequence[Sequence[float]], probability: Sequence[float]
    ) -> tuple[list[int], list[int], list[int]] | None:
        """:meth:`add` for a few records given as Python lists (the runtime has them already), without numpy.
        Returns the missing / below / above counts per feature, or None when there were none.

        This runs on the event loop for every prediction: a record whose values were all measured and within the
        training range (the common case) is binned without a Python loop over its features (``map`` runs it)."""
        ref = self.reference
        f = len(ref.features)
        lo, hi = ref.train_min_list, ref.train_max_list
        columns, edges = ref.value_columns, ref.edge_lists
        prob_edges, prob_column = edges[f], ref.offsets[f] + 2
        events: list[list[int]] | None = None  # missing, below, above per feature: only made when one occurs
        with self._lock:
            if self._generation != _fork_generation:
                self._open()
            bucket = math.floor(self.clock() / self.bucket_seconds)
            row = self._row if bucket == self._bucket else self._current_row(bucket)
            row[1] += len(rows)
            for values, p in zip(rows, probability, strict=True):
                row[prob_column + bisect_right(prob_edges, p)] += 1
                # every value measured (NaN compares false) and within the training range: the loop runs in C
                if all(map(le, lo, values)) and all(map(le, values, hi)):
                    for column in map(add, columns, map(bisect_right, edges, values)):
                        row[column] += 1
                    continue
                if events is None:
                    events = [[0] * f, [0] * f, [0] * f]
                self._add_values(row, values, events)
        if events is None:
            return None
        return events[0], events[1], events[2]

    def _add_values(self, row: memoryview, values: Sequence[float], events: list[list[int]]) -> None:
        """One record, value by value: the general case (a value missing or outside the training range)."""
        ref = self.reference
        outside = 2 + ref.width
        for j, (v, (offset, inner, missing_col, low, high)) in enumerate(zip(values, ref.row_plan, strict=True)):
            if math.isnan(v):  # not measured
                events[0][j] += 1
                if missing_col >= 0:  # a feature that may not be missing has no missing bin (refused upstream)
                    row[2 + missing_col] += 1
                continue
            row[2 + offset + bisect_right(inner, v)] += 1
            if v < low or v > high:
                events[1 if v < low else 2][j] += 1
                row[outside + j] += 1

    def counts(self) -> tuple[int, np.ndarray]:
        """Records and bin counts in the window: this process's, or every process's when file-backed."""
        now_bucket = math.floor(self.clock() / self.bucket_seconds)
        if self.folder is not None:
            return read_counts(self.folder, self.reference, self.buckets, self.row_width, now_bucket)
        with self._lock:
            ring = np.array(self._ring)
        return _sum_window(ring, self.buckets, now_bucket)

    def report(self, min_records: int) -> DriftReport:
        """PSI and verdict of every variable over the window."""
        n, counts = self.counts()
        ref = self.reference
        outside = counts[ref.width :]
        out: list[VariableDrift] = []
        for k, v in enumerate(ref.variables):
            recent = counts[v.offset : v.offset + v.n_bins]
            expected = ref.expected[v.offset : v.offset + v.n_bins]
            index = psi(recent, expected)
            is_feature = k < len(ref.features)
            recent_missing: float | None = None
            recent_outside: float | None = None
            if is_feature and n:
                recent_missing = float(recent[-1] / n) if v.has_missing_bin else 0.0
                recent_outside = float(outside[k] / n)
            out.append(
                VariableDrift(
                    name=v.name,
                    psi=index,
                    status=status_of(index, n, min_records),
                    bins=v.n_bins,
                    recent_missing_rate=recent_missing,
                    reference_missing_rate=ref.reference_missing_rate[k] if is_feature else None,
                    recent_out_of_range_rate=recent_outside,
                    reference_out_of_range_rate=ref.reference_out_of_range_rate[k] if is_feature else None,
                )
            )
        return DriftReport(
            window_seconds=self.window_seconds,
            records=n,
            min_records=min_records,
            reference_records=ref.n_reference,
            variables=tuple(out),
        )


def _sum_window(ring: np.ndarray, buckets: int, now_bucket: int) -> tuple[int, np.ndarray]:
    live = (ring[:, 0] > now_bucket - buckets) & (ring[:, 0] <= now_bucket)
    total = ring[live].sum(axis=0)
    return int(total[1]), total[2:]


def read_counts(
    folder: Path, reference: DriftReference, buckets: int, width: int, now_bucket: int
) -> tuple[int, np.ndarray]:
    """Records and counts in the window, added up over every process's file in ``folder`` for ``reference``
    (``width`` columns a row; files of a dead process still count until their buckets leave the window)."""
    n = 0
    counts = np.zeros(width - 2, dtype=np.int64)
    pattern = os.path.join(glob.escape(str(folder)), f"{_FILE_PREFIX}{reference.fingerprint}_*{_FILE_SUFFIX}")
    for path in sorted(glob.glob(pattern)):
        try:
            ring = np.fromfile(path, dtype=np.int64)
        except OSError:  # removed meanwhile
            continue
        if ring.size != buckets * width:
            continue
        part_n, part = _sum_window(ring.reshape(buckets, width), buckets, now_bucket)
        n += part_n
        counts += part
    return n, counts
