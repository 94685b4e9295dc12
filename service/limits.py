"""Bounds on the explanation settings, shared by the engine, the request schema and the client.

Kept free of torch so that ``service.schemas`` and ``service.client`` import without the numerical stack.
"""

from __future__ import annotations

__all__ = ["DEFAULT_N_SAMPLES", "MAX_N_SAMPLES", "MIN_N_SAMPLES"]

MAX_N_SAMPLES = 2000
"""Upper bound on ``n_samples`` (samples, quadrature nodes or noise draws) accepted by the engine."""

DEFAULT_N_SAMPLES: dict[str, int] = {"exact": 50, "sampled": 200, "quadrature": 64, "captum": 200}
"""``n_samples`` used when it is ``None``. For ``exact`` it is the number of noise draws and only used when
``stdevs > 0`` (without noise exact uses no samples and reports ``n_samples = 0``)."""

MIN_N_SAMPLES: dict[str, int] = {"exact": 1, "sampled": 2, "quadrature": 1}
"""Smallest ``n_samples`` per method: a Monte-Carlo standard error needs at least two samples."""
