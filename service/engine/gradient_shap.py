"""The GradientSHAP engine: exact, sampled, quadrature and Captum estimators of one estimand.

Estimand (Captum's GradientShap, ``shap.GradientExplainer``'s "expected gradients")::

    φ(x) = E_{b ~ baselines, weighted} E_{α ~ U(0,1)} E_ε [ (x + ε − b) ⊙ ∇f(b + α (x + ε − b)) ],   ε ~ N(0, stdevs² I)

with ``f`` the model's logit (``output="logit"``) or ``sigmoid(logit)`` (``output="probability"``). Without noise
the attributions add up to ``f(x) − E_b f(b)`` (completeness) when the expectation over α is computed exactly.

Estimators (``method``):

- ``"exact"`` (default): the model in eval mode is piecewise linear in its input (Linear, ReLU, BatchNorm1d and
  Dropout folded into affine maps), so along each straight path ``b → x`` the gradient is constant between the
  points where a hidden unit changes sign and the α-integral is a finite sum. For two hidden layers (the logit),
  :class:`service.engine.exact_kernel.ExactKernel` computes it event by event in compiled code (about 0.2 ms per
  record with 64 baselines); :func:`path_integrals_fast` is the earlier dense prefix-sum formulation in torch
  (kept as a reference and a benchmark baseline); :func:`path_integrals_by_pieces` enumerates every linear piece
  (any depth; also the probability output). Completeness gap ~1e-15 in float64. Raises ``ValueError`` for
  models it cannot fold.
- ``"sampled"``: Captum's Monte-Carlo estimator (one weighted random baseline, one α and one noise draw per
  sample), with draws made from ``seed`` alone and shared by every record.
- ``"quadrature"``: Gauss–Legendre nodes in α for every baseline, autograd gradients; any differentiable model.
- ``"captum"``: ``captum.attr.GradientShap`` itself (the reference), seeded under a lock, record by record.

Reproducibility: a record's numbers depend only on (record, settings, seed), never on its neighbours or its
position in the batch. Random draws (baseline index, α, noise) come from a generator seeded with ``seed`` and are
the same for every record; every estimator computes one record at a time with tensors whose shapes depend on
that record and the settings only (BLAS rounding depends on shapes, so batching records into one product would
break bitwise reproducibility), or, in the compiled kernel, with fixed-order loops. ``f(x)`` is evaluated without
BLAS for the same reason. Memory: one record's
working set at a time (see :class:`GradientShapEngine`), so peak memory does not grow with the batch size.

Performance (``scripts/bench_engine.py``, 2-core shared machine, K = 64 baselines): exact ~0.2 ms per record in
the compiled kernel, which releases the GIL; the torch estimators run many medium-sized tensor operations, and
with 2 torch threads each one synchronises both cores, which stalls badly when another process holds a core.
Serve with ``torch.set_num_threads(1)`` per process.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from service.contract import DEFAULT_N_SAMPLES, MAX_N_SAMPLES, METHODS, MIN_N_SAMPLES, OUTPUTS, Method, Output
from service.engine.exact_kernel import ExactKernel
from service.model.nn import BinaryClassification, CalibratedClassification

__all__ = [
    "DEFAULT_N_SAMPLES",
    "MAX_N_SAMPLES",
    "Explanation",
    "GradientShapEngine",
    "Method",
    "Output",
    "PiecewiseLinearNet",
    "fold_piecewise_linear",
    "path_integrals_by_pieces",
    "path_integrals_fast",
]

_CAPTUM_LOCK = threading.Lock()  # Captum draws from the global RNGs: seed-and-call must be atomic


# ---------------------------------------------------------------------------------------------------------------
# The model as a composition of affine maps and ReLUs
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PiecewiseLinearNet:
    """``f(z) = A_L ∘ relu ∘ A_{L-1} ∘ … ∘ relu ∘ A_0 (z)``: affine maps ``A_l(h) = W_l h + c_l`` in float64.

    ``weights[l]`` is ``(H_{l+1}, H_l)`` with ``H_0 = F`` and ``H_{L+1} = 1``; ``biases[l]`` is ``(H_{l+1},)``.
    ``L = len(weights) - 1`` is the number of hidden (ReLU) layers. Built by :func:`fold_piecewise_linear`.
    """

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]

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
                h = torch.relu(h)
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
                h = torch.relu(h)
            h = (h[:, None, :] * w[None]).sum(-1) + c
        return h[:, 0]

    def logit_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(R, F) -> ((R,), (R, F))``: logit and its input gradient (masks times weights, no autograd)."""
        masks = []
        h = z
        for i in range(self.depth):
            pre = torch.addmm(self.biases[i], h, self.weights[i].T)
            masks.append((pre > 0).to(z.dtype))
            h = pre.mul_(masks[-1])
        out = torch.addmm(self.biases[-1], h, self.weights[-1].T)[:, 0]
        g = self.weights[-1].expand(z.shape[0], -1)
        for i in range(self.depth - 1, -1, -1):
            g = (g * masks[i]) @ self.weights[i]
        return out, g


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm1d as ``y = s ⊙ x + t`` (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "BatchNorm1d without running statistics (track_running_stats=False) normalises each batch by its "
            "own statistics: the model is not a per-record function and cannot be folded"
        )
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    s = 1.0 / torch.sqrt(var + bn.eps)
    t = -mean * s
    if bn.weight is not None:
        s = s * bn.weight.detach().double()
        t = t * bn.weight.detach().double()
    if bn.bias is not None:
        t = t + bn.bias.detach().double()
    return s, t


def _logit_affine(a: float, b: float) -> nn.Linear:
    """``z ↦ a·z + b`` as a float64 ``Linear(1, 1)``: folding it scales the last layer by ``a`` and shifts it by
    ``b`` in float64 (``a·w3``, ``a·b3 + b``); the identity (1, 0) folds to the same numbers bitwise."""
    lin = nn.Linear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.fill_(a)
        lin.bias.fill_(b)
    return lin


def _flatten_modules(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, CalibratedClassification) and type(model).forward is CalibratedClassification.forward:
        c = model
        layers = [c.layer_1, c.relu, c.batchnorm1, c.layer_2, c.relu, c.batchnorm2, c.dropout, c.layer_out]
        return [*layers, _logit_affine(c.calibration.a, c.calibration.b)]
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
    if isinstance(model, nn.Linear | nn.ReLU | nn.BatchNorm1d | nn.Dropout | nn.Identity):
        return [model]
    raise ValueError(
        "the exact estimator needs a ReLU MLP it can fold (service.model.nn.BinaryClassification or an "
        f"nn.Sequential of Linear/ReLU/BatchNorm1d/Dropout); got {type(model).__name__}. "
        "Use method='quadrature' or 'sampled'."
    )


def fold_piecewise_linear(model: nn.Module) -> PiecewiseLinearNet:
    """Fold an eval-mode ReLU MLP into affine maps and ReLUs (BatchNorm and Dropout are affine in eval mode).

    Accepts :class:`service.model.nn.BinaryClassification` (with its own ``forward``) and ``nn.Sequential`` of
    ``Linear``, ``ReLU``, ``BatchNorm1d`` (with running statistics), ``Dropout`` and ``Identity``, ending in one
    output. Raises ``ValueError`` naming the obstacle for anything else (e.g. ``Tanh``): such models are not
    piecewise linear, or not in a form this function can prove to be.
    """
    mods = _flatten_modules(model)
    width: int | None = None
    w: Tensor | None = None  # current affine map since the last ReLU (None = identity)
    c: Tensor | None = None
    weights: list[Tensor] = []
    biases: list[Tensor] = []

    def close() -> None:
        nonlocal w, c
        assert width is not None
        weights.append(w if w is not None else torch.eye(width, dtype=torch.float64))
        biases.append(c if c is not None else torch.zeros(width, dtype=torch.float64))
        w, c = None, None

    for mod in mods:
        if isinstance(mod, nn.Linear):
            if width is not None and mod.in_features != width:
                raise ValueError(f"Linear expects {mod.in_features} inputs after a layer of width {width}")
            width = width if width is not None else mod.in_features
            lw = mod.weight.detach().double()
            lb = mod.bias.detach().double() if mod.bias is not None else torch.zeros(mod.out_features).double()
            w = lw if w is None else lw @ w
            c = lb if c is None else lw @ c + lb
            width = mod.out_features
        elif isinstance(mod, nn.BatchNorm1d):
            if width is None or mod.num_features != width:
                raise ValueError(f"BatchNorm1d({mod.num_features}) does not follow a layer of that width")
            s, t = _bn_affine(mod)
            w = torch.diag(s) if w is None else s[:, None] * w
            c = t if c is None else s * c + t
        elif isinstance(mod, nn.ReLU):
            if width is None:
                raise ValueError("a ReLU before the first Linear layer is not supported")
            close()
        elif isinstance(mod, nn.Dropout | nn.Identity):
            continue  # identity in eval mode
        else:
            raise ValueError(
                f"{type(mod).__name__} is not piecewise linear (or not supported by the exact estimator); "
                "use method='quadrature' or 'sampled'"
            )
    if width is None:
        raise ValueError("the model has no Linear layer")
    close()
    if weights[-1].shape[0] != 1:
        raise ValueError(f"the model must return one logit per row, this one returns {weights[-1].shape[0]}")
    return PiecewiseLinearNet(tuple(x.contiguous() for x in weights), tuple(x.contiguous() for x in biases))


# ---------------------------------------------------------------------------------------------------------------
# Exact path integrals
# ---------------------------------------------------------------------------------------------------------------


def _sigmoid_secant(a: Tensor, b: Tensor) -> Tensor:
    """``(σ(b) − σ(a)) / (b − a)`` element-wise, ``σ'(a)`` where ``a == b``; no cancellation or overflow.

    Uses ``σ(hi) − σ(lo) = σ(hi) σ(−lo) (1 − e^{−(hi−lo)})`` with ``lo ≤ hi`` (the secant is symmetric).
    """
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


class _Workspace:
    """Reusable scratch buffers (one set per thread). The exact kernel's large temporaries (MBs per record)
    would otherwise be returned to the OS by malloc after every record and page-faulted back in for the next,
    which made float64 4-5x slower than its arithmetic."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """A contiguous ``shape`` view of buffer ``name`` (grown when too small); contents are undefined."""
        n = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < n:
            buf = self.buffers[name] = torch.empty(n, dtype=self.dtype)
        return buf[:n].view(shape)


class _FastExact:
    """Precomputed, baseline-only quantities of :func:`path_integrals_fast` for a two-hidden-layer net."""

    def __init__(self, net: PiecewiseLinearNet, baselines: Tensor, dtype: torch.dtype) -> None:
        if net.depth != 2:
            raise ValueError(f"the fast exact kernel needs two hidden layers, this model has {net.depth}")
        w1, w2, w3 = (w.to(dtype) for w in net.weights)
        b1, b2, _ = (c.to(dtype) for c in net.biases)
        self.dtype = dtype
        self.w1 = w1  # (H1, F)
        self.w2 = w2  # (H2, H1)
        self.v = (w2.T * w3[0][None, :]).contiguous()  # (H1, H2): V_ij = W2_ji w3_j
        self.w2_vt = torch.cat([w2, self.v.T], 0).contiguous()  # (2·H2, H1): columns gathered once per record
        self.b = baselines.to(dtype)  # (K, F)
        db = (self.b[:, None, :] * w1[None]).sum(-1)  # (K, H1): W1 b
        self.db = db
        self.ab = db + b1  # layer-1 pre-activations at the baselines
        self.m0 = self.ab > 0
        m0f = self.m0.to(dtype)
        self.m0f = m0f
        self.h0t = ((torch.relu(self.ab)[:, None, :] * w2[None]).sum(-1) + b2).T.contiguous()  # (H2, K) at α = 0
        self.tiny = torch.finfo(dtype).tiny
        self.zero = torch.zeros(baselines.shape[0], 1, dtype=dtype)
        self.one = torch.ones(baselines.shape[0], 1, dtype=dtype)
        self.np_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.w1_np, self.db_np, self.ab_np = (a.numpy() for a in (self.w1, self.db, self.ab))
        self.m0_np, self.m0f_np = self.m0.numpy(), self.m0f.numpy()
        self.zero_np, self.one_np = self.zero.numpy(), self.one.numpy()
        self._local = threading.local()

    def _workspace(self) -> _Workspace:
        ws = getattr(self._local, "ws", None)
        if ws is None:
            ws = self._local.ws = _Workspace(self.dtype)
        return cast(_Workspace, ws)

    def __call__(self, x: Tensor) -> Tensor:
        """``(F,) -> (K, F)`` gradient integrals along the paths from every baseline to one record.

        One record at a time: every tensor's shape and value then depend on that record only, so BLAS products
        are safe for reproducibility (their blocking, hence rounding, depends on the shapes). The large arrays
        are laid out ``(H2, K, knots)`` so that prefix sums run along the contiguous last axis.
        """
        with torch.inference_mode():  # the reused buffers are inference tensors: always work on them in that mode
            return self._integrals(x)

    def _integrals(self, x: Tensor) -> Tensor:
        k, h2 = self.ab.shape[0], self.w2.shape[0]
        # small (K, H1) bookkeeping in numpy: lower per-call overhead, and argsort is ~8x faster than torch.sort
        d_np = self.w1_np @ x.numpy().astype(self.np_dtype) - self.db_np  # (K, H1) layer-1 slope along each path
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -self.ab_np / d_np  # α where each layer-1 unit changes sign
            toggle = np.where(self.m0_np, d_np < 0, d_np > 0) & (t < 1)
        key = np.where(toggle, t, 2.0)
        order = np.argsort(key, axis=1)
        e = int(toggle.sum(1).max())  # units sorted after the last toggle never change: no segments for them
        oe_np = order[:, :e]
        ke = np.take_along_axis(key, oe_np, 1)
        seg_np = np.diff(np.concatenate([self.zero_np, np.minimum(ke, 1.0), self.one_np], 1), axis=1)
        m0s_np = np.take_along_axis(self.m0f_np, oe_np, 1)  # (K, e) initial state of the sorted units
        coef_np = np.take_along_axis(d_np, oe_np, 1) * (1.0 - 2.0 * m0s_np) * (ke < 2)  # ± slope change at each knot
        d, seg, m0s, coef, oe = (torch.from_numpy(a) for a in (d_np, seg_np, m0s_np, coef_np, oe_np))
        ws = self._workspace()
        cols = ws.take("cols", (2 * h2, k, e))  # W2[:, i] and V[i, :] of the sorted units i
        torch.gather(self.w2_vt, 1, oe.reshape(1, -1).expand(2 * h2, -1), out=cols.view(2 * h2, k * e))
        # slope of the layer-2 pre-activations on each layer-1 segment: S_0, then rank-1 updates at each knot
        slope = ws.take("slope", (h2, k, e + 1))
        slope[:, :, 0] = self.w2 @ (self.m0f * d).T
        torch.mul(cols[:h2], coef, out=slope[:, :, 1:])
        slope.cumsum_(2)
        # layer-2 pre-activations at the knots (continuous, piecewise linear in α)
        h = ws.take("h", (h2, k, e + 2))
        h[:, :, 0] = self.h0t
        torch.mul(slope, seg, out=h[:, :, 1:])
        h.cumsum_(2)
        # length of the part of each segment where a layer-2 unit is active: len·(u⁺ + v⁺)/(|u| + |v|)
        a = torch.abs(h, out=ws.take("a", (h2, k, e + 2)))
        den = torch.add(a[:, :, :-1], a[:, :, 1:], out=ws.take("den", (h2, k, e + 1))).add_(self.tiny)
        p = h.clamp_(min=0)
        cum = torch.add(p[:, :, :-1], p[:, :, 1:], out=ws.take("a", (h2, k, e + 1)))  # a is no longer needed
        cum.div_(den).mul_(seg).cumsum_(2)  # (H2, K, e+1) active time of each layer-2 unit up to each knot
        total = cum[:, :, e]  # (H2, K) total active time of each layer-2 unit
        # g1_i = Σ_j V_ij M_ij with M_ij the time layer-1 unit i and layer-2 unit j are both active. Unit i is
        # active on a prefix [0, t_i] (starts active) or a suffix [t_i, 1] (starts inactive) of the path, or
        # all along / never if it does not toggle: M_ij = cum_j(t_i), total_j − cum_j(t_i), total_j or 0.
        vt = total.T @ self.v.T  # (K, H1) Σ_j V_ij total_j
        prod = torch.mul(cols[h2:], cum[:, :, :e], out=ws.take("slope", (h2, k, e)))
        prefix = prod.sum(0)  # (K, e) Σ_j V_ij cum_j(t_i) for the sorted units
        g1 = vt * self.m0f
        g1.scatter_(1, oe, prefix.mul_(2.0 * m0s - 1.0).add_(torch.gather(vt, 1, oe).mul_(1.0 - m0s)))
        return g1 @ self.w1  # (K, F)


def path_integrals_fast(net: PiecewiseLinearNet, x: Tensor, baselines: Tensor) -> Tensor:
    """Exact logit-gradient integrals along every path, for a two-hidden-layer ReLU net, without enumerating pieces.

    With ``f(z) = w3·relu(W2 relu(W1 z + b1) + b2) + b3`` and the path ``z(α) = b + α(x − b)``, the layer-1
    pre-activations are linear in α; sorting their sign changes ``t_i`` gives segments with constant layer-1
    masks, on which the layer-2 pre-activations ``h2`` are linear (obtained at the knots by prefix sums of rank-1
    slope updates). The part of segment ``k`` where unit ``j`` is active has length
    ``L_kj = len_k (h2⁺(start) + h2⁺(end)) / (|h2(start)| + |h2(end)|)``. Since layer-1 unit ``i`` is active on
    a prefix or a suffix of the path, its co-activation time with unit ``j``, ``M_ij = Σ_k m1_ki L_kj``, is a
    prefix sum of ``L``. Then ``∫∇f dα = W1ᵀ (Σ_j V_ij M_ij)_i`` with ``V_ij = W2_ji w3_j``.

    Args:
        net: folded two-hidden-layer net.
        x: ``(N, F)`` records.
        baselines: ``(K, F)``.

    Returns:
        ``(N, K, F)`` float64 integrals. Cost ``O(N·K·H1·H2)`` time and memory; chunk the records for large N.
    """
    kernel = _FastExact(net, baselines.double(), torch.float64)
    return torch.stack([kernel(row) for row in x.double()])


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


GradFn = Callable[[Tensor], Tensor]


class GradientShapEngine:
    """GradientSHAP for one model and one weighted baseline distribution.

    Args:
        model: ``(N, F)`` model-space float32 inputs → ``(N, 1)`` logits. Put in eval mode here (Captum never
            does; BatchNorm in train mode would make a record depend on its neighbours). Its weights are read
            once, at construction.
        baselines: ``(K, F)`` model-space points.
        baseline_weights: ``(K,)`` nonnegative, normalised to sum 1; ``None`` = uniform.
        chunk_size: maximum number of points per model or gradient evaluation (sampled and quadrature
            estimators, ``f(x)`` without the compiled kernel). Memory does not grow with the batch: the compiled
            exact kernel works one record at a time in a few kB of scratch (its constants: ``K·H2·F`` numbers,
            256 kB for K = 64), the piece enumeration holds one record's pieces, and the other estimators hold
            one record's ``n_samples`` (× K for quadrature) points and evaluate them ``chunk_size`` at a time.
            Only the ``(N, F)`` results grow with N.
    """

    def __init__(
        self,
        model: nn.Module,
        baselines: Tensor | np.ndarray,
        baseline_weights: Tensor | np.ndarray | None = None,
        *,
        chunk_size: int = 2048,
    ) -> None:
        model.eval()
        self._model = model
        b = torch.as_tensor(baselines).detach().to(torch.float64).cpu()
        if b.ndim != 2 or b.shape[0] < 1:
            raise ValueError(f"baselines must be a non-empty (K, F) tensor, got shape {tuple(b.shape)}")
        if not bool(torch.isfinite(b).all()):
            raise ValueError("baselines contain NaN or infinite values")
        if baseline_weights is None:
            w = torch.full((b.shape[0],), 1.0 / b.shape[0], dtype=torch.float64)
        else:
            w = torch.as_tensor(baseline_weights).detach().to(torch.float64).cpu().reshape(-1)
            if w.shape[0] != b.shape[0]:
                raise ValueError(f"{w.shape[0]} baseline weights for {b.shape[0]} baselines")
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
                raise ValueError("baseline weights must be finite, nonnegative and not all zero")
            w = w / w.sum()
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self._b, self._w = b, w
        self.chunk_size = chunk_size
        try:
            self._net: PiecewiseLinearNet | None = fold_piecewise_linear(model)
            self._fold_error = ""
        except ValueError as exc:
            self._net, self._fold_error = None, str(exc)
        if self._net is not None and self._net.n_features != self.n_features:
            raise ValueError(f"model takes {self._net.n_features} features, baselines have {self.n_features}")
        self._model64 = copy.deepcopy(model).double().eval()
        for p in self._model64.parameters():
            p.requires_grad_(False)
        self._kernel = (
            ExactKernel(
                tuple(t.numpy() for t in self._net.weights),
                tuple(t.numpy() for t in self._net.biases),
                b.numpy(),
                w.numpy(),
            )
            if self._net is not None and self._net.depth == 2 and _finite(self._net)
            else None
        )  # non-finite weights take the torch paths, where NaN propagates (and the service's warm-up refuses it)
        fb = self._f64(b)
        self._base = {
            "logit": float((w * fb).sum()),
            "probability": float((w * torch.sigmoid(fb)).sum()),
        }

    # -- properties --------------------------------------------------------------------------------------------

    @property
    def n_features(self) -> int:
        return int(self._b.shape[1])

    @property
    def baselines(self) -> np.ndarray:
        """``(K, F)`` float64 copy of the baseline points."""
        return self._b.numpy().copy()

    @property
    def baseline_weights(self) -> np.ndarray:
        """``(K,)`` float64 normalised weights."""
        return self._w.numpy().copy()

    @property
    def is_piecewise_linear(self) -> bool:
        """Whether the exact estimator is available for this model."""
        return self._net is not None

    # -- evaluation of f -----------------------------------------------------------------------------------------

    def _f64(self, z: Tensor) -> Tensor:
        """``(R, F) float64 -> (R,)`` logits in float64, a row's value independent of the batch when folded."""
        if self._kernel is not None:
            return torch.from_numpy(self._kernel.logits(z.numpy()))
        with torch.inference_mode():
            if self._net is not None:
                step = max(1, self.chunk_size // max(w.shape[0] for w in self._net.weights))
                return torch.cat([self._net.logit_rowwise(c) for c in torch.split(z, step)]) if len(z) else z[:, 0]
            return torch.cat([self._model64(z[i : i + 1]).reshape(-1) for i in range(z.shape[0])])

    def base_value(self, output: Output = "logit") -> float:
        """``E_b[f(b)]`` over the weighted baselines, ``f`` = logit or probability."""
        _check_output(output)
        return self._base[output]

    def predict_logit(self, x: Tensor | np.ndarray) -> np.ndarray:
        """``(N, F) -> (N,)`` float64 logits (evaluated in float64 from the model's weights, as in :meth:`explain`)."""
        return self._f64(self._as_input(x)).numpy()

    def _as_input(self, x: Tensor | np.ndarray) -> Tensor:
        t = torch.as_tensor(x).detach().to(torch.float64).cpu()
        if t.ndim == 1:
            t = t[None, :]
        if t.ndim != 2 or t.shape[1] != self.n_features:
            raise ValueError(f"x must be (N, {self.n_features}), got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("x contains NaN or infinite values")
        return t

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
            method: ``"exact"`` | ``"sampled"`` | ``"quadrature"`` | ``"captum"`` (see the module docstring).
            n_samples: samples (sampled, captum), Gauss–Legendre nodes (quadrature) or noise draws (exact with
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
        xt = self._as_input(x)
        n = self._resolve_n(method, n_samples, stdevs)
        if self._kernel is not None and method == "exact" and output == "logit" and stdevs == 0:
            attributions, logits = self._kernel.explain(xt.numpy())  # both in one call, as the runtime does
            return self.exact_explanation(attributions, logits, seed=seed)
        if method == "exact":
            attr, se = self._exact(xt, output, n, seed, stdevs)
        elif method == "sampled":
            attr, se = self._sampled(xt, output, n, seed, stdevs)
        elif method == "quadrature":
            if stdevs > 0:
                raise ValueError("quadrature does not take stdevs > 0; use method='exact' or 'sampled' with noise")
            attr, se = self._quadrature(xt, output, n)
        else:
            attr, se = self._captum(xt, output, n, seed, stdevs)
        fx = self._f64(xt)
        value = fx if output == "logit" else torch.sigmoid(fx)
        return self._assemble(
            attr.double().numpy(), se.double().numpy(), value.numpy(), method, n, seed, output, stdevs
        )

    @property
    def compiled(self) -> ExactKernel | None:
        """The compiled exact kernel of the logit (two-hidden-layer ReLU nets with finite weights), or ``None``.

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
        gen = torch.Generator().manual_seed(seed)
        idx = torch.multinomial(self._w, n, replacement=True, generator=gen)
        alpha = torch.rand(n, generator=gen, dtype=torch.float64)
        noise = torch.randn(n, self.n_features, generator=gen, dtype=torch.float64) * stdevs
        return idx, alpha, noise

    # exact ---------------------------------------------------------------------------------------------------------

    def _require_net(self) -> PiecewiseLinearNet:
        if self._net is None:
            raise ValueError(f"method='exact' is not available for this model: {self._fold_error}")
        return self._net

    def _exact_attributions(self, x: Tensor, output: Output) -> Tensor:
        """``(N, F) -> (N, F)`` exact attributions ``Σ_k w_k (x − b_k) ⊙ ∫∇f``, one record at a time."""
        net = self._require_net()
        if self._kernel is not None and output == "logit":
            return torch.from_numpy(self._kernel.attributions(x.numpy()))
        rows = []
        for row in x:
            integrals = path_integrals_by_pieces(net, row, self._b, output)[0]
            rows.append(((row[None, :] - self._b) * integrals * self._w[:, None]).sum(0))
        return _stack(rows, self.n_features)

    def _exact(self, x: Tensor, output: Output, n: int, seed: int, stdevs: float) -> tuple[Tensor, Tensor]:
        self._require_net()
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
        if z.shape[0] <= self.chunk_size:
            return fn(z)
        return torch.cat([fn(c) for c in torch.split(z, self.chunk_size)])

    def _sampled(self, x: Tensor, output: Output, n: int, seed: int, stdevs: float) -> tuple[Tensor, Tensor]:
        """Captum's estimator with the seed's draws, record by record: ``(N, F)`` means and standard errors."""
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

    # captum --------------------------------------------------------------------------------------------------------

    def captum_baselines(self, rows_per_unit_weight: int = 100) -> Tensor:
        """``(M, F)`` float32 rows whose *uniform* distribution approximates the weighted baselines (for Captum,
        which draws baselines uniformly): each baseline repeated ``≈ w_k · M`` times (largest remainders), with
        ``M = rows_per_unit_weight · K``. Exactly the baselines when the weights are uniform."""
        k = self._b.shape[0]
        if bool(torch.allclose(self._w, torch.full_like(self._w, 1.0 / k), rtol=0, atol=1e-12)):
            return self._b.float()
        m = rows_per_unit_weight * k
        raw = self._w.numpy() * m
        counts = np.floor(raw).astype(np.int64)
        short = m - int(counts.sum())
        counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
        return self._b.float().repeat_interleave(torch.as_tensor(counts), dim=0)

    def _captum(self, x: Tensor, output: Output, n: int, seed: int, stdevs: float) -> tuple[Tensor, Tensor]:
        from captum.attr import GradientShap, NoiseTunnel
        from captum.attr._core.gradient_shap import InputBaselineXGradient

        model = self._model

        def forward(z: Tensor) -> Tensor:
            out = model(z)
            return torch.sigmoid(out) if output == "probability" else out

        base = self.captum_baselines()
        gs = GradientShap(forward)
        var_tunnel = NoiseTunnel(InputBaselineXGradient(forward))
        attrs, ses = [], []
        with _CAPTUM_LOCK, _global_rng_restored():
            model.eval()
            for row in x:
                inp = row[None, :].float()
                _seed_global(seed)
                a = gs.attribute(inp, base, n_samples=n, stdevs=stdevs, target=None)
                _seed_global(seed)  # the same draws again, for the variance of the per-sample contributions
                var = var_tunnel.attribute(
                    inp,
                    nt_type="vargrad",
                    nt_samples=n,
                    stdevs=stdevs,
                    draw_baseline_from_distrib=True,
                    baselines=base,
                    target=None,
                )
                attrs.append(a.detach().double()[0])
                ses.append(torch.sqrt(var.detach().double()[0].clamp(min=0) / (n - 1)))
        return _stack(attrs, self.n_features), _stack(ses, self.n_features)


def _seed_global(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


class _global_rng_restored:  # noqa: N801 - used as a context manager
    """Save and restore torch's and numpy's global RNG states (the Captum path must not disturb callers)."""

    def __enter__(self) -> None:
        self._torch = torch.get_rng_state()
        self._np = np.random.get_state()

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self._torch)
        np.random.set_state(self._np)


def _stack(rows: list[Tensor], f: int, cat: bool = False) -> Tensor:
    if not rows:
        return torch.zeros(0, f, dtype=torch.float64)
    return torch.cat(rows) if cat else torch.stack(rows)


def _finite(net: PiecewiseLinearNet) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in (*net.weights, *net.biases))


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
