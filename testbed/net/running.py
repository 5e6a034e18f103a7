"""What code running on a started network may use of it: :class:`RunningTestbed`.

A started :class:`testbed.net.network.Testbed` is one; so are the stand-ins tests pass to
the CLI, the capture and the mesh. Typed against this protocol, those callers name only
what they use, and importing it costs nothing (no Mininet).
"""
from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from testbed.journal import Journal
    from testbed.links.base import LinkBackend
    from testbed.net.control import Control
    from testbed.net.hosts import TestbedHost
    from testbed.shape import LinkShape

__all__ = ["RunningTestbed"]


class RunningTestbed(Protocol):
    """The running-network API: hosts and their addresses, processes in hosts, live link
    changes and drops (:mod:`testbed.net.control`), the run's journal."""

    topology: Any           # what the network was built from (a Topology, with its sections)
    net: Any                # the Mininet net (Mininet's CLI runs on it)
    control: Control
    journal: Journal
    backend: LinkBackend

    @property
    def host_names(self) -> list[str]: ...

    def host(self, name: str) -> TestbedHost: ...

    def ip(self, host: str) -> str: ...

    def popen(self, host: str | TestbedHost, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen: ...

    def set_hosts_entries(self, host: str, entries: Mapping[str, str]) -> None: ...

    def set_resolver(self, host: str, ip: str | None) -> None: ...

    def set_link(self, a: str, b: str, direction: str | None = None,
                 **params: Any) -> tuple[LinkShape, LinkShape]: ...

    def link_down(self, a: str, b: str) -> None: ...

    def link_up(self, a: str, b: str) -> None: ...

    def drop(self, a: str, b: str, oneway: bool = False) -> None: ...

    def restore(self, a: str | None = None, b: str | None = None) -> int: ...
