"""Properties of the baseline distribution summarised from the training split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from service.engine.baselines import summarize_baselines
from service.engine.gradient_shap import GradientShapEngine


def _rows(seed: int = 0, n: int = 300, f: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(5, f))
    return centres[rng.integers(0, 5, n)] + rng.normal(size=(n, f))


def test_shapes_and_weights() -> None:
    """k centres in F dimensions with positive weights summing to 1, sorted by decreasing weight."""
    c, w = summarize_baselines(_rows(), k=16, seed=0)
    assert c.shape == (16, 8)
    assert w.shape == (16,)
    assert np.all(w > 0)
    assert w.sum() == pytest.approx(1.0)
    assert np.all(np.diff(w) <= 0)


def test_weights_are_cluster_shares_and_preserve_the_mean() -> None:
    """Weights are multiples of 1/N and the weighted centres have exactly the training mean."""
    x = _rows(1)
    c, w = summarize_baselines(x, k=10, seed=3)
    assert np.allclose(w * len(x), np.round(w * len(x)), atol=1e-9)
    assert np.allclose(w @ c, x.mean(0), atol=1e-12)


def test_deterministic_for_a_seed() -> None:
    """The same seed gives bitwise the same summary; the global random state is not used."""
    x = _rows(2)
    np.random.seed(0)
    a = summarize_baselines(x, k=12, seed=5)
    np.random.seed(1)
    b = summarize_baselines(x, k=12, seed=5)
    assert np.array_equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])


def test_k_at_least_n_returns_the_rows_with_equal_weights() -> None:
    """With k >= N there is nothing to summarise: the rows themselves, weight 1/N each."""
    x = _rows(3, n=7)
    c, w = summarize_baselines(x, k=64)
    assert np.array_equal(c, x)
    assert np.allclose(w, 1 / 7)


def test_duplicate_rows_give_fewer_centres() -> None:
    """Fewer distinct rows than k: one centre per distinct row, weighted by its multiplicity."""
    x = np.repeat(np.eye(3), [5, 3, 2], axis=0)
    c, w = summarize_baselines(x, k=6, seed=0)
    assert c.shape == (3, 3)
    assert np.allclose(w, [0.5, 0.3, 0.2])
    assert np.allclose(c, np.eye(3))


def test_clusters_are_found() -> None:
    """On well-separated clusters the centres land on them (inertia far below one-centre inertia)."""
    x = _rows(4)
    c, _ = summarize_baselines(x, k=5, seed=0)
    d = ((x[:, None, :] - c[None]) ** 2).sum(-1).min(1).sum()
    assert d < 0.2 * ((x - x.mean(0)) ** 2).sum()


def test_linear_model_attributions_equal_those_with_all_rows() -> None:
    """Because the weighted centres keep the mean, a linear model's attributions are unchanged by the summary."""
    x_train = _rows(5)
    c, w = summarize_baselines(x_train, k=8, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 1))
    records = torch.randn(4, 8)
    full = GradientShapEngine(model, x_train).explain(records).attributions
    summary = GradientShapEngine(model, c, w).explain(records).attributions
    assert np.allclose(full, summary, rtol=0, atol=1e-10)


def test_bad_inputs_are_rejected() -> None:
    """NaNs, wrong shapes and k < 1 raise ValueError."""
    with pytest.raises(ValueError, match="NaN"):
        summarize_baselines(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        summarize_baselines(np.zeros(5))
    with pytest.raises(ValueError, match="k must"):
        summarize_baselines(np.zeros((3, 2)), k=0)
