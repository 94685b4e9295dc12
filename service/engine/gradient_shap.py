"""The GradientSHAP engine: exact, sampled and quadrature estimators of one estimand.

Estimand (Captum's GradientShap, ``shap.GradientExplainer``'s "expected gradients")::

    φ(x) = E_{b ~ baselines, weighted} E_{α ~ U(0,1)} E_ε [ (x + ε − b) ⊙ ∇f(b + α (x + ε − b)) ],   ε ~ N(0, stdevs² I)

with ``f`` the model's logit (``output="logit"``) or ``sigmoid(logit)`` (``output="probability"``). Without noise
the attributions add up to ``f(x) − E_b f(b)`` (completeness) when the expectation over α is computed exactly.

Estimators (``method``):

- ``"exact"`` (default): the model in eval mode is piecewise linear in its input (Linear, BatchNorm1d, Dropout
  and Identity folded into affine maps between ReLUs or leaky ReLUs, :mod:`service.engine.piecewise`), so along
  each straight path ``b → x`` the gradient is constant between the points where a hidden unit changes sign and
  the α-integral is a finite sum. For the logit, :class:`service.engine.exact_kernel.ExactKernel` computes it
  event by event in compiled code (any depth and widths);
  :func:`path_integrals_by_pieces` enumerates every linear piece (any depth; also the probability output). The
  earlier dense prefix-sum formulation in torch is kept outside the service, as a test and benchmark reference
  (``tests/reference_kernels.py``). Completeness gap ~1e-15 in float64. Raises ``ValueError`` for models it
  cannot fold.
- ``"sampled"``: Captum's Monte-Carlo estimator (one weighted random baseline, one α and one noise draw per
  sample), with draws made from ``seed`` alone and shared by every record.
- ``"quadrature"``: Gauss–Legendre nodes in α for every baseline, autograd gradients; any differentiable model.

Captum itself (``captum.attr.GradientShap``), the reference these estimators are tested against, runs outside the
serving engine: :mod:`service.training.captum_reference`.

Reproducibility: a record's numbers depend only on (record, settings, seed), never on its neighbours or its
position in the batch. Random draws (baseline index, α, noise) come from a generator seeded with ``seed`` and are
the same for every record; every estimator computes one record at a time with tensors whose shapes depend on
that record and the settings only (BLAS rounding depends on shapes, so batching records into one product would
break bitwise reproducibility), or, in the compiled kernel, with fixed-order loops. ``f(x)`` is evaluated without
BLAS for the same reason. Memory: one record's working set at a time (see :class:`GradientShapEngine`), so peak
memory does not grow with the batch size.

Threads: the compiled kernel releases the GIL; the torch estimators run many medium-sized tensor operations, and
with several torch threads each one synchronises every core, which stalls badly when another process holds one.
Serve with ``torch.set_num_threads(1)`` per process (speed: ``scripts/bench_engine.py`` and the README's tables);
:func:`set_torch_threads` sets it when torch is loaded.

Torch is imported lazily. :meth:`GradientShapEngine.from_bundle` folds a bundle's piecewise-linear network with numpy
(:func:`service.engine.piecewise.fold_layers`, the same on every processor): ``f(x)``, the exact estimator (logit:
the compiled kernel; probability: :func:`path_integrals_by_pieces_np`) and the base values then need numpy only,
and torch is imported, with the bundle's torch module, the first time a sampled or quadrature explanation (or exact
with noise) is asked for; those estimators use the torch fold of the module, as an engine built from the module
does. An engine built from a torch module folds it with torch, as before.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.contract import (
    DEFAULT_N_SAMPLES,
    MAX_N_SAMPLES,
    METHODS,
    MIN_N_SAMPLES,
    OUTPUTS,
    Method,
    Output,
    sigmoid,
)
from service.engine.exact_kernel import MAX_HIDDEN_LAYERS, ExactKernel
from service.engine.piecewise import NotPiecewiseLinear, fold_layers, fold_modules, ordered_sum

if TYPE_CHECKING:  # torch is imported where an estimator needs it (see GradientShapEngine), not with this module
    from torch import Tensor, nn

    from service.model.store import Bundle

    GradFn = Callable[[Tensor], Tensor]

__all__ = [
    "DEFAULT_N_SAMPLES",
    "MAX_N_SAMPLES",
    "Explanation",
    "GradientShapEngine",
    "Method",
    "NotPiecewiseLinear",
    "Output",
    "PiecewiseLinearNet",
    "fold_piecewise_linear",
    "path_integrals_by_pieces",
    "path_integrals_by_pieces_np",
    "set_torch_threads",
]

_torch_threads: int | None = None  # set_torch_threads's number, applied when torch is (or gets) imported
_threads_applied = False


def set_torch_threads(n: int) -> None:
    """Run torch with ``n`` intra-op threads (and one inter-op thread): now if torch is loaded, otherwise when an
    engine first imports it (a service of piecewise-linear models may never load torch)."""
    global _torch_threads, _threads_applied
    _torch_threads, _threads_applied = n, False
    if "torch" in sys.modules:
        _load_torch()


def _load_torch() -> None:
    """Import torch and apply the threads of :func:`set_torch_threads` the first time."""
    global _threads_applied
    import torch

    if _torch_threads is not None and not _threads_applied:
        torch.set_num_threads(_torch_threads)
        with contextlib.suppress(RuntimeError):  # settable once per process, before any parallel work
            torch.set_num_interop_threads(1)
        _threads_applied = True


# ---------------------------------------------------------------------------------------------------------------
# The model as a composition of affine maps and ReLUs
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PiecewiseLinearNet:
    """``f(z) = A_L ∘ act_{L-1} ∘ A_{L-1} ∘ … ∘ act_0 ∘ A_0 (z)``: affine maps ``A_l(h) = W_l h + c_l`` in
    float64 and activations ``act_l(s) = s`` for ``s > 0``, ``a_l s`` otherwise (``a_l = 0``: ReLU).

    ``weights[l]`` is ``(H_{l+1}, H_l)`` with ``H_0 = F`` and ``H_{L+1} = 1``; ``biases[l]`` is ``(H_{l+1},)``;
    ``slopes[l]`` is ``a_l`` (empty: all ReLU). ``L = len(weights) - 1`` is the number of hidden layers. Built by
    :func:`fold_piecewise_linear`.
    """

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    slopes: tuple[float, ...] = ()

    def slope(self, layer: int) -> float:
        """``a_layer``, the negative slope of hidden layer ``layer`` (0.0: ReLU)."""
        return self.slopes[layer] if self.slopes else 0.0

    def _act(self, h: Tensor, layer: int) -> Tensor:
        import torch

        a = self.slope(layer)
        return torch.relu(h) if a == 0.0 else torch.where(h > 0, h, a * h)

    @property
    def depth(self) -> int:
        """Number of hidden ReLU layers."""
        return len(self.weights) - 1

    @property
    def n_features(self) -> int:
        return int(self.weights[0].shape[1])

    def pre_activations(self, z: Tensor, layer: int) -> Tensor:
        """``(R, F) -> (R, H_{layer+1})``: the input of the ``layer``-th ReLU (``layer = L``: the logit, ``(R, 1)``)."""
        h = z
        for i in range(layer + 1):
            if i:
                h = self._act(h, i - 1)
            h = h @ self.weights[i].T + self.biases[i]
        return h

    def logit(self, z: Tensor) -> Tensor:
        """``(R, F) -> (R,)`` logits, by BLAS matrix products (row values may differ in the last bit by batch)."""
        return self.pre_activations(z, self.depth)[:, 0]

    def logit_rowwise(self, z: Tensor) -> Tensor:
        """``(R, F) -> (R,)`` logits by element-wise products and fixed-length sums: a row's value is bitwise the
        same in any batch (no BLAS, whose blocking depends on the batch size). Memory ``R·max(H)²``."""
        h = z
        for i, (w, c) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i:
                h = self._act(h, i - 1)
            h = (h[:, None, :] * w[None]).sum(-1) + c
        return h[:, 0]

    def logit_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(R, F) -> ((R,), (R, F))``: logit and its input gradient (masks times weights, no autograd)."""
        import torch

        masks = []
        h = z
        for i in range(self.depth):
            pre = torch.addmm(self.biases[i], h, self.weights[i].T)
            a = self.slope(i)
            masks.append((pre > 0).to(z.dtype) if a == 0.0 else torch.where(pre > 0, 1.0, torch.full_like(pre, a)))
            h = pre.mul_(masks[-1])
        out = torch.addmm(self.biases[-1], h, self.weights[-1].T)[:, 0]
        g = self.weights[-1].expand(z.shape[0], -1)
        for i in range(self.depth - 1, -1, -1):
            g = (g * masks[i]) @ self.weights[i]
        return out, g


def _logit_affine(a: float, b: float) -> nn.Linear:
    """``z ↦ a·z + b`` as a float64 ``Linear(1, 1)``: folding it scales the last layer by ``a`` and shifts it by
    ``b`` in float64 (``a·w3``, ``a·b3 + b``); the identity (1, 0) folds to the same numbers bitwise."""
    import torch
    from torch import nn

    lin = nn.Linear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.fill_(a)
        lin.bias.fill_(b)
    return lin


def _flatten_modules(model: nn.Module) -> list[nn.Module]:
    from torch import nn

    from service.model.nn import BinaryClassification, CalibratedClassification

    if isinstance(model, CalibratedClassification) and type(model).forward is CalibratedClassification.forward:
        layers: list[nn.Module] = []
        for child in model:
            layers.extend(_flatten_modules(child) if type(child) is nn.Sequential else [child])
        return [*layers, _logit_affine(model.calibration.a, model.calibration.b)]
    if type(model) is BinaryClassification or (
        isinstance(model, BinaryClassification) and type(model).forward is BinaryClassification.forward
    ):
        m = model
        return [m.layer_1, m.relu, m.batchnorm1, m.layer_2, m.relu, m.batchnorm2, m.dropout, m.layer_out]
    if type(model) is nn.Sequential:
        out: list[nn.Module] = []
        for child in model:
            out.extend(_flatten_modules(child) if type(child) is nn.Sequential else [child])
        return out
    if isinstance(model, nn.Linear | nn.ReLU | nn.LeakyReLU | nn.BatchNorm1d | nn.Dropout | nn.Identity):
        return [model]
    raise NotPiecewiseLinear(
        "the exact estimator needs a network it can fold (service.model.nn.BinaryClassification or an "
        f"nn.Sequential of Linear/ReLU/LeakyReLU/BatchNorm1d/Dropout/Identity); got {type(model).__name__}. "
        "Use method='quadrature' or 'sampled'."
    )


def fold_piecewise_linear(model: nn.Module) -> PiecewiseLinearNet:
    """Fold an eval-mode network of affine layers and (leaky) ReLUs into affine maps and activations.

    Accepts :class:`service.model.nn.BinaryClassification` (with its own ``forward``) and ``nn.Sequential`` of
    ``Linear``, ``ReLU``, ``LeakyReLU``, ``BatchNorm1d`` (with running statistics), ``Dropout`` and ``Identity``
    in any order, ending in one output (:func:`service.engine.piecewise.fold_modules`). Raises
    :class:`NotPiecewiseLinear` (a ``ValueError``) naming the obstacle for anything else (e.g. ``Tanh``): such
    models are not piecewise linear, or not in a form this function can prove to be.
    """
    weights, biases, slopes = fold_modules(_flatten_modules(model))
    return PiecewiseLinearNet(tuple(weights), tuple(biases), tuple(slopes))


# ---------------------------------------------------------------------------------------------------------------
# Exact path integrals
# ---------------------------------------------------------------------------------------------------------------


def _sigmoid_secant(a: Tensor, b: Tensor) -> Tensor:
    """``(σ(b) − σ(a)) / (b − a)`` element-wise, ``σ'(a)`` where ``a == b``; no cancellation or overflow.

    Uses ``σ(hi) − σ(lo) = σ(hi) σ(−lo) (1 − e^{−(hi−lo)})`` with ``lo ≤ hi`` (the secant is symmetric).
    """
    import torch

    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    delta = hi - lo
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    ratio = torch.where(delta > 0, -torch.expm1(-delta) / safe, torch.ones_like(delta))
    return torch.sigmoid(-lo) * torch.sigmoid(hi) * ratio


def path_integrals_by_pieces(
    net: PiecewiseLinearNet, x: Tensor, baselines: Tensor, output: Output = "logit"
) -> tuple[Tensor, Tensor]:
    """Exact ``∫₀¹ ∇g(b_k + α (x − b_k)) dα`` for each baseline by enumerating the linear pieces of each path.

    Knots are found layer by layer: between consecutive knots found so far, the next layer's pre-activations
    are linear in α, so their sign changes are located by linear interpolation. On each piece all ReLU masks are
    constant: the gradient is the masked product of the weights, and ``g = logit`` is linear, so
    ``∫ σ'(logit) dα = len · (σ(ℓ_end) − σ(ℓ_start)) / (ℓ_end − ℓ_start)`` for ``g = sigmoid(logit)``.

    Args:
        net: the folded model (any depth).
        x: ``(F,)`` one record, float64.
        baselines: ``(K, F)`` float64.
        output: ``"logit"`` or ``"probability"``.

    Returns:
        ``(integrals, n_pieces)``: ``(K, F)`` gradient integrals and ``(K,)`` number of pieces per path.
    """
    import torch

    k = baselines.shape[0]
    d = x[None, :] - baselines
    alpha = torch.tensor([0.0, 1.0], dtype=x.dtype).repeat(k)
    pid = torch.arange(k).repeat_interleave(2)
    for layer in range(net.depth):
        pre = net.pre_activations(baselines[pid] + alpha[:, None] * d[pid], layer)
        same = pid[1:] == pid[:-1]
        u, v = pre[:-1], pre[1:]
        cross = ((u > 0) != (v > 0)) & same[:, None]
        seg, _unit = cross.nonzero(as_tuple=True)
        uu, vv = u[cross], v[cross]
        pos = alpha[seg] + (alpha[seg + 1] - alpha[seg]) * (uu / (uu - vv))
        alpha = torch.cat([alpha, pos.clamp(0.0, 1.0)])
        pid = torch.cat([pid, pid[seg]])
        order = torch.sort(alpha, stable=True).indices
        alpha, pid = alpha[order], pid[order]
        order = torch.sort(pid, stable=True).indices
        alpha, pid = alpha[order], pid[order]
    same = pid[1:] == pid[:-1]
    start, end, owner = alpha[:-1][same], alpha[1:][same], pid[:-1][same]
    length = end - start
    _, grad = net.logit_and_grad(baselines[owner] + (0.5 * (start + end))[:, None] * d[owner])
    if output == "logit":
        weight = length
    else:
        lo = net.logit(baselines[owner] + start[:, None] * d[owner])
        hi = net.logit(baselines[owner] + end[:, None] * d[owner])
        weight = length * _sigmoid_secant(lo, hi)
    integrals = torch.zeros(k, x.shape[0], dtype=x.dtype).index_add_(0, owner, weight[:, None] * grad)
    n_pieces = torch.bincount(owner[length > 0], minlength=k)
    return integrals, n_pieces


def _act_np(h: np.ndarray, a: float) -> np.ndarray:
    return np.maximum(h, 0.0) if a == 0.0 else np.where(h > 0, h, a * h)


def _sigmoid_np(z: np.ndarray) -> np.ndarray:
    return np.asarray(sigmoid(np.asarray(z, dtype=np.float64)))


def path_integrals_by_pieces_np(
    folded: Folded, x: np.ndarray, baselines: np.ndarray, output: Output = "logit"
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`path_integrals_by_pieces` in numpy, on a fold ``(weights, biases, slopes)`` of numpy arrays (the
    same steps; its matrix products are numpy's): what a service of piecewise-linear models answers for the
    probability output without loading torch."""
    weights, biases, slopes = folded
    depth = len(weights) - 1

    def pre_activations(z: np.ndarray, layer: int) -> np.ndarray:
        h = z
        for i in range(layer + 1):
            if i:
                h = _act_np(h, slopes[i - 1])
            h = h @ weights[i].T + biases[i]
        return h

    def logit_and_grad(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        masks = []
        h = z
        for i in range(depth):
            pre = h @ weights[i].T + biases[i]
            a = slopes[i]
            masks.append((pre > 0).astype(np.float64) if a == 0.0 else np.where(pre > 0, 1.0, a))
            h = pre * masks[-1]
        out = (h @ weights[-1].T + biases[-1])[:, 0]
        g = np.broadcast_to(weights[-1], (z.shape[0], weights[-1].shape[1]))
        for i in range(depth - 1, -1, -1):
            g = (g * masks[i]) @ weights[i]
        return out, g

    k = baselines.shape[0]
    d = x[None, :] - baselines
    alpha = np.tile(np.array([0.0, 1.0]), k)
    pid = np.repeat(np.arange(k), 2)
    for layer in range(depth):
        pre = pre_activations(baselines[pid] + alpha[:, None] * d[pid], layer)
        same = pid[1:] == pid[:-1]
        u, v = pre[:-1], pre[1:]
        cross = ((u > 0) != (v > 0)) & same[:, None]
        seg, _unit = cross.nonzero()
        uu, vv = u[cross], v[cross]
        pos = alpha[seg] + (alpha[seg + 1] - alpha[seg]) * (uu / (uu - vv))
        alpha = np.concatenate([alpha, np.clip(pos, 0.0, 1.0)])
        pid = np.concatenate([pid, pid[seg]])
        order = np.argsort(alpha, kind="stable")
        alpha, pid = alpha[order], pid[order]
        order = np.argsort(pid, kind="stable")
        alpha, pid = alpha[order], pid[order]
    same = pid[1:] == pid[:-1]
    start, end, owner = alpha[:-1][same], alpha[1:][same], pid[:-1][same]
    length = end - start
    _, grad = logit_and_grad(baselines[owner] + (0.5 * (start + end))[:, None] * d[owner])
    if output == "logit":
        weight = length
    else:
        lo = pre_activations(baselines[owner] + start[:, None] * d[owner], depth)[:, 0]
        hi = pre_activations(baselines[owner] + end[:, None] * d[owner], depth)[:, 0]
        low, high = np.minimum(lo, hi), np.maximum(lo, hi)
        delta = high - low
        safe = np.where(delta > 0, delta, 1.0)
        ratio = np.where(delta > 0, -np.expm1(-delta) / safe, 1.0)
        weight = length * (_sigmoid_np(-low) * _sigmoid_np(high) * ratio)
    integrals = np.zeros((k, x.shape[0]))
    np.add.at(integrals, owner, weight[:, None] * grad)
    n_pieces = np.bincount(owner[length > 0], minlength=k)
    return integrals, n_pieces


# ---------------------------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    """Attributions of a batch of records, with their error measures. Arrays are float64 numpy.

    Attributes:
        output_value: ``(N,)`` f(x): logit or probability.
        base_value: ``E_b[f(b)]`` over the whole weighted baseline distribution.
        attributions: ``(N, F)``.
        attribution_se: ``(N, F)`` Monte-Carlo standard error of each attribution (0 where exact or quadrature).
        completeness_gap: ``(N,)`` ``f(x) − (base_value + Σ attributions)``.
        method, n_samples, seed, output, stdevs: the settings used (``n_samples = 0``: no sampling).
    """

    output_value: np.ndarray
    base_value: float
    attributions: np.ndarray
    attribution_se: np.ndarray
    completeness_gap: np.ndarray
    method: str
    n_samples: int
    seed: int
    output: str
    stdevs: float


Folded = tuple[list[np.ndarray], list[np.ndarray], list[float]]
"""A piecewise-linear network folded to numpy: ``(weights, biases, slopes)`` as :class:`PiecewiseLinearNet`'s."""


def _array64(x: Any) -> np.ndarray:
    """A float64 numpy copy of a numpy array, a torch tensor (detached, on the CPU) or a nested sequence."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.array(x, dtype=np.float64)


class GradientShapEngine:
    """GradientSHAP for one model and one weighted baseline distribution.

    Args:
        model: ``(N, F)`` model-space float32 inputs → ``(N, 1)`` logits. Put in eval mode here (Captum never
            does; BatchNorm in train mode would make a record depend on its neighbours). Its weights are read
            once, at construction. With ``folded``, a callable that builds it instead, called the first time
            an estimator needs torch (see :meth:`from_bundle`).
        baselines: ``(K, F)`` model-space points.
        baseline_weights: ``(K,)`` nonnegative, normalised to sum 1; ``None`` = uniform.
        chunk_size: maximum number of points per model or gradient evaluation (sampled and quadrature
            estimators, ``f(x)`` without the compiled kernel). Memory does not grow with the batch: the compiled
            exact kernel works one record at a time in a few kB of scratch (its constants: ``K·H2·F`` numbers,
            256 kB for K = 64), the piece enumeration holds one record's pieces, and the other estimators hold
            one record's ``n_samples`` (× K for quadrature) points and evaluate them ``chunk_size`` at a time.
            Only the ``(N, F)`` results grow with N.
        folded: the model folded without torch (:func:`service.engine.piecewise.fold_layers`), or ``None`` to
            fold ``model`` with torch (:func:`fold_piecewise_linear`). With it, ``f(x)`` and the exact estimator
            (logit: the compiled kernel; probability: the piece enumeration in numpy) run on numpy and the C
            kernel only, and torch is imported when a sampled or quadrature explanation (or exact with noise)
            is first asked for; those estimators then use the torch fold of the model, as without ``folded``.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        baselines: Tensor | np.ndarray,
        baseline_weights: Tensor | np.ndarray | None = None,
        *,
        chunk_size: int = 2048,
        folded: Folded | None = None,
    ) -> None:
        b = _array64(baselines)
        if b.ndim != 2 or b.shape[0] < 1:
            raise ValueError(f"baselines must be a non-empty (K, F) tensor, got shape {tuple(b.shape)}")
        if not bool(np.isfinite(b).all()):
            raise ValueError("baselines contain NaN or infinite values")
        if baseline_weights is None:
            w = np.full((b.shape[0],), 1.0 / b.shape[0])
        else:
            w = _array64(baseline_weights).reshape(-1)
            if w.shape[0] != b.shape[0]:
                raise ValueError(f"{w.shape[0]} baseline weights for {b.shape[0]} baselines")
            if not bool(np.isfinite(w).all()) or bool((w < 0).any()) or ordered_sum(w) <= 0:
                raise ValueError("baseline weights must be finite, nonnegative and not all zero")
            w = w / ordered_sum(w)  # torch's sum, bit for bit (ordered_sum), as before this engine was numpy
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self._bn, self._wn = b, w
        self.chunk_size = chunk_size
        self._numpy_fold = folded is not None
        self._fold_error = ""
        self._folded: Folded | None
        if folded is not None:
            self._model_factory: Callable[[], nn.Module] | None = model
            self._folded = folded
        else:
            module: nn.Module = model  # type: ignore[assignment]
            module.eval()
            self._model_factory = None
            self._module = module
            try:
                net: PiecewiseLinearNet | None = fold_piecewise_linear(module)
            except ValueError as exc:
                net, self._fold_error = None, str(exc)
            self._net = net
            self._folded = (
                None
                if net is None
                else ([t.numpy() for t in net.weights], [t.numpy() for t in net.biases], list(net.slopes))
            )
        if self._folded is not None and self._folded[0][0].shape[1] != self.n_features:
            raise ValueError(f"model takes {self._folded[0][0].shape[1]} features, baselines have {self.n_features}")
        self._kernel = (
            ExactKernel(self._folded[0], self._folded[1], b, w, self._folded[2])
            if self._folded is not None
            and len(self._folded[0]) - 1 <= MAX_HIDDEN_LAYERS
            and all(bool(np.isfinite(a).all()) for a in (*self._folded[0], *self._folded[1]))
            else None
        )  # non-finite weights take the torch paths, where NaN propagates (and the service's warm-up refuses it)
        fb = self._f64(b)
        self._base = {
            "logit": ordered_sum(w * fb),
            "probability": ordered_sum(w * _sigmoid_np(fb)),
        }

    @classmethod
    def from_bundle(cls, bundle: Bundle, *, chunk_size: int = 2048) -> GradientShapEngine:
        """The engine of a bundle's served (calibrated) network: a piecewise-linear one folded with numpy from
        its layer list and state dict (:func:`service.engine.piecewise.fold_layers`, no torch), its torch module
        built only when an estimator needs it; any other network as ``GradientShapEngine(bundle.model, ...)``."""
        points, weights = bundle.baseline_points, bundle.baseline_weight_values
        try:
            folded = fold_layers(bundle.model_spec.network, bundle.state, (bundle.calibration.a, bundle.calibration.b))
        except (NotPiecewiseLinear, KeyError):
            return cls(bundle.model, points, weights, chunk_size=chunk_size)
        return cls(lambda: bundle.model, points, weights, chunk_size=chunk_size, folded=folded)

    # -- torch, on first need (built outside inference mode: a first use may come from inside it) ----------------

    @functools.cached_property
    def _module(self) -> nn.Module:
        """The torch model, in eval mode (built by the factory of a ``folded`` engine the first time)."""
        assert self._model_factory is not None
        _load_torch()
        import torch

        with torch.inference_mode(False):
            module = self._model_factory()
        module.eval()
        return module

    @functools.cached_property
    def _net(self) -> PiecewiseLinearNet | None:
        """The torch fold of the model (``None``: not piecewise linear)."""
        if self._folded is None:
            return None
        _load_torch()
        import torch

        module = self._module
        with torch.inference_mode(False):
            return fold_piecewise_linear(module)

    @functools.cached_property
    def _model64(self) -> nn.Module:
        _load_torch()
        import torch

        module = self._module
        with torch.inference_mode(False):
            model64 = copy.deepcopy(module).to(torch.float64).eval()
        for p in model64.parameters():
            p.requires_grad_(False)
        return model64

    @functools.cached_property
    def _b(self) -> Tensor:
        _load_torch()
        import torch

        return torch.from_numpy(self._bn)

    @functools.cached_property
    def _w(self) -> Tensor:
        _load_torch()
        import torch

        return torch.from_numpy(self._wn)

    # -- properties --------------------------------------------------------------------------------------------

    @property
    def n_features(self) -> int:
        return int(self._bn.shape[1])

    @property
    def baselines(self) -> np.ndarray:
        """``(K, F)`` float64 copy of the baseline points."""
        return self._bn.copy()

    @property
    def baseline_weights(self) -> np.ndarray:
        """``(K,)`` float64 normalised weights."""
        return self._wn.copy()

    @property
    def folded(self) -> Folded | None:
        """The network folded to ``(weights, biases, slopes)`` (numpy), what the exact kernel is built from; None
        when it is not piecewise-linear."""
        return self._folded

    @property
    def is_piecewise_linear(self) -> bool:
        """Whether the exact estimator is available for this model."""
        return self._folded is not None

    def needs_torch(self, method: str, output: str = "logit") -> bool:
        """Whether ``explain`` with this method and output (no noise) imports torch: everything but exact on a
        ``folded`` engine (and exact logits with the compiled kernel)."""
        if method != "exact" or self._folded is None:
            return True
        return not (self._numpy_fold or (self._kernel is not None and output == "logit"))

    # -- evaluation of f -----------------------------------------------------------------------------------------

    def _f64(self, z: np.ndarray) -> np.ndarray:
        """``(R, F) float64 -> (R,)`` logits in float64, a row's value independent of the batch when folded."""
        if self._kernel is not None:
            return self._kernel.logits(z)
        _load_torch()
        import torch

        zt = torch.from_numpy(np.ascontiguousarray(z))
        with torch.inference_mode():
            if self._net is not None:
                net = self._net
                step = max(1, self.chunk_size // max(w.shape[0] for w in net.weights))
                out = torch.cat([net.logit_rowwise(c) for c in torch.split(zt, step)]) if len(zt) else zt[:, 0]
            else:
                out = torch.cat([self._model64(zt[i : i + 1]).reshape(-1) for i in range(zt.shape[0])])
        return np.asarray(out.numpy(), dtype=np.float64)

    def base_value(self, output: Output = "logit") -> float:
        """``E_b[f(b)]`` over the weighted baselines, ``f`` = logit or probability."""
        _check_output(output)
        return self._base[output]

    def predict_logit(self, x: Tensor | np.ndarray) -> np.ndarray:
        """``(N, F) -> (N,)`` float64 logits (evaluated in float64 from the model's weights, as in :meth:`explain`)."""
        return self._f64(self._as_input(x))

    def _as_input(self, x: Tensor | np.ndarray) -> np.ndarray:
        t = _array64(x)
        if t.ndim == 1:
            t = t[None, :]
        if t.ndim != 2 or t.shape[1] != self.n_features:
            raise ValueError(f"x must be (N, {self.n_features}), got shape {tuple(t.shape)}")
        if not bool(np.isfinite(t).all()):
            raise ValueError("x contains NaN or infinite values")
        return np.ascontiguousarray(t)

    # -- explain -------------------------------------------------------------------------------------------------

    def explain(
        self,
        x: Tensor | np.ndarray,
        *,
        method: Method = "exact",
        n_samples: int | None = None,
        seed: int = 0,
        output: Output = "logit",
        stdevs: float = 0.0,
    ) -> Explanation:
        """Attribute ``f(x) − E_b f(b)`` to the features of each record.

        Args:
            x: ``(N, F)`` model-space records (float32 or float64).
            method: ``"exact"`` | ``"sampled"`` | ``"quadrature"`` (see the module docstring).
            n_samples: samples (sampled), Gauss–Legendre nodes (quadrature) or noise draws (exact with
                ``stdevs > 0``); ``None`` = :data:`DEFAULT_N_SAMPLES`; at most :data:`MAX_N_SAMPLES`.
            seed: seed of every random draw (baseline index, α, noise); the same for every record.
            output: ``"logit"`` or ``"probability"`` (``sigmoid(logit)``).
            stdevs: standard deviation of Gaussian noise added to ``x`` (model-space units), as Captum's
                ``stdevs``. With noise the attributions add up to ``E_ε f(x + ε) − E_b f(b)``; the gap to
                ``f(x)`` then includes that smoothing.

        Returns:
            :class:`Explanation` with ``(N, F)`` attributions and their standard errors.
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        _check_output(output)
        if not (math.isfinite(stdevs) and stdevs >= 0):
            raise ValueError(f"stdevs must be a finite number >= 0, got {stdevs}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        xa = self._as_input(x)
        n = self._resolve_n(method, n_samples, stdevs)
        if self._kernel is not None and method == "exact" and output == "logit" and stdevs == 0:
            attributions, logits = self._kernel.explain(xa)  # both in one call, as the runtime does
            return self.exact_explanation(attributions, logits, seed=seed)
        if method == "exact" and stdevs == 0 and self._numpy_fold:
            attr_np = self._exact_numpy(xa, output)  # the folded service's probability output: no torch
            se_np = np.zeros_like(attr_np)
        else:
            _load_torch()
            import torch

            xt = torch.from_numpy(xa)
            if method == "exact":
                attr, se = self._exact(xt, output, n, seed, stdevs)
            elif method == "sampled":
                attr, se = self._sampled(xt, output, n, seed, stdevs)
            elif method == "quadrature":
                if stdevs > 0:
                    raise ValueError("quadrature does not take stdevs > 0; use method='exact' or 'sampled' with noise")
                attr, se = self._quadrature(xt, output, n)
            attr_np, se_np = attr.double().numpy(), se.double().numpy()
        fx = self._f64(xa)
        # the probability record by record with math.exp, as the runtime computes a prediction's probability:
        # a vectorised sigmoid over the batch takes a vector path for most elements and a scalar one for the
        # tail, whose last bits differ, so a record's output_value depended on its place in the batch
        value = fx if output == "logit" else np.array([sigmoid(v) for v in fx.tolist()], dtype=np.float64)
        return self._assemble(attr_np, se_np, value, method, n, seed, output, stdevs)

    @property
    def compiled(self) -> ExactKernel | None:
        """The compiled exact kernel of the logit (piecewise-linear networks with finite weights), or ``None``.

        ``compiled.explain(x)`` gives the attributions and logits of ``explain(x)`` (method ``"exact"``, output
        ``"logit"``, no noise) bitwise, in one call that holds the GIL only to enter and leave; turn them into
        an :class:`Explanation` with :meth:`exact_explanation`.
        """
        return self._kernel

    def exact_explanation(self, attributions: np.ndarray, logits: np.ndarray, seed: int = 0) -> Explanation:
        """The :class:`Explanation` of ``compiled.explain``'s ``(attributions, logits)``: what :meth:`explain`
        returns for method ``"exact"`` and output ``"logit"`` (``seed`` is reported, exact uses no draws)."""
        return self._assemble(attributions, np.zeros_like(attributions), logits, "exact", 0, seed, "logit", 0.0)

    def _assemble(
        self,
        attr: np.ndarray,
        se: np.ndarray,
        value: np.ndarray,
        method: str,
        n: int,
        seed: int,
        output: str,
        stdevs: float,
    ) -> Explanation:
        base = self._base[output]
        return Explanation(
            output_value=value,
            base_value=base,
            attributions=attr,
            attribution_se=se,
            completeness_gap=value - (base + attr.sum(1)),
            method=method,
            n_samples=n,
            seed=seed,
            output=output,
            stdevs=float(stdevs),
        )

    @staticmethod
    def _resolve_n(method: str, n_samples: int | None, stdevs: float) -> int:
        if method == "exact" and stdevs == 0:
            return 0
        n = DEFAULT_N_SAMPLES[method] if n_samples is None else n_samples
        low = MIN_N_SAMPLES[method]
        if not isinstance(n, int) or isinstance(n, bool) or not low <= n <= MAX_N_SAMPLES:
            raise ValueError(f"n_samples must be an integer in [{low}, {MAX_N_SAMPLES}] for {method}, got {n!r}")
        return n

    def _draws(self, n: int, seed: int, stdevs: float) -> tuple[Tensor, Tensor, Tensor]:
        """The seed's sequence of (baseline index ``(n,)``, α ``(n,)``, noise ``(n, F)``), shared by all records."""
        _load_torch()
        import torch

        gen = torch.Generator().manual_seed(seed)
        idx = torch.multinomial(self._w, n, replacement=True, generator=gen)
        alpha = torch.rand(n, generator=gen, dtype=torch.float64)
        noise = torch.randn(n, self.n_features, generator=gen, dtype=torch.float64) * stdevs
        return idx, alpha, noise

    # exact ---------------------------------------------------------------------------------------------------------

    def _require_folded(self) -> Folded:
        if self._folded is None:
            raise ValueError(f"method='exact' is not available for this model: {self._fold_error}")
        return self._folded

    def _require_net(self) -> PiecewiseLinearNet:
        """The torch fold (loads torch), for the torch estimators and the benchmarks."""
        self._require_folded()
        net = self._net
        assert net is not None
        return net

    def _exact_numpy(self, x: np.ndarray, output: Output) -> np.ndarray:
        """``(N, F) -> (N, F)`` exact attributions of a ``folded`` engine without torch: the compiled kernel for
        the logit, the piece enumeration in numpy (:func:`path_integrals_by_pieces_np`) otherwise."""
        folded = self._require_folded()
        if self._kernel is not None and output == "logit":
            return self._kernel.attributions(x)
        rows = []
        for row in x:
            integrals = path_integrals_by_pieces_np(folded, row, self._bn, output)[0]
            rows.append(((row[None, :] - self._bn) * integrals * self._wn[:, None]).sum(0))
        return np.stack(rows) if rows else np.zeros((0, self.n_features))

    def _exact_attributions(self, x: Tensor, output: Output) -> Tensor:
        """``(N, F) -> (N, F)`` exact attributions ``Σ_k w_k (x − b_k) ⊙ ∫∇f``, one record at a time."""
        _load_torch()
        import torch

        self._require_folded()
        if self._numpy_fold or (self._kernel is not None and output == "logit"):
            return torch.from_numpy(self._exact_numpy(x.numpy(), output))
        net = self._require_net()
        rows = []
        for row in x:
            integrals = path_integrals_by_pieces(net, row, self._b, output)[0]
            rows.append(((row[None, :] - self._b) * integrals * self._w[:, None]).sum(0))
        return _stack(rows, self.n_features)

    def _exact(self, x: Tensor, output: Output, n: int, seed: int, stdevs: float) -> tuple[Tensor, Tensor]:
        _load_torch()
        import torch

        self._require_folded()
        with torch.inference_mode():
            if stdevs == 0:
                attr = self._exact_attributions(x, output)
                return attr, torch.zeros_like(attr)
            _, _, noise = self._draws(n, seed, stdevs)
            attrs, ses = [], []
            for row in x:
                per_draw = self._exact_attributions(row[None, :] + noise, output)  # (n, F): one row per draw
                attrs.append(per_draw.mean(0))
                ses.append(per_draw.std(0) / math.sqrt(n))
            return _stack(attrs, self.n_features), _stack(ses, self.n_features)

    # gradient-based estimators -------------------------------------------------------------------------------------

    def _grad_fn(self, output: Output, *, autograd: bool) -> GradFn:
        """``(R, F) float64 -> (R, F)``: gradient of the output at each point, by the folded net's masks or by
        autograd through a float64 copy of the model (any differentiable model)."""
        _load_torch()
        import torch

        net = self._net
        if net is not None and not autograd:

            def folded(z: Tensor) -> Tensor:
                val, g = net.logit_and_grad(z)
                if output == "probability":
                    s = torch.sigmoid(val)
                    return g * (s * (1 - s))[:, None]
                return g

            return folded

        model = self._model64

        def by_autograd(z: Tensor) -> Tensor:
            with torch.inference_mode(False), torch.enable_grad():
                zz = z.clone().requires_grad_(True)
                val = model(zz).reshape(-1)
                if output == "probability":
                    val = torch.sigmoid(val)
                (g,) = torch.autograd.grad(val.sum(), zz)
            return g

        return by_autograd

    def _grads_chunked(self, fn: GradFn, z: Tensor) -> Tensor:
        """Gradients at ``(R, F)`` points in blocks of ``chunk_size`` rows (block boundaries depend on R only)."""
        import torch

        if z.shape[0] <= self.chunk_size:
            return fn(z)
        return torch.cat([fn(c) for c in torch.split(z, self.chunk_size)])

    def _sampled(self, x: Tensor, output: Output, n: int, seed: int, stdevs: float) -> tuple[Tensor, Tensor]:
        """Captum's estimator with the seed's draws, record by record: ``(N, F)`` means and standard errors."""
        _load_torch()
        import torch

        idx, alpha, noise = self._draws(n, seed, stdevs)
        fn = self._grad_fn(output, autograd=self._net is None)
        bsel = self._b[idx]  # (n, F)
        attrs, ses = [], []
        shift = noise - bsel  # (n, F): x + ε − b = x + shift
        for row in x:
            diff = shift + row
            contrib = diff * self._grads_chunked(fn, torch.addcmul(bsel, alpha[:, None], diff))  # (n, F) per sample
            attrs.append(contrib.mean(0))
            ses.append(contrib.std(0) / math.sqrt(n))
        return _stack(attrs, self.n_features), _stack(ses, self.n_features)

    def _quadrature(self, x: Tensor, output: Output, n: int) -> tuple[Tensor, Tensor]:
        """Gauss–Legendre in α for every baseline, autograd gradients: ``(N, F)`` attributions, zero SE."""
        _load_torch()
        import torch

        nodes, weights = np.polynomial.legendre.leggauss(n)
        alpha = torch.as_tensor((nodes + 1.0) / 2.0)
        qw = torch.as_tensor(weights / 2.0)
        fn = self._grad_fn(output, autograd=True)
        k, f = self._b.shape
        attrs = []
        for row in x:
            diff = row[None, :] - self._b  # (K, F)
            pts = (self._b[:, None, :] + alpha[None, :, None] * diff[:, None, :]).reshape(k * n, f)
            g = self._grads_chunked(fn, pts).reshape(k, n, f)
            integral = (g * qw[None, :, None]).sum(1)  # (K, F)
            attrs.append((diff * integral * self._w[:, None]).sum(0))
        attr = _stack(attrs, f)
        return attr, torch.zeros_like(attr)


def _stack(rows: list[Tensor], f: int) -> Tensor:
    _load_torch()
    import torch

    if not rows:
        return torch.zeros(0, f, dtype=torch.float64)
    return torch.stack(rows)


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
