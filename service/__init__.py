"""gshap-service: predictions and GradientSHAP explanations of a PyTorch risk model over HTTP.

The numerical core (``features``, ``data``, ``preprocess``, ``nn``, ``train``, ``explain``, ``groups``,
``model_store``) imports no web framework; the web layer (``main``, ``routes``, ``schemas``, ``errors``)
holds no maths.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
