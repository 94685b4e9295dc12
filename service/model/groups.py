"""Outcome-group summaries of attributions: TP, TN, FP, FN and ALL, with real confidence intervals.

The seed notebook drew, per outcome group, the mean attribution of each feature with ±1 standard error and called
it a confidence interval; ±1 SEM covers the mean only about 68 % of the time. Here each mean comes with a
Student-t interval at the requested confidence (95 % by default): ``mean ± t_{(1+c)/2, n−1} · SD / √n``, exact for
normally distributed attributions and a good approximation for the group sizes of an evaluation set otherwise.
Alongside: the standard deviation, the mean of absolute values (global influence regardless of direction) and the
mean feature value in original units (what the group's records look like).

Pure function, deterministic, JSON-ready output (plain ``int``/``float``/``str``, ``None`` where undefined).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.contract import GROUPS

__all__ = ["GROUPS", "summarize_groups"]


def summarize_groups(
    attributions: np.ndarray,
    values: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    feature_names: Sequence[str],
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Per outcome group and feature: mean attribution with its confidence interval, SD, mean |attribution|.

    Args:
        attributions: ``(N, F)`` attributions of each record.
        values: ``(N, F)`` feature values in original units (NaN = unknown, left out of ``mean_value``).
        y_true: ``(N,)`` true labels, 0/1.
        y_pred: ``(N,)`` predicted labels, 0/1.
        feature_names: ``F`` names, in column order.
        confidence: coverage of the interval, in (0, 1).

    Returns:
        ``{"TP"|"TN"|"FP"|"FN"|"ALL": {"count": n, "features": [{"feature", "mean", "ci_low", "ci_high", "std",
        "mean_abs", "mean_value"}, ...]}, "interval": description}``. With ``n = 0`` every statistic is ``None``;
        with ``n = 1`` the ``std`` and the interval are ``None``.
    """
    a = np.asarray(attributions, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    yt = _labels(y_true, "y_true")
    yp = _labels(y_pred, "y_pred")
    names = list(feature_names)
    if a.ndim != 2 or v.shape != a.shape:
        raise ValueError(f"attributions and values must be (N, F) of the same shape, got {a.shape} and {v.shape}")
    if yt.shape != (a.shape[0],) or yp.shape != (a.shape[0],):
        raise ValueError(f"y_true and y_pred must have {a.shape[0]} labels, got {yt.shape} and {yp.shape}")
    if len(names) != a.shape[1]:
        raise ValueError(f"{len(names)} feature names for {a.shape[1]} columns")
    if not np.all(np.isfinite(a)):
        raise ValueError("attributions contain NaN or infinite values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    members = {
        "TP": (yt == 1) & (yp == 1),
        "TN": (yt == 0) & (yp == 0),
        "FP": (yt == 0) & (yp == 1),
        "FN": (yt == 1) & (yp == 0),
        "ALL": np.ones(a.shape[0], dtype=bool),
    }
    out: dict[str, Any] = {
        g: {"count": int(m.sum()), "features": _features(a[m], v[m], names, confidence)} for g, m in members.items()
    }
    out["interval"] = (
        f"{confidence * 100:g}% Student-t confidence interval for the mean attribution "
        "(mean ± t(n−1) · SD / √n); none for groups of fewer than 2 records"
    )
    return out


def _student_t() -> Any:
    """scipy's Student-t distribution, imported on first use: importing scipy.stats costs start-up time and memory,
    and only the summaries (written at training time) need it."""
    from scipy.stats import t

    return t


def _features(a: np.ndarray, v: np.ndarray, names: list[str], confidence: float) -> list[dict[str, Any]]:
    n = a.shape[0]
    rows = []
    for j, name in enumerate(names):
        col = a[:, j]
        mean = _f(col.mean()) if n else None
        std = _f(col.std(ddof=1)) if n > 1 else None
        low = high = None
        if n > 1 and mean is not None and std is not None:
            half = float(_student_t().ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
            low, high = _f(mean - half), _f(mean + half)
        known = v[:, j][np.isfinite(v[:, j])]
        rows.append(
            {
                "feature": name,
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "std": std,
                "mean_abs": _f(np.abs(col).mean()) if n else None,
                "mean_value": _f(known.mean()) if known.size else None,
            }
        )
    return rows


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(y).reshape(-1)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.size and not np.all(np.isin(arr, (0, 1))):
        raise ValueError(f"{name} must contain only 0 and 1")
    return arr.astype(np.int64)


def _f(x: float | np.floating[Any]) -> float:
    return float(x)
