"""Names a package re-exports, imported when first used (PEP 562).

A package whose ``__init__`` imported every submodule made every command pay for all of
them: ``dbsentry token create`` read the configuration, whose ``approvals.config`` and
``audit.config`` brought in the approvals service, the audit appender, metrics, JWT and
cryptography. A package lists what it re-exports under ``TYPE_CHECKING`` (for mypy and
readers) and gives the same names, by submodule, to :func:`exports`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence


def exports(package: str, where: Mapping[str, Sequence[str]]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``where`` maps a submodule (or a module's
    full dotted name) to the names it gives; a name is imported from there when first asked
    for, then kept."""
    index = {name: module for module, names in where.items() for name in names}

    def __getattr__(name: str) -> object:
        module = index.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module if "." in module else f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
