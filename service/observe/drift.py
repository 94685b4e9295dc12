"""Input and output drift: recent requests against the bundle's evaluation set, as population stability indices.

What is kept is counts, never an input value (and one running sum: of the served probabilities, which ``/metrics``
publishes as its histogram's ``_sum``). :class:`DriftReference` fixes, once per bundle, the bins of every monitored
variable (each feature, and the served probability) from the *evaluation set*:

- the bin edges are the evaluation set's deciles of the variable's measured values (``numpy.quantile``, linear
  interpolation), duplicates removed, so a variable has at most 10 value bins (fewer where values tie, e.g. a
  count); a value equal to an edge goes to the bin above it (``searchsorted(..., side="right")``);
- a feature that may be missing has one more bin, *missing*: more unmeasured values is drift too;
- the expected share of a bin is its share of the evaluation set.

To count a record cheaply, each variable is binned once, into *fine bins*: the value bins cut further at the
training range's ends (for a feature) so that one ``bisect`` says at once which value bin a value falls in, whether it
was missing (NaN sorts past a last ``+inf`` edge) and whether it lay below or above the range seen in training. The
fine bins are mapped back to the value bins, the missing bin and the out-of-range counts when the window is read.

:class:`DriftWindow` adds each served record to one fine count per variable in the current time bucket
(``bucket_seconds`` wide; a ring of ``buckets`` of them is the rolling window). A bucket's counts are added to a row of
running totals when its slot of the ring is reused, so the counts since start-up (the metrics' counters of imputed and
out-of-range values) cost nothing more per record. Nothing else about a record is kept: the bin index is computed and
the value forgotten in the same call. With several processes (uvicorn workers) each writes its ring into a file of its
own in a shared folder and a reader adds up every file (:meth:`DriftWindow.memories`), so ``/monitoring``
and ``/metrics`` show the whole server whichever worker answers.

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
import weakref
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import add
from pathlib import Path
from typing import Literal

import numpy as np

try:
    from service.observe._binning import Binner
except ImportError:  # not compiled (an install without a C compiler): the same counting in Python
    Binner = None  # type: ignore[assignment,misc]

__all__ = [
    "PSI_ACT",
    "PSI_WATCH",
    "DriftReference",
    "DriftReport",
    "DriftStatus",
    "DriftWindow",
    "Totals",
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
_TOTALS_ROW = -2  # column 0 of the ring's last row: the totals of the buckets gone
# up to this many records at once are counted in plain Python, more with numpy (measured crossover: ~20)
_PYTHON_MAX_RECORDS = 16

# bumped in a forked child: a window then reopens its ring (a child must not write into its parent's file);
# cheaper than asking os.getpid() (a system call) on every record
_fork_generation = 0


_windows: weakref.WeakSet[DriftWindow] = weakref.WeakSet()


def _after_fork() -> None:
    global _fork_generation
    _fork_generation += 1
    for window in list(_windows):
        window._row_end = -math.inf  # its next record takes the slow path, which reopens the ring


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
        probability_cuts: more edges of the probability's fine bins (a value equal to one falls above it), so that
            the counts since start-up say more of the served probabilities (the metrics' histogram buckets and the
            decision threshold); they do not change the drift bins.
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
        probability_cuts: Sequence[float] = (),
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
        # fine bins (see the module's docstring): per variable its fine edges, ending in +inf so that NaN (and only
        # NaN: inputs are finite) falls past the last one, and each fine bin's value bin, missing flag and side
        self.fine_edges: list[list[float]] = []
        self.fine_offsets: list[int] = []  # first column of each variable's fine bins in a bucket's row
        public: list[int] = []  # per fine bin, its column among the value bins and missing bins, or -1
        side: list[int] = []  # per fine bin: 0 within the training range (or missing), 1 below, 2 above
        missing: list[int] = []  # per fine bin: 1 for the NaN bin of a feature, else 0
        feature_of: list[int] = []  # per fine bin, its feature's index, or -1 for the probability's
        fine = 0
        for k, v in enumerate(self.variables):
            cuts = set(v.edges)
            is_feature = k < len(self.features)
            if is_feature:
                # value < low is below; value > high, i.e. value >= nextafter(high), is above (bisect_right)
                cuts |= {float(self.train_min[k]), math.nextafter(float(self.train_max[k]), math.inf)}
            else:
                cuts |= {float(c) for c in probability_cuts}
            edges = [*sorted(cuts), math.inf]
            self.fine_edges.append(edges)
            self.fine_offsets.append(fine)
            for i in range(len(edges) + 1):
                feature_of.append(k if is_feature else -1)
                if i == len(edges):  # NaN
                    public.append(v.offset + v.n_bins - 1 if v.has_missing_bin else -1)
                    side.append(0)
                    missing.append(int(is_feature))
                    continue
                low_end = edges[i - 1] if i > 0 else -math.inf  # the fine bin is [low_end, edges[i])
                public.append(v.offset + bisect_right(v.edges, low_end) if i > 0 else v.offset)
                missing.append(0)
                if not is_feature:
                    side.append(0)
                elif edges[i] <= self.train_min[k]:
                    side.append(1)
                elif i > 0 and low_end > self.train_max[k]:
                    side.append(2)
                else:
                    side.append(0)
            fine += len(edges) + 1
        self.fine_width = fine
        self._fine_public = np.asarray(public, dtype=np.int64)
        self._fine_side = np.asarray(side, dtype=np.int64)
        self._fine_missing = np.asarray(missing, dtype=bool)
        self._fine_feature = np.asarray(feature_of, dtype=np.int64)
        self._fine_arrays = [np.asarray(e, dtype=np.float64) for e in self.fine_edges]
        spec = repr((identity, [(v.name, v.edges, v.has_missing_bin) for v in self.variables], self.fine_edges))
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

    def fine_columns_of(self, raw: np.ndarray, probability: np.ndarray) -> np.ndarray:
        """The fine bins that records ``raw`` ``(N, F)`` with served ``probability`` ``(N,)`` fall in: ``(N, F + 1)``
        columns of a bucket's fine counts. Values are not kept: only these indices are."""
        out = np.empty((len(raw), len(self.variables)), dtype=np.int64)
        for k in range(len(self.variables)):
            col = raw[:, k] if k < len(self.features) else probability
            out[:, k] = self.fine_offsets[k] + np.searchsorted(self._fine_arrays[k], col, side="right")
        return out

    def public_counts(self, fine: np.ndarray) -> np.ndarray:
        """Fine counts ``(fine_width,)`` as the window's counts: one per value bin and missing bin of every variable
        (``width`` columns), then per feature the values outside the training range."""
        fine = np.asarray(fine, dtype=np.int64)
        kept = self._fine_public >= 0
        outside = self._fine_side > 0
        return np.concatenate(
            [
                _add_up(self._fine_public[kept], fine[kept], self.width),
                _add_up(self._fine_feature[outside], fine[outside], len(self.features)),
            ]
        )

    def events(self, fine: np.ndarray) -> tuple[list[int], list[int], list[int]]:
        """Fine counts ``(fine_width,)`` as per feature the values missing, below and above the training range."""
        fine = np.asarray(fine, dtype=np.int64)
        f = len(self.features)
        found = [
            _add_up(self._fine_feature[mask], fine[mask], f).tolist()
            for mask in (self._fine_missing, self._fine_side == 1, self._fine_side == 2)
        ]
        return found[0], found[1], found[2]

    def totals_of(self, records: int, fine: np.ndarray, probability_sum: float) -> Totals:
        """Fine counts since start-up as :class:`Totals`."""
        missing, below, above = self.events(fine)
        start = self.fine_offsets[-1]
        return Totals(
            records=records,
            missing=missing,
            below=below,
            above=above,
            probability_bins=[int(x) for x in fine[start:]],
            probability_sum=probability_sum,
        )


def _add_up(index: np.ndarray, counts: np.ndarray, size: int) -> np.ndarray:
    """``out[index[i]] += counts[i]`` over ``size`` integer slots."""
    out = np.zeros(size, dtype=np.int64)
    np.add.at(out, index, counts)
    return out


@dataclass(frozen=True)
class Totals:
    """What the window counted since start-up (every process's, when file-backed): the counters' values."""

    records: int
    missing: list[int]  # per feature, the values not measured
    below: list[int]  # per feature, the values below the training range
    above: list[int]  # per feature, the values above it
    probability_bins: list[int]  # per fine bin of the probability (its edges: the last of ``fine_edges``)
    probability_sum: float  # the sum of the served probabilities


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
    """A rolling window of fine bin counts: ``buckets`` time buckets of ``bucket_seconds``, as a ring, and a row
    of running totals.

    Row ``r < buckets`` of the ring holds, in column 0, the number of the time bucket it counts (``floor(t /
    bucket_seconds)``), in column 1 the records counted, then one count per fine bin of every variable (see
    :class:`DriftReference`). A row whose bucket is older than the window is added to the last row (the totals of
    the buckets gone, column 0 ``-2``) and reset before it is reused, and is ignored when the window is read. With
    ``folder`` the ring is a memory-mapped file of this process in that folder
    (``monitoring_<fingerprint>_<pid>.bin``), which :meth:`memories` and :func:`read_counts` add up with the other
    processes' files; without it, an array in memory.
    """

    def __init__(
        self,
        reference: DriftReference,
        *,
        window_seconds: float = 3600.0,
        buckets: int = 60,
        folder: Path | None = None,
        clock: Callable[[], float] = time.time,
        compiled: bool = True,
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
        self._row_end = -math.inf  # when :attr:`_row`'s time bucket ends (or -inf: take the slow path first)
        self.row_width = 2 + reference.fine_width
        # per variable, its fine edges and the column of its first fine bin in a row: what a record is binned with
        self._edges = reference.fine_edges
        self._columns = [2 + offset for offset in reference.fine_offsets]
        # the same counting in C (service/observe/_binning.c), unless it did not compile or ``compiled`` is false
        self._binner = Binner(self._edges, self._columns, self.row_width) if compiled and Binner is not None else None
        self._memory: np.ndarray = np.zeros(0, dtype=np.int64)
        self._ring: np.ndarray = self._memory
        self._flat = memoryview(b"").cast("B").cast("q")
        self._sum = memoryview(b"").cast("B").cast("d")
        self._row = self._flat
        self._open()
        _windows.add(self)

    def _open(self) -> None:
        """(Re)open this process's ring: after a fork a child must not write into its parent's file."""
        self._pid = os.getpid()
        self._generation = _fork_generation
        size = (self.buckets + 1) * self.row_width + 1  # the ring, the totals row and the probability sum
        if self.folder is None:
            memory = np.zeros(size, dtype=np.int64)
        else:
            path = self.folder / f"{_FILE_PREFIX}{self.reference.fingerprint}_{self._pid}{_FILE_SUFFIX}"
            memory = np.memmap(path, dtype=np.int64, mode="w+", shape=(size,))
            memory[:] = 0
        ring = memory[:-1].reshape(self.buckets + 1, self.row_width)
        ring[:, 0] = -1
        ring[self.buckets, 0] = _TOTALS_ROW
        self._memory = memory
        self._ring = ring
        # the same memory as a flat sequence of Python ints (and its last slot as a float, the probability sum): a
        # record is counted without numpy calls
        self._flat = memory.data.cast("B").cast("q")
        self._sum = memory.data.cast("B").cast("d")[size - 1 :]
        self._bucket = None
        self._row = self._flat[0:0]
        self._row_end = -math.inf

    def _current_row(self, bucket: int) -> memoryview:
        """The row of the ring of time bucket ``bucket`` (now), as a flat view of Python ints (its older counts
        moved to the totals first, under the lock, so that a reader never sees them twice or not at all). Kept
        between calls: only this process writes its ring, so a row is only reset here."""
        if bucket == self._bucket:
            return self._row
        r = bucket % self.buckets
        start = r * self.row_width
        with self._lock:
            if self._flat[start] != bucket:
                old = self._ring[r]
                if old[0] >= 0:
                    self._ring[self.buckets, 1:] += old[1:]
                old[:] = 0
                self._flat[start] = bucket
        self._bucket = bucket
        self._row_index = r
        self._row = self._flat[start : start + self.row_width]
        return self._row

    def _advance(self, now: float) -> memoryview:
        """The slow path of a record: a new time bucket has begun (or the process was forked: a child reopens a
        ring of its own)."""
        if self._generation != _fork_generation:
            self._open()
        bucket = math.floor(now / self.bucket_seconds)
        row = self._current_row(bucket)
        self._row_end = (bucket + 1) * self.bucket_seconds
        return row

    def add(
        self,
        raw: np.ndarray,
        probability: Sequence[float] | np.ndarray,
        rows: Sequence[Sequence[float]] | None = None,
    ) -> None:
        """Count records ``raw`` ``(N, F)`` (original units, NaN = missing, else finite) with served
        ``probability``. ``rows``: the same records as Python lists, if the caller has them (saves converting them
        again).

        A few records are counted in plain Python (a numpy call costs more than a record's work), a batch with
        numpy; both count the same (tested)."""
        n = len(raw)
        if n == 0:
            return
        if n <= _PYTHON_MAX_RECORDS:
            probs = probability.tolist() if isinstance(probability, np.ndarray) else probability
            self.add_rows(raw.tolist() if rows is None else rows, probs)
            return
        ref = self.reference
        columns = ref.fine_columns_of(raw, np.asarray(probability, dtype=np.float64))
        counts = np.bincount(columns.ravel(), minlength=ref.fine_width)
        now = self.clock()
        if now >= self._row_end:
            self._advance(now)
        row = self._ring[self._row_index]
        row[1] += n
        row[2:] += counts
        self._sum[0] += float(np.sum(probability))

    def add_rows(self, rows: Sequence[Sequence[float]], probability: Sequence[float]) -> None:
        """:meth:`add` for a few records given as Python lists (the runtime has them already), without numpy.

        This runs on the event loop for every prediction, so it touches as little as it can: the clock, then per
        record one ``bisect`` a variable and one increment a variable, in C (``_binning.Binner``; in Python, the
        same, where the extension did not compile). Without a
        lock: every record is counted on the event loop's thread (the runtime's predictions are built there), and
        a reader (:meth:`counts`, :meth:`totals`) only copies counts that go up one by one; the rare reset of a
        row at a new time bucket takes the lock (:meth:`_current_row`)."""
        now = self.clock()
        row = self._row if now < self._row_end else self._advance(now)
        row[1] += len(rows)
        if self._binner is not None:
            self._sum[0] += self._binner.add(row, rows, probability)
            return
        edges, columns = self._edges, self._columns
        total = 0.0
        for values, p in zip(rows, probability, strict=True):
            total += p
            for column in map(add, columns, map(bisect_right, edges, [*values, p])):
                row[column] += 1
        self._sum[0] += total

    def _snapshot(self) -> np.ndarray:
        with self._lock:
            return np.array(self._memory)

    def memories(self) -> list[tuple[np.ndarray, float]]:
        """What the window is made of, read once: each ring (with its totals row) and probability sum, this
        process's, or every process's file when file-backed. :meth:`counts`, :meth:`totals` and :meth:`report`
        read it themselves unless given one (a scrape reads the files once for all three)."""
        if self.folder is not None:
            return list(_rings(self.folder, self.reference, self.buckets, self.row_width))
        return [_split(self._snapshot(), self.buckets, self.row_width)]

    def counts(self, memories: Sequence[tuple[np.ndarray, float]] | None = None) -> tuple[int, np.ndarray]:
        """Records and counts in the window (see :meth:`DriftReference.public_counts`)."""
        now_bucket = math.floor(self.clock() / self.bucket_seconds)
        found = self.memories() if memories is None else memories
        return _window_counts(self.reference, found, self.buckets, now_bucket)

    def totals(self, memories: Sequence[tuple[np.ndarray, float]] | None = None) -> Totals:
        """What was counted since start-up (a dead process's file included: counters do not go down)."""
        n = 0
        fine = np.zeros(self.reference.fine_width, dtype=np.int64)
        probability_sum = 0.0
        for ring, part_sum in self.memories() if memories is None else memories:
            part_n, part = _sum_all(ring)
            n += part_n
            fine += part
            probability_sum += part_sum
        return self.reference.totals_of(n, fine, probability_sum)

    def report(self, min_records: int, memories: Sequence[tuple[np.ndarray, float]] | None = None) -> DriftReport:
        """PSI and verdict of every variable over the window."""
        n, counts = self.counts(memories)
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
    """Records and fine counts of the ring's rows whose bucket is in the window."""
    rows = ring[:buckets]
    live = (rows[:, 0] > now_bucket - buckets) & (rows[:, 0] <= now_bucket)
    total = rows[live].sum(axis=0)
    return int(total[1]), total[2:]


def _sum_all(ring: np.ndarray) -> tuple[int, np.ndarray]:
    """Records and fine counts since start-up: every row of the ring (a row not reset yet still counts) and the
    totals row."""
    total = ring[:, 1:].sum(axis=0)
    return int(total[0]), total[1:]


def _split(memory: np.ndarray, buckets: int, width: int) -> tuple[np.ndarray, float]:
    """A window's memory as its ring (with the totals row) and its probability sum."""
    return memory[:-1].reshape(buckets + 1, width), float(memory[-1:].view(np.float64)[0])


def _rings(folder: Path, reference: DriftReference, buckets: int, width: int) -> Iterator[tuple[np.ndarray, float]]:
    """Every process's ring and probability sum in ``folder`` for ``reference`` (files of a dead process
    included)."""
    pattern = os.path.join(glob.escape(str(folder)), f"{_FILE_PREFIX}{reference.fingerprint}_*{_FILE_SUFFIX}")
    for path in sorted(glob.glob(pattern)):
        try:
            memory = np.fromfile(path, dtype=np.int64)
        except OSError:  # removed meanwhile
            continue
        if memory.size == (buckets + 1) * width + 1:
            yield _split(memory, buckets, width)


def _window_counts(
    reference: DriftReference, memories: Iterable[tuple[np.ndarray, float]], buckets: int, now_bucket: int
) -> tuple[int, np.ndarray]:
    n = 0
    fine = np.zeros(reference.fine_width, dtype=np.int64)
    for ring, _ in memories:
        part_n, part = _sum_window(ring, buckets, now_bucket)
        n += part_n
        fine += part
    return n, reference.public_counts(fine)


def read_counts(
    folder: Path, reference: DriftReference, buckets: int, width: int, now_bucket: int
) -> tuple[int, np.ndarray]:
    """Records and counts in the window (:meth:`DriftReference.public_counts`), added up over every process's file
    in ``folder`` for ``reference`` (``width`` columns a row; files of a dead process still count until their
    buckets leave the window)."""
    return _window_counts(reference, _rings(folder, reference, buckets, width), buckets, now_bucket)
