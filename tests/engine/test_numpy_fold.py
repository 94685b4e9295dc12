"""The torch-free serving path (issue 26 item 5): :func:`service.engine.piecewise.fold_layers` against the torch
fold, :func:`path_integrals_by_pieces_np` against :func:`path_integrals_by_pieces`, and the engine of a shipped
bundle (``GradientShapEngine.from_bundle``) against the engine of its torch module for every exact answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.engine.gradient_shap import (
    GradientShapEngine,
    PiecewiseLinearNet,
    path_integrals_by_pieces,
    path_integrals_by_pieces_np,
)
from service.engine.piecewise import NotPiecewiseLinear, fold_layers, fold_modules
from service.model.spec import Layer, build_network
from service.model.store import DEFAULT_STORE, load_bundle

BUNDLES = sorted(p.parent for p in DEFAULT_STORE.glob("*/*/manifest.json"))


def _network(seed: int) -> tuple[list[Layer], torch.nn.Sequential]:
    """A random piecewise-linear layer list (1-4 hidden layers, ReLU or leaky, BatchNorm here and there) and its
    network with random weights and running statistics."""
    rng = np.random.default_rng(seed)
    width, layers = 5, []
    for _ in range(int(rng.integers(1, 5))):
        out = int(rng.integers(3, 12))
        layers.append(Layer("linear", (width, out)))
        if rng.random() < 0.5:
            layers.append(Layer("batchnorm1d", (out,)))
        layers.append(Layer("leaky_relu", (float(rng.uniform(0.01, 0.3)),)) if rng.random() < 0.5 else Layer("relu"))
        if rng.random() < 0.5:
            layers.append(Layer("batchnorm1d", (out,)))
        layers.append(Layer("dropout", (0.2,)))
        width = out
    layers.append(Layer("linear", (width, 1)))
    torch.manual_seed(seed)
    net = build_network(layers)
    with torch.no_grad():
        for mod in net:
            if isinstance(mod, torch.nn.BatchNorm1d):
                assert mod.running_mean is not None
                assert mod.running_var is not None
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.2, 3.0)
                mod.weight.normal_()
                mod.bias.normal_()
    return layers, net.eval()


@pytest.mark.parametrize("seed", range(12))
def test_fold_layers_is_the_torch_fold_to_the_last_bits(seed: int) -> None:
    layers, net = _network(seed)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    weights, biases, slopes = fold_layers(layers, state, (1.7, -0.3))
    tw, tb, ts = fold_modules([*net, _affine(1.7, -0.3)])
    assert slopes == ts
    for a, b in zip([*weights, *biases], [*tw, *tb], strict=True):
        assert a.shape == tuple(b.shape)
        assert np.allclose(a, b.numpy(), rtol=1e-14, atol=1e-14)


def _affine(a: float, b: float) -> torch.nn.Linear:
    lin = torch.nn.Linear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.fill_(a)
        lin.bias.fill_(b)
    return lin


def test_fold_layers_refuses_a_smooth_network_naming_the_layer() -> None:
    layers = [Layer("linear", (3, 4)), Layer("tanh"), Layer("linear", (4, 1))]
    state = {k: v.numpy() for k, v in build_network(layers).state_dict().items()}
    with pytest.raises(NotPiecewiseLinear, match="layer 1 \\(tanh\\)"):
        fold_layers(layers, state)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("output", ["logit", "probability"])
def test_pieces_in_numpy_equal_the_torch_pieces(seed: int, output: str) -> None:
    layers, net = _network(seed)
    folded = fold_layers(layers, {k: v.numpy() for k, v in net.state_dict().items()})
    torch_net = PiecewiseLinearNet(
        tuple(torch.from_numpy(w) for w in folded[0]), tuple(torch.from_numpy(b) for b in folded[1]), tuple(folded[2])
    )
    rng = np.random.default_rng(100 + seed)
    x, baselines = rng.standard_normal(5) * 2, rng.standard_normal((7, 5))
    got, pieces = path_integrals_by_pieces_np(folded, x, baselines, output)  # type: ignore[arg-type]
    want, want_pieces = path_integrals_by_pieces(torch_net, torch.from_numpy(x), torch.from_numpy(baselines), output)  # type: ignore[arg-type]
    assert np.array_equal(pieces, want_pieces.numpy())
    assert np.allclose(got, want.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("folder", BUNDLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_served_engine_answers_the_torch_engines_exact_numbers(folder: Path) -> None:
    """Within 1e-13 (the folds differ in BatchNorm's sqrt, see test_torch_order): logits, exact attributions of
    the logit and of the probability, base values and completeness."""
    bundle = load_bundle(folder)
    served = GradientShapEngine.from_bundle(load_bundle(folder))
    reference = GradientShapEngine(bundle.model, bundle.baselines, bundle.baseline_weights)
    x = bundle.eval_x[:40].double().numpy()
    assert np.abs(served.predict_logit(x) - reference.predict_logit(x)).max() <= 1e-13
    for output in ("logit", "probability"):
        a = served.explain(x, output=output)
        b = reference.explain(x, output=output)
        assert abs(a.base_value - b.base_value) <= 1e-13
        assert np.abs(a.output_value - b.output_value).max() <= 1e-13
        assert np.abs(a.attributions - b.attributions).max() <= 1e-13
        assert np.abs(a.completeness_gap).max() <= 1e-12
