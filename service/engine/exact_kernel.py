"""The compiled exact kernel: GradientSHAP path integrals of a network of affine maps and (leaky) ReLUs, event by
event, any depth and widths.

Model (folded, float64, :mod:`service.engine.piecewise`): ``f(z) = W_L act_{L−1}(… act_0(W_0 z + c_0) …) + c_L``
with ``act_l(s) = s`` for ``s > 0`` and ``a_l s`` otherwise (``a_l = 0``: ReLU). Along the path
``z(α) = b + α (x − b)`` the layer-0 pre-activations ``ab_i + α d_i`` are linear: unit ``i`` toggles at most once,
at ``t_i = −ab_i / d_i``. Between consecutive breakpoints of the layers below it, layer ``l``'s pre-activations are
linear in α, so each of its units changes sign at most once there, at a time found by linear interpolation.

The gradient is ``∇f = W_0ᵀ (m_0 ⊙ u)`` with ``u = ∂f/∂h_0`` piecewise constant and ``m_0`` the layer-0 masks
(1 or ``a_0``); its integral over α is::

    ∫₀¹ ∇f dα = W_0ᵀ g,   g_i = ∫ m_0i(α) u_i(α) dα,   U(t) = ∫₀ᵗ u(α) dα = A t − B,

where each change ``δu`` of ``u`` at a time ``τ`` adds ``δu`` to ``A`` and ``τ δu`` to ``B``. A layer-0 unit is
on a prefix or a suffix of the path (or all of it, or none), so ``g_i`` combines ``U_i(t_i)`` and ``U_i(1)``.

The walk is event-driven, layer by layer: the segments between layer-0 toggles are cut by the sign changes of
layer 1 (sorted by time, ties by unit), those by layer 2's, and so on up to the last hidden layer, whose sign
changes need no order (they only change ``u``). At a sign change of a unit of layer ``m`` the kernel updates, by
rank-1 steps, the pre-activation slopes of the layers above ``m`` and ``γ_l = ∂f/∂h_l`` of the layers below it
down to ``u``. The last hidden layer's changes ``δγ_{L−2} = ±(1 − a_{L−1}) V[j]`` (``V[j] = w_L[j] W_{L−1}[j, :]``)
are summed at layer ``L−2`` (``P = Σ δγ``, ``P_b = Σ τ δγ``) and never pushed down one by one: the true ``A`` is
``A_low + M P`` with ``M`` the map from layer ``L−2`` down to ``u`` through the current masks. When a mask of unit
``j`` at layer ``m`` changes, ``M`` changes by a rank-1 term, which the kernel folds into ``A_low`` (and ``B_low``)
along the same backward chain as the event's own change: it keeps ``γb_l = γ_l − (P pushed down to l)`` and uses
``δm γb_m[j]`` for ``A`` and ``δm (τ (γb_m[j] + q) − q_b)`` for ``B``, where ``q, q_b`` are ``P, P_b`` read through
the row ``j`` of the map above ``m`` (the column the slope update computes anyway). A layer-0 toggle reads its one
component of ``M P`` the same way; ``P`` goes down to layer 0 once per path, at its end. With two hidden layers the
kernel runs the two-layer kernel's loop with the slopes multiplied in where a mask changes (an exact
multiplication by 1 for ReLUs; about 29 toggles and 38 crossings per path on the Pima model): its answers are the
two-layer kernel's bits.

The arithmetic is C (``service/engine/_exact.c``, type ``Net``, built by ``pip install``), called without the GIL:
engine threads run it in parallel with the event loop and with each other. It is built without fast-math and
without fused multiply-add, so the compiler may not reorder a sum: a record's numbers are the same on every
machine, alone or in any batch (records are computed one by one with fixed-order loops; there is no BLAS here).
The earlier two-hidden-layer type ``Model`` stays in the extension as the benchmark's reference
(``tests/reference_kernels.py``).

This module computes the constants once per model and baselines and hands them, by keyword, to ``_exact.Net``,
which checks each one's type and size (naming the one that does not fit) and keeps its own copy; a call then
passes only the records and the output buffers (checked again, by name). There is no torch fallback for a missing
extension: the torch formulations differ from this kernel in the last bits and run an order of magnitude slower,
so a service or a ``gshap train`` without it would silently answer other numbers, slowly. Importing this module
without the built extension raises ``ModuleNotFoundError`` saying how to build it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BUILD_HINT = (
    "the compiled exact kernel (service.engine._exact, from service/engine/_exact.c) is not built: install the "
    "project with a C compiler and Python's headers, e.g. `pip install -e '.[server]'` (`make setup` in a "
    "checkout; after editing _exact.c run it again), or use the Docker image"
)

try:
    from service.engine import _exact
except ImportError as exc:  # no torch fallback, on purpose (see the module docstring)
    raise ModuleNotFoundError(BUILD_HINT, name="service.engine._exact") from exc

__all__ = ["BUILD_HINT", "MAX_HIDDEN_LAYERS", "ExactKernel", "net_constants"]

MAX_HIDDEN_LAYERS = 64  # NET_MAX_LAYERS in _exact.c


def _c64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def _act(z: np.ndarray, a: float) -> np.ndarray:
    return np.maximum(z, 0.0) if a == 0.0 else np.where(z > 0, z, a * z)


def _mask(z: np.ndarray, a: float) -> np.ndarray:
    return (z > 0).astype(np.float64) if a == 0.0 else np.where(z > 0, 1.0, a)


def net_constants(
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    baselines: np.ndarray,
    baseline_weights: np.ndarray,
    slopes: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``_exact.Net`` for a folded network and its weighted baselines (see
    :class:`ExactKernel` for the arguments). Raises ``ValueError`` when they do not fit together."""
    depth = len(weights) - 1
    slopes = [0.0] * depth if slopes is None else [float(a) for a in slopes]
    if depth < 0 or len(biases) != depth + 1 or len(slopes) != depth:
        raise ValueError(f"{len(weights)} weights, {len(biases)} biases and {len(slopes)} slopes do not fit")
    if depth > MAX_HIDDEN_LAYERS:
        raise ValueError(f"the compiled exact kernel takes at most {MAX_HIDDEN_LAYERS} hidden layers, got {depth}")
    arrays = (*weights, *biases, baselines, baseline_weights, np.asarray(slopes, dtype=np.float64))
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("the compiled exact kernel needs finite weights, slopes and baselines")
    w = [_c64(x) for x in weights]
    c = [_c64(x).reshape(-1) for x in biases]
    if depth == 0:  # a linear model: one hidden unit per output with slope 1 (the identity), then the identity
        w, c, slopes, depth = [w[0], np.ones((1, 1))], [c[0], np.zeros(1)], [1.0], 1
    b = _c64(baselines)
    f = w[0].shape[1] if w[0].ndim == 2 else -1
    fits = all(x.ndim == 2 for x in w) and all(w[i + 1].shape[1] == w[i].shape[0] for i in range(depth))
    fits = fits and w[-1].shape[0] == 1 and all(ci.shape == (wi.shape[0],) for wi, ci in zip(w, c, strict=True))
    if not fits:
        raise ValueError("the weights and biases of the compiled exact kernel do not fit together")
    if b.ndim != 2 or b.shape[1] != f or np.shape(baseline_weights) != (b.shape[0],):
        raise ValueError(f"baselines must be (K, {f}) with K weights")
    k = b.shape[0]
    db = _c64(b @ w[0].T)  # (K, H_0)
    ab = _c64(db + c[0])  # layer-0 pre-activations at the baselines
    m0 = np.ascontiguousarray(ab > 0)
    h0: list[np.ndarray] = []  # layer l = 1..L-1 pre-activations at α = 0, (K, H_l)
    pre = ab
    for layer in range(1, depth):
        pre = _c64(_act(pre, slopes[layer - 1]) @ w[layer].T + c[layer])
        h0.append(pre)
    wl = _c64(w[depth][0])
    gamma: list[np.ndarray] = []  # γ_l at α = 0 for l = 1..L-2, (K, H_l)
    if depth >= 2:
        v = w[depth - 1].T * wl[None, :]  # (H_{L-2}, H_{L-1}): V_ij = W_{L-1, ji} w_L,j
        vt = _c64(v.T)  # row j: the change of γ_{L-2} when unit j of the last hidden layer turns on
        g = _c64(_mask(h0[-1], slopes[depth - 1]) @ v.T)  # γ_{L-2}(0)
        for layer in range(depth - 2, 0, -1):
            gamma.insert(0, g)
            g = _c64((_mask(h0[layer - 1], slopes[layer]) * g) @ w[layer])
        u0 = g  # γ_0(0) = ∂f/∂h_0 at α = 0
        m0f = _mask(ab, slopes[0])
        p = _c64(np.einsum("ji,ki,if->kfj", w[1], m0f, w[0]))  # (K, F, H_1) W_1 diag(m_0(0)) W_0, transposed
        cc = _c64((m0f * db) @ w[1].T)  # (K, H_1) W_1 (m_0(0) ⊙ W_0 b)
    else:
        vt = np.zeros(0)
        u0 = _c64(np.broadcast_to(wl, (k, wl.shape[0])))
        p, cc = np.zeros((k, f, 0)), np.zeros((k, 0))
    return {
        "weights": w,
        "biases": c,
        "slopes": slopes,
        "db": db,
        "ab": ab,
        "m0": m0,
        "p": p,
        "c": cc,
        "h0": h0,
        "gamma": gamma,
        "u0": u0,
        "vt": vt,
        "bw": _c64(baseline_weights),
        "b": b,
    }


class ExactKernel:
    """Exact logit-gradient attributions of a folded network of affine maps and (leaky) ReLUs against weighted
    baselines.

    Args:
        weights: ``(W_0 (H_0, F), W_1 (H_1, H_0), …, W_L (1, H_{L−1}))``, the folded affine maps (float64);
            ``L = 0`` (a linear model) is allowed.
        biases: ``(c_0 (H_0,), …, c_L (1,))``.
        baselines: ``(K, F)``.
        baseline_weights: ``(K,)``, summing to 1.
        slopes: each hidden layer's negative slope ``a_l`` (``L`` numbers; ``None``: ReLUs, all 0).

    Everything that depends on the baselines only is computed here, once: ``W_0 b_k``, the layer-0 state at
    ``α = 0``, every hidden layer's values at ``α = 0``, ``γ_l = ∂f/∂h_l`` there, and
    ``P_k = W_1 diag(m_0k(0)) W_0``; the C object keeps its own copy of them and of the weights. Thread-safe:
    the constants are read-only and each call allocates its own scratch (a few kB per layer).
    """

    def __init__(
        self,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        baselines: np.ndarray,
        baseline_weights: np.ndarray,
        slopes: Sequence[float] | None = None,
    ) -> None:
        constants = net_constants(weights, biases, baselines, baseline_weights, slopes)
        self.n_features = int(constants["b"].shape[1])
        self.depth = len(constants["slopes"])
        self._model = _exact.Net(**constants)

    def rows(self, xs: np.ndarray) -> np.ndarray:
        """``xs`` as the C-contiguous float64 ``(N, F)`` rows the kernel takes (``ValueError`` for another shape)."""
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
        x = self.rows(xs)
        attr = np.empty_like(x)
        logit = np.empty(x.shape[0])
        self._model.explain(x, attr, logit)
        return attr, logit

    def runner(self, threads: int = 1) -> _exact.Runner:
        """This kernel's :meth:`explain` on ``threads`` threads of its own, which never take the GIL (``_exact.Runner``:
        ``submit(token, xs, attr, logit)``, ``fileno()``, ``collect()``, ``close()``; the same numbers as
        :meth:`explain`). :class:`service.runtime.kernel_threads.KernelThreads` drives one from an event loop."""
        return _exact.Runner(self._model, threads)

    def logits(self, xs: np.ndarray) -> np.ndarray:
        """``(N, F) -> (N,)`` logits by fixed-order loops: a row's value is bitwise the same in any batch."""
        x = self.rows(xs)
        out = np.empty(x.shape[0])
        self._model.logits(x, out)
        return out
