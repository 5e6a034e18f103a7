"""Package exports loaded on first use (a module ``__getattr__``, PEP 562).

A public helper for any package ``__init__`` (the proxy's own, and those of packages
outside it): the ``__init__`` names the module that defines each of its public names; ``from
proxy.tls import MeshTLS`` imports proxy.tls.context at that moment. Importing a package,
which Python does before any module inside it, therefore loads nothing else: no import
cycle runs through an ``__init__``, and a plaintext sidecar never loads ``cryptography``.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, modules: dict[str, tuple[str, ...]]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package``; ``modules`` maps each module's
    import path to the public names it defines."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)      # the next lookup is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return list(where), __getattr__, __dir__
