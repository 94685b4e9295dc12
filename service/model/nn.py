"""The seed document's MLP, unchanged in architecture, generalised only in its input width.

``8 → 64 → 64 → 1``: Linear, ReLU, BatchNorm1d, Linear, ReLU, BatchNorm1d, Dropout(0.5), Linear. It returns
one logit per row. In eval mode BatchNorm and Dropout are affine, so the whole network is piecewise linear in
its input; :mod:`service.engine.gradient_shap` relies on that (and checks it) for its exact estimator.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DROPOUT", "HIDDEN", "BinaryClassification"]

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
