"""The model layer: the feature spec (``features``), the network (``nn``), preprocessing, the bundle store
(``store``) and the outcome-group summaries (``groups``).

``service.model.features`` imports nothing beyond the standard library (the request schema and the client use it);
the bundle store needs numpy and safetensors (torch only for a bundle's torch module, ``Bundle.model``, built on
first access), so its public names are loaded on first use: ``from service.model import load_bundle, Bundle,
BundleError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.model.store import Bundle, BundleError, load_bundle

__all__ = ["Bundle", "BundleError", "load_bundle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from service.model import store

        return getattr(store, name)
    raise AttributeError(f"module 'service.model' has no attribute {name!r}")
