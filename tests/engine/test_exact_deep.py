"""The exact estimator on any piecewise-linear network: the compiled kernel against an independent computation.

The reference (``tests/reference_kernels.exact_gradient_shap``) works from the torch modules themselves: it finds
each activation's breakpoints along the straight path layer by layer, takes autograd's gradient on each piece and
sums in float64. The kernel must agree with it to 1e-9 relative (to the record's largest attribution), close the
completeness gap, and keep its bitwise guarantees.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_kernels import TwoLayerKernel, exact_gradient_shap, exact_gradient_shap_rational
from torch import nn

from service.engine.exact_kernel import MAX_HIDDEN_LAYERS, ExactKernel, net_constants
from service.engine.gradient_shap import GradientShapEngine, fold_piecewise_linear
from service.engine.piecewise import AffineStage, NotPiecewiseLinear, fold_sequential
from service.model.store import load_bundle
from service.schemas import example_record

F = 6
REL = 1e-9  # agreement with the independent computation, relative to the record's largest |attribution|


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: the reference runs many small autograd calls (the kernel is single-threaded C)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise_bn(bn: nn.BatchNorm1d, gen: torch.Generator) -> None:
    """Running statistics and affine parameters far from the identity (as a trained network has them)."""
    assert bn.running_mean is not None
    assert bn.running_var is not None
    n = bn.num_features
    bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
    bn.running_var.copy_(torch.rand(n, generator=gen) * 2.7 + 0.3)
    bn.weight.data.copy_(torch.randn(n, generator=gen) * 0.5 + 1.0)
    bn.bias.data.copy_(torch.randn(n, generator=gen) * 0.5)


def network(widths: list[int], seed: int, *, batchnorm: bool, leaky: bool, extras: bool = False) -> nn.Sequential:
    """``F → widths… → 1``: Linear, then (with ``batchnorm``) BatchNorm1d before the activation on even layers
    and after it on odd ones, then ReLU or a leaky ReLU (slopes 0.01, 0.2, -0.3, 1.5 in turn); ``extras`` adds
    Dropout and Identity layers. Random weights from ``seed``, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    width = F
    slopes = (0.01, 0.2, -0.3, 1.5)
    for layer, h in enumerate(widths):
        mods.append(nn.Linear(width, h))
        bn = nn.BatchNorm1d(h) if batchnorm else None
        if bn is not None:
            _randomise_bn(bn, gen)
        act: nn.Module = nn.LeakyReLU(slopes[layer % len(slopes)]) if leaky else nn.ReLU()
        mods += [bn, act] if bn is not None and layer % 2 == 0 else [act] + ([bn] if bn is not None else [])
        if extras:
            mods.append(nn.Dropout(0.3) if layer % 2 else nn.Identity())
        width = h
    mods.append(nn.Linear(width, 1))
    return nn.Sequential(*mods).eval()


def data(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, F)), rng.normal(size=(k, F)), rng.uniform(0.1, 1.0, size=k)


def check_against_reference(model: nn.Sequential, x: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    """The engine's compiled exact attributions agree with the independent integral to ``REL`` relative and add up
    to f(x) − E_b f(b); returns the worst relative difference."""
    engine = GradientShapEngine(model, b, w)
    assert engine.compiled is not None, "the compiled kernel must cover this network"
    ex = engine.explain(x)
    want = exact_gradient_shap(model, x, b, w)
    worst = 0.0
    for got_row, want_row in zip(ex.attributions, want, strict=True):
        scale = float(np.abs(want_row).max())
        diff = float(np.abs(got_row - want_row).max())
        assert diff <= REL * scale + 1e-14, (diff, scale)
        worst = max(worst, diff / scale if scale > 0 else 0.0)
    size = np.abs(ex.output_value) + abs(ex.base_value) + np.abs(ex.attributions).sum(1)
    assert np.all(np.abs(ex.completeness_gap) <= 1e-12 * size + 1e-14), ex.completeness_gap
    with torch.no_grad():
        forward = copy.deepcopy(model).double()(torch.from_numpy(x))[:, 0].numpy()
    assert np.allclose(ex.output_value, forward, rtol=1e-12, atol=1e-12)
    return worst


def _widths(depth: int, width: int) -> list[int]:
    """Layer widths around ``width``, not all equal (the kernel must not assume square layers)."""
    return [max(1, width if layer % 2 == 0 else width // 2 + 1) for layer in range(depth)]


@pytest.mark.parametrize("variant", ["relu", "batchnorm+leaky"])
@pytest.mark.parametrize("width", [1, 8, 33, 128])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_kernel_equals_independent_integral(depth: int, width: int, variant: str) -> None:
    """Depth 1–6, widths 1–128, with and without batch norm and leaky ReLUs: the compiled kernel equals the
    independent layer-by-layer breakpoint integral to 1e-9 relative, and closes the completeness gap."""
    fancy = variant != "relu"
    model = network(_widths(depth, width), 1000 * depth + width, batchnorm=fancy, leaky=fancy, extras=fancy)
    x, b, w = data(depth * 7 + width, 3, 4)
    check_against_reference(model, x, b, w)


def _integer_network(widths: list[int], seed: int, leaky: bool) -> nn.Sequential:
    """A float64 network with small integer weights and biases: with integer records and baselines every
    pre-activation at a path's ends is an integer, so many are exactly 0 (a breakpoint on a node) and many
    breakpoints of different units coincide."""
    rng = np.random.default_rng(seed)
    mods: list[nn.Module] = []
    width = F
    for h in widths:
        lin = nn.Linear(width, h).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(rng.integers(-2, 3, size=(h, width)).astype(np.float64)))
            bias = rng.integers(-2, 3, size=h) if not mods else rng.choice([-2, -1, 1, 2], size=h)
            lin.bias.copy_(torch.from_numpy(bias.astype(np.float64)))
        mods += [lin, nn.LeakyReLU(0.25) if leaky else nn.ReLU()]
        width = h
    out = nn.Linear(width, 1).double()
    with torch.no_grad():
        out.weight.copy_(torch.from_numpy(rng.integers(-2, 3, size=(1, width)).astype(np.float64)))
    mods.append(out)
    return nn.Sequential(*mods).eval()


@pytest.mark.parametrize("leaky", [False, True])
@pytest.mark.parametrize("widths", [[5], [4, 3], [6, 5, 4], [3, 3, 3, 3, 3]])
def test_breakpoints_exactly_on_nodes(widths: list[int], leaky: bool) -> None:
    """Integer weights, records and baselines put breakpoints exactly on path ends and on one another (units at
    exactly 0 at a baseline or a record, ties between units and layers), and a record equals a baseline (a path of
    length zero): path by path, the kernel equals the exact rational integral to 1e-9 relative and closes the gap.
    Paths that run inside a kink for a stretch (a unit exactly 0 over a piece: no gradient there, any float
    answer follows rounding) are left out, and most paths are not such."""
    model = _integer_network(widths, len(widths) * 10 + leaky, leaky)
    rng = np.random.default_rng(len(widths))
    b = rng.integers(-2, 3, size=(5, F)).astype(np.float64)
    x = rng.integers(-2, 3, size=(6, F)).astype(np.float64)
    x[0] = b[2]
    checked = on_node = 0
    for k in range(len(b)):
        engine = GradientShapEngine(model, b[k : k + 1])
        assert engine.compiled is not None
        ex = engine.explain(x)
        want, degenerate = exact_gradient_shap_rational(model, x, b[k : k + 1], np.ones(1))
        size = np.abs(ex.output_value) + abs(ex.base_value) + np.abs(ex.attributions).sum(1)
        assert np.all(np.abs(ex.completeness_gap) <= 1e-12 * size + 1e-14)
        for r in np.flatnonzero(~degenerate[:, 0]):
            scale = float(np.abs(want[r]).max())
            assert np.abs(ex.attributions[r] - want[r]).max() <= REL * scale + 1e-14, (k, r)
            checked += 1
            with torch.no_grad():  # integers: float64 evaluation is exact here
                h = torch.from_numpy(np.stack([x[r], b[k]]))
                for mod in model:
                    if isinstance(mod, nn.ReLU | nn.LeakyReLU):
                        on_node += int((h == 0).sum())
                    h = mod(h)
    assert checked >= 0.6 * len(b) * len(x), checked
    assert on_node > 0, "some unit must sit exactly on its breakpoint at a path's end"


_SLOPES = st.sampled_from([0.0, 0.0, 0.01, 0.1, 0.5, -0.2, 1.0, 2.0])


@st.composite
def architectures(draw: st.DrawFn) -> tuple[nn.Sequential, int]:
    """A random piecewise-linear Sequential: 0–6 hidden layers of widths 1–48, each Linear followed by any order
    of an activation (ReLU or leaky, any slope), BatchNorm1d, Dropout and Identity; sometimes an activation or
    BatchNorm1d at the input, or two activations in a row. Weights from a drawn seed."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    width = F
    if draw(st.booleans()):
        bn = nn.BatchNorm1d(F)
        _randomise_bn(bn, gen)
        mods.append(bn)
    for _ in range(draw(st.integers(0, 6))):
        h = draw(st.integers(1, 48))
        block: list[nn.Module] = [nn.Linear(width, h)]
        slope = draw(_SLOPES)
        extras: list[nn.Module] = [nn.ReLU() if slope == 0.0 else nn.LeakyReLU(slope)]
        if draw(st.booleans()):
            bn = nn.BatchNorm1d(h)
            _randomise_bn(bn, gen)
            extras.append(bn)
        if draw(st.booleans()):
            extras.append(nn.Dropout(0.5))
        if draw(st.booleans()):
            extras.append(nn.Identity())
        if draw(st.integers(0, 5)) == 0:
            extras.append(nn.ReLU())  # a second activation in a row
        order = draw(st.permutations(list(range(len(extras)))))
        mods += block + [extras[i] for i in order]
        width = h
    mods.append(nn.Linear(width, 1))
    return nn.Sequential(*mods).eval(), seed


@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(architectures())
def test_random_architectures_agree_with_independent_integral(arch: tuple[nn.Sequential, int]) -> None:
    """Property: for any drawn piecewise-linear Sequential (random depth, widths, layer order, slopes, batch norm
    statistics and weights), the compiled kernel equals the independent integral to 1e-9 relative and closes the
    completeness gap."""
    model, seed = arch
    x, b, w = data(seed, 2, 3)
    check_against_reference(model, x, b, w)


# --- bitwise guarantees ----------------------------------------------------------------------------------------


def test_deep_kernel_record_alone_equals_record_in_batch_and_runs_repeat() -> None:
    """On a deep leaky network with batch norm, a record's attributions and logit are the same bits alone, inside a
    batch at another position, and from a second kernel built from the same constants."""
    model = network([40, 17, 33, 9, 25], 5, batchnorm=True, leaky=True, extras=True)
    x, b, w = data(9, 7, 6)
    engine = GradientShapEngine(model, b, w)
    kernel = engine.compiled
    assert kernel is not None
    batch_attr, batch_logit = kernel.explain(x)
    for r in range(len(x)):
        alone_attr, alone_logit = kernel.explain(x[r : r + 1])
        assert np.array_equal(alone_attr[0], batch_attr[r])
        assert np.array_equal(alone_logit[0], batch_logit[r])
    again = GradientShapEngine(model, b, w).compiled
    assert again is not None
    attr2, logit2 = again.explain(x[::-1].copy())
    assert np.array_equal(attr2[::-1], batch_attr)
    assert np.array_equal(logit2[::-1], batch_logit)
    assert np.array_equal(kernel.logits(x), batch_logit)


def test_pima_bundle_is_bit_identical_to_the_two_layer_kernel(bundle: Any) -> None:
    """On the shipped Pima bundle the general kernel gives the two-hidden-layer kernel's attributions and logits bit
    for bit (evaluation records and records far outside the data)."""
    engine = GradientShapEngine(bundle.model, bundle.baselines, bundle.baseline_weights)
    assert engine.compiled is not None
    net = fold_piecewise_linear(bundle.model)
    assert net.depth == 2
    old = TwoLayerKernel(
        tuple(t.numpy() for t in net.weights),
        tuple(t.numpy() for t in net.biases),
        engine.baselines,
        engine.baseline_weights,
    )
    x = np.asarray(bundle.eval_x, dtype=np.float64)
    x = np.concatenate([x, np.random.default_rng(0).normal(scale=3.0, size=(64, x.shape[1]))])
    new_attr, new_logit = engine.compiled.explain(x)
    old_attr, old_logit = old.explain(x)
    assert np.array_equal(new_attr, old_attr)
    assert np.array_equal(new_logit, old_logit)
    assert np.array_equal(engine.explain(x).attributions, old_attr)


def test_two_layer_relu_nets_are_bit_identical_to_the_two_layer_kernel() -> None:
    """On random two-hidden-layer ReLU nets with batch norm (widths not multiples of 8, a record equal to a
    baseline), the general kernel computes what the two-layer kernel computes, bit for bit."""
    for h1, h2, seed in ((64, 64, 0), (7, 13, 1), (1, 1, 2), (30, 70, 3)):
        model = network([h1, h2], seed, batchnorm=True, leaky=False)
        x, b, w = data(seed, 9, 11)
        x[0] = b[4]
        net = fold_piecewise_linear(model)
        wn = w / w.sum()
        weights = tuple(t.numpy() for t in net.weights)
        biases = tuple(t.numpy() for t in net.biases)
        new = ExactKernel(weights, biases, b, wn).explain(x)
        old = TwoLayerKernel(weights, biases, b, wn).explain(x)
        assert np.array_equal(new[0], old[0])
        assert np.array_equal(new[1], old[1])


# --- folding ---------------------------------------------------------------------------------------------------


def test_fold_sequential_gives_affine_stages_that_compute_the_network() -> None:
    """fold_sequential returns one stage per activation plus the output stage, with the slopes in order (0.0 for
    ReLU, torch's 0.01 for a bare LeakyReLU, None last), and the stages compute the network's output."""
    model = nn.Sequential(
        nn.BatchNorm1d(F), nn.Linear(F, 9), nn.LeakyReLU(), nn.ReLU(), nn.Dropout(0.2),
        nn.Sequential(nn.Linear(9, 4), nn.BatchNorm1d(4)), nn.LeakyReLU(0.3), nn.Identity(), nn.Linear(4, 1),
    ).eval()  # fmt: skip
    first = model[0]
    assert isinstance(first, nn.BatchNorm1d)
    _randomise_bn(first, torch.Generator().manual_seed(0))
    stages = fold_sequential(model)
    assert all(isinstance(s, AffineStage) for s in stages)
    assert [s.negative_slope for s in stages] == [0.01, 0.0, 0.3, None]
    assert [s.weight.shape for s in stages] == [(9, F), (9, 9), (4, 9), (1, 4)]
    assert all(s.weight.dtype == np.float64 and s.bias.shape == (s.weight.shape[0],) for s in stages)
    x = np.random.default_rng(1).normal(size=(20, F))
    h = x
    for s in stages:
        h = h @ s.weight.T + s.bias
        if s.negative_slope is not None:
            h = np.where(h > 0, h, s.negative_slope * h)
    with torch.no_grad():
        want = model.double()(torch.from_numpy(x)).numpy()
    assert np.allclose(h, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("layers", "named"),
    [
        ([nn.Linear(F, 4), nn.Tanh(), nn.Linear(4, 1)], "layer 1 (Tanh)"),
        ([nn.Linear(F, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.GELU()), nn.Linear(4, 1)], "layer 2.1 (GELU)"),
        ([nn.Linear(F, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 1)], "running statistics"),
        ([nn.Linear(F, 4), nn.ReLU(), nn.Linear(4, 2)], "one logit"),
        ([nn.Linear(F, 4), nn.ReLU(), nn.Linear(5, 1)], "layer 2 (Linear)"),
    ],
)
def test_fold_sequential_refuses_what_is_not_piecewise_linear(layers: list[nn.Module], named: str) -> None:
    """A layer that is not piecewise linear, batch statistics, two outputs or a width mismatch raise
    NotPiecewiseLinear (a ValueError) naming the layer or the rule; the engine then offers no compiled kernel."""
    model = nn.Sequential(*layers).eval()
    with pytest.raises(NotPiecewiseLinear, match=named.replace("(", r"\(").replace(")", r"\)")):
        fold_sequential(model)
    if "Tanh" in named or "GELU" in named:  # smooth layers: the engine serves them without the exact estimator
        engine = GradientShapEngine(model, np.zeros((2, F)))
        assert engine.compiled is None
        assert not engine.is_piecewise_linear


def test_linear_model_and_input_activation_are_compiled() -> None:
    """A network with no hidden layer (a linear model) and one that starts with an activation are compiled too,
    and agree with the independent integral."""
    for model in (
        nn.Sequential(nn.Linear(F, 1)).eval(),
        nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(F, 3), nn.ReLU(), nn.Linear(3, 1)).eval(),
    ):
        torch.manual_seed(3)
        x, b, w = data(4, 3, 5)
        check_against_reference(model, x, b, w)


# --- the C type's checks -----------------------------------------------------------------------------------------


def _net_constants() -> tuple[dict[str, Any], np.ndarray]:
    model = network([5, 4, 3], 2, batchnorm=False, leaky=True)
    x, b, w = data(2, 4, 3)
    net = fold_piecewise_linear(model)
    constants = net_constants(
        tuple(t.numpy() for t in net.weights), tuple(t.numpy() for t in net.biases), b, w / w.sum(), net.slopes
    )
    return constants, x


def test_net_refuses_wrong_constants_and_buffers_by_name() -> None:
    """The general C type checks each constant (lists by length, arrays by size and type) and each call's buffers
    by name, refuses more than 64 hidden layers, and takes its constants once, by keyword."""
    from service.engine import _exact

    good, x = _net_constants()
    net = _exact.Net(**good)
    assert net.dims == {"features": F, "hidden": [5, 4, 3], "baselines": 3}
    assert net.slopes == [0.01, 0.2, -0.3]
    for name in ("db", "ab", "p", "c", "u0", "vt", "b"):
        with pytest.raises(ValueError, match=f"^{name}: expected"):
            _exact.Net(**{**good, name: np.zeros(np.asarray(good[name]).size + 1)})
    with pytest.raises(ValueError, match="m0: expected"):
        _exact.Net(**{**good, "m0": np.asarray(good["m0"], dtype=np.float64)})
    with pytest.raises(ValueError, match=r"^h0\[1\]: expected"):
        _exact.Net(**{**good, "h0": [good["h0"][0], np.zeros(3)]})
    with pytest.raises(ValueError, match=r"^gamma\[0\]: expected"):
        _exact.Net(**{**good, "gamma": [np.zeros(2)]})
    with pytest.raises(ValueError, match="slopes: expected 3 items"):
        _exact.Net(**{**good, "slopes": [0.0]})
    with pytest.raises(ValueError, match=r"slopes\[1\]: expected a finite"):
        _exact.Net(**{**good, "slopes": [0.0, float("nan"), 0.0]})
    with pytest.raises(ValueError, match=r"weights\[2\]: expected"):
        _exact.Net(**{**good, "weights": [*good["weights"][:2], np.zeros((3, 5)), good["weights"][3]]})
    with pytest.raises(ValueError, match="biases: expected 4 items"):
        _exact.Net(**{**good, "biases": good["biases"][:3]})
    with pytest.raises(TypeError, match="weights: expected a list or tuple"):
        _exact.Net(**{**good, "weights": np.zeros((2, 2))})
    deep = [np.zeros((1, F))] + [np.zeros((1, 1))] * (MAX_HIDDEN_LAYERS + 1)
    with pytest.raises(ValueError, match="1 to 64 hidden layers"):
        _exact.Net(**{**good, "weights": deep})
    with pytest.raises(TypeError, match="missing keyword argument 'vt'"):
        _exact.Net(**{k: v for k, v in good.items() if k != "vt"})
    with pytest.raises(TypeError, match="by keyword only"):
        _exact.Net(*good.values())  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="set once"):
        net.__init__(**good)  # type: ignore[misc]
    with pytest.raises(ValueError, match="out: expected 4 items"):
        net.logits(x, np.empty(3))
    with pytest.raises(ValueError, match=r"xs: expected \(N, 6\)"):
        net.explain(x[:, :5].copy(), np.empty((4, 5)), np.empty(4))
    with pytest.raises(ValueError, match="attr: expected 24 items"):
        net.explain(x, np.empty((4, 5)), np.empty(4))
    frozen = np.empty(4)
    frozen.flags.writeable = False
    with pytest.raises(TypeError, match="logit: expected a C-contiguous writable"):
        net.explain(x, np.empty_like(x), frozen)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_net_leaks_nothing_on_refusals_builds_and_records() -> None:
    """Refused builds and calls, accepted builds and many records leave this process's RSS flat."""
    from service.engine import _exact

    good, x = _net_constants()
    net = _exact.Net(**good)
    rows = np.random.default_rng(0).normal(size=(500, F))
    big = {**good, "p": np.zeros((3, F, 4000)), "c": np.zeros((3, 4000))}  # refused after the weights are copied

    def work() -> None:
        for _ in range(1000):
            for refused in (
                lambda: net.logits(x, np.empty(3)),
                lambda: _exact.Net(**{**good, "gamma": [np.zeros(2)]}),
                lambda: _exact.Net(**big),
            ):
                with pytest.raises((ValueError, TypeError)):
                    refused()
            _exact.Net(**good)
        attr, logit = np.empty_like(rows), np.empty(len(rows))
        net.explain(rows, attr, logit)

    work()
    before = _rss_kib()
    for _ in range(3):
        work()
    assert _rss_kib() - before < 2048


# --- the deeper breast-cancer bundle, served ------------------------------------------------------------------


DEEP_BUNDLE = Path(__file__).resolve().parents[2] / "model_store" / "breast-cancer-wisconsin" / "1.1.0"


def test_deeper_breast_cancer_bundle_is_explained_exactly() -> None:
    """breast-cancer-wisconsin 1.1.0 (30→64→32→16→1, batch norm, leaky ReLUs of slopes 0.1 and 0.01, a ReLU)
    offers exact as its default; its compiled kernel has the three hidden layers and their slopes, agrees with the
    independent integral of the bundle's network to 1e-9 relative and closes the completeness gap, and the served
    (calibrated) attributions are the calibration's slope times those."""
    bundle = load_bundle(DEEP_BUNDLE)
    assert (bundle.name, bundle.version) == ("breast-cancer-wisconsin", "1.1.0")
    assert bundle.methods == ("exact", "sampled", "quadrature")
    assert bundle.default_method == "exact"
    engine = GradientShapEngine(bundle.model, bundle.baselines, bundle.baseline_weights)
    assert engine.compiled is not None
    assert engine.compiled._model.dims == {"features": 30, "hidden": [64, 32, 16], "baselines": 64}
    assert engine.compiled._model.slopes == [0.1, 0.01, 0.0]
    x = np.asarray(bundle.eval_x[:4], dtype=np.float64)
    b = np.asarray(bundle.baselines, dtype=np.float64)
    w = np.asarray(bundle.baseline_weights, dtype=np.float64)
    raw = nn.Sequential(*bundle.model).eval()  # the spec's layers, without the calibration of the logit
    check_against_reference(raw, x, b, w)
    calibrated = engine.explain(x).attributions
    uncalibrated = GradientShapEngine(raw, b, w).explain(x).attributions
    assert np.allclose(calibrated, bundle.calibration.a * uncalibrated, rtol=1e-12, atol=1e-15)


def test_deeper_breast_cancer_bundle_served_over_http() -> None:
    """A real `gshap serve` of the 1.1.0 bundle answers /explain with method exact by default, the engine's numbers
    for the record, and a completeness gap of at most 1e-12."""
    from live_server import running_server

    bundle = load_bundle(DEEP_BUNDLE)
    record = example_record(bundle.spec)
    with running_server({"GSHAP_MODEL_PATH": str(DEEP_BUNDLE)}) as server:
        answer = httpx.post(server.url + "/explain", json=record, timeout=60).json()
    assert answer["method"] == "exact"
    assert abs(answer["completeness_gap"]) <= 1e-12
    attributions = [item["attribution"] for item in answer["attributions"]]
    assert len(attributions) == 30
    assert max(abs(a) for a in attributions) > 1e-3
