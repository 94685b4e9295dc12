"""A network trained outside the project's pipeline, in a few lines of plain torch, becomes a served model:
saved with safetensors, packaged by the real ``gshap bundle`` command and served by a real ``gshap serve``.

- ReLU networks with two and with three hidden layers get exact explanations; their answers are checked against an
  independent exact computation in float64 numpy (the breakpoints along each straight path from a baseline to the
  record, found layer by layer, and the constant gradient between them), averaged over the bundle's weighted
  baselines. Tolerance 1e-9 on each attribution and on the base value: both computations are exact, so only
  float64 rounding separates them.
- A tanh network is not piecewise linear: it is served with ``quadrature`` (the default) and ``sampled``; ``exact``
  is a 422 problem naming the methods that apply. Its quadrature answers are checked against a fine reference
  (512 Gauss-Legendre nodes, analytic gradients, numpy): to 1e-6 with the default 64 nodes (the measured error of
  64 nodes on these paths is about 1e-8) and to 1e-10 with 256 nodes.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from live_server import ROOT, running_server
from safetensors.torch import save_file
from torch import nn

from service.model.store import Bundle, load_bundle

F = 4
NAMES = ["a", "b", "c", "d"]
EXACT_TOLERANCE = 1e-9
QUADRATURE_TOLERANCE = {64: 1e-6, 256: 1e-10}  # nodes -> tolerance against the 512-node reference


def _data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal([5.0, 1.0, -2.0, 10.0], [2.0, 0.5, 1.0, 3.0], size=(n, F))
    logit = 0.8 * (x[:, 0] - 5) / 2 - 1.2 * np.abs(x[:, 1] - 1) + 0.5 * (x[:, 2] + 2) * (x[:, 3] - 10) / 3
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y


def _csv(path: Path, x: np.ndarray, y: np.ndarray | None) -> Path:
    head = ",".join(NAMES + (["outcome"] if y is not None else []))
    rows = [",".join([*(repr(float(v)) for v in row), *([str(int(t))] if y is not None else [])]) for row, t in
            zip(x, y if y is not None else [0] * len(x), strict=True)]  # fmt: skip
    path.write_text("\n".join([head, *rows]) + "\n")
    return path


def _spec(path: Path, name: str, network: str, preprocessing: str = "") -> Path:
    features = "\n".join(
        f"  - {{name: {n}, column: {n}, label: {n.upper()}, unit: '', description: feature {n}., "
        f"valid_min: -100, valid_max: 100, missing: forbidden}}"
        for n in NAMES
    )
    path.write_text(
        f"name: {name}\nversion: 1.0.0\n"
        "outcome: {column: outcome, positive: 1, label: synthetic outcome, description: a simulated 0/1 outcome}\n"
        f"features:\n{features}\n{preprocessing}network:\n{network}"
    )
    return path


def _train(net: nn.Sequential, x: np.ndarray, y: np.ndarray) -> nn.Sequential:
    """Plain torch: full-batch Adam on the binary cross-entropy, 300 steps."""
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)[:, None]
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        loss = nn.BCEWithLogitsLoss()(net(xt), yt)
        loss.backward()
        opt.step()
    return net.eval()


def _bundle(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line: ``gshap bundle ...`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "bundle", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@dataclass(frozen=True)
class Made:
    relu: Path
    tanh: Path
    relu_net: nn.Sequential
    tanh_net: nn.Sequential
    relu3: Path
    relu3_net: nn.Sequential
    mean: np.ndarray
    scale: np.ndarray
    records: list[dict[str, float]]
    folder: Path


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    tmp = tmp_path_factory.mktemp("byo")
    rng = np.random.default_rng(20)
    x_ref, y_ref = _data(rng, 300)
    x_val, y_val = _data(rng, 150)
    x_ev, y_ev = _data(rng, 150)
    reference = _csv(tmp / "reference.csv", x_ref, None)
    validation = _csv(tmp / "validation.csv", x_val, y_val)
    evaluation = _csv(tmp / "evaluation.csv", x_ev, y_ev)
    mean, scale = x_ref.mean(0), x_ref.std(0)

    torch.manual_seed(0)  # ---- the user's own training, in plain torch --------------------------------------------
    relu_net = _train(
        nn.Sequential(nn.Linear(F, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1)),
        (x_ref - mean) / scale,
        y_ref,
    )
    tanh_net = _train(nn.Sequential(nn.Linear(F, 12), nn.Tanh(), nn.Linear(12, 1)), x_ref, y_ref)
    relu3_net = _train(
        nn.Sequential(
            nn.Linear(F, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 1)
        ),
        (x_ref - mean) / scale,
        y_ref,
    )
    save_file(relu3_net.state_dict(), str(tmp / "relu3.safetensors"))
    save_file(relu_net.state_dict(), str(tmp / "relu.safetensors"))
    save_file(tanh_net.state_dict(), str(tmp / "tanh.safetensors"))

    pre = f"preprocessing:\n  mean: {[float(v) for v in mean]}\n  scale: {[float(v) for v in scale]}\n"
    relu_layers = "  - {linear: [4, 16]}\n  - relu\n  - {linear: [16, 8]}\n  - relu\n  - {linear: [8, 1]}\n"
    tanh_layers = "  - {linear: [4, 12]}\n  - tanh\n  - {linear: [12, 1]}\n"
    relu_spec = _spec(tmp / "relu.yaml", "toy-relu", relu_layers, pre)
    tanh_spec = _spec(tmp / "tanh.yaml", "toy-tanh", tanh_layers)
    relu3_layers = (
        "  - {linear: [4, 16]}\n  - relu\n  - {linear: [16, 12]}\n  - relu\n  - {linear: [12, 8]}\n  - relu\n"
        "  - {linear: [8, 1]}\n"
    )
    relu3_spec = _spec(tmp / "relu3.yaml", "toy-relu3", relu3_layers, pre)
    store = tmp / "store"
    common = ["--reference", str(reference), "--evaluation", str(evaluation), "--out", str(store)]
    done = _bundle("--spec", str(relu_spec), "--weights", str(tmp / "relu.safetensors"), "--validation",
                   str(validation), *common)  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = _bundle("--spec", str(tanh_spec), "--weights", str(tmp / "tanh.safetensors"), *common)
    assert done.returncode == 0, done.stderr
    done = _bundle("--spec", str(relu3_spec), "--weights", str(tmp / "relu3.safetensors"), "--validation",
                   str(validation), *common)  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [dict(zip(NAMES, (float(v) for v in row), strict=True)) for row in x_ev[:6]]
    return Made(store / "toy-relu" / "1.0.0", store / "toy-tanh" / "1.0.0", relu_net, tanh_net,
                store / "toy-relu3" / "1.0.0", relu3_net, mean, scale, records, tmp)  # fmt: skip


# ---- independent computations (numpy, float64) --------------------------------------------------------------------


def _layers(net: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in net if isinstance(m, nn.Linear)
    ]


def _relu_logit(layers: list[tuple[np.ndarray, np.ndarray]], z: np.ndarray) -> float:
    h = z
    for i, (w, c) in enumerate(layers):
        h = w @ h + c
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return float(h[0])


def _relu_path_integral(layers: list[tuple[np.ndarray, np.ndarray]], b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """∫₀¹ ∇f(b + α(x − b)) dα for a ReLU net of any depth: the breakpoints layer by layer (between the knots found
    so far the next layer's pre-activations are linear, so their sign changes are found by interpolation), then
    the constant gradient between consecutive knots."""
    d = x - b

    def pre_activations(z: np.ndarray) -> list[np.ndarray]:
        out, h = [], z
        for w, c in layers[:-1]:
            out.append(w @ h + c)
            h = np.maximum(out[-1], 0.0)
        return out

    knots = [0.0, 1.0]
    for layer in range(len(layers) - 1):
        values = [pre_activations(b + a * d)[layer] for a in knots]
        new = set(knots)
        for (lo, hi), (u, v) in zip(itertools.pairwise(knots), itertools.pairwise(values), strict=True):
            change = (u > 0) != (v > 0)
            new |= {float(lo + (hi - lo) * u[j] / (u[j] - v[j])) for j in np.flatnonzero(change)}
        knots = sorted(new)
    total = np.zeros_like(x)
    for lo, hi in itertools.pairwise(knots):
        masks = [(p > 0).astype(float) for p in pre_activations(b + 0.5 * (lo + hi) * d)]
        grad = layers[-1][0][0]
        for (w, _), m in zip(reversed(layers[:-1]), reversed(masks), strict=True):
            grad = (grad * m) @ w
        total += (hi - lo) * grad
    return total


def _tanh_grad(layers: list[tuple[np.ndarray, np.ndarray]], z: np.ndarray) -> np.ndarray:
    (w1, c1), (w2, _) = layers
    grad: np.ndarray = (w2[0] * (1 - np.tanh(w1 @ z + c1) ** 2)) @ w1
    return grad


def _model_space(made: Made, record: dict[str, float], bundle: Bundle) -> np.ndarray:
    """The record as the service feeds it to the network: (x - mean) / scale, rounded to float32 as served."""
    raw = np.array([record[n] for n in NAMES])
    return np.asarray(bundle.preprocessor.transform(raw[None, :])[0], dtype=np.float32).astype(np.float64)


# ---- the tests ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relu_server(made: Made) -> Iterator[str]:
    with running_server({"GSHAP_MODEL_PATH": str(made.relu)}) as server:
        yield server.url


@pytest.fixture(scope="module")
def relu3_server(made: Made) -> Iterator[str]:
    with running_server({"GSHAP_MODEL_PATH": str(made.relu3)}) as server:
        yield server.url


@pytest.fixture(scope="module")
def tanh_server(made: Made) -> Iterator[str]:
    with running_server({"GSHAP_MODEL_PATH": str(made.tanh)}) as server:
        yield server.url


def test_packaged_bundles_carry_what_was_given(made: Made) -> None:
    """With a validation CSV: Platt calibration and a tuned threshold; without: calibration none, threshold 0.5;
    the spec's preprocessing (or the identity) and the user's tensors, unchanged."""
    relu, tanh = load_bundle(made.relu), load_bundle(made.tanh)
    assert relu.calibration.name == "platt/validation"
    assert relu.threshold != 0.5
    assert tanh.calibration.name == "none"
    assert tanh.threshold == 0.5
    np.testing.assert_array_equal(relu.preprocessor.mean, made.mean)
    np.testing.assert_array_equal(tanh.preprocessor.scale, np.ones(F))
    for key, value in made.relu_net.state_dict().items():
        assert torch.equal(relu.model.state_dict()[key], value), key
    assert relu.methods == ("exact", "sampled", "quadrature")
    assert tanh.methods == ("sampled", "quadrature")
    assert tanh.default_method == "quadrature"


def _check_exact_answers(folder: Path, net: nn.Sequential, made: Made, server: str) -> None:
    """/explain (exact, logit) equals Σ_k w_k (x − b_k) ⊙ ∫∇f along each path, computed independently by
    breakpoints, times the calibration's a; the base value is Σ_k w_k (a f(b_k) + b). Tolerance 1e-9."""
    bundle = load_bundle(folder)
    layers = _layers(net)
    a, b = bundle.calibration.a, bundle.calibration.b
    baselines, weights = bundle.baselines.numpy(), bundle.baseline_weights.numpy()
    weights = weights / weights.sum()
    base = sum(w * (a * _relu_logit(layers, bk) + b) for bk, w in zip(baselines, weights, strict=True))
    for record in made.records:
        answer = httpx.post(server + "/explain", json={**record, "method": "exact"}, timeout=60).json()
        assert answer["method"] == "exact"
        x = _model_space(made, record, bundle)
        expected = sum(
            w * (x - bk) * _relu_path_integral(layers, bk, x) for bk, w in zip(baselines, weights, strict=True)
        )
        got = np.array([item["attribution"] for item in answer["attributions"]])
        np.testing.assert_allclose(got, a * expected, rtol=0, atol=EXACT_TOLERANCE)
        assert abs(answer["base_value"] - base) <= EXACT_TOLERANCE
        assert abs(answer["output_value"] - (a * _relu_logit(layers, x) + b)) <= EXACT_TOLERANCE
        assert abs(answer["completeness_gap"]) <= 1e-12


def test_relu_answers_equal_an_independent_exact_computation(made: Made, relu_server: str) -> None:
    """Two hidden ReLU layers: the served exact answers equal the independent breakpoint integral (1e-9)."""
    _check_exact_answers(made.relu, made.relu_net, made, relu_server)


def test_three_hidden_layer_relu_net_is_served_exactly(made: Made, relu3_server: str) -> None:
    """Three hidden ReLU layers, trained in plain torch and packaged by gshap bundle: /model offers exact as the
    default, and the served exact answers equal the independent breakpoint integral (1e-9)."""
    assert load_bundle(made.relu3).methods == ("exact", "sampled", "quadrature")
    card = httpx.get(relu3_server + "/model", timeout=60).json()
    assert card["explanation_method"]["methods"] == ["exact", "sampled", "quadrature"]
    assert card["explanation_method"]["default_method"] == "exact"
    _check_exact_answers(made.relu3, made.relu3_net, made, relu3_server)


def test_tanh_quadrature_equals_a_fine_gauss_legendre_reference(made: Made, tanh_server: str) -> None:
    """/explain without a method uses quadrature (64 nodes) and equals a 512-node Gauss-Legendre reference with
    analytic gradients to 1e-6 (256 nodes: to 1e-10); its completeness gap is reported and small."""
    bundle = load_bundle(made.tanh)
    layers = _layers(made.tanh_net)
    baselines, weights = bundle.baselines.numpy(), bundle.baseline_weights.numpy()
    weights = weights / weights.sum()
    nodes, qw = np.polynomial.legendre.leggauss(512)
    alphas, qw = (nodes + 1) / 2, qw / 2
    for record in made.records[:3]:
        x = _model_space(made, record, bundle)
        expected = np.zeros(F)
        for bk, w in zip(baselines, weights, strict=True):
            integral = sum(q * _tanh_grad(layers, bk + al * (x - bk)) for al, q in zip(alphas, qw, strict=True))
            expected += w * (x - bk) * integral
        for nodes_asked, tolerance in QUADRATURE_TOLERANCE.items():
            body = record if nodes_asked == 64 else {**record, "n_samples": nodes_asked}
            answer = httpx.post(tanh_server + "/explain", json=body, timeout=60).json()
            assert answer["method"] == "quadrature"
            assert answer["n_samples"] == nodes_asked
            got = np.array([item["attribution"] for item in answer["attributions"]])
            np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
            assert abs(answer["completeness_gap"]) <= 1e-6


def test_tanh_exact_is_refused_and_sampled_reports_its_error(tanh_server: str, made: Made) -> None:
    """method=exact is a 422 problem that says why and names sampled and quadrature; sampled answers carry
    standard errors; /model lists the two methods and quadrature as the default."""
    refused = httpx.post(tanh_server + "/explain", json={**made.records[0], "method": "exact"}, timeout=60)
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["type"] == "/problems/method-not-offered"
    assert "Tanh" in problem["detail"]
    assert "sampled, quadrature" in problem["detail"]
    sampled = httpx.post(tanh_server + "/explain", json={**made.records[0], "method": "sampled"}, timeout=60).json()
    assert all(item["standard_error"] > 0 for item in sampled["attributions"])
    card = httpx.get(tanh_server + "/model", timeout=60).json()
    assert card["explanation_method"]["methods"] == ["sampled", "quadrature"]
    assert card["explanation_method"]["default_method"] == "quadrature"


def test_a_pickle_is_refused_with_the_conversion(made: Made) -> None:
    """A torch.save .pt file is never loaded: the command says how to convert it with safetensors (exit 2); the
    same file renamed .safetensors is recognised as a torch.save file and refused too."""
    pt = made.folder / "model.pt"
    torch.save(made.relu_net.state_dict(), pt)
    args = ["--spec", str(made.folder / "relu.yaml"), "--reference", str(made.folder / "reference.csv"),
            "--evaluation", str(made.folder / "evaluation.csv"), "--out", str(made.folder / "refused")]  # fmt: skip
    done = _bundle("--weights", str(pt), *args)
    assert done.returncode == 2
    assert "loads no pickle" in done.stderr
    assert "safetensors.torch import save_file" in done.stderr
    disguised = made.folder / "disguised.safetensors"
    disguised.write_bytes(pt.read_bytes())
    done = _bundle("--weights", str(disguised), *args)
    assert done.returncode == 2
    assert "torch.save file" in done.stderr
    assert not (made.folder / "refused").exists()


def test_weights_that_do_not_fit_the_spec_are_named(made: Made) -> None:
    """Weights of another shape than the spec's layer are refused naming the tensor, both shapes and the layer."""
    other = nn.Sequential(nn.Linear(F, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 1))
    save_file(other.state_dict(), str(made.folder / "other.safetensors"))
    done = _bundle("--spec", str(made.folder / "relu.yaml"), "--weights", str(made.folder / "other.safetensors"),
                   "--reference", str(made.folder / "reference.csv"),
                   "--evaluation", str(made.folder / "evaluation.csv"),
                   "--out", str(made.folder / "mismatch"))  # fmt: skip
    assert done.returncode == 2
    assert "'0.weight' has shape [10, 4], network[0] (Linear(4,16)) needs [16, 4]" in done.stderr


def test_platt_without_validation_is_refused(made: Made) -> None:
    """--calibrate platt without --validation is refused: nothing is ever tuned on the evaluation CSV."""
    done = _bundle("--spec", str(made.folder / "tanh.yaml"), "--weights", str(made.folder / "tanh.safetensors"),
                   "--reference", str(made.folder / "reference.csv"),
                   "--evaluation", str(made.folder / "evaluation.csv"),
                   "--calibrate", "platt", "--out", str(made.folder / "x"))  # fmt: skip
    assert done.returncode == 2
    assert "--calibrate platt needs --validation" in done.stderr
