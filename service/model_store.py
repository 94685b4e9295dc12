"""Deprecated alias of :mod:`service.model.store`, where the bundle store lives since 0.2.0.

``from service.model_store import load_bundle`` keeps working and warns once; import from ``service.model``
(``from service.model import load_bundle``) instead. This alias will be removed in 0.3.0.
"""

from __future__ import annotations

import warnings

from service.model.store import *  # noqa: F403 (the alias re-exports the store's public names)
from service.model.store import __all__ as _store_all

__all__ = list(_store_all)

warnings.warn(
    "service.model_store is deprecated since 0.2.0 and will be removed in 0.3.0; "
    "import from service.model (for example 'from service.model import load_bundle')",
    DeprecationWarning,
    stacklevel=2,
)
