"""gshap-service: predictions and GradientSHAP explanations of a PyTorch risk model over HTTP.

The layers, top to bottom (``.importlinter`` holds the rules and ``make lint`` checks them):

- ``service.cli``: the ``gshap`` command;
- ``service.api``: the web layer (app assembly, routes, security, observability, problem+json errors);
- ``service.runtime``: the inference runtime (coalescing, engine threads and processes);
  ``service.training``: data, training, metrics, bundle building and figures;
  ``service.client``: the typed HTTP client (no torch, no server code);
- ``service.engine``: the GradientSHAP estimators, the exact kernel, Shapley values, baselines;
  ``service.schemas``: the HTTP contract's models (pydantic, no torch);
  ``service.observe``: the Prometheus metrics and the drift window (no web framework);
- ``service.model``: the feature spec, the network, preprocessing, the bundle store, group summaries;
- ``service.contract``: the shared vocabulary (methods, outputs, groups, the label rule, the sigmoid, limits).

The engine and the model import no web framework; the web layer holds no maths.
"""

__version__ = "0.1.0"
"""The package version: the one place it is written (``pyproject.toml`` reads it from here)."""

__all__ = ["__version__"]
