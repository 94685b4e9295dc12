"""The service's vocabulary, defined once: explanation methods and outputs, outcome groups, the label rule, the
sigmoid and the bounds on the explanation settings.

Shared by the engine, the runtime, the request schema and the client. It imports neither torch nor the web
framework, nor numpy (imported only when an array is passed): ``service.schemas`` and ``service.client`` import
it in the client's base install (httpx and pydantic).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, get_args, overload

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DEFAULT_N_SAMPLES",
    "GROUPS",
    "MAX_N_SAMPLES",
    "METHODS",
    "MIN_N_SAMPLES",
    "OUTCOME_GROUPS",
    "OUTPUTS",
    "SERVED_METHODS",
    "Method",
    "Output",
    "ServedMethod",
    "format_value",
    "label_of",
    "sigmoid",
]

ServedMethod = Literal["exact", "sampled", "quadrature"]
"""The estimators the HTTP API and the client offer."""

Method = ServedMethod
"""Every estimator of the engine: the served ones (Captum itself, the reference for tests and the benchmark, runs
outside the engine: ``service.training.captum_reference``)."""

Output = Literal["logit", "probability"]
"""What is explained: the model's logit, or the probability ``sigmoid(logit)``."""

SERVED_METHODS: tuple[str, ...] = get_args(ServedMethod)
METHODS: tuple[str, ...] = SERVED_METHODS
OUTPUTS: tuple[str, ...] = get_args(Output)

OUTCOME_GROUPS: tuple[str, ...] = ("TP", "TN", "FP", "FN")
"""The four outcome groups of a binary decision against the truth."""

GROUPS: tuple[str, ...] = (*OUTCOME_GROUPS, "ALL")
"""The group summaries cached in a bundle: the four outcome groups and all records."""

MAX_N_SAMPLES = 2000
"""Upper bound on ``n_samples`` (samples, quadrature nodes or noise draws) accepted by the engine."""

DEFAULT_N_SAMPLES: dict[str, int] = {"exact": 50, "sampled": 200, "quadrature": 64}
"""``n_samples`` used when it is ``None``. For ``exact`` it is the number of noise draws and only used when
``stdevs > 0`` (without noise exact uses no samples and reports ``n_samples = 0``)."""

MIN_N_SAMPLES: dict[str, int] = {"exact": 2, "sampled": 2, "quadrature": 1}
"""Smallest ``n_samples`` per method. ``sampled`` and noisy ``exact`` report a Monte-Carlo standard error, which
needs at least two draws; quadrature is deterministic and needs one node. (Noise-free ``exact`` uses no samples,
so ``n_samples`` is ignored there.)"""


@overload
def sigmoid(z: float) -> float: ...
@overload
def sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
def sigmoid(z: float | npt.NDArray[np.float64]) -> float | npt.NDArray[np.float64]:
    """The logistic function ``1 / (1 + exp(-z))``, without overflow for very negative ``z``.

    A float gives a float (computed with ``math``, as the runtime does per record); an array gives an array of the
    same shape.
    """
    if isinstance(z, float | int):
        return 1.0 / (1.0 + math.exp(-z)) if z > -709.0 else 0.0
    import numpy as np

    with np.errstate(over="ignore"):  # exp overflows to inf for z < -709, and 1 / (1 + inf) is exactly 0
        out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-z))
    return out


@overload
def label_of(probability: float, threshold: float) -> int: ...
@overload
def label_of(probability: npt.NDArray[np.float64], threshold: float) -> npt.NDArray[np.int64]: ...
def label_of(probability: float | npt.NDArray[np.float64], threshold: float) -> int | npt.NDArray[np.int64]:
    """The decision rule: 1 (predicted positive) when ``probability >= threshold``, else 0."""
    if isinstance(probability, float | int):
        return int(probability >= threshold)
    import numpy as np

    return (probability >= threshold).astype(np.int64)


SIGNIFICANT_DIGITS = 4
"""How many significant digits a number shown to a person has (sentences, cards, charts, messages)."""


def format_value(value: float, integer: bool = False) -> str:
    """A number as people write it, the one way the service shows numbers in words: ``148``, ``33.6``, ``0.627``,
    ``147.7`` (four significant digits, trailing zeros dropped, no exponent from 0.0001 on); ``integer`` rounds to a
    whole number."""
    v = float(value)
    if not math.isfinite(v):
        return str(v)
    if integer or v.is_integer():
        return str(round(v))
    magnitude = abs(v)
    if magnitude < 1e-4:
        return f"{v:.{SIGNIFICANT_DIGITS}g}"
    decimals = max(0, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(magnitude)))
    text = f"{v:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
