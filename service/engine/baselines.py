"""The baseline distribution: a weighted summary of the training split, by k-means.

GradientSHAP explains ``f(x) - E_b[f(b)]`` where ``b`` follows a *baseline distribution*, the population the
record is compared with. The seed notebook used the training median copied ten times, a single point, which
turns GradientSHAP into (noisy) integrated gradients from the median: every attribution then answers "why does
this record differ from one synthetic median patient", and a feature whose median is typical gets almost no
credit however much it varies in the population.

Here the distribution is the training split itself, summarised like ``shap.kmeans``: ``k`` k-means centres, each
weighted by the share of training rows in its cluster. Two properties make this a faithful summary:

- the weighted centres have exactly the training mean (Lloyd's update makes every centre its cluster's mean), so
  for a linear model the attributions ``w ⊙ (x - E[b])`` are *identical* to those with all training rows;
- for the MLP the difference from using all rows is small and measured (``scripts/bench_engine.py`` prints it
  for several ``k``), while the engine's cost grows linearly with ``k``.

Deterministic for a given seed (NumPy ``Generator``; no global random state, no threads).
"""

from __future__ import annotations

import numpy as np

__all__ = ["summarize_baselines"]

_N_INIT = 4
_MAX_ITER = 300


def summarize_baselines(x_train: np.ndarray, k: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Summarise training rows into ``k`` weighted baselines (k-means centres weighted by cluster size).

    Args:
        x_train: ``(N, F)`` training rows in model space (after imputation and scaling), finite.
        k: number of baselines. If ``k >= N`` the rows themselves are returned with equal weights.
        seed: seed of the k-means++ initialisations (best of 4 by inertia).

    Returns:
        ``(centres, weights)``: ``(k', F)`` float64 points and ``(k',)`` float64 weights summing to 1, where
        ``k' = min(k, N)`` (fewer only if the rows have fewer than ``k`` distinct values). Centres are sorted
        by decreasing weight (ties by their coordinates), so the output does not depend on the order k-means
        happened to find them in.
    """
    x = np.asarray(x_train, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x_train must be a non-empty (N, F) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x_train contains NaN or infinite values (impute and scale it first)")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n = x.shape[0]
    if k >= n:
        return x.copy(), np.full(n, 1.0 / n)

    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(_N_INIT):
        centres, labels, inertia = _lloyd(x, _kmeans_plus_plus(x, k, rng))
        if best is None or inertia < best[0]:
            best = (inertia, centres, labels)
    assert best is not None
    _, centres, labels = best
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    keep = counts > 0  # _lloyd re-seeds empty clusters, so this only guards against duplicate rows
    centres, counts = centres[keep], counts[keep]
    order = np.lexsort((*centres.T[::-1], -counts))
    return centres[order], counts[order] / counts.sum()


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``(N, F), (K, F) -> (N, K)`` squared Euclidean distances, clipped at 0."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    out: np.ndarray = np.maximum(d, 0.0)
    return out


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: ``(N, F) -> (k, F)`` initial centres drawn with probability ∝ squared distance."""
    n = x.shape[0]
    idx = [int(rng.integers(n))]
    d2 = _sq_dist(x, x[idx])[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0.0:  # fewer distinct rows than k: any row will do, Lloyd leaves the duplicate empty
            j = int(rng.integers(n))
        else:
            j = int(np.searchsorted(np.cumsum(d2), rng.random() * total, side="right"))
            j = min(j, n - 1)
        idx.append(j)
        d2 = np.minimum(d2, _sq_dist(x, x[j : j + 1])[:, 0])
    return x[idx].copy()


def _lloyd(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd iterations to convergence: returns ``(centres (k, F), labels (N,), inertia)``."""
    k = centres.shape[0]
    labels = np.full(x.shape[0], -1)
    for _ in range(_MAX_ITER):
        d = _sq_dist(x, centres)
        new = d.argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        counts = np.bincount(labels, minlength=k)
        if np.any(counts == 0):  # re-seed each empty cluster at the row worst fitted by its own centre
            own = d[np.arange(x.shape[0]), labels]
            for j in np.flatnonzero(counts == 0):
                far = int(own.argmax())
                labels[far], own[far] = j, -1.0
            counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, x)
        nonempty = counts > 0
        centres[nonempty] = sums[nonempty] / counts[nonempty, None]
    d = _sq_dist(x, centres)
    labels = d.argmin(1)
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros_like(centres)
    np.add.at(sums, labels, x)
    nonempty = counts > 0
    centres[nonempty] = sums[nonempty] / counts[nonempty, None]
    inertia = float(((x - centres[labels]) ** 2).sum())
    return centres, labels, inertia
