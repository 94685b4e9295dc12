"""Calibration: Platt scaling of a logit, and how well predicted risks match observed rates (with bootstrap).

No web framework, no torch. Every number leaves here rounded to 6 decimals: the fits are Newton iterations on
numpy arrays, whose last bits can differ between machines (SIMD ``exp``, summation order), and the bundle must be
byte-identical wherever it is rebuilt. The Platt parameters are rounded *before* they are used, so the rounded
values are the calibration (the statistical uncertainty of ``a`` and ``b`` is ~0.1, far above 1e-6).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from service.contract import label_of, sigmoid

__all__ = [
    "AGE_BANDS",
    "BMI_BANDS",
    "ECE_BINS",
    "calibration_metrics",
    "ece",
    "fit_logistic_1d",
    "fit_platt",
    "reliability_bins",
    "subgroup_metrics",
]

ECE_BINS = 10
"""Expected calibration error: 10 equal-width bins of the predicted probability on [0, 1] (the last bin closed),
each bin's |mean predicted − observed rate| weighted by its share of the records."""

AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("21-29", 21.0, 30.0),
    ("30-39", 30.0, 40.0),
    ("40-49", 40.0, 50.0),
    ("50+", 50.0, math.inf),
)
"""Age bands in years, ``[low, high)``."""

BMI_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<25", -math.inf, 25.0),
    ("25-<30", 25.0, 30.0),
    ("30-<35", 30.0, 35.0),
    (">=35", 35.0, math.inf),
)
"""BMI bands in kg/m², ``[low, high)`` (under 25, 25 to under 30, 30 to under 35, 35 and over); records whose BMI
was not measured form their own band."""

_NEWTON_MAX = 100


def _r(v: float) -> float | None:
    """Round to 6 decimals; NaN (not defined on this sample) becomes ``None`` (JSON null)."""
    return None if not math.isfinite(v) else round(float(v), 6)


def fit_logistic_1d(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood ``(slope, intercept)`` of ``P(y=1) = sigmoid(slope·z + intercept)``, unpenalised.

    Newton–Raphson with step halving from ``(1, 0)``. Returns ``(nan, nan)`` when the fit does not exist
    (one class only, or perfectly separated data: the likelihood has no maximum) or does not converge.
    """
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(y) < 2 or y.min() == y.max():
        return math.nan, math.nan
    x = np.stack([z, np.ones_like(z)], axis=1)
    beta = np.array([1.0, 0.0])

    def nll(bt: np.ndarray) -> float:
        eta = x @ bt
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta))

    cur = nll(beta)
    for _ in range(_NEWTON_MAX):
        p = sigmoid(x @ beta)
        grad = x.T @ (p - y)
        w = p * (1 - p)
        hess = (x * w[:, None]).T @ x
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return math.nan, math.nan
        t = 1.0
        while True:
            cand = beta - t * step
            new = nll(cand)
            if new <= cur + 1e-12 or t < 1e-8:
                break
            t /= 2
        beta, done = cand, abs(cur - new) < 1e-12 and float(np.max(np.abs(t * step))) < 1e-9
        cur = new
        if done:
            break
        if float(np.max(np.abs(beta))) > 1e6:  # separated: the maximum is at infinity
            return math.nan, math.nan
    else:
        return math.nan, math.nan
    return float(beta[0]), float(beta[1])


def fit_platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling: ``(a, b)`` of ``calibrated = a·logit + b`` fitted by maximum likelihood, rounded to 6 decimals.

    Raises ``ValueError`` when the fit does not exist or gives ``a <= 0`` (a calibration must keep the order).
    """
    a, b = fit_logistic_1d(logits, y)
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        raise ValueError(f"Platt scaling failed on this split (a={a}, b={b})")
    return round(a, 6), round(b, 6)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1 - 1e-12)
    out: np.ndarray = np.log(q / (1 - q))
    return out


def ece(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error over ``bins`` equal-width bins on [0, 1] (see :data:`ECE_BINS`)."""
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for k in range(bins):
        sel = idx == k
        n = int(sel.sum())
        if n:
            total += n * abs(float(p[sel].mean()) - float(y[sel].mean()))
    return total / len(y)


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Per bin: its edges, the record count, the mean predicted risk and the observed rate (``None`` if empty)."""
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for k in range(bins):
        sel = idx == k
        n = int(sel.sum())
        out.append(
            {
                "low": round(k / bins, 6),
                "high": round((k + 1) / bins, 6),
                "count": n,
                "positives": int(y[sel].sum()),
                "mean_predicted": _r(float(p[sel].mean())) if n else None,
                "observed": _r(float(y[sel].mean())) if n else None,
            }
        )
    return out


def _calibration_point(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    slope, intercept = fit_logistic_1d(_logit(p), y)
    mean_p, prevalence = float(p.mean()), float(y.mean())
    return {
        "ece": ece(y, p),
        "slope": slope,
        "intercept": intercept,
        "brier": float(np.mean((p - y) ** 2)),
        "mean_predicted": mean_p,
        "observed_prevalence": prevalence,
        "mean_predicted_minus_prevalence": mean_p - prevalence,
    }


def _interval(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if not len(arr):
        return math.nan, math.nan
    lo, hi = np.percentile(arr, [2.5, 97.5])
    return float(lo), float(hi)


def _with_intervals(point: dict[str, float], boots: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in point.items():
        lo, hi = _interval(boots[k])
        out[k] = {"value": _r(v), "ci_low": _r(lo), "ci_high": _r(hi)}
    return out


def calibration_metrics(y: np.ndarray, p: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Calibration of predicted probabilities ``p`` against 0/1 outcomes ``y``, with 95 % bootstrap intervals.

    ECE (:data:`ECE_BINS`), calibration slope and intercept (the logistic recalibration fit
    ``logit P(y=1) = intercept + slope·logit(p)``: slope 1 and intercept 0 when calibrated), Brier score, mean
    predicted risk, observed prevalence and their difference; each ``{value, ci_low, ci_high}`` (percentile
    bootstrap, records resampled with replacement; resamples where a fit does not exist are left out), plus
    the reliability bins and ``n``.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    point = _calibration_point(y, p)
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {k: [] for k in point}
    n = len(y)
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        for k, v in _calibration_point(y[i], p[i]).items():
            boots[k].append(v)
    out = _with_intervals(point, boots)
    # ECE is biased upwards on small samples: what would a perfectly calibrated model score on these records?
    null = np.asarray([ece(rng.binomial(1, p).astype(np.float64), p) for _ in range(n_boot)])
    lo, med, hi = np.percentile(null, [2.5, 50, 97.5])
    out["ece_if_perfectly_calibrated"] = {
        "median": _r(med),
        "ci_low": _r(lo),
        "ci_high": _r(hi),
        "description": f"ECE when the outcomes are drawn from the predicted probabilities themselves (a perfectly "
        f"calibrated model), same records and binning, {n_boot} draws: the ECE that sampling noise alone gives",
    }
    out["bins"] = reliability_bins(y, p)
    out["n"] = n
    out["binning"] = f"{ECE_BINS} equal-width bins of the predicted probability on [0, 1]"
    out["interval"] = f"95% percentile bootstrap, {n_boot} resamples of the records, seed {seed}"
    return out


def _group_point(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    pred = label_of(p, threshold)
    pos, neg = y == 1, y == 0
    return {
        "roc_auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else math.nan,
        "sensitivity": float(pred[pos].mean()) if pos.any() else math.nan,
        "specificity": float(1 - pred[neg].mean()) if neg.any() else math.nan,
        "mean_predicted": float(p.mean()),
        "observed_rate": float(y.mean()),
        "mean_predicted_minus_observed": float(p.mean() - y.mean()),
        "ece": ece(y, p),
    }


def subgroup_metrics(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    bands: dict[str, np.ndarray],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Discrimination and calibration in each subgroup, ``bands`` mapping a band's name to its boolean mask.

    Per band: ``n``, ``positives``, and ROC AUC, sensitivity and specificity at ``threshold``, mean predicted risk,
    observed rate, their difference and ECE, each ``{value, ci_low, ci_high}`` (95 % percentile bootstrap of the
    band's records; ``null`` where the band lacks a class).
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    out = []
    for k, (name, mask) in enumerate(bands.items()):
        yb, pb = y[mask], p[mask]
        n = len(yb)
        row: dict[str, Any] = {"band": name, "n": n, "positives": int(yb.sum())}
        if n == 0:
            out.append(row)
            continue
        point = _group_point(yb, pb, threshold)
        rng = np.random.default_rng(seed + k)
        boots: dict[str, list[float]] = {key: [] for key in point}
        for _ in range(n_boot):
            i = rng.integers(0, n, n)
            for key, v in _group_point(yb[i], pb[i], threshold).items():
                boots[key].append(v)
        row.update(_with_intervals(point, boots))
        out.append(row)
    return out


def band_masks(
    values: np.ndarray, bands: tuple[tuple[str, float, float], ...], missing: str | None
) -> dict[str, np.ndarray]:
    """Boolean masks of the ``[low, high)`` bands of ``values`` (NaN = not measured: its own band if ``missing``)."""
    out = {name: (values >= lo) & (values < hi) for name, lo, hi in bands}
    if missing is not None:
        out[missing] = np.isnan(values)
    return out
