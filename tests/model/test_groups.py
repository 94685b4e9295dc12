"""Properties of the outcome-group summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.model.groups import GROUPS, summarize_groups

NAMES = ["glucose", "bmi", "age"]


def _example(seed: int = 0, n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 3))
    v = rng.uniform(20, 200, size=(n, 3))
    return a, v, rng.integers(0, 2, n), rng.integers(0, 2, n)


def test_counts_partition_the_records() -> None:
    """TP, TN, FP and FN counts match the confusion matrix and add up to ALL."""
    a, v, yt, yp = _example()
    out = summarize_groups(a, v, yt, yp, NAMES)
    assert out["TP"]["count"] == int(((yt == 1) & (yp == 1)).sum())
    assert out["FN"]["count"] == int(((yt == 1) & (yp == 0)).sum())
    assert sum(out[g]["count"] for g in ("TP", "TN", "FP", "FN")) == out["ALL"]["count"] == len(yt)
    assert [f["feature"] for f in out["ALL"]["features"]] == NAMES


def test_interval_contains_mean_and_is_student_t() -> None:
    """Each interval contains its mean, and its half-width is t(0.975, n−1)·SD/√n."""
    a, v, yt, yp = _example(1)
    out = summarize_groups(a, v, yt, yp, NAMES)
    for g in GROUPS:
        for f in out[g]["features"]:
            assert f["ci_low"] <= f["mean"] <= f["ci_high"]
    n = out["ALL"]["count"]
    f = out["ALL"]["features"][0]
    from scipy.stats import t

    assert f["ci_high"] - f["mean"] == pytest.approx(t.ppf(0.975, n - 1) * a[:, 0].std(ddof=1) / np.sqrt(n))
    assert "95%" in out["interval"]
    assert "Student-t" in out["interval"]


def test_known_values_on_a_tiny_example() -> None:
    """Two TP records with attributions 1 and 3: mean 2, SD √2, 95% CI 2 ± 12.706·√2/√2, mean |a| 2."""
    a = np.array([[1.0, -1.0, 0.0], [3.0, -3.0, 0.0], [5.0, 5.0, 5.0]])
    v = np.array([[100.0, 30.0, 40.0], [120.0, 32.0, np.nan], [90.0, 25.0, 50.0]])
    out = summarize_groups(a, v, np.array([1, 1, 0]), np.array([1, 1, 1]), NAMES)
    tp = out["TP"]["features"]
    assert tp[0]["mean"] == 2.0
    assert tp[0]["std"] == pytest.approx(np.sqrt(2.0))
    assert tp[0]["ci_low"] == pytest.approx(2.0 - 12.706204736174698)
    assert tp[0]["ci_high"] == pytest.approx(2.0 + 12.706204736174698)
    assert tp[1]["mean"] == -2.0
    assert tp[1]["mean_abs"] == 2.0
    assert tp[0]["mean_value"] == 110.0
    assert tp[2]["mean_value"] == 40.0  # NaN (not measured) is left out
    assert tp[2]["std"] == 0.0
    assert tp[2]["ci_low"] == tp[2]["ci_high"] == 0.0


def test_empty_and_single_record_groups() -> None:
    """An empty group has None statistics; a one-record group has a mean but no SD and no interval."""
    a = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = summarize_groups(a, a * 10, np.array([1, 0]), np.array([1, 1]), NAMES)
    assert out["TN"]["count"] == 0
    assert all(f[k] is None for f in out["TN"]["features"] for k in ("mean", "ci_low", "std", "mean_abs"))
    fp = out["FP"]["features"][1]
    assert out["FP"]["count"] == 1
    assert fp["mean"] == 5.0
    assert fp["mean_abs"] == 5.0
    assert fp["std"] is None
    assert fp["ci_low"] is None
    assert fp["ci_high"] is None


def test_output_is_json_ready_and_deterministic() -> None:
    """Plain Python types only (strict JSON, no NaN), and the same input gives the same output."""
    a, v, yt, yp = _example(2, 5)
    out = summarize_groups(a, v, yt, yp, NAMES)
    text = json.dumps(out, allow_nan=False)
    assert text == json.dumps(summarize_groups(a, v, yt, yp, NAMES), allow_nan=False)
    for g in GROUPS:
        for f in out[g]["features"]:
            assert all(x is None or type(x) in (float, str) for x in f.values())


def test_lower_confidence_gives_narrower_interval() -> None:
    """A 68% interval is narrower than the 95% one and labelled as such."""
    a, v, yt, yp = _example(3)
    wide = summarize_groups(a, v, yt, yp, NAMES)["ALL"]["features"][0]
    narrow_out = summarize_groups(a, v, yt, yp, NAMES, confidence=0.68)
    narrow = narrow_out["ALL"]["features"][0]
    assert wide["ci_low"] < narrow["ci_low"] < narrow["mean"] < narrow["ci_high"] < wide["ci_high"]
    assert narrow_out["interval"].startswith("68%")


def test_bad_inputs_are_rejected() -> None:
    """Non-binary labels, mismatched shapes and out-of-range confidence raise ValueError."""
    a, v, yt, yp = _example(4, 4)
    with pytest.raises(ValueError, match="0 and 1"):
        summarize_groups(a, v, yt + 1, yp, NAMES)
    with pytest.raises(ValueError, match="feature names"):
        summarize_groups(a, v, yt, yp, NAMES[:2])
    with pytest.raises(ValueError, match="confidence"):
        summarize_groups(a, v, yt, yp, NAMES, confidence=1.0)
    with pytest.raises(ValueError, match="labels"):
        summarize_groups(a, v, yt[:3], yp, NAMES)
