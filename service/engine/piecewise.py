"""A network-agnostic description of a piecewise-linear network: affine stages and (leaky) ReLUs, in float64.

In eval mode ``Linear``, ``BatchNorm1d`` (running statistics), ``Dropout`` and ``Identity`` are affine, and
``ReLU`` and ``LeakyReLU`` (any negative slope) are piecewise linear with one breakpoint at 0. Any
``torch.nn.Sequential`` of those, in any order, is therefore::

    f(z) = A_L ∘ act_{L-1} ∘ A_{L-1} ∘ … ∘ act_0 ∘ A_0 (z),    act_l(s) = s if s > 0 else a_l·s,

with ``A_l(h) = W_l h + c_l``. :func:`fold_sequential` finds that form: it multiplies consecutive affine maps
together (in float64) and closes a stage at each activation. Two activations in a row get an identity stage
between them; an activation before any affine map gets an identity stage of the input's width. The last stage
has no activation (``negative_slope=None``) and one output, the logit.

The exact GradientSHAP estimator (:mod:`service.engine.gradient_shap`, :mod:`service.engine.exact_kernel`) works
on this form. Anything else (``Tanh``, ``GELU``, a ``BatchNorm1d`` without running statistics, a network with
more than one output) raises :class:`NotPiecewiseLinear` naming the layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the functions that fold a torch module, not with this module
    from torch import Tensor, nn

__all__ = [
    "AffineStage",
    "NotPiecewiseLinear",
    "fold_modules",
    "fold_sequential",
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
