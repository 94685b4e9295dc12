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
``H1·H2`` dense products per knot of the prefix-sum formulation (:func:`service.explain.path_integrals_fast`).

Compiled with numba (``nogil``: engine threads run it in parallel with the event loop and with each other) and
cached on disk next to this file (or in ``NUMBA_CACHE_DIR``): the first start on a machine compiles for about
two seconds, later starts load the machine code. No ``fastmath``: the compiler may not reorder a sum, so a
record's numbers are the same on every machine, alone or in any batch (records are computed one by one with
fixed-order loops; there is no BLAS here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

__all__ = ["ExactKernel"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _jit(fn: _F) -> _F:
    """numba's ``njit`` with this module's options, typed for mypy (numba ships no type information)."""
    return cast(_F, numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")(fn))


@_jit
def _record(
    x: np.ndarray,
    w1: np.ndarray,
    db: np.ndarray,
    ab: np.ndarray,
    m0: np.ndarray,
    w2t: np.ndarray,
    vt: np.ndarray,
    h0: np.ndarray,
    u0: np.ndarray,
    p: np.ndarray,
    c: np.ndarray,
    bw: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
) -> None:
    """Attributions of one record ``x`` (F,) into ``out`` (F,): ``Σ_k bw_k (x − b_k) ⊙ ∫∇f`` along path k."""
    k_paths, h1n = ab.shape
    h2n = w2t.shape[1]
    nf = x.shape[0]
    wx = np.empty(h1n)
    d = np.empty(h1n)
    tt = np.empty(h1n)
    a_acc = np.empty(h1n)
    b_acc = np.empty(h1n)
    g1 = np.empty(h1n)
    key = np.empty(h1n)
    tidx = np.empty(h1n, np.int64)
    slope = np.empty(h2n)
    h = np.empty(h2n)
    hp = np.empty(h2n)
    fl = np.zeros(((h2n + 7) // 8) * 8, np.uint8)
    fw = fl.view(np.uint64)
    for i in range(h1n):
        s = 0.0
        for f in range(nf):
            s += w1[i, f] * x[f]
        wx[i] = s
    for f in range(nf):
        out[f] = 0.0
    for k in range(k_paths):
        # layer-1 slopes and toggle times; the toggling units, sorted by time (insertion sort: ~29 of them)
        for i in range(h1n):
            di = wx[i] - db[k, i]
            d[i] = di
            tt[i] = -ab[k, i] / di
        ne = 0
        for i in range(h1n):
            ti = tt[i]
            if ((d[i] < 0.0) if m0[k, i] else (d[i] > 0.0)) and ti < 1.0:
                q = ne
                while q > 0 and key[q - 1] > ti:
                    key[q] = key[q - 1]
                    tidx[q] = tidx[q - 1]
                    q -= 1
                key[q] = ti
                tidx[q] = i
                ne += 1
        # layer-2 slope on the first segment (precomputed per baseline as P_k x − c_k) and values at α = 0
        for j in range(h2n):
            s = -c[k, j]
            for f in range(nf):
                s += p[k, j, f] * x[f]
            slope[j] = s
            h[j] = h0[k, j]
        for i in range(h1n):
            a_acc[i] = u0[k, i]
            b_acc[i] = 0.0
            g1[i] = 0.0
        tprev = 0.0
        for q in range(ne + 1):
            tq = key[q] if q < ne else 1.0
            seg = tq - tprev
            for j in range(h2n):
                v0 = h[j]
                v1 = v0 + slope[j] * seg
                hp[j] = v0
                h[j] = v1
                fl[j] = (v0 > 0.0) != (v1 > 0.0)
            for w in range(fw.shape[0]):  # eight flags per word: most words have no crossing
                if fw[w] != 0:
                    for j in range(w * 8, min(w * 8 + 8, h2n)):
                        if fl[j]:
                            v0 = hp[j]
                            v1 = h[j]
                            tau = tprev + seg * (v0 / (v0 - v1))
                            sg = 1.0 if v1 > 0.0 else -1.0
                            st = sg * tau
                            for i in range(h1n):
                                vji = vt[j, i]
                                a_acc[i] += sg * vji
                                b_acc[i] += st * vji
            tprev = tq
            if q < ne:
                i = tidx[q]
                g1[i] = a_acc[i] * tq - b_acc[i]  # U_i(t_i)
                coef = -d[i] if m0[k, i] else d[i]
                for j in range(h2n):
                    slope[j] += coef * w2t[i, j]
        for i in range(h1n):
            u1 = a_acc[i] - b_acc[i]  # U_i(1)
            if m0[k, i]:
                g1[i] = g1[i] if (d[i] < 0.0 and tt[i] < 1.0) else u1
            else:
                g1[i] = (u1 - g1[i]) if (d[i] > 0.0 and tt[i] < 1.0) else 0.0
        for f in range(nf):
            s = 0.0
            for i in range(h1n):
                s += g1[i] * w1[i, f]
            out[f] += bw[k] * (x[f] - b[k, f]) * s


@_jit
def _attributions(
    xs: np.ndarray,
    w1: np.ndarray,
    db: np.ndarray,
    ab: np.ndarray,
    m0: np.ndarray,
    w2t: np.ndarray,
    vt: np.ndarray,
    h0: np.ndarray,
    u0: np.ndarray,
    p: np.ndarray,
    c: np.ndarray,
    bw: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
) -> None:
    for n in range(xs.shape[0]):
        _record(xs[n], w1, db, ab, m0, w2t, vt, h0, u0, p, c, bw, b, out[n])


@_jit
def _logit(
    x: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    w3: np.ndarray,
    b3: float,
    a1: np.ndarray,
) -> float:
    """The logit of one record by fixed-order loops (``a1``: ``H1`` scratch); relu keeps NaN, as torch's does."""
    h1n, nf = w1.shape
    for i in range(h1n):
        s = b1[i]
        for f in range(nf):
            s += w1[i, f] * x[f]
        a1[i] = s if not s <= 0.0 else 0.0
    acc = b3
    for j in range(w2.shape[0]):
        s = b2[j]
        for i in range(h1n):
            s += w2[j, i] * a1[i]
        if not s <= 0.0:
            acc += w3[j] * s
    return acc


@_jit
def _logits(
    xs: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    w3: np.ndarray,
    b3: float,
    out: np.ndarray,
) -> None:
    a1 = np.empty(w1.shape[0])
    for n in range(xs.shape[0]):
        out[n] = _logit(xs[n], w1, b1, w2, b2, w3, b3, a1)


@_jit
def _explain(
    xs: np.ndarray,
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    w3: np.ndarray,
    b3: float,
    db: np.ndarray,
    ab: np.ndarray,
    m0: np.ndarray,
    w2t: np.ndarray,
    vt: np.ndarray,
    h0: np.ndarray,
    u0: np.ndarray,
    p: np.ndarray,
    c: np.ndarray,
    bw: np.ndarray,
    b: np.ndarray,
    attr: np.ndarray,
    logit: np.ndarray,
) -> None:
    a1 = np.empty(w1.shape[0])
    for n in range(xs.shape[0]):
        logit[n] = _logit(xs[n], w1, b1, w2, b2, w3, b3, a1)
        _record(xs[n], w1, db, ab, m0, w2t, vt, h0, u0, p, c, bw, b, attr[n])


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
    ``α = 0``, the layer-2 values and masks at ``α = 0``, ``V m2(0)`` and ``P_k = W2 diag(m1_k(0)) W1``.
    Thread-safe: each call of the compiled functions allocates its own scratch (a few kB).
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
        self.n_features = w1.shape[1]
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2
        self.w3 = _c64(w3[0])
        self.b3 = float(b3[0])
        self.b = b
        self.bw = _c64(baseline_weights)
        self.db = _c64(b @ w1.T)  # (K, H1)
        self.ab = _c64(self.db + b1)  # layer-1 pre-activations at the baselines
        self.m0 = np.ascontiguousarray(self.ab > 0)
        v = w2.T * self.w3[None, :]  # (H1, H2): V_ij = W2_ji w3_j
        self.vt = _c64(v.T)  # (H2, H1): row j is column j of V
        self.w2t = _c64(w2.T)  # (H1, H2): row i is column i of W2
        self.h0 = _c64(np.maximum(self.ab, 0.0) @ w2.T + b2)  # (K, H2) layer-2 pre-activations at α = 0
        self.u0 = _c64((self.h0 > 0).astype(np.float64) @ v.T)  # (K, H1) V m2(0)
        m0f = self.m0.astype(np.float64)
        self.p = _c64(np.einsum("ji,ki,if->kjf", w2, m0f, w1))  # (K, H2, F) W2 diag(m1(0)) W1
        self.c = _c64((m0f * self.db) @ w2.T)  # (K, H2) W2 (m1(0) ⊙ W1 b)

    def _rows(self, xs: np.ndarray) -> np.ndarray:
        x = _c64(xs)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"x must be (N, {self.n_features}), got shape {x.shape}")
        return x

    def attributions(self, xs: np.ndarray) -> np.ndarray:
        """``(N, F) -> (N, F)`` exact attributions of the logit, ``Σ_k w_k (x − b_k) ⊙ ∫₀¹ ∇f dα``."""
        x = self._rows(xs)
        out = np.empty_like(x)
        _attributions(
            x, self.w1, self.db, self.ab, self.m0, self.w2t, self.vt, self.h0, self.u0, self.p, self.c, self.bw,
            self.b, out,
        )  # fmt: skip
        return out

    def explain(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, F) -> ((N, F), (N,))``: attributions and logits in one compiled call (one release of the GIL),
        the same numbers as :meth:`attributions` and :meth:`logits`."""
        x = self._rows(xs)
        attr = np.empty_like(x)
        logit = np.empty(x.shape[0])
        _explain(
            x, self.w1, self.b1, self.w2, self.b2, self.w3, self.b3, self.db, self.ab, self.m0, self.w2t, self.vt,
            self.h0, self.u0, self.p, self.c, self.bw, self.b, attr, logit,
        )  # fmt: skip
        return attr, logit

    def logits(self, xs: np.ndarray) -> np.ndarray:
        """``(N, F) -> (N,)`` logits by fixed-order loops: a row's value is bitwise the same in any batch."""
        x = self._rows(xs)
        out = np.empty(x.shape[0])
        _logits(x, self.w1, self.b1, self.w2, self.b2, self.w3, self.b3, out)
        return out
