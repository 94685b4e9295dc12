"""Issue 26, item 5 (serving a piecewise-linear store without torch): can numpy fold a bundle to the bits torch folds
it to? These tests record what was found, with the numpy emulations that were checked against torch.

- ``float(tensor.sum())`` of a float64 vector: yes, :func:`torch_order_sum` (ATen's cascade sum, a 256-bit vector
  of four doubles, four accumulators, the tail first) gives torch's bits for every length tried.
- ``W @ c`` (float64, the fold's ``c ← W_lin @ c + b_lin``): yes for the shapes :func:`torch_order_mv` covers
  (MKL's dot kernel for one row, its gemv kernel for rows in blocks of four), ``None`` for the others.
- A BatchNorm1d's ``1 / sqrt(var + eps)``: no. torch's float64 ``sqrt`` runs MKL's vector maths library (VML,
  high-accuracy mode), which is not correctly rounded: it differs from IEEE ``np.sqrt`` in the last bit for 4 or
  5 of the 112-128 variances of three of the four shipped bundles, so a numpy fold changes those bundles' exact
  answers by up to 1.8e-15 in the logit (the hashes of ``tests/test_pima_rebuild.py`` would change). Only
  breast-cancer-wisconsin 1.0.0 (no such variance) folds to torch's bits, end to end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from service.engine.exact_kernel import ExactKernel
from service.engine.gradient_shap import GradientShapEngine
from service.model.spec import BATCHNORM_EPS, Layer
from service.model.store import DEFAULT_STORE, load_bundle

_TORCH_VEC = 4  # doubles per vector in the reduction kernel torch runs here (a 256-bit Vectorized<double>)
_ILP = 4  # torch's row_sum: four interleaved accumulators
_LEVELS = 4  # torch's multi_row_sum: four cascade levels


def _multi_row_sum(items: np.ndarray) -> np.ndarray:
    """ATen's ``multi_row_sum`` over ``items`` ``(size, nrows, ...)``: the cascade of four levels, in its order."""
    size = items.shape[0]
    power = max(4, (int(size - 1).bit_length() if size > 1 else 0) // _LEVELS)
    step, mask = 1 << power, (1 << power) - 1
    acc = [np.zeros(items.shape[1:]) for _ in range(_LEVELS)]
    i = 0
    while i + step <= size:
        for _ in range(step):
            acc[0] = acc[0] + items[i]
            i += 1
        for j in range(1, _LEVELS):
            acc[j] = acc[j] + acc[j - 1]
            acc[j - 1] = np.zeros(items.shape[1:])
            if i & (mask << (j * power)):
                break
    for k in range(i, size):
        acc[0] = acc[0] + items[k]
    for j in range(1, _LEVELS):
        acc[0] = acc[0] + acc[j]
    return acc[0]


def _row_sum(items: np.ndarray) -> np.ndarray:
    """ATen's ``row_sum``: ``items`` ``(n, ...)`` read as ``(-1, 4)`` rows, their column sums, then the rest."""
    n = items.shape[0]
    full = n // _ILP
    partial = _multi_row_sum(items[: full * _ILP].reshape(full, _ILP, *items.shape[1:]))
    p = [partial[k] for k in range(_ILP)]
    for k in range(full * _ILP, n):
        p[0] = p[0] + items[k]
    for k in range(1, _ILP):
        p[0] = p[0] + p[k]
    return np.asarray(p[0])


def torch_order_sum(values: np.ndarray) -> float:
    """``float(torch.as_tensor(values).sum())`` for a contiguous 1-D float64 array, bit for bit, without torch:
    ATen's cascade sum (vectorised over :data:`_TORCH_VEC` lanes, four accumulators, then the scalar tail, then
    the lanes in order), single-threaded as it is below its grain size (32768 elements)."""
    v = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    n = v.shape[0]
    if n < _TORCH_VEC:
        return float(_row_sum(v[:, None])[0]) if n else 0.0
    nvec = n // _TORCH_VEC
    lanes = _row_sum(v[: nvec * _TORCH_VEC].reshape(nvec, _TORCH_VEC))
    total = 0.0
    for x in v[nvec * _TORCH_VEC :]:
        total = total + float(x)
    for x in lanes:
        total = total + float(x)
    return total


def _dot_order(a: np.ndarray, x: np.ndarray) -> float:
    """One row of :func:`torch_order_mv` (MKL's dot kernel): the first two products, then eight lanes from the
    third on, their sum ``((l1 + l3) + (l5 + l7)) + ((l4 + l6) + (l2 + l0))``, then the remaining products."""
    p = a * x
    n = p.shape[0]
    if n == 0:
        return 0.0
    if n < 10:
        s = float(p[0])
        for k in range(1, n):
            s = s + float(p[k])
        return s
    blocks = (n - 2) // 8
    lanes = p[2 : 2 + 8 * blocks].reshape(blocks, 8).copy()
    lanes[0, 0] = (p[0] + p[1]) + p[2]
    acc = lanes[0]
    for j in range(1, blocks):
        acc = acc + lanes[j]
    r = float(((acc[1] + acc[3]) + (acc[5] + acc[7])) + ((acc[4] + acc[6]) + (acc[2] + acc[0])))
    for k in range(2 + 8 * blocks, n):
        r = r + float(p[k])
    return r


def _gemv_order(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Rows in blocks of four (MKL's gemv kernel): two chains, ``p0 + p1`` then the products of index ``k ≡ n
    (mod 2)``, and the others; their sum."""
    p = a * x[None, :]
    n = p.shape[1]
    if n == 0:
        return np.zeros(p.shape[0])
    if n == 1:
        return np.array(p[:, 0])
    first = np.asarray(p[:, 0] + p[:, 1])
    second: np.ndarray | None = None
    for k in range(2, n):
        if (k - n) % 2 == 0:
            first = first + p[:, k]
        else:
            second = p[:, k].copy() if second is None else second + p[:, k]
    return first if second is None else np.asarray(first + second)


MV_MAX = (256, 300)  # the (rows, columns) up to which torch_order_mv is checked against torch (below)


def torch_order_mv(a: np.ndarray, x: np.ndarray) -> np.ndarray | None:
    """``(torch.from_numpy(a) @ torch.from_numpy(x)).numpy()`` for float64 ``a`` ``(m, n)`` and ``x`` ``(n,)``,
    bit for bit, without torch: the summation order of the MKL kernels torch calls (single-threaded at these
    sizes). ``None`` where that order is not known (``m`` of 2 or 3 modulo 4, or larger than :data:`MV_MAX`):
    the caller then folds with torch."""
    m, n = a.shape
    if m > MV_MAX[0] or n > MV_MAX[1] or (m > 1 and m % 4 not in (0, 1)):
        return None
    if m == 1:
        return np.array([_dot_order(a[0], x)])
    q = m - m % 4
    out = np.empty(m)
    out[:q] = _gemv_order(a[:q], x)
    for i in range(q, m):
        out[i] = _dot_order(a[i], x)
    return out


def fold_layers(
    layers: Sequence[Layer], state: Mapping[str, np.ndarray], calibration: tuple[float, float] = (1.0, 0.0)
) -> tuple[list[np.ndarray], list[np.ndarray], list[float]] | None:
    """``service.engine.piecewise.fold_modules`` of the network a spec's layer list builds, with its state dict
    as numpy arrays and the calibration ``a·logit + b`` as a last affine map, without torch: the same float64
    operations in the same order, except BatchNorm's ``sqrt`` (IEEE here, MKL's in torch). ``None`` for what it
    does not cover (a layer other than Linear, ReLU, LeakyReLU, BatchNorm1d, Dropout and Identity, a Linear after
    an affine map that is not diagonal, a product :func:`torch_order_mv` does not cover)."""
    width: int | None = None
    for layer in layers:
        if layer.kind in ("linear", "batchnorm1d"):
            width = int(layer.args[0])
            break
    if width is None:
        return None
    w: np.ndarray | None = None
    c: np.ndarray | None = None
    diagonal = True  # w is None or has zeros off its diagonal (a product of BatchNorms)
    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    slopes: list[float] = []

    def close() -> None:
        nonlocal w, c, diagonal
        assert width is not None
        weights.append(w if w is not None else np.eye(width))
        biases.append(c if c is not None else np.zeros(width))
        w, c, diagonal = None, None, True

    def linear(lw: np.ndarray, lb: np.ndarray) -> bool:
        nonlocal w, c, diagonal
        if w is None:
            w = lw
        elif diagonal:
            w = lw * np.diagonal(w)[None, :]  # lw @ diag(d): one nonzero product per sum, exact in any order
        elif lw.shape[1] == 1:
            w = lw * w  # sums of one product (the calibration's Linear(1, 1)): exact
        else:
            return False
        if c is not None:
            prod = torch_order_mv(lw, c)
            if prod is None:
                return False
            c = prod + lb
        else:
            c = lb
        diagonal = False
        return True

    for i, layer in enumerate(layers):
        if layer.kind == "linear":
            lw = np.asarray(state[f"{i}.weight"], dtype=np.float64)
            if lw.shape[1] != width or not linear(lw, np.asarray(state[f"{i}.bias"], dtype=np.float64)):
                return None
            width = lw.shape[0]
        elif layer.kind == "batchnorm1d":
            var = np.asarray(state[f"{i}.running_var"], dtype=np.float64)
            if var.shape[0] != width:
                return None
            s = 1.0 / np.sqrt(var + BATCHNORM_EPS)
            t = -np.asarray(state[f"{i}.running_mean"], dtype=np.float64) * s
            gamma = np.asarray(state[f"{i}.weight"], dtype=np.float64)
            s, t = s * gamma, t * gamma
            t = t + np.asarray(state[f"{i}.bias"], dtype=np.float64)
            w = np.diag(s) if w is None else s[:, None] * w
            c = t if c is None else s * c + t
        elif layer.kind in ("relu", "leaky_relu"):
            close()
            slope = float(layer.args[0]) if layer.kind == "leaky_relu" else 0.0
            if not np.isfinite(slope):
                return None
            slopes.append(slope)
        elif layer.kind not in ("dropout", "identity"):
            return None
    a, b = calibration
    if not linear(np.full((1, 1), float(a)), np.full(1, float(b))):
        return None
    close()
    if weights[-1].shape[0] != 1:
        return None
    return [np.ascontiguousarray(x) for x in weights], [np.ascontiguousarray(x) for x in biases], slopes


BUNDLES = sorted(p.parent for p in DEFAULT_STORE.glob("*/*/manifest.json"))


def test_torch_order_sum_is_torchs_sum() -> None:
    rng = np.random.default_rng(0)
    for n in [*range(0, 300), 511, 512, 513, 2048, 5000, 20000]:
        v = rng.standard_normal(n) * np.exp(rng.uniform(-5, 5, n))
        assert torch_order_sum(v) == float(torch.from_numpy(v).sum()), n


def test_torch_order_mv_is_torchs_product_where_it_answers() -> None:
    rng = np.random.default_rng(1)
    for m in (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256):
        for n in (*range(0, 34), 63, 64, 65, 128, 300):
            a = rng.standard_normal((m, n)) * np.exp(rng.uniform(-3, 3, (m, n)))
            x = rng.standard_normal(n)
            got = torch_order_mv(a, x)
            if m in (2, 3):
                assert got is None
            else:
                assert got is not None
                assert np.array_equal(got, (torch.from_numpy(a) @ torch.from_numpy(x)).numpy()), (m, n)


def _sqrt_differs(folder: Path) -> int:
    bundle = load_bundle(folder)
    state = bundle.model.state_dict()
    n = 0
    for i, layer in enumerate(bundle.model_spec.network):
        if layer.kind == "batchnorm1d":
            v = state[f"{i}.running_var"].double() + BATCHNORM_EPS
            n += int((torch.sqrt(v).numpy() != np.sqrt(v.numpy())).sum())
    return n


@pytest.mark.parametrize("folder", BUNDLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_numpy_fold_has_torchs_bits_exactly_where_torchs_sqrt_is_ieee(folder: Path) -> None:
    bundle = load_bundle(folder)
    engine = GradientShapEngine(bundle.model, bundle.baselines, bundle.baseline_weights)
    state = {k: v.numpy() for k, v in bundle.model.state_dict().items()}
    folded = fold_layers(bundle.model_spec.network, state, (bundle.calibration.a, bundle.calibration.b))
    assert folded is not None
    weights = bundle.baseline_weights.double().numpy()
    weights = weights / torch_order_sum(weights)
    baselines = bundle.baselines.double().numpy()
    kernel = ExactKernel(*folded[:2], baselines, weights, folded[2])
    x = bundle.eval_x.double().numpy()
    (attr, logit), (attr0, logit0) = kernel.explain(x), engine.compiled.explain(x)  # type: ignore[union-attr]
    if _sqrt_differs(folder) == 0:
        assert np.array_equal(logit, logit0)
        assert np.array_equal(attr, attr0)
        assert torch_order_sum(weights * kernel.logits(baselines)) == engine.base_value()
    else:  # MKL's sqrt: answers differ in the last bits
        assert not np.array_equal(logit, logit0)
        assert np.abs(logit - logit0).max() < 4e-15
        assert np.abs(attr - attr0).max() < 2e-15
