"""The served network and its calibration.

A bundle's network is the ``nn.Sequential`` its model spec's layer list builds
(:func:`service.model.spec.build_network`), served inside :class:`CalibratedClassification`, which adds the
calibration of the logit. :class:`BinaryClassification` is the seed document's MLP as a module of its own
(``F → 64 → 64 → 1``: Linear, ReLU, BatchNorm1d, Linear, ReLU, BatchNorm1d, Dropout(0.5), Linear), kept as a
test and benchmark network. In eval mode BatchNorm and Dropout are affine, so a ReLU network is piecewise linear
in its input; :mod:`service.engine.gradient_shap` relies on that (and checks it) for its exact estimator.
"""

from __future__ import annotations

import torch
from torch import nn

from service.model.spec import IDENTITY, Calibration  # torch-free, with the spec; here for the older imports

__all__ = ["DROPOUT", "HIDDEN", "IDENTITY", "BinaryClassification", "CalibratedClassification", "Calibration"]

HIDDEN = 64
DROPOUT = 0.5


class BinaryClassification(nn.Module):
    """The seed MLP. ``forward``: ``(N, n_features)`` model-space inputs → ``(N, 1)`` logits."""

    def __init__(self, n_features: int, hidden: int = HIDDEN, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.n_features = n_features
        self.layer_1 = nn.Linear(n_features, hidden)
        self.layer_2 = nn.Linear(hidden, hidden)
        self.layer_out = nn.Linear(hidden, 1)
        self.relu = nn.ReLU()
        self.batchnorm1 = nn.BatchNorm1d(hidden)
        self.batchnorm2 = nn.BatchNorm1d(hidden)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.layer_1(inputs))
        x = self.batchnorm1(x)
        x = self.relu(self.layer_2(x))
        x = self.batchnorm2(x)
        x = self.dropout(x)
        out: torch.Tensor = self.layer_out(x)
        return out


class CalibratedClassification(nn.Sequential):
    """A network (the layers of an ``nn.Sequential``) followed by a :class:`Calibration` of its logit:
    ``forward`` = ``a·logit + b``.

    Its state dict is the Sequential's (``"0.weight"``, ``"2.running_mean"``, ...): what a bundle's
    ``weights.safetensors`` holds and what ``gshap bundle`` takes. ``a`` and ``b`` are Python floats, not tensors,
    so they stay float64 whatever the network's dtype. :meth:`uncalibrated` is the raw network.
    """

    def __init__(self, *layers: nn.Module, calibration: Calibration = IDENTITY) -> None:
        super().__init__(*layers)
        self.calibration = calibration

    @classmethod
    def wrap(cls, network: nn.Sequential, calibration: Calibration = IDENTITY) -> CalibratedClassification:
        """The calibrated network over the same layer objects as ``network`` (no copy)."""
        return cls(*network, calibration=calibration)

    def uncalibrated(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(N, F) -> (N, 1)`` the raw network's logits."""
        out = inputs
        for module in self:  # nn.Sequential.forward, typed
            out = module(out)
        return out

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.uncalibrated(inputs) * self.calibration.a + self.calibration.b
