"""Properties of exact interventional Shapley values and of the agreement report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from service.engine.gradient_shap import GradientShapEngine
from service.engine.shapley import MAX_FEATURES, agreement, interventional_shapley
from service.model.nn import BinaryClassification

F = 8


def _data(seed: int, n: int, k: int, nf: int = F) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, nf)), rng.normal(size=(k, nf)), rng.uniform(0.1, 1.0, size=k)


def _mlp_engine(seed: int, b: np.ndarray, w: np.ndarray) -> GradientShapEngine:
    torch.manual_seed(seed)
    return GradientShapEngine(BinaryClassification(F).eval(), b, w)


def test_linear_model_gets_weight_times_distance_to_mean_baseline() -> None:
    """For f(z) = c·z + d the interventional Shapley values are c ⊙ (x − E_w[b])."""
    x, b, w = _data(0, 5, 9)
    c = np.random.default_rng(1).normal(size=F)
    phi = interventional_shapley(lambda z: z @ c + 0.3, x, b, w)
    assert np.allclose(phi, c * (x - (w / w.sum()) @ b), rtol=0, atol=1e-12)


def test_efficiency_on_the_mlp() -> None:
    """Shapley values add up to f(x) − E_b f(b) for the nonlinear MLP."""
    x, b, w = _data(2, 4, 6)
    engine = _mlp_engine(3, b, w)
    phi = interventional_shapley(engine.predict_logit, x, b, w)
    assert np.allclose(phi.sum(1), engine.predict_logit(x) - engine.base_value(), rtol=0, atol=1e-10)


def test_unused_feature_gets_zero() -> None:
    """A feature f does not read (dummy player) gets exactly zero."""
    x, b, w = _data(4, 3, 5)
    phi = interventional_shapley(lambda z: np.tanh(z[:, 0] * z[:, 1]) + z[:, 2] ** 2, x, b, w)
    assert np.all(phi[:, 3:] == 0)
    assert np.all(phi[:, :3] != 0)


def test_symmetric_features_get_equal_values() -> None:
    """Two features that enter f symmetrically, with equal record and baseline values, share equally."""
    x, b, w = _data(5, 3, 4)
    x[:, 1], b[:, 1] = x[:, 0], b[:, 0]
    phi = interventional_shapley(lambda z: np.exp(0.3 * z[:, 0] * z[:, 1]) + z[:, 2], x, b, w)
    assert np.allclose(phi[:, 0], phi[:, 1], rtol=0, atol=1e-12)


def test_known_two_feature_game() -> None:
    """f = z0·z1 with baseline 0 splits the product equally: φ = (x0 x1 / 2, x0 x1 / 2)."""
    phi = interventional_shapley(lambda z: z[:, 0] * z[:, 1], np.array([[2.0, 3.0]]), np.zeros((1, 2)))
    assert np.allclose(phi, [[3.0, 3.0]])


def test_additive_relu_model_matches_exact_gradient_shap() -> None:
    """For an additive model (no interactions) GradientSHAP and interventional Shapley coincide exactly."""
    torch.manual_seed(6)
    first = nn.Linear(F, 4 * F)
    with torch.no_grad():
        first.weight.mul_(torch.kron(torch.eye(F), torch.ones(4, 1)))  # hidden unit j reads feature j // 4 only
    model = nn.Sequential(first, nn.ReLU(), nn.Linear(4 * F, 1))
    x, b, w = _data(7, 4, 6)
    engine = GradientShapEngine(model, b, w)
    phi = interventional_shapley(engine.predict_logit, x, b, w)
    assert np.allclose(engine.explain(x).attributions, phi, rtol=0, atol=1e-12)


def test_batches_do_not_change_values() -> None:
    """Splitting the records into several calls of f (max_rows) gives the same values."""
    x, b, w = _data(8, 5, 3)
    engine = _mlp_engine(9, b, w)
    one = interventional_shapley(engine.predict_logit, x, b, w)
    many = interventional_shapley(engine.predict_logit, x, b, w, max_rows=10)
    assert np.allclose(one, many, rtol=0, atol=1e-14)


def test_too_many_features_is_refused() -> None:
    """Beyond MAX_FEATURES the 2^F enumeration is refused with a ValueError."""
    nf = MAX_FEATURES + 1
    with pytest.raises(ValueError, match="coalitions"):
        interventional_shapley(lambda z: z.sum(1), np.zeros((1, nf)), np.zeros((1, nf)))


def test_agreement_of_identical_and_opposite_attributions() -> None:
    """agreement() reports perfect agreement for equal inputs and sign disagreement for negated ones."""
    a = np.random.default_rng(10).normal(size=(6, F))
    same = agreement(a, a)
    assert same["pearson_min"] == pytest.approx(1.0)
    assert same["spearman_min"] == pytest.approx(1.0)
    assert same["sign_agreement"] == 1.0
    assert same["top_feature_agreement"] == 1.0
    assert same["max_abs_diff"] == 0.0
    opposite = agreement(a, -a)
    assert opposite["pearson_median"] == pytest.approx(-1.0)
    assert opposite["sign_agreement"] == 0.0
    assert opposite["top_feature_agreement"] == 1.0  # same feature, opposite direction
    assert opposite["relative_l1_diff"] == pytest.approx(2.0)


def test_agreement_is_json_ready_and_handles_constant_rows() -> None:
    """Values are plain floats/ints, and correlations are None when every row is constant."""
    report = agreement(np.zeros((2, 3)), np.ones((2, 3)))
    assert report["pearson_median"] is None
    assert all(v is None or type(v) in (int, float) for v in report.values())


def test_gradient_shap_and_shapley_on_the_mlp_are_reported_not_equal() -> None:
    """On the MLP both methods satisfy efficiency; their per-feature agreement is measured, not forced."""
    x, b, w = _data(11, 6, 8)
    engine = _mlp_engine(12, b, w)
    phi = interventional_shapley(engine.predict_logit, x, b, w)
    gs = engine.explain(x).attributions
    assert np.allclose(phi.sum(1), gs.sum(1), rtol=0, atol=1e-10)  # same total f(x) − E f(b)
    report = agreement(gs, phi)
    assert report["records"] == 6
    assert report["pearson_median"] is not None
    assert -1.0 <= report["pearson_median"] <= 1.0
