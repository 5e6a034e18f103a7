"""Where a Mininet node's interfaces live, as both link backends need it."""
from __future__ import annotations

from typing import Any


def netns_path(node: Any) -> str | None:
    """The node's network namespace as ``/proc/PID/ns/net``, or None for the root namespace
    (nodes with ``inNamespace = False``, such as LinuxBridge switches)."""
    if not getattr(node, "inNamespace", True):
        return None
    return f"/proc/{node.pid}/ns/net"
