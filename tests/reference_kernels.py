"""Reference kernels kept outside the service: implementations the service no longer runs, against which the tests
and the benchmark check and time the current ones.

``TwoLayerKernel`` drives the compiled kernel of two hidden ReLU layers (``_exact.Model``), the service's kernel
until the general one (``_exact.Net``, any depth, leaky ReLUs) replaced it: the benchmark times the two in the same
run and the tests check that they give the same bits on two-hidden-layer ReLU networks.

``exact_gradient_shap`` computes the exact path integral independently of the service: from the torch modules
themselves (no folding), breakpoints found layer by layer along each straight path, the gradient of each linear
piece by autograd at its midpoint, all in float64.

``exact_gradient_shap_rational`` does the same in exact rational arithmetic (``fractions.Fraction``) for networks of
Linear layers and (leaky) ReLUs: no rounding anywhere, so ties between breakpoints and units exactly at 0 are
decided exactly; it also reports the paths that run inside a kink for a stretch (where the gradient is not
defined and any floating-point answer depends on rounding).

``path_integrals_fast`` is the exact estimator's earlier torch kernel: dense prefix sums in torch over all units and
knots (``O(K·H1·H2)`` per record). The service now uses the event-driven C kernel
(:class:`service.engine.exact_kernel.ExactKernel`); ``tests/engine/test_explain.py`` checks both against the piece
enumeration, and ``scripts/bench_engine.py`` times the C kernel against this one (it imports this file through
``sys.path``).
"""

from __future__ import annotations

import copy
import itertools
import math
import threading
from fractions import Fraction
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from service.engine import _exact
from service.engine.gradient_shap import PiecewiseLinearNet

__all__ = ["TwoLayerKernel", "exact_gradient_shap", "exact_gradient_shap_rational", "path_integrals_fast"]


class _Workspace:
    """Reusable scratch buffers (one set per thread): this kernel's large temporaries would otherwise be returned to
    the OS by malloc after every record and page-faulted back in for the next."""

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


def _c64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


class TwoLayerKernel:
    """The service's exact kernel before it took any depth: ``_exact.Model``, two hidden ReLU layers only.

    Kept, unchanged, as the reference the benchmark times the general kernel (``_exact.Net``) against and the
    tests compare its bits with. Exact logit-gradient attributions of a folded two-hidden-layer ReLU net against
    weighted baselines.

    Args:
        weights: ``(W1 (H1, F), W2 (H2, H1), w3 (1, H2))``, the folded affine maps (float64).
        biases: ``(b1 (H1,), b2 (H2,), b3 (1,))``.
        baselines: ``(K, F)``.
        baseline_weights: ``(K,)``, summing to 1.

    Everything that depends on the baselines only is computed here, once: ``W1 b_k``, the layer-1 state at
    ``α = 0``, the layer-2 values and masks at ``α = 0``, ``V m2(0)`` and ``P_k = W2 diag(m1_k(0)) W1``; the C
    object keeps its own copy of them and of the weights. Thread-safe: the constants are read-only and each call
    allocates its own scratch (a few kB).
    """

    def __init__(
        self,
        weights: tuple[np.ndarray, ...],
        biases: tuple[np.ndarray, ...],
        baselines: np.ndarray,
        baseline_weights: np.ndarray,
    ) -> None:
        if len(weights) != 3 or len(biases) != 3:
            raise ValueError(f"the compiled exact kernel needs two hidden layers, this model has {len(weights) - 1}")
        if not all(np.isfinite(a).all() for a in (*weights, *biases, baselines, baseline_weights)):
            raise ValueError("the compiled exact kernel needs finite weights and baselines")
        w1, w2, w3 = (_c64(w) for w in weights)
        b1, b2, b3 = (_c64(c) for c in biases)
        b = _c64(baselines)
        h1, f = w1.shape
        if w2.shape[1] != h1 or w3.shape != (1, w2.shape[0]) or b1.shape != (h1,) or b2.shape != (w2.shape[0],):
            raise ValueError("the weights and biases of the compiled exact kernel do not fit together")
        if b.ndim != 2 or b.shape[1] != f or np.shape(baseline_weights) != (b.shape[0],):
            raise ValueError(f"baselines must be (K, {f}) with K weights")
        self.n_features = f
        w3v = _c64(w3[0])
        db = _c64(b @ w1.T)  # (K, H1)
        ab = _c64(db + b1)  # layer-1 pre-activations at the baselines
        m0 = np.ascontiguousarray(ab > 0)
        v = w2.T * w3v[None, :]  # (H1, H2): V_ij = W2_ji w3_j
        h0 = _c64(np.maximum(ab, 0.0) @ w2.T + b2)  # (K, H2) layer-2 pre-activations at α = 0
        m0f = m0.astype(np.float64)
        self._model = _exact.Model(
            w1=w1,
            b1=b1,
            w2=w2,
            b2=b2,
            w3=w3v,
            b3=float(b3[0]),
            db=db,
            ab=ab,
            m0=m0,
            w2t=_c64(w2.T),  # (H1, H2): row i is column i of W2
            vt=_c64(v.T),  # (H2, H1): row j is column j of V
            h0=h0,
            u0=_c64((h0 > 0).astype(np.float64) @ v.T),  # (K, H1) V m2(0)
            p=_c64(np.einsum("ji,ki,if->kfj", w2, m0f, w1)),  # (K, F, H2) W2 diag(m1(0)) W1, transposed
            c=_c64((m0f * db) @ w2.T),  # (K, H2) W2 (m1(0) ⊙ W1 b)
            bw=_c64(baseline_weights),
            b=b,
        )

    def _rows(self, xs: np.ndarray) -> np.ndarray:
        x = _c64(xs)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"x must be (N, {self.n_features}), got shape {x.shape}")
        return x

    def attributions(self, xs: np.ndarray) -> np.ndarray:
        """``(N, F) -> (N, F)`` exact attributions of the logit, ``Σ_k w_k (x − b_k) ⊙ ∫₀¹ ∇f dα`` (the logits
        come along at little cost)."""
        return self.explain(xs)[0]

    def explain(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, F) -> ((N, F), (N,))``: attributions and logits in one C call (one release of the GIL),
        the same numbers as :meth:`attributions` and :meth:`logits`."""
        x = self._rows(xs)
        attr = np.empty_like(x)
        logit = np.empty(x.shape[0])
        self._model.explain(x, attr, logit)
        return attr, logit

    def logits(self, xs: np.ndarray) -> np.ndarray:
        """``(N, F) -> (N,)`` logits by fixed-order loops: a row's value is bitwise the same in any batch."""
        x = self._rows(xs)
        out = np.empty(x.shape[0])
        self._model.logits(x, out)
        return out


def _modules(net: nn.Module) -> list[nn.Module]:
    if type(net) is nn.Sequential:
        return [m for child in net for m in _modules(child)]
    return [net]


def exact_gradient_shap(net: nn.Sequential, x: np.ndarray, baselines: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(N, F)`` exact GradientSHAP attributions of the logit of an eval-mode ``nn.Sequential`` of Linear, ReLU,
    LeakyReLU, BatchNorm1d, Dropout and Identity layers, computed without the service's code.

    For each record and baseline ``b``: on the straight path ``b + α (x − b)`` the input of the first activation is
    linear in α; its sign changes (linear interpolation between the knots ``{0, 1}``) are knots. Between
    consecutive knots every activation below the next one is fixed, so the next activation's input is linear
    there: its sign changes between knots are new knots, and so on, layer by layer. On each piece between knots
    the gradient is constant: autograd at the piece's midpoint through a float64 copy of the network. The
    integral is the length-weighted sum over pieces; the attribution ``Σ_k w_k (x − b_k) ⊙ ∫∇f`` (``w``
    normalised here).
    """
    model = copy.deepcopy(net).double().eval()
    mods = _modules(model)
    known = nn.Linear | nn.ReLU | nn.LeakyReLU | nn.BatchNorm1d | nn.Dropout | nn.Identity
    if not all(isinstance(m, known) for m in mods):
        raise TypeError(f"the reference walks plain Sequentials of {known}, not {[type(m).__name__ for m in mods]}")
    acts = [i for i, m in enumerate(mods) if isinstance(m, nn.ReLU | nn.LeakyReLU)]
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()

    def activation_inputs(z: Tensor) -> list[Tensor]:
        inputs = []
        h = z
        for i, m in enumerate(mods):
            if i in acts:
                inputs.append(h)
            h = m(h)
        return inputs

    out = np.zeros((len(x), x.shape[1]))
    for r, row in enumerate(np.asarray(x, dtype=np.float64)):
        for k, base in enumerate(np.asarray(baselines, dtype=np.float64)):
            b = torch.from_numpy(base)
            d = torch.from_numpy(row) - b
            knots = np.array([0.0, 1.0])
            for layer in range(len(acts)):
                with torch.no_grad():
                    pre = activation_inputs(b + torch.from_numpy(knots)[:, None] * d)[layer].numpy()
                u, v = pre[:-1], pre[1:]
                seg, _unit = np.nonzero((u > 0) != (v > 0))
                uu, vv = u[(u > 0) != (v > 0)], v[(u > 0) != (v > 0)]
                new = knots[seg] + (knots[seg + 1] - knots[seg]) * (uu / (uu - vv))
                knots = np.unique(np.concatenate([knots, np.clip(new, 0.0, 1.0)]))
            length = np.diff(knots)
            mid = torch.from_numpy(0.5 * (knots[:-1] + knots[1:]))
            z = (b + mid[:, None] * d).requires_grad_(True)
            (grad,) = torch.autograd.grad(model(z).sum(), z)
            integral = (torch.from_numpy(length)[:, None] * grad).sum(0).numpy()
            out[r] += w[k] * (row - base) * integral
    return out


def exact_gradient_shap_rational(
    net: nn.Sequential, x: np.ndarray, baselines: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, F)`` exact GradientSHAP attributions of a ``nn.Sequential`` of Linear layers and (leaky) ReLUs in
    exact rational arithmetic (every float is a rational: nothing is rounded until the result), and an
    ``(N, K)`` bool array marking the paths on which some unit is exactly 0 over a stretch of positive length.

    Same walk as :func:`exact_gradient_shap`: the knots ``{0, 1}``, then each activation's sign changes between
    consecutive knots, layer by layer; on each piece the masks are read at its midpoint (``s > 0``: 1, else the
    negative slope, torch's convention at 0) and the gradient is the product of masked weights.
    """
    layers: list[tuple[list[list[Fraction]], list[Fraction]] | float] = []
    for mod in _modules(net):
        if isinstance(mod, nn.Linear):
            wt = [[Fraction(float(v)) for v in row] for row in mod.weight.detach().double().tolist()]
            bias = mod.bias.detach().double().tolist() if mod.bias is not None else [0.0] * mod.out_features
            layers.append((wt, [Fraction(float(v)) for v in bias]))
        elif isinstance(mod, nn.ReLU):
            layers.append(0.0)
        elif isinstance(mod, nn.LeakyReLU):
            layers.append(float(mod.negative_slope))
        else:
            raise TypeError(f"the rational reference takes Linear, ReLU and LeakyReLU only, not {type(mod).__name__}")

    def forward(z: list[Fraction]) -> tuple[list[list[Fraction]], list[Fraction]]:
        """The input of every activation, and the output."""
        inputs = []
        h = z
        for layer in layers:
            if isinstance(layer, float):
                inputs.append(h)
                slope = Fraction(layer)
                h = [v if v > 0 else slope * v for v in h]
            else:
                wt, bias = layer
                h = [sum((a * v for a, v in zip(row, h, strict=True)), bias[i]) for i, row in enumerate(wt)]
        return inputs, h

    def gradient(z: list[Fraction]) -> list[Fraction]:
        inputs, _ = forward(z)
        g: list[Fraction] | None = None  # ∂f/∂(current layer's output), back to front
        act = len(inputs)
        for layer in reversed(layers):
            if isinstance(layer, float):
                act -= 1
                assert g is not None
                slope = Fraction(layer)
                g = [gi if s > 0 else slope * gi for gi, s in zip(g, inputs[act], strict=True)]
            else:
                wt, _ = layer
                if g is None:
                    g = [Fraction(1)] * len(wt)
                g = [sum((wt[j][i] * g[j] for j in range(len(wt))), Fraction(0)) for i in range(len(wt[0]))]
        assert g is not None
        return g

    n_acts = sum(isinstance(layer, float) for layer in layers)
    w = [Fraction(float(v)) for v in np.asarray(weights, dtype=np.float64)]
    total = sum(w, Fraction(0))
    xs = [[Fraction(float(v)) for v in row] for row in np.asarray(x, dtype=np.float64)]
    bs = [[Fraction(float(v)) for v in row] for row in np.asarray(baselines, dtype=np.float64)]
    out = np.zeros((len(xs), len(xs[0]) if xs else 0))
    degenerate = np.zeros((len(xs), len(bs)), dtype=bool)
    for r, row in enumerate(xs):
        acc = [Fraction(0)] * len(row)
        for k, base in enumerate(bs):
            d = [xi - bi for xi, bi in zip(row, base, strict=True)]

            def point(t: Fraction, base: list[Fraction] = base, d: list[Fraction] = d) -> list[Fraction]:
                return [bi + t * di for bi, di in zip(base, d, strict=True)]

            knots = [Fraction(0), Fraction(1)]
            for layer in range(n_acts):
                pre = [forward(point(t))[0][layer] for t in knots]
                new = set(knots)
                for q in range(len(knots) - 1):
                    for u, v in zip(pre[q], pre[q + 1], strict=True):
                        if (u > 0) != (v > 0):
                            new.add(knots[q] + (knots[q + 1] - knots[q]) * (u / (u - v)))
                knots = sorted(new)
            integral = [Fraction(0)] * len(row)
            for t0, t1 in itertools.pairwise(knots):
                if t1 == t0:
                    continue
                mid = point((t0 + t1) / 2)
                if any(v == 0 for pre in forward(mid)[0] for v in pre):
                    degenerate[r, k] = True
                g = gradient(mid)
                integral = [a + (t1 - t0) * gi for a, gi in zip(integral, g, strict=True)]
            acc = [a + w[k] / total * di * gi for a, di, gi in zip(acc, d, integral, strict=True)]
        out[r] = [float(a) for a in acc]
    return out, degenerate
