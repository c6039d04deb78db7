"""hummingml: audio feature extraction and HummingLM training on Ray.

The Python API (:mod:`hummingml.api`) is importable from here: ``hummingml.run_extraction``,
``hummingml.read_features``, ``hummingml.read_codes``, ``hummingml.load_codec``, ``hummingml.decode_codes``. It is
loaded on first use, so ``import hummingml`` imports neither torch nor Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

API = ("run_extraction", "read_features", "read_codes", "load_codec", "decode_codes")  # names of hummingml.api
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    """``hummingml.<API name>``: imports :mod:`hummingml.api` on first use (PEP 562)."""
    if name in API:
        # import_module, not an import statement: every part may import this package root, and the API imports
        # most parts; loading it lazily keeps it out of everything that only needs ``__version__``
        return getattr(importlib.import_module("hummingml.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
