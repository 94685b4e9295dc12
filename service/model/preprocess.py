"""The one transform from raw records (original units) to model space, fitted on the training split only.

"Not measured" values (NaN) are replaced by the training split's median of the measured values, then every
feature is standardised with the training split's mean and standard deviation (after imputation). The same
parameters, stored in the bundle's manifest, serve training, prediction and explanation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Preprocessor"]


@dataclass(frozen=True)
class Preprocessor:
    """``fill``, ``mean``, ``scale``, ``train_min``, ``train_max``: ``(F,)`` arrays in original units."""

    fill: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    train_min: np.ndarray
    train_max: np.ndarray

    @classmethod
    def fit(cls, x_train: np.ndarray) -> Preprocessor:
        """Fit on ``(N, F)`` raw training values (NaN = not measured)."""
        fill = np.nanmedian(x_train, axis=0)
        if np.isnan(fill).any():
            raise ValueError("a feature has no measured value in the training split")
        imputed = np.where(np.isnan(x_train), fill, x_train)
        mean = imputed.mean(axis=0)
        scale = imputed.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        return cls(
            fill=fill,
            mean=mean,
            scale=scale,
            train_min=np.nanmin(x_train, axis=0),
            train_max=np.nanmax(x_train, axis=0),
        )

    def impute(self, x_raw: np.ndarray, missing: np.ndarray | None = None) -> np.ndarray:
        """``(N, F)`` raw with NaN → ``(N, F)`` raw with training medians filled in (``missing``: the caller's
        ``np.isnan(x_raw)``, when it has it)."""
        out: np.ndarray = np.where(np.isnan(x_raw) if missing is None else missing, self.fill, x_raw)
        return out

    def transform(self, x_raw: np.ndarray) -> np.ndarray:
        """``(N, F)`` raw (NaN = not measured) → ``(N, F)`` float64 model space."""
        return self.standardise(self.impute(x_raw))

    def standardise(self, x_imputed: np.ndarray) -> np.ndarray:
        """``(N, F)`` raw values already imputed → ``(N, F)`` float64 model space."""
        out: np.ndarray = (x_imputed - self.mean) / self.scale
        return out

    def inverse(self, x_model: np.ndarray) -> np.ndarray:
        """``(N, F)`` model space → original units (used to describe baselines to people)."""
        out: np.ndarray = x_model * self.scale + self.mean
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "imputation": "median of the training split's measured values",
            "scaling": "standardisation with the training split's mean and standard deviation after imputation",
            **{k: [float(v) for v in getattr(self, k)] for k in ("fill", "mean", "scale", "train_min", "train_max")},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("fill", "mean", "scale", "train_min", "train_max")}
        return cls(**arrays)
