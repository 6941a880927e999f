"""Names a package imports on first attribute access (PEP 562), so that importing the
package does not pay for heavy dependencies (torch, highdicom, pandas) it may not need."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableMapping
from typing import Any


def load_lazy(
    package: str, table: Mapping[str, str], namespace: MutableMapping[str, Any], name: str
) -> Any:
    """Import ``name`` from the module ``table`` names for it, cache it in the package's
    ``namespace`` (its ``globals()``) and return it; unknown names raise AttributeError."""
    module = table.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    namespace[name] = value
    return value
