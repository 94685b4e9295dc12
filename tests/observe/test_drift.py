"""Drift monitoring: bins from the evaluation set, the population stability index, the verdicts, the rolling window
(time buckets that age out), and the per-process files that several workers add up."""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from service.model.store import Bundle
from service.observe.drift import (
    PSI_ACT,
    PSI_WATCH,
    DriftReference,
    DriftWindow,
    psi,
    read_counts,
    status_of,
)


class Clock:
    """A settable clock for the window's time buckets."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _reference(bundle: Bundle) -> DriftReference:
    rng = np.random.default_rng(0)
    probability = rng.uniform(0, 1, len(bundle.eval_raw))
    pre = bundle.preprocessor
    return DriftReference(
        bundle.spec.names,
        [f.may_be_missing for f in bundle.spec],
        bundle.eval_raw,
        probability,
        pre.train_min,
        pre.train_max,
        identity="test",
    )


def test_psi_is_zero_for_equal_shares_and_grows_with_a_shift() -> None:
    """PSI of equal shares is ~0 (exactly 0 at equal counts; the smoothing leaves a trace otherwise); it grows as
    mass moves between bins and stays finite on empty bins."""
    expected = np.array([10, 20, 30, 40])
    assert psi(expected, expected) == 0.0
    assert psi(expected * 3, expected) == pytest.approx(0.0, abs=1e-3)
    small = psi(np.array([12, 20, 28, 40]), expected)
    large = psi(np.array([40, 30, 20, 10]), expected)
    assert 0 < small < large
    assert np.isfinite(psi(np.array([0, 0, 0, 100]), expected))


def test_verdicts_follow_the_thresholds_and_need_enough_records() -> None:
    """stable < 0.1 ≤ watch ≤ 0.25 < act; under min_records there is no verdict."""
    assert status_of(0.05, 500, 200) == "stable"
    assert status_of(PSI_WATCH, 500, 200) == "watch"
    assert status_of(PSI_ACT, 500, 200) == "watch"
    assert status_of(0.3, 500, 200) == "act"
    assert status_of(5.0, 199, 200) == "insufficient_data"


def test_bins_come_from_the_evaluation_deciles_with_a_missing_bin(bundle: Bundle) -> None:
    """Each feature has at most 10 value bins from the evaluation set's deciles, plus 'missing' if it may be missing;
    the evaluation set fills the deciles about evenly."""
    ref = _reference(bundle)
    assert ref.names == (*bundle.spec.names, "probability")
    for v, feat in zip(ref.variables, bundle.spec, strict=False):
        assert v.n_bins <= 10 + int(feat.may_be_missing)
        assert v.has_missing_bin == feat.may_be_missing
    glucose = ref.variables[bundle.spec.names.index("glucose")]
    counts = ref.expected[glucose.offset : glucose.offset + glucose.n_bins - 1]
    assert counts.sum() == np.count_nonzero(~np.isnan(bundle.eval_raw[:, 1]))
    assert counts.min() >= 0.5 * counts.mean()


def test_the_evaluation_set_is_stable_and_a_shift_acts(bundle: Bundle) -> None:
    """Replaying the evaluation set gives PSI ~0 everywhere; adding 60 mg/dL to glucose makes glucose 'act' alone."""
    ref = _reference(bundle)
    prob = np.random.default_rng(0).uniform(0, 1, len(bundle.eval_raw))
    same = DriftWindow(ref, clock=Clock())
    for _ in range(3):
        same.add(bundle.eval_raw, prob)
    report = same.report(min_records=100)
    assert report.records == 3 * len(bundle.eval_raw)
    assert all(v.status == "stable" for v in report.variables), [(v.name, v.psi) for v in report.variables]
    shifted_raw = bundle.eval_raw.copy()
    shifted_raw[:, 1] += 60
    shifted = DriftWindow(ref, clock=Clock())
    for _ in range(3):
        shifted.add(shifted_raw, prob)
    by_name = {v.name: v for v in shifted.report(min_records=100).variables}
    assert by_name["glucose"].status == "act"
    assert by_name["glucose"].recent_out_of_range_rate is not None
    assert by_name["glucose"].recent_out_of_range_rate > 0
    assert all(v.status == "stable" for n, v in by_name.items() if n != "glucose")


def test_more_missing_values_is_drift(bundle: Bundle) -> None:
    """Insulin missing in every record (the evaluation set: about half) moves insulin's index over the act line."""
    ref = _reference(bundle)
    raw = bundle.eval_raw.copy()
    raw[:, bundle.spec.names.index("insulin")] = np.nan
    window = DriftWindow(ref, clock=Clock())
    window.add(raw, np.full(len(raw), 0.5))
    insulin = {v.name: v for v in window.report(min_records=1).variables}["insulin"]
    assert insulin.recent_missing_rate == 1.0
    assert insulin.reference_missing_rate is not None
    assert insulin.reference_missing_rate < 0.9
    assert insulin.status == "act"


def test_old_buckets_leave_the_window(bundle: Bundle) -> None:
    """Records counted more than window_seconds ago are no longer in the window; recent ones still are."""
    ref = _reference(bundle)
    clock = Clock()
    window = DriftWindow(ref, window_seconds=600, buckets=10, clock=clock)
    window.add(bundle.eval_raw[:10], np.full(10, 0.2))
    clock.t += 300
    window.add(bundle.eval_raw[:5], np.full(5, 0.2))
    assert window.counts()[0] == 15
    clock.t += 400  # the first bucket is now 700 s old
    assert window.counts()[0] == 5
    clock.t += 10 * 600  # the ring has wrapped many times: nothing left
    assert window.counts()[0] == 0
    window.add(bundle.eval_raw[:3], np.full(3, 0.2))
    assert window.counts()[0] == 3


def _child_adds(folder: str, bundle_path: str, n: int) -> None:
    from service.model.store import load_bundle

    bundle = load_bundle(Path(bundle_path))
    window = DriftWindow(_reference(bundle), folder=Path(folder))
    window.add(bundle.eval_raw[:n], np.full(n, 0.3))


def test_processes_share_the_window_through_their_files(bundle: Bundle, tmp_path: Path) -> None:
    """Two processes writing to one folder: a reader adds up both files (what several workers do)."""
    ref = _reference(bundle)
    mine = DriftWindow(ref, folder=tmp_path)
    mine.add(bundle.eval_raw[:7], np.full(7, 0.3))
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_child_adds, args=(str(tmp_path), str(bundle.path), 11))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2, files
    n, counts = mine.counts()
    assert n == 18
    now_bucket = int(mine.clock() // mine.bucket_seconds)
    assert read_counts(tmp_path, ref, mine.buckets, mine.row_width, now_bucket)[0] == 18
    age = ref.variables[-2]
    assert counts[age.offset : age.offset + age.n_bins].sum() == 18
    totals = mine.totals()  # the counters' values: both processes' too
    assert totals.records == 18
    missing = np.isnan(bundle.eval_raw[:7]).sum(axis=0) + np.isnan(bundle.eval_raw[:11]).sum(axis=0)
    assert totals.missing == missing.tolist()
    assert totals.probability_sum == pytest.approx(18 * 0.3)


def test_a_window_keeps_counts_only(bundle: Bundle, tmp_path: Path) -> None:
    """The window's file holds integer counts and bucket numbers, and one float: the running sum of the served
    probabilities (what the probability histogram's _sum publishes). No input value of a record is in it, in any
    encoding."""
    ref = _reference(bundle)
    window = DriftWindow(ref, folder=tmp_path)
    raw = bundle.eval_raw[:1].copy()
    raw[0, 1] = 187.654321
    window.add(raw, np.array([0.123456789]))
    [path] = list(tmp_path.iterdir())
    memory = np.fromfile(path, dtype=np.int64)
    counts, probability_sum = memory[:-1], memory[-1:].view(np.float64)[0]
    assert probability_sum == 0.123456789
    bucket = int(window.clock() // window.bucket_seconds)
    assert set(np.unique(counts).tolist()) <= {-2, -1, 0, 1, bucket}
    data = path.read_bytes()
    for encoded in (np.float64(187.654321).tobytes(), np.float32(187.654321).tobytes(), b"187.65"):
        assert encoded not in data


def _in_range_record(bundle: Bundle, ref: DriftReference) -> np.ndarray:
    """The first evaluation record with every value measured and within the training range."""
    raw = bundle.eval_raw[:1].copy()
    lo, hi = np.asarray(ref.train_min), np.asarray(ref.train_max)
    raw[0] = np.clip(np.where(np.isnan(raw[0]), lo, raw[0]), lo, hi)
    return raw


def test_one_bisect_tells_the_bin_missing_and_out_of_range(bundle: Bundle) -> None:
    """The fine bins say, for each value, its decile bin, whether it was missing and whether it lay outside the
    training range, exactly at the range's ends: the training minimum and maximum are within it, the next
    representable numbers beyond them are not."""
    ref = _reference(bundle)
    j = bundle.spec.names.index("insulin")
    insulin = ref.variables[j]
    lo, hi = float(ref.train_min[j]), float(ref.train_max[j])
    cases = {
        lo: (0, 0, 0),
        hi: (0, 0, 0),
        math.nextafter(lo, -math.inf): (0, 1, 0),
        math.nextafter(hi, math.inf): (0, 0, 1),
        math.nan: (1, 0, 0),
    }
    for value, (missing, below, above) in cases.items():
        window = DriftWindow(ref, clock=Clock())
        raw = _in_range_record(bundle, ref)
        raw[0, j] = value
        window.add(raw, [0.5])
        totals = window.totals()
        assert (totals.missing[j], totals.below[j], totals.above[j]) == (missing, below, above), value
        assert sum(totals.missing) + sum(totals.below) + sum(totals.above) == missing + below + above
        _, counts = window.counts()
        if missing:
            assert counts[insulin.offset + insulin.n_bins - 1] == 1
        else:
            decile = int(np.searchsorted(np.asarray(insulin.edges), value, side="right"))
            assert counts[insulin.offset + decile] == 1
        assert counts[ref.width + j] == below + above


def test_totals_outlive_the_window(bundle: Bundle) -> None:
    """Counts since start-up keep what the window has forgotten (counters do not go down); the window itself
    keeps only its recent buckets."""
    ref = _reference(bundle)
    clock = Clock()
    window = DriftWindow(ref, window_seconds=600, buckets=10, clock=clock)
    raw = bundle.eval_raw[:20]
    window.add(raw, np.full(20, 0.25))
    first = window.totals()
    clock.t += 10 * 600 + 30  # the ring wraps: its old rows are moved to the totals as they are reused
    window.add(raw[:3], np.full(3, 0.75))
    clock.t += 2 * 600
    window.add(raw[:4], np.full(4, 0.75))
    assert window.counts()[0] == 4
    totals = window.totals()
    assert totals.records == 27
    missing = np.isnan(raw).sum(axis=0) + np.isnan(raw[:3]).sum(axis=0) + np.isnan(raw[:4]).sum(axis=0)
    assert totals.missing == missing.tolist()
    assert first.missing == np.isnan(raw).sum(axis=0).tolist()
    assert totals.probability_sum == pytest.approx(20 * 0.25 + 7 * 0.75)
    assert sum(totals.probability_bins) == 27


def test_a_few_records_and_a_batch_are_counted_alike(bundle: Bundle) -> None:
    """Counting record by record (plain Python) and as one batch (numpy) gives the same window and the same
    counts since start-up, values on edges and out-of-range values included."""
    ref = _reference(bundle)
    raw = bundle.eval_raw.copy()
    raw[:5, 1] = ref.variables[1].edges[0]  # values on a bin edge go to the bin above, both ways
    raw[5, 4] = 5000.0  # above the training range
    raw[6, 5] = 1.0  # below it
    raw[7, 2] = ref.train_min[2]  # on the range's ends: within it
    raw[8, 2] = ref.train_max[2]
    prob = np.random.default_rng(1).uniform(0, 1, len(raw))
    prob[:3] = ref.variables[-1].edges[:3]
    one_by_one, batched = DriftWindow(ref, clock=Clock()), DriftWindow(ref, clock=Clock())
    for i in range(len(raw)):
        one_by_one.add(raw[i : i + 1], prob[i : i + 1])
    assert len(raw) > 16  # the batch takes the numpy path
    batched.add(raw, prob)
    t1, t2 = one_by_one.totals(), batched.totals()
    assert (t1.records, t1.missing, t1.below, t1.above) == (t2.records, t2.missing, t2.below, t2.above)
    assert t1.probability_bins == t2.probability_bins
    assert t1.probability_sum == pytest.approx(t2.probability_sum, rel=1e-12)
    assert t2.above[4] >= 1
    assert t2.below[5] >= 1
    assert t2.missing == np.isnan(raw).sum(axis=0).tolist()
    n1, c1 = one_by_one.counts()
    n2, c2 = batched.counts()
    assert n1 == n2 == len(raw)
    assert c1.tolist() == c2.tolist()


def _forked_adds(window: DriftWindow, raw: np.ndarray) -> None:
    window.add(raw, np.full(len(raw), 0.4))


def test_a_forked_child_writes_its_own_file(bundle: Bundle, tmp_path: Path) -> None:
    """A window inherited through fork (engine processes) reopens a file of the child's own on its first record,
    so the parent's counts are not overwritten and the reader adds up both."""
    window = DriftWindow(_reference(bundle), folder=tmp_path)
    window.add(bundle.eval_raw[:4], np.full(4, 0.4))
    child = multiprocessing.get_context("fork").Process(target=_forked_adds, args=(window, bundle.eval_raw[:6]))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert len(list(tmp_path.iterdir())) == 2
    assert window.counts()[0] == 10


def test_the_compiled_counting_matches_the_python_loop(bundle: Bundle) -> None:
    """The C counting (service/observe/_binning.c) and the Python loop leave the same bytes in the window, counts
    and probability sum, for records with missing values, values on bin edges, on the training range's ends and
    one step beyond them; the C path is the one in use where it compiled."""
    from service.observe import _binning  # built by the install (make setup): a missing build fails here

    ref = _reference(bundle)
    rng = np.random.default_rng(3)
    raw = np.resize(bundle.eval_raw, (400, bundle.eval_raw.shape[1])).copy()
    for k in range(len(ref.features)):
        picks = rng.integers(0, len(raw), 12)
        edges = [e for e in ref.fine_edges[k] if math.isfinite(e)]
        special = [*edges, float(ref.train_min[k]), float(ref.train_max[k])]
        special += [
            math.nextafter(float(ref.train_min[k]), -math.inf),
            math.nextafter(float(ref.train_max[k]), math.inf),
        ]
        raw[picks, k] = rng.choice(special, len(picks))
    prob = rng.uniform(0, 1, len(raw))
    prob[:20] = rng.choice([e for e in ref.fine_edges[-1] if math.isfinite(e)], 20)
    in_c, in_python = DriftWindow(ref, clock=Clock()), DriftWindow(ref, clock=Clock(), compiled=False)
    assert isinstance(in_c._binner, _binning.Binner)
    assert in_python._binner is None
    for start in range(0, len(raw), 3):
        rows, p = raw[start : start + 3].tolist(), prob[start : start + 3].tolist()
        in_c.add_rows(rows, p)
        in_python.add_rows(rows, p)
    assert in_c._memory.tobytes() == in_python._memory.tobytes()
    assert in_c.totals().missing == np.isnan(raw).sum(axis=0).tolist()


def test_the_compiled_counting_refuses_what_does_not_fit(bundle: Bundle) -> None:
    """A record of the wrong length or kind, a probability missing, or a row that is not int64 counts: an error that
    says so, and the row is left as it was."""
    from service.observe import _binning

    ref = _reference(bundle)
    window = DriftWindow(ref, clock=Clock())
    binner = window._binner
    assert isinstance(binner, _binning.Binner)
    row = memoryview(bytearray(8 * window.row_width)).cast("q")
    good = bundle.eval_raw[:1].tolist()
    with pytest.raises(ValueError, match="must have 8 values"):
        binner.add(row, [good[0], good[0][:7]], [0.1, 0.2])
    with pytest.raises(TypeError, match="list or a tuple"):
        binner.add(row, [bundle.eval_raw[0]], [0.1])  # a numpy row: not read in place
    with pytest.raises(ValueError, match="one probability per record"):
        binner.add(row, good, [])
    with pytest.raises(ValueError, match="int64"):
        binner.add(memoryview(bytearray(8 * window.row_width)).cast("d"), good, [0.1])  # type: ignore[arg-type]  # the wrong kind, on purpose
    with pytest.raises(ValueError, match="do not fit"):
        _binning.Binner(ref.fine_edges, [2 + o for o in ref.fine_offsets], 10)
    assert not any(row)
    assert binner.add(row, good, [0.25]) == 0.25
    assert sum(row) == len(ref.variables)
