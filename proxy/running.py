"""What every component attached to a running sidecar reads of it (the admin endpoints, the
xDS client): a Protocol, so those components need not import :mod:`proxy.server`, which
imports them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.config.bootstrap import Bootstrap
    from proxy.stats import Stats
    from proxy.upstream.cluster import ClusterManager

__all__ = ["RunningServer"]


class RunningServer(Protocol):
    """The bootstrap it was started with, its stats and its cluster manager;
    :class:`proxy.server.Server` provides it."""

    @property
    def bootstrap(self) -> Bootstrap: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def cluster_manager(self) -> ClusterManager: ...
