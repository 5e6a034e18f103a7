"""Errors the sidecar reports when it cannot start (a leaf module: it imports nothing)."""
from __future__ import annotations

__all__ = ["StartupError"]


class StartupError(Exception):
    """The sidecar cannot start: a listener or the admin socket cannot bind, the outlier event
    log cannot be opened, no certificate came from Citadel, or the xDS sources are invalid.
    ``python -m proxy`` prints it and exits 1."""
