"""Exact interventional Shapley values by enumerating all 2^F coalitions: the reference for few features.

The game for a record ``x`` is ``v(S) = E_b f(x_S, b_S̄)``: features in ``S`` take the record's values, the others
the baseline's, averaged over the weighted baseline distribution (the "interventional" or baseline Shapley value
of ``shap.KernelExplainer``/``shap.explainers.Exact`` with a background set). The Shapley value of feature ``i`` is

    φ_i = Σ_{S ⊆ F∖{i}} |S|! (F − |S| − 1)! / F! · (v(S ∪ {i}) − v(S)),

which adds up to ``f(x) − E_b f(b)`` (efficiency). GradientSHAP estimates a different quantity (expected
gradients along straight paths); the two coincide for additive models and for linear ones, and otherwise differ
where features interact. :func:`agreement` reports how far apart they are; nothing forces them to agree.

Cost: ``2^F · K`` evaluations of ``f`` per record, so ``F`` is limited to :data:`MAX_FEATURES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import rankdata

__all__ = ["MAX_FEATURES", "agreement", "interventional_shapley"]

MAX_FEATURES = 12
"""Largest number of features enumerated (4096 coalitions)."""

Model = Callable[[np.ndarray], np.ndarray]


def interventional_shapley(
    f: Callable[[np.ndarray], np.ndarray | torch.Tensor],
    x: np.ndarray | torch.Tensor,
    baselines: np.ndarray | torch.Tensor,
    weights: np.ndarray | torch.Tensor | None = None,
    *,
    max_rows: int = 1 << 16,
) -> np.ndarray:
    """Exact interventional Shapley values of ``f`` for each record.

    Args:
        f: maps ``(R, F)`` float64 numpy points to ``(R,)`` outputs, numpy or tensor (e.g.
            ``GradientShapEngine.predict_logit``, which also accepts tensors).
        x: ``(N, F)`` records.
        baselines: ``(K, F)`` baseline points.
        weights: ``(K,)`` nonnegative baseline weights (normalised here); ``None`` = uniform.
        max_rows: largest number of points passed to ``f`` in one call.

    Returns:
        ``(N, F)`` float64 Shapley values; each row sums to ``f(x) − E_b f(b)``.
    """
    xs = _as_2d(x, "x")
    b = _as_2d(baselines, "baselines")
    n, nf = xs.shape
    if b.shape[1] != nf:
        raise ValueError(f"baselines have {b.shape[1]} features, x has {nf}")
    if nf > MAX_FEATURES:
        raise ValueError(f"{nf} features means 2^{nf} coalitions; exact enumeration is limited to {MAX_FEATURES}")
    w = _weights(weights, b.shape[0])
    fn = _numpy_model(f)

    n_coal = 1 << nf
    masks = ((np.arange(n_coal)[:, None] >> np.arange(nf)[None, :]) & 1).astype(bool)  # (2^F, F): i ∈ S
    values = np.empty((n, n_coal))
    per_record = n_coal * b.shape[0]
    step = max(1, max_rows // per_record)
    for start in range(0, n, step):
        xc = xs[start : start + step]
        # (n_c, 2^F, K, F): record values on S, baseline values elsewhere
        pts = np.where(masks[None, :, None, :], xc[:, None, None, :], b[None, None, :, :])
        out = np.asarray(fn(pts.reshape(-1, nf)), dtype=np.float64).reshape(len(xc), n_coal, b.shape[0])
        values[start : start + step] = out @ w

    size = masks.sum(1)
    coef = np.array([math.factorial(s) * math.factorial(nf - s - 1) / math.factorial(nf) for s in range(nf)])
    phi = np.zeros((n, nf))
    coalitions = np.arange(n_coal)
    for i in range(nf):
        without = coalitions[~masks[:, i]]  # S not containing i
        phi[:, i] = (values[:, without | (1 << i)] - values[:, without]) @ coef[size[without]]
    return phi


def agreement(a: np.ndarray, b: np.ndarray, *, top: int = 3) -> dict[str, float | int | None]:
    """How similar two ``(N, F)`` attribution matrices are (e.g. GradientSHAP vs interventional Shapley).

    Returns plain floats (``None`` where undefined):

    - ``pearson_median`` / ``pearson_min``, ``spearman_median`` / ``spearman_min``: per-record correlation across
      features (records where either row is constant are left out);
    - ``sign_agreement``: share of entries with the same sign, among entries where either is nonzero;
    - ``top_feature_agreement``: share of records whose feature of largest ``|attribution|`` is the same;
    - ``top_k_overlap``: mean share of the ``top`` largest-``|attribution|`` features in common;
    - ``max_abs_diff``, ``mean_abs_diff`` and ``relative_l1_diff`` = ``Σ|a − b| / Σ|b|``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (N, F) arrays of the same shape, got {a.shape} and {b.shape}")
    n, nf = a.shape
    pear, spear = [], []
    for ra, rb in zip(a, b, strict=True):
        if np.ptp(ra) > 0 and np.ptp(rb) > 0:
            pear.append(float(np.corrcoef(ra, rb)[0, 1]))
            spear.append(float(np.corrcoef(rankdata(ra), rankdata(rb))[0, 1]))
    nonzero = (a != 0) | (b != 0)
    k = min(top, nf)
    top_a = np.argsort(-np.abs(a), axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-np.abs(b), axis=1, kind="stable")[:, :k]
    overlap = [len(set(ta) & set(tb)) / k for ta, tb in zip(top_a, top_b, strict=True)] if nf else []
    diff = np.abs(a - b)
    ref = float(np.abs(b).sum())
    return {
        "records": n,
        "pearson_median": _median(pear),
        "pearson_min": min(pear) if pear else None,
        "spearman_median": _median(spear),
        "spearman_min": min(spear) if spear else None,
        "sign_agreement": float((np.sign(a) == np.sign(b))[nonzero].mean()) if nonzero.any() else None,
        "top_feature_agreement": float((top_a[:, 0] == top_b[:, 0]).mean()) if n and nf else None,
        "top_k_overlap": float(np.mean(overlap)) if overlap else None,
        "max_abs_diff": float(diff.max()) if diff.size else None,
        "mean_abs_diff": float(diff.mean()) if diff.size else None,
        "relative_l1_diff": float(diff.sum() / ref) if ref > 0 else None,
    }


def _numpy_model(f: Callable[[np.ndarray], np.ndarray | torch.Tensor]) -> Model:
    """``f`` as a function of float64 numpy points returning a flat float64 array (tensor outputs converted)."""

    def call(z: np.ndarray) -> np.ndarray:
        out = f(z)
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        return np.asarray(out, dtype=np.float64).reshape(-1)

    return call


def _as_2d(a: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    arr = arr.astype(np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (rows, F) array, got shape {arr.shape}")
    return arr


def _weights(weights: np.ndarray | torch.Tensor | None, k: int) -> np.ndarray:
    if weights is None:
        return np.full(k, 1.0 / k)
    w = weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
    w = w.astype(np.float64).reshape(-1)
    if w.shape[0] != k or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {k} finite nonnegative numbers, not all zero")
    out: np.ndarray = w / w.sum()
    return out


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None
