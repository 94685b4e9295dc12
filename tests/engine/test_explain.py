"""Properties of the GradientSHAP engine: exactness, agreement between estimators, reproducibility."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from reference_kernels import TwoLayerKernel, path_integrals_fast
from torch import nn

from service.engine.exact_kernel import ExactKernel
from service.engine.gradient_shap import (
    MAX_N_SAMPLES,
    GradientShapEngine,
    fold_piecewise_linear,
    path_integrals_by_pieces,
)
from service.model.nn import BinaryClassification
from service.training.captum_reference import captum_baselines, captum_explain

F = 8


def _mlp(seed: int, batchnorm: bool = True) -> BinaryClassification:
    """A random-weight seed MLP in eval mode; with ``batchnorm`` its BN statistics and affine parameters are random."""
    torch.manual_seed(seed)
    model = BinaryClassification(F)
    if batchnorm:
        for bn in (model.batchnorm1, model.batchnorm2):
            assert bn.running_mean is not None
            assert bn.running_var is not None
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.3, 3.0)
            bn.weight.data.normal_(1.0, 0.5)
            bn.bias.data.normal_(0.0, 0.5)
    return model.eval()


def _data(seed: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, F, generator=gen)
    b = torch.randn(k, F, generator=gen, dtype=torch.float64)
    w = torch.rand(k, generator=gen, dtype=torch.float64) + 0.1
    return x, b, w


@pytest.fixture(autouse=True)
def _threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """One torch thread unless a test asks for more: the kernels are many medium-sized operations, and on a
    shared 2-core machine each 2-thread operation waits for a core another process may hold."""
    before = torch.get_num_threads()
    torch.set_num_threads(getattr(request, "param", 1))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine() -> GradientShapEngine:
    _, b, w = _data(1, 1, 12)
    return GradientShapEngine(_mlp(0), b, w)


@pytest.fixture(scope="module")
def records() -> torch.Tensor:
    return _data(2, 5, 1)[0]


# --- exactness -----------------------------------------------------------------------------------------------------


def test_folded_net_equals_model_forward() -> None:
    """The folded affine/ReLU form computes the model's logits (BatchNorm and Dropout folded in eval mode)."""
    model = _mlp(3)
    z = torch.randn(50, F)
    net = fold_piecewise_linear(model)
    with torch.no_grad():
        ref = model(z)[:, 0].double()
    assert torch.allclose(net.logit(z.double()), ref, atol=1e-5)
    assert torch.allclose(net.logit_rowwise(z.double()), net.logit(z.double()), atol=1e-12)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_exact_completeness_gap_is_rounding_only(batchnorm: bool) -> None:
    """Exact attributions add up to f(x) − E_b f(b) to 1e-10, with default or random BatchNorm statistics."""
    x, b, w = _data(4, 20, 16)
    ex = GradientShapEngine(_mlp(5, batchnorm), b, w).explain(x)
    assert np.abs(ex.completeness_gap).max() < 1e-10
    assert np.all(ex.attribution_se == 0)
    assert ex.n_samples == 0


def test_fast_kernel_equals_piece_enumeration() -> None:
    """The prefix-sum formulation and the explicit enumeration of linear pieces give the same integrals."""
    x, b, _ = _data(6, 6, 10)
    net = fold_piecewise_linear(_mlp(7))
    fast = path_integrals_fast(net, x, b)
    pieces = torch.stack([path_integrals_by_pieces(net, row, b)[0] for row in x.double()])
    assert torch.allclose(fast, pieces, rtol=0, atol=1e-10)
    assert float(pieces.abs().mean()) > 1e-2  # not trivially zero


@pytest.mark.parametrize(("h1", "h2"), [(64, 64), (7, 13), (1, 1)])
def test_compiled_kernel_equals_piece_enumeration(h1: int, h2: int) -> None:
    """The compiled event-driven kernel gives the piece enumeration's attributions and the folded logits, for
    widths that are not multiples of its 8-unit flag words, with a record equal to a baseline (zero-length
    path, division by zero) and a baseline on a layer-1 unit's kink."""
    torch.manual_seed(h1 * 100 + h2)
    model = nn.Sequential(
        nn.Linear(F, h1), nn.ReLU(), nn.BatchNorm1d(h1), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 1)
    ).eval()
    bn = model[2]
    assert isinstance(bn, nn.BatchNorm1d)
    assert bn.running_mean is not None
    assert bn.running_var is not None
    bn.running_mean.normal_(0.0, 0.5)
    bn.running_var.uniform_(0.3, 3.0)
    x, b, w = _data(7, 6, 9)
    x = x.double()
    x[0] = b[3]  # the path from baseline 3 has length zero
    net = fold_piecewise_linear(model)
    w1, b1 = net.weights[0], net.biases[0]
    b[5, 0] = b[5, 0] - (w1[0] @ b[5] + b1[0]) / w1[0, 0]  # layer-1 unit 0 is exactly at 0 at baseline 5
    wn = w / w.sum()
    kernel = ExactKernel(
        tuple(t.numpy() for t in net.weights), tuple(t.numpy() for t in net.biases), b.numpy(), wn.numpy()
    )
    attributions, logits = kernel.explain(x.numpy())
    for row, got in zip(x, attributions, strict=True):
        integrals = path_integrals_by_pieces(net, row, b)[0]
        want = ((row[None, :] - b) * integrals * wn[:, None]).sum(0).numpy()
        assert np.abs(got - want).max() < 1e-10 * (1 + np.abs(want).max())
    assert np.allclose(logits, net.logit(x).numpy(), rtol=0, atol=1e-12)
    assert np.array_equal(logits, kernel.logits(x.numpy()))
    assert np.array_equal(attributions, kernel.attributions(x.numpy()))


def test_exact_agrees_with_quadrature(engine: GradientShapEngine, records: torch.Tensor) -> None:
    """Gauss–Legendre quadrature with autograd gradients converges to the exact attributions."""
    exact = engine.explain(records).attributions
    quad = engine.explain(records, method="quadrature", n_samples=1000).attributions
    assert np.abs(quad - exact).max() < 1e-4 * (1 + np.abs(exact).max())


def test_exact_agrees_with_sampled_within_mc_error(engine: GradientShapEngine, records: torch.Tensor) -> None:
    """Our Monte-Carlo estimate is within 5 standard errors of the exact value, entry by entry."""
    exact = engine.explain(records).attributions
    mc = engine.explain(records, method="sampled", n_samples=MAX_N_SAMPLES, seed=3)
    assert np.all(np.abs(mc.attributions - exact) <= 5 * mc.attribution_se + 1e-12)
    assert np.all(mc.attribution_se > 0)


def test_probability_output_exact_and_agrees_with_quadrature(engine: GradientShapEngine, records: torch.Tensor) -> None:
    """For sigmoid(logit) the exact integral still closes the gap and matches quadrature."""
    ex = engine.explain(records, output="probability")
    assert np.abs(ex.completeness_gap).max() < 1e-10
    assert np.allclose(ex.output_value, 1 / (1 + np.exp(-engine.predict_logit(records))))
    quad = engine.explain(records, method="quadrature", n_samples=1000, output="probability").attributions
    assert np.abs(quad - ex.attributions).max() < 1e-5


def test_base_value_is_weighted_mean_of_f_over_baselines(engine: GradientShapEngine) -> None:
    """base_value is E_b f(b) under the normalised baseline weights, for both outputs."""
    fb = engine.predict_logit(engine.baselines)
    w = engine.baseline_weights
    assert w.sum() == pytest.approx(1.0)
    assert engine.base_value() == pytest.approx(float(w @ fb), abs=1e-12)
    assert engine.base_value("probability") == pytest.approx(float(w @ (1 / (1 + np.exp(-fb)))), abs=1e-12)


# --- agreement with Captum -----------------------------------------------------------------------------------------


def test_sampled_agrees_with_captum_within_mc_error() -> None:
    """Our vectorised sampler and Captum's GradientShap estimate the same quantity (uniform baselines)."""
    x, b, _ = _data(8, 4, 10)
    eng = GradientShapEngine(_mlp(9), b)
    ours = eng.explain(x, method="sampled", n_samples=MAX_N_SAMPLES, seed=1)
    theirs = captum_explain(_mlp(9), eng, x, n_samples=MAX_N_SAMPLES, seed=2)
    bound = 5 * np.sqrt(ours.attribution_se**2 + theirs.attribution_se**2) + 1e-6
    assert np.all(np.abs(ours.attributions - theirs.attributions) <= bound)
    assert np.all(theirs.attribution_se > 0)


def test_captum_path_matches_a_direct_captum_call() -> None:
    """The Captum reference returns what captum.attr.GradientShap returns for the same global seed."""
    from captum.attr import GradientShap

    x, b, _ = _data(10, 1, 6)
    model = _mlp(11)
    ex = captum_explain(model, GradientShapEngine(model, b), x, n_samples=50, seed=4)
    torch.manual_seed(4)
    np.random.seed(4)
    direct = GradientShap(model).attribute(x, b.float(), n_samples=50).detach().double().numpy()
    assert np.allclose(ex.attributions, direct, atol=1e-6)


def test_captum_path_leaves_global_rngs_untouched(engine: GradientShapEngine, records: torch.Tensor) -> None:
    """Seeding Captum inside the reference does not change the caller's torch/numpy global random streams."""
    model = _mlp(0)  # built before the streams are seeded (its initial weights draw from them)
    torch.manual_seed(123)
    np.random.seed(123)
    captum_explain(model, engine, records[:1], n_samples=10)
    after = (torch.rand(1).item(), np.random.rand())
    torch.manual_seed(123)
    np.random.seed(123)
    assert after == (torch.rand(1).item(), np.random.rand())


# --- reproducibility -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("_threads", [1, 2], indirect=True)
@pytest.mark.parametrize("method", ["exact", "sampled", "quadrature"])
def test_record_does_not_depend_on_batch_neighbours(
    engine: GradientShapEngine, records: torch.Tensor, method: str
) -> None:
    """A record's numbers are bitwise the same alone and inside a batch, at another position."""
    n = 20 if method == "sampled" else 8
    alone = engine.explain(records[2:3], method=method, n_samples=n, seed=7)  # type: ignore[arg-type]
    batch = torch.cat([records[4:5], records[0:2], records[2:3], records[3:4]])
    inside = engine.explain(batch, method=method, n_samples=n, seed=7)  # type: ignore[arg-type]
    for field in ("attributions", "attribution_se", "output_value", "completeness_gap"):
        assert np.array_equal(getattr(alone, field)[0], getattr(inside, field)[3]), field


def test_noise_draws_do_not_depend_on_batch_neighbours(engine: GradientShapEngine, records: torch.Tensor) -> None:
    """With stdevs > 0, exact and sampled still give a record the same numbers alone and in a batch."""
    for method in ("exact", "sampled"):
        alone = engine.explain(records[1:2], method=method, n_samples=8, stdevs=0.2)
        inside = engine.explain(records, method=method, n_samples=8, stdevs=0.2)
        assert np.array_equal(alone.attributions[0], inside.attributions[1])
        assert np.all(alone.attribution_se > 0)


def test_same_seed_same_numbers_other_seed_other_numbers(engine: GradientShapEngine, records: torch.Tensor) -> None:
    """The sampled estimator is a function of the seed: repeatable, and a new seed gives new draws."""
    a = engine.explain(records, method="sampled", n_samples=50, seed=1).attributions
    b = engine.explain(records, method="sampled", n_samples=50, seed=1).attributions
    c = engine.explain(records, method="sampled", n_samples=50, seed=2).attributions
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_chunk_size_does_not_change_results(records: torch.Tensor) -> None:
    """Evaluating points in small blocks gives the results of one large block (exact: bitwise)."""
    _, b, w = _data(1, 1, 12)
    small = GradientShapEngine(_mlp(0), b, w, chunk_size=7)
    large = GradientShapEngine(_mlp(0), b, w, chunk_size=100_000)
    for method in ("exact", "sampled", "quadrature"):
        s = small.explain(records, method=method, n_samples=40)
        g = large.explain(records, method=method, n_samples=40)
        if method == "exact":
            assert np.array_equal(s.attributions, g.attributions)
        assert np.allclose(s.attributions, g.attributions, rtol=0, atol=1e-12)


# --- known answers -------------------------------------------------------------------------------------------------


def test_linear_model_gets_weight_times_distance_to_mean_baseline() -> None:
    """For f(z) = w·z + c, exact and quadrature attributions are w ⊙ (x − E_w[b])."""
    torch.manual_seed(12)
    linear = nn.Linear(F, 1)
    x, b, w = _data(13, 4, 7)
    eng = GradientShapEngine(nn.Sequential(linear), b, w)
    expected = linear.weight.detach().double().numpy()[0] * (x.double().numpy() - (w / w.sum()).numpy() @ b.numpy())
    for method in ("exact", "quadrature"):
        got = eng.explain(x, method=method, n_samples=3).attributions
        assert np.allclose(got, expected, rtol=0, atol=1e-12)


def test_feature_equal_to_every_baseline_gets_zero(engine: GradientShapEngine, records: torch.Tensor) -> None:
    """A feature on which the record equals every baseline receives exactly zero attribution."""
    _, b, w = _data(1, 1, 12)
    b[:, 3] = 0.25
    eng = GradientShapEngine(_mlp(0), b, w)
    x = records.clone()
    x[:, 3] = 0.25
    for method in ("exact", "sampled", "quadrature"):
        got = eng.explain(x, method=method, n_samples=16).attributions
        assert np.all(got[:, 3] == 0)
        assert np.all(got[:, [0, 1, 2, 4]] != 0)


def test_deeper_relu_net_is_exact() -> None:
    """A three-hidden-layer Sequential is folded and compiled too; its exact attributions close the gap and match
    quadrature."""
    torch.manual_seed(14)
    bn = nn.BatchNorm1d(16)
    assert bn.running_var is not None
    bn.running_var.uniform_(0.5, 2.0)
    model = nn.Sequential(
        nn.Linear(F, 16), nn.ReLU(), nn.Linear(16, 16), bn, nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
        nn.Dropout(0.3), nn.Linear(8, 1),
    )  # fmt: skip
    x, b, w = _data(15, 3, 5)
    eng = GradientShapEngine(model, b, w)
    assert eng.compiled is not None
    ex = eng.explain(x)
    assert np.abs(ex.completeness_gap).max() < 1e-10
    quad = eng.explain(x, method="quadrature", n_samples=1000).attributions
    assert np.abs(quad - ex.attributions).max() < 1e-4


def test_exact_refuses_a_model_that_is_not_piecewise_linear() -> None:
    """A Tanh network is not piecewise linear: exact raises a ValueError, quadrature handles it accurately."""
    torch.manual_seed(16)
    model = nn.Sequential(nn.Linear(F, 16), nn.Tanh(), nn.Linear(16, 1))
    x, b, w = _data(17, 3, 6)
    eng = GradientShapEngine(model, b, w)
    assert not eng.is_piecewise_linear
    with pytest.raises(ValueError, match="Tanh"):
        eng.explain(x)
    quad = eng.explain(x, method="quadrature", n_samples=32)
    assert np.abs(quad.completeness_gap).max() < 1e-10  # smooth integrand: Gauss–Legendre converges fast
    mc = eng.explain(x, method="sampled", n_samples=MAX_N_SAMPLES)
    assert np.all(np.abs(mc.attributions - quad.attributions) <= 5 * mc.attribution_se + 1e-12)


# --- engine contract -----------------------------------------------------------------------------------------------


def test_engine_puts_model_in_eval_mode() -> None:
    """The engine switches the model to eval mode (BatchNorm in train mode would mix records)."""
    model = _mlp(18).train()
    GradientShapEngine(model, torch.zeros(2, F))
    assert not model.training


def test_invalid_arguments_are_rejected(engine: GradientShapEngine, records: torch.Tensor) -> None:
    """Unknown methods/outputs, out-of-range n_samples, bad shapes and bad weights raise ValueError."""
    with pytest.raises(ValueError, match="method"):
        engine.explain(records, method="lime")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="output"):
        engine.explain(records, output="odds")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_samples"):
        engine.explain(records, method="sampled", n_samples=MAX_N_SAMPLES + 1)
    with pytest.raises(ValueError, match="x must be"):
        engine.explain(records[:, :3])
    with pytest.raises(ValueError, match="quadrature"):
        engine.explain(records, method="quadrature", stdevs=0.1)
    with pytest.raises(ValueError, match="weights"):
        GradientShapEngine(_mlp(0), torch.zeros(2, F), torch.tensor([1.0, -1.0]))


def test_weighted_baselines_are_replicated_for_captum(engine: GradientShapEngine) -> None:
    """Captum's uniform draw over the replicated rows reproduces the baseline weights to 1/(100 K)."""
    rows = captum_baselines(engine).double().numpy()
    base = engine.baselines
    counts = np.array([(np.abs(rows - bk).max(1) < 1e-6).sum() for bk in base])
    assert counts.sum() == len(rows)
    assert np.abs(counts / len(rows) - engine.baseline_weights).max() <= 1 / len(rows)


def _model_constants() -> dict[str, object]:
    """Keyword arguments that build a C model of :func:`_kernel`'s sizes (the values do not matter to refusals)."""
    _, b, w = _data(3, 4, 5)
    net = fold_piecewise_linear(_mlp(4))
    w1, w2, w3 = (t.numpy() for t in net.weights)
    b1, b2, b3 = (t.numpy() for t in net.biases)
    h1, h2, k = w1.shape[0], w2.shape[0], b.shape[0]
    z = np.zeros
    return {
        "w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3[0].copy(), "b3": float(b3[0]), "db": z((k, h1)),
        "ab": z((k, h1)), "m0": z((k, h1), dtype=bool), "w2t": np.ascontiguousarray(w2.T), "vt": z((h2, h1)),
        "h0": z((k, h2)), "u0": z((k, h1)), "p": z((k, F, h2)), "c": z((k, h2)), "bw": (w / w.sum()).numpy(),
        "b": b.numpy(),
    }  # fmt: skip


def _kernel() -> tuple[TwoLayerKernel, np.ndarray]:
    """The two-hidden-layer C type (``_exact.Model``, the benchmark's reference) on a seed MLP, and records."""
    x, b, w = _data(3, 4, 5)
    net = fold_piecewise_linear(_mlp(4))
    kernel = TwoLayerKernel(
        tuple(t.numpy() for t in net.weights), tuple(t.numpy() for t in net.biases), b.numpy(), (w / w.sum()).numpy()
    )
    return kernel, x.double().numpy()


def test_c_kernel_refuses_wrong_buffers_by_name() -> None:
    """The two-layer C model (the benchmark's reference) checks each constant once and each call's records and
    outputs by name, never reading or writing out of bounds; the Python wrapper refuses a record of the wrong
    width before calling it."""
    from service.engine import _exact

    kernel, xs = _kernel()
    model = kernel._model
    assert model.dims == {"features": F, "hidden1": 64, "hidden2": 64, "baselines": 5}
    with pytest.raises(ValueError, match="out: expected 4 items"):
        model.logits(xs, np.empty(3))
    with pytest.raises(ValueError, match="xs: expected"):
        model.logits(xs.astype(np.float32), np.empty(4))
    with pytest.raises(ValueError, match=r"xs: expected \(N, 8\)"):
        model.explain(xs[:, :7].copy(), np.empty((4, 7)), np.empty(4))
    with pytest.raises(ValueError, match="attr: expected 32 items"):
        model.explain(xs, np.empty((4, 7)), np.empty(4))
    with pytest.raises(ValueError, match="logit: expected 4 items"):
        model.explain(xs, np.empty_like(xs), np.empty(5))
    with pytest.raises(TypeError, match="attr: expected a C-contiguous writable"):
        model.explain(xs, np.empty_like(xs)[:, ::-1], np.empty(4))
    frozen = np.empty(4)
    frozen.flags.writeable = False
    with pytest.raises(TypeError, match="out: expected a C-contiguous writable"):
        model.logits(xs, frozen)
    with pytest.raises(TypeError, match=r"explain\(xs, attr, logit\)"):
        model.explain(xs, np.empty_like(xs))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"x must be \(N, 8\)"):
        kernel.explain(np.zeros((2, 7)))
    good = _model_constants()
    _exact.Model(**good)  # type: ignore[arg-type]
    for name, value in good.items():
        if name in ("w1", "w2", "bw", "b3"):
            continue  # these set the dimensions: checked below
        wrong = {**good, name: np.zeros(np.asarray(value).size + 1)}
        with pytest.raises(ValueError, match=f"^{name}: expected"):
            _exact.Model(**wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="m0: expected"):
        _exact.Model(**{**good, "m0": np.asarray(good["m0"], dtype=np.float64)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="do not fit together"):
        _exact.Model(**{**good, "w2": np.zeros((64, 63))})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="missing keyword argument 'c'"):
        _exact.Model(**{k: v for k, v in good.items() if k != "c"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="by keyword only"):
        _exact.Model(*good.values())  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="set once"):
        model.__init__(**good)  # type: ignore[misc]


def test_c_model_keeps_its_own_copy_of_the_constants() -> None:
    """Changing the arrays a kernel was built from, after construction, changes none of its answers."""
    x, b, w = _data(6, 7, 8)
    net = fold_piecewise_linear(_mlp(9))
    weights = tuple(t.numpy().copy() for t in net.weights)
    biases = tuple(t.numpy().copy() for t in net.biases)
    base, bw = b.numpy().copy(), (w / w.sum()).numpy()
    kernel = ExactKernel(weights, biases, base, bw)
    xs = x.double().numpy()
    before = kernel.explain(xs)
    for a in (*weights, *biases, base, bw):
        a[...] = 0.0
    after = kernel.explain(xs)
    assert np.array_equal(before[0], after[0])
    assert np.array_equal(before[1], after[1])
    assert np.abs(before[0]).max() > 1e-3  # not trivially zero


def test_missing_extension_says_how_to_build_it() -> None:
    """Without the compiled kernel, importing the engine and `gshap serve` fail with one line naming the build."""
    import subprocess
    import sys

    hide = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'service.engine._exact':\n"
        "            raise ImportError('hidden by the test')\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    engine = subprocess.run(
        [sys.executable, "-c", hide + "import service.engine.gradient_shap"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert engine.returncode == 1
    assert "ModuleNotFoundError: the compiled exact kernel (service.engine._exact" in engine.stderr
    assert "pip install -e '.[server]'" in engine.stderr
    serve = subprocess.run(
        [sys.executable, "-c", hide + "from service.cli import main\nsys.exit(main(['serve']))"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 2, serve.stderr
    assert serve.stderr.count("\n") == 1, serve.stderr
    assert serve.stderr.startswith("gshap serve: the compiled exact kernel"), serve.stderr
    assert "C compiler" in serve.stderr


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_c_model_leaks_nothing_on_refusals_builds_and_records() -> None:
    """Refused calls, refused and accepted model builds and many records leave this process's RSS flat."""
    from service.engine import _exact

    kernel, xs = _kernel()
    model = kernel._model
    good = _model_constants()
    frozen = np.empty(4)
    frozen.flags.writeable = False
    rows = np.random.default_rng(0).normal(size=(2000, F))

    def work() -> None:
        for _ in range(2000):
            for refused in (
                lambda: model.logits(xs, np.empty(3)),
                lambda: model.explain(xs, np.empty((4, 7)), np.empty(4)),
                lambda: model.logits(xs, frozen),
                lambda: _exact.Model(**{**good, "p": np.zeros(3)}),  # type: ignore[arg-type]
            ):
                with pytest.raises((ValueError, TypeError)):
                    refused()
            _exact.Model(**good)  # type: ignore[arg-type]  # ~300 kB of constants each: a leak would show at once
        for _ in range(5):
            kernel.explain(rows)

    work()  # warm: allocator pools, numpy caches
    before = _rss_kib()
    for _ in range(3):
        work()
    assert _rss_kib() - before < 2048  # KiB; 6,000 leaked builds alone would be 1.8 GB
