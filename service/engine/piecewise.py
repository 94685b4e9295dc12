"""A network-agnostic description of a piecewise-linear network: affine stages and (leaky) ReLUs, in float64.

In eval mode ``Linear``, ``BatchNorm1d`` (running statistics), ``Dropout`` and ``Identity`` are affine, and
``ReLU`` and ``LeakyReLU`` (any negative slope) are piecewise linear with one breakpoint at 0. Any
``torch.nn.Sequential`` of those, in any order, is therefore::

    f(z) = A_L ∘ act_{L-1} ∘ A_{L-1} ∘ … ∘ act_0 ∘ A_0 (z),    act_l(s) = s if s > 0 else a_l·s,

with ``A_l(h) = W_l h + c_l``. :func:`fold_sequential` finds that form: it multiplies consecutive affine maps
together (in float64) and closes a stage at each activation. Two activations in a row get an identity stage
between them; an activation before any affine map gets an identity stage of the input's width. The last stage
has no activation (``negative_slope=None``) and one output, the logit.

:func:`fold_layers` folds a bundle's network without torch, from its spec's layer list and its state dict as
numpy arrays: the operations of :func:`fold_modules` with fixed summation orders written out element-wise
(:func:`ordered_sum`, :func:`ordered_mv`) and IEEE ``np.sqrt``, so a bundle folds to the same bits on every
processor. Those orders are the ones torch's float64 kernels use on x86 (ATen's cascade sum, MKL's dot and gemv):
the fold equals torch's bit for bit except where torch's BatchNorm ``sqrt`` (MKL's vector maths library, not
correctly rounded) is one ulp off, which moves a shipped bundle's logits by at most ~2e-15
(``tests/engine/test_torch_order.py``). The service folds its piecewise-linear bundles this way and imports torch
only for what needs it (the sampled and quadrature estimators, smooth networks, training).

The exact GradientSHAP estimator (:mod:`service.engine.gradient_shap`, :mod:`service.engine.exact_kernel`) works
on this form. Anything else (``Tanh``, ``GELU``, a ``BatchNorm1d`` without running statistics, a network with
more than one output) raises :class:`NotPiecewiseLinear` naming the layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the functions that fold a torch module, not with this module
    from torch import Tensor, nn

    from service.model.spec import Layer

__all__ = [
    "AffineStage",
    "NotPiecewiseLinear",
    "fold_layers",
    "fold_modules",
    "fold_sequential",
    "ordered_mv",
    "ordered_sum",
]


class NotPiecewiseLinear(ValueError):  # noqa: N818 - the name is the issue-20 contract's
    """The network is not a stack of affine layers and (leaky) ReLUs with one output; the message names the layer."""


@dataclass(frozen=True)
class AffineStage:
    """``h ↦ act(W h + c)``: ``weight`` ``(out, in)`` and ``bias`` ``(out,)`` in float64; ``negative_slope`` is
    ``0.0`` for a ReLU, ``a`` for a leaky ReLU and ``None`` for no activation (the last stage)."""

    weight: np.ndarray
    bias: np.ndarray
    negative_slope: float | None


def _bn_affine(bn: nn.BatchNorm1d, where: str) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm1d as ``y = s ⊙ x + t`` (float64)."""
    import torch

    if bn.running_mean is None or bn.running_var is None:
        raise NotPiecewiseLinear(
            f"{where}: BatchNorm1d without running statistics (track_running_stats=False) normalises each batch "
            "by its own statistics: the model is not a per-record function and cannot be folded"
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


def _first_width(mods: Sequence[nn.Module]) -> int | None:
    """The input width of the first module that fixes one (Linear, BatchNorm1d)."""
    from torch import nn

    for mod in mods:
        if isinstance(mod, nn.Linear):
            return int(mod.in_features)
        if isinstance(mod, nn.BatchNorm1d):
            return int(mod.num_features)
    return None


_VEC = 4  # doubles per vector in ATen's float64 reduction (a 256-bit Vectorized<double>)
_ILP = 4  # ATen's row_sum: four interleaved accumulators
_LEVELS = 4  # ATen's multi_row_sum: four cascade levels


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


def ordered_sum(values: np.ndarray) -> float:
    """The sum of a float64 vector in a fixed order, ATen's cascade (vectorised over four lanes, four
    accumulators, then the scalar tail, then the lanes in order): ``float(torch.as_tensor(values).sum())``
    bit for bit below torch's grain size (32768 elements), on any processor."""
    v = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    n = v.shape[0]
    if n < _VEC:
        return float(_row_sum(v[:, None])[0]) if n else 0.0
    nvec = n // _VEC
    lanes = _row_sum(v[: nvec * _VEC].reshape(nvec, _VEC))
    total = 0.0
    for x in v[nvec * _VEC :]:
        total = total + float(x)
    for x in lanes:
        total = total + float(x)
    return total


def _dot_order(a: np.ndarray, x: np.ndarray) -> float:
    """One row of :func:`ordered_mv` (MKL's dot kernel): the first two products, then eight lanes from the third
    on, their sum ``((l1 + l3) + (l5 + l7)) + ((l4 + l6) + (l2 + l0))``, then the remaining products."""
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


def ordered_mv(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``a @ x`` for float64 ``a`` ``(m, n)`` and ``x`` ``(n,)`` in a fixed order, element-wise (no BLAS): the
    rows in blocks of four in the order of MKL's gemv kernel, the other rows (and a single row) in the order of
    its dot kernel. That is torch's ``W @ c`` bit for bit for one row and for ``m ≡ 0, 1 (mod 4)`` rows at the
    sizes ``tests/engine/test_torch_order.py`` checks (other row counts: a fixed order of this function's own)."""
    m = a.shape[0]
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
) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """Fold a spec's layer list (:class:`service.model.spec.Layer`: the ``nn.Sequential`` that
    :func:`service.model.spec.build_network` builds) with its state dict as numpy arrays (``"0.weight"``, ...),
    followed by the calibration ``a·logit + b``, into float64 ``(weights, biases, slopes)`` without torch (see the
    module docstring): :func:`fold_modules`'s operations in fixed orders. Raises :class:`NotPiecewiseLinear`
    naming the layer for anything but Linear, ReLU, LeakyReLU, BatchNorm1d, Dropout and Identity."""
    from service.model.spec import BATCHNORM_EPS

    width: int | None = None
    for layer in layers:
        if layer.kind in ("linear", "batchnorm1d"):
            width = int(layer.args[0])
            break
    if width is None:
        raise NotPiecewiseLinear("the network has no Linear or BatchNorm1d layer: its input width is unknown")
    w: np.ndarray | None = None  # the affine map since the last activation (None = identity)
    c: np.ndarray | None = None
    diagonal = True  # w is None or zero off its diagonal (a product of BatchNorms)
    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    slopes: list[float] = []

    def f64(key: str) -> np.ndarray:
        return np.asarray(state[key], dtype=np.float64)

    def close() -> None:
        nonlocal w, c, diagonal
        assert width is not None
        weights.append(w if w is not None else np.eye(width))
        biases.append(c if c is not None else np.zeros(width))
        w, c, diagonal = None, None, True

    def linear(lw: np.ndarray, lb: np.ndarray) -> None:
        nonlocal w, c, diagonal
        if w is None:
            w = lw
        elif diagonal:
            w = lw * np.diagonal(w)[None, :]  # lw @ diag(d): one nonzero product per sum, exact in any order
        elif lw.shape[1] == 1:
            w = lw * w  # sums of one product (the calibration's Linear(1, 1)): exact
        else:
            w = np.stack([ordered_mv(lw, col) for col in w.T], axis=1)
        c = lb if c is None else ordered_mv(lw, c) + lb
        diagonal = False

    for i, layer in enumerate(layers):
        where = f"layer {i} ({layer.kind})"
        if layer.kind == "linear":
            lw = f64(f"{i}.weight")
            if lw.ndim != 2 or lw.shape[1] != width:
                raise NotPiecewiseLinear(f"{where}: Linear expects {lw.shape[-1]} inputs after width {width}")
            linear(lw, f64(f"{i}.bias"))
            width = lw.shape[0]
        elif layer.kind == "batchnorm1d":
            var = f64(f"{i}.running_var")
            if var.shape != (width,):
                raise NotPiecewiseLinear(f"{where}: BatchNorm1d({var.shape[0]}) follows a layer of width {width}")
            s = 1.0 / np.sqrt(var + BATCHNORM_EPS)
            t = -f64(f"{i}.running_mean") * s
            gamma = f64(f"{i}.weight")
            s, t = s * gamma, t * gamma
            t = t + f64(f"{i}.bias")
            w = np.diag(s) if w is None else s[:, None] * w
            c = t if c is None else s * c + t
        elif layer.kind in ("relu", "leaky_relu"):
            slope = float(layer.args[0]) if layer.kind == "leaky_relu" else 0.0
            if not np.isfinite(slope):
                raise NotPiecewiseLinear(f"{where}: LeakyReLU with a non-finite negative slope ({slope})")
            close()
            slopes.append(slope)
        elif layer.kind not in ("dropout", "identity"):
            raise NotPiecewiseLinear(
                f"{where}: {layer.kind} is not piecewise linear (the exact estimator covers Linear, ReLU, "
                "LeakyReLU, BatchNorm1d, Dropout and Identity); use method='quadrature' or 'sampled'"
            )
    a, b = calibration
    linear(np.full((1, 1), float(a)), np.full(1, float(b)))
    close()
    if weights[-1].shape[0] != 1:
        raise NotPiecewiseLinear(f"the network must return one logit per row, this one returns {weights[-1].shape[0]}")
    return [np.ascontiguousarray(x) for x in weights], [np.ascontiguousarray(x) for x in biases], slopes


def fold_modules(
    mods: Sequence[nn.Module], names: Sequence[str] | None = None
) -> tuple[list[Tensor], list[Tensor], list[float]]:
    """Fold a flat list of eval-mode modules into float64 torch ``(weights, biases, slopes)``: ``len(slopes) =
    len(weights) − 1`` hidden layers (see the module docstring). ``names`` label the modules in messages.

    The arithmetic is fixed (``W ← W_lin @ W``, ``c ← W_lin @ c + b_lin``; BatchNorm ``W ← s[:, None] * W``,
    ``c ← s * c + t``), so a network folds to the same bits every time.
    """
    import torch
    from torch import nn

    labels = list(names) if names is not None else [f"layer {i} ({type(m).__name__})" for i, m in enumerate(mods)]
    width = _first_width(mods)
    if width is None:
        raise NotPiecewiseLinear("the network has no Linear or BatchNorm1d layer: its input width is unknown")
    w: Tensor | None = None  # the affine map since the last activation (None = identity)
    c: Tensor | None = None
    weights: list[Tensor] = []
    biases: list[Tensor] = []
    slopes: list[float] = []

    def close() -> None:
        nonlocal w, c
        assert width is not None
        weights.append(w if w is not None else torch.eye(width, dtype=torch.float64))
        biases.append(c if c is not None else torch.zeros(width, dtype=torch.float64))
        w, c = None, None

    for mod, where in zip(mods, labels, strict=True):
        if isinstance(mod, nn.Linear):
            if mod.in_features != width:
                raise NotPiecewiseLinear(f"{where}: Linear expects {mod.in_features} inputs after width {width}")
            lw = mod.weight.detach().double()
            lb = mod.bias.detach().double() if mod.bias is not None else torch.zeros(mod.out_features).double()
            w = lw if w is None else lw @ w
            c = lb if c is None else lw @ c + lb
            width = mod.out_features
        elif isinstance(mod, nn.BatchNorm1d):
            if mod.num_features != width:
                raise NotPiecewiseLinear(f"{where}: BatchNorm1d({mod.num_features}) follows a layer of width {width}")
            s, t = _bn_affine(mod, where)
            w = torch.diag(s) if w is None else s[:, None] * w
            c = t if c is None else s * c + t
        elif isinstance(mod, nn.ReLU):
            close()
            slopes.append(0.0)
        elif isinstance(mod, nn.LeakyReLU):
            slope = float(mod.negative_slope)
            if not np.isfinite(slope):
                raise NotPiecewiseLinear(f"{where}: LeakyReLU with a non-finite negative slope ({slope})")
            close()
            slopes.append(slope)
        elif isinstance(mod, nn.Dropout | nn.Identity):
            continue  # the identity in eval mode
        else:
            raise NotPiecewiseLinear(
                f"{where}: {type(mod).__name__} is not piecewise linear (the exact estimator covers Linear, ReLU, "
                "LeakyReLU, BatchNorm1d, Dropout and Identity); use method='quadrature' or 'sampled'"
            )
    close()
    if weights[-1].shape[0] != 1:
        raise NotPiecewiseLinear(f"the network must return one logit per row, this one returns {weights[-1].shape[0]}")
    return [x.contiguous() for x in weights], [x.contiguous() for x in biases], slopes


def _flatten(net: nn.Module, prefix: str) -> tuple[list[nn.Module], list[str]]:
    from torch import nn

    mods: list[nn.Module] = []
    names: list[str] = []
    for name, child in net.named_children():
        label = f"{prefix}{name}"
        if type(child) is nn.Sequential:
            sub, subn = _flatten(child, f"{label}.")
            mods += sub
            names += subn
        else:
            mods.append(child)
            names.append(f"layer {label} ({type(child).__name__})")
    return mods, names


def fold_sequential(net: nn.Sequential) -> list[AffineStage]:
    """The stages of an eval-mode ``nn.Sequential`` of Linear, ReLU, LeakyReLU, BatchNorm1d, Dropout and Identity
    layers (nested Sequentials are flattened), in any order, with one output.

    Raises:
        NotPiecewiseLinear: naming the first layer that is not one of those, or the rule the network breaks.
    """
    from torch import nn

    if not isinstance(net, nn.Sequential):
        raise NotPiecewiseLinear(f"expected a torch.nn.Sequential, got {type(net).__name__}")
    mods, names = _flatten(net, "")
    weights, biases, slopes = fold_modules(mods, names)
    return [
        AffineStage(w.numpy(), b.numpy(), slopes[i] if i < len(slopes) else None)
        for i, (w, b) in enumerate(zip(weights, biases, strict=True))
    ]
