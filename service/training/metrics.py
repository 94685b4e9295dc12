"""Classification metrics with seeded bootstrap 95 % intervals; no web framework, no torch."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from service.contract import label_of

__all__ = ["classification_metrics", "confusion", "youden_threshold"]


def confusion(y: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """Counts ``tn, fp, fn, tp`` for 0/1 arrays of equal length."""
    return {
        "tn": int(((y == 0) & (pred == 0)).sum()),
        "fp": int(((y == 0) & (pred == 1)).sum()),
        "fn": int(((y == 1) & (pred == 0)).sum()),
        "tp": int(((y == 1) & (pred == 1)).sum()),
    }


def _point(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    pred = label_of(p, threshold)
    c = confusion(y, pred)
    tp, tn, fp, fn = c["tp"], c["tn"], c["fp"], c["fn"]
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    prec = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * prec * sens / (prec + sens) if tp else 0.0
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    return {
        "accuracy": (tp + tn) / len(y),
        "roc_auc": auc,
        "sensitivity": sens,
        "specificity": spec,
        "precision": prec,
        "f1": f1,
        "brier": float(np.mean((p - y) ** 2)),
    }


def classification_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float, *, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Point estimates and 95 % percentile-bootstrap intervals (records resampled with replacement).

    ``y``: ``(N,)`` 0/1 labels; ``p``: ``(N,)`` predicted probabilities. Returns JSON-ready numbers: for each
    metric ``{"value", "ci_low", "ci_high"}``, plus the confusion matrix at ``threshold`` and ``n``.
    """
    point = _point(y, p, threshold)
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {k: [] for k in point}
    n = len(y)
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        for k, v in _point(y[i], p[i], threshold).items():
            boots[k].append(v)
    out: dict[str, Any] = {}
    for k, v in point.items():
        arr = np.asarray(boots[k])
        arr = arr[~np.isnan(arr)]
        lo, hi = np.percentile(arr, [2.5, 97.5]) if len(arr) else (np.nan, np.nan)
        out[k] = {"value": round(float(v), 6), "ci_low": round(float(lo), 6), "ci_high": round(float(hi), 6)}
    out["confusion_matrix"] = confusion(y, label_of(p, threshold))
    out["n"] = int(n)
    # Reported, like every figure here, to 6 decimals: a threshold taken from a third-party solver's probabilities
    # (the logistic baseline: lbfgs over BLAS) differs across machines in its last bits (0.431769083600512 on one,
    # 0.43176908360051197 on another), and the manifest must be byte-identical everywhere. The threshold the
    # service decides with is the bundle's own (manifest "threshold", from torch on fixed weights), not this copy.
    out["threshold"] = round(float(threshold), 6)
    out["interval"] = f"95% percentile bootstrap, {n_boot} resamples of the records, seed {seed}"
    return out


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability threshold maximising sensitivity + specificity − 1 (Youden's J) on ``(y, p)``.

    Ties go to the threshold closest to 0.5. Returned as the midpoint between neighbouring distinct scores so
    that it does not sit exactly on a training record's score.
    """
    s = np.unique(p)
    cands = np.concatenate([[0.0], (s[:-1] + s[1:]) / 2, [1.0]])
    pos, neg = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    best, best_t = -np.inf, 0.5
    for t in cands:
        pred = p >= t
        j = (pred & (y == 1)).sum() / pos + (~pred & (y == 0)).sum() / neg - 1
        if j > best + 1e-12 or (abs(j - best) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
            best, best_t = j, float(t)
    return best_t
