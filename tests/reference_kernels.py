"""Reference kernels kept outside the service: implementations the service no longer runs, against which the tests
and the benchmark check and time the current ones.

``path_integrals_fast`` is the exact estimator's earlier kernel: dense prefix sums in torch over all units and
knots (``O(K·H1·H2)`` per record). The service now uses the event-driven C kernel
(:class:`service.engine.exact_kernel.ExactKernel`); ``tests/test_explain.py`` checks both against the piece
enumeration, and ``scripts/bench_engine.py`` times the C kernel against this one (it imports this file through
``sys.path``).
"""

from __future__ import annotations

import math
import threading
from typing import cast

import numpy as np
import torch
from torch import Tensor

from service.engine.gradient_shap import PiecewiseLinearNet

__all__ = ["path_integrals_fast"]


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
