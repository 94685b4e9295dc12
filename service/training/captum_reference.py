"""Captum's GradientShap, as a reference for the engine's estimators (tests and benchmarks), outside the service.

The serving engine (:mod:`service.engine.gradient_shap`) computes the same estimand with its own ``exact``,
``sampled`` and ``quadrature`` estimators and never imports Captum; this module runs ``captum.attr.GradientShap``
on the engine's model and weighted baselines, seeded, record by record, and returns an engine
:class:`~service.engine.gradient_shap.Explanation`, so tests compare the two directly. Captum draws from the global
random generators: each call seeds them under a lock and restores them afterwards. No web framework here.
"""

from __future__ import annotations

import threading
from types import TracebackType

import numpy as np
import torch
from torch import Tensor, nn

from service.contract import MAX_N_SAMPLES, Output, sigmoid
from service.engine.gradient_shap import Explanation, GradientShapEngine

__all__ = ["DEFAULT_CAPTUM_SAMPLES", "captum_baselines", "captum_explain"]

DEFAULT_CAPTUM_SAMPLES = 200
_LOCK = threading.Lock()  # Captum draws from the global RNGs: seed-and-call must be atomic


def captum_baselines(engine: GradientShapEngine, rows_per_unit_weight: int = 100) -> Tensor:
    """``(M, F)`` float32 rows whose *uniform* distribution approximates the engine's weighted baselines (Captum
    draws baselines uniformly): each baseline repeated ``≈ w_k · M`` times (largest remainders), with
    ``M = rows_per_unit_weight · K``. Exactly the baselines when the weights are uniform."""
    b, w = torch.as_tensor(engine.baselines), torch.as_tensor(engine.baseline_weights)
    k = b.shape[0]
    if bool(torch.allclose(w, torch.full_like(w, 1.0 / k), rtol=0, atol=1e-12)):
        return b.float()
    m = rows_per_unit_weight * k
    raw = w.numpy() * m
    counts = np.floor(raw).astype(np.int64)
    short = m - int(counts.sum())
    counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    return b.float().repeat_interleave(torch.as_tensor(counts), dim=0)


def captum_explain(
    model: nn.Module,
    engine: GradientShapEngine,
    x: Tensor | np.ndarray,
    *,
    n_samples: int | None = None,
    seed: int = 0,
    output: Output = "logit",
    stdevs: float = 0.0,
) -> Explanation:
    """``captum.attr.GradientShap`` on ``model`` (the engine's) with the engine's baselines, record by record:
    attributions, their standard errors (Captum's own variance estimate, ``NoiseTunnel`` vargrad, over the same
    draws), and the completeness gap against the engine's ``f(x)`` and base value. ``method`` reads ``"captum"``."""
    from captum.attr import GradientShap, NoiseTunnel
    from captum.attr._core.gradient_shap import InputBaselineXGradient

    n = DEFAULT_CAPTUM_SAMPLES if n_samples is None else n_samples
    if not 2 <= n <= MAX_N_SAMPLES:
        raise ValueError(f"n_samples must be an integer in [2, {MAX_N_SAMPLES}] for captum, got {n!r}")
    xt = torch.as_tensor(x).detach().to(torch.float64)
    if xt.ndim == 1:
        xt = xt[None, :]

    def forward(z: Tensor) -> Tensor:
        out: Tensor = model(z)
        return torch.sigmoid(out) if output == "probability" else out

    base = captum_baselines(engine)
    gs = GradientShap(forward)
    var_tunnel = NoiseTunnel(InputBaselineXGradient(forward))
    attrs, ses = [], []
    with _LOCK, _GlobalRngRestored():
        model.eval()
        for row in xt:
            inp = row[None, :].float()
            _seed_global(seed)
            a = gs.attribute(inp, base, n_samples=n, stdevs=stdevs, target=None)
            _seed_global(seed)  # the same draws again, for the variance of the per-sample contributions
            var = var_tunnel.attribute(
                inp, nt_type="vargrad", nt_samples=n, stdevs=stdevs, draw_baseline_from_distrib=True,
                baselines=base, target=None,
            )  # fmt: skip
            attrs.append(a.detach().double()[0].numpy())
            ses.append(np.sqrt(np.clip(var.detach().double()[0].numpy(), 0, None) / (n - 1)))
    f = engine.n_features
    attributions = np.stack(attrs) if attrs else np.zeros((0, f))
    se = np.stack(ses) if ses else np.zeros((0, f))
    logits = engine.predict_logit(xt)
    value = logits if output == "logit" else np.array([sigmoid(float(v)) for v in logits])
    base_value = engine.base_value(output)
    return Explanation(
        output_value=value,
        base_value=base_value,
        attributions=attributions,
        attribution_se=se,
        completeness_gap=value - (base_value + attributions.sum(1)),
        method="captum",
        n_samples=n,
        seed=seed,
        output=output,
        stdevs=float(stdevs),
    )


def _seed_global(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


class _GlobalRngRestored:
    """Save and restore torch's and numpy's global RNG states (the Captum path must not disturb callers)."""

    def __enter__(self) -> None:
        self._torch = torch.get_rng_state()
        self._np = np.random.get_state()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        torch.set_rng_state(self._torch)
        np.random.set_state(self._np)
