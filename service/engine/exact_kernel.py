"""The compiled exact kernel: GradientSHAP path integrals of a two-hidden-layer ReLU net, event by event.

Model (folded, float64): ``f(z) = w3·relu(W2 relu(W1 z + b1) + b2) + b3``. Along the path ``z(α) = b + α (x − b)``
the layer-1 pre-activations ``a_i(α) = ab_i + α d_i`` are linear; unit ``i`` toggles at most once, at
``t_i = −ab_i / d_i``. Between consecutive toggles (a *segment*) the layer-2 pre-activations ``h_j`` are linear in
α with slope ``S`` (``S`` changes by ``±d_i W2[:, i]`` at each toggle), so a unit ``j`` changes sign at most once
per segment, at a *crossing* ``τ`` found by linear interpolation. The gradient of ``f`` is
``W1ᵀ (m1 ⊙ V m2)`` with ``V = W2ᵀ diag(w3)`` and masks ``m1``, ``m2``; its integral over α is::

    ∫₀¹ ∇f dα = W1ᵀ g,   g_i = ∫ m1_i(α) U'_i(α) dα,   U_i(t) = ∫₀ᵗ (V m2(α))_i dα.

``U(t) = A t − B`` with ``A = V m2(0) + Σ_c s_c V[:, j_c]`` and ``B = Σ_c s_c τ_c V[:, j_c]`` over the crossings
``c`` before ``t`` (``s_c = ±1``: unit ``j_c`` turns on or off). Since layer-1 unit ``i`` is active on a prefix
``[0, t_i]`` or a suffix ``[t_i, 1]`` of the path (or all of it, or none), ``g_i`` is ``U_i(t_i)``,
``U_i(1) − U_i(t_i)``, ``U_i(1)`` or 0. The work per path is one pass over the segments (``H2`` multiply-adds
each) plus ``2·H1`` per crossing: about 29 toggles and 38 crossings per path on the Pima model, against the
``H1·H2`` dense products per knot of the prefix-sum formulation (the earlier torch kernel, kept as a reference
in ``tests/reference_kernels.py``).

The arithmetic is C (``service/engine/_exact.c``, built by ``pip install``), called without the GIL: engine threads
run it in parallel with the event loop and with each other. It is built without fast-math and without fused
multiply-add, so the compiler may not reorder a sum: a record's numbers are the same on every machine, alone or
in any batch (records are computed one by one with fixed-order loops; there is no BLAS here).

This module computes the constants once per model and baselines and hands them, by keyword, to the C object
``_exact.Model``, which checks each one's type and size (naming the one that does not fit) and keeps its own copy;
a call then passes only the records and the output buffers (checked again, by name). There is no torch fallback
for a missing extension: the torch formulations differ from this kernel in the last bits and run an order of
magnitude slower, so a service or a ``gshap train`` without it would silently answer other numbers, slowly.
Importing this module without the built extension raises ``ModuleNotFoundError`` saying how to build it.
"""

from __future__ import annotations

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

__all__ = ["BUILD_HINT", "ExactKernel"]


def _c64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


class ExactKernel:
    """Exact logit-gradient attributions of a folded two-hidden-layer ReLU net against weighted baselines.

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
