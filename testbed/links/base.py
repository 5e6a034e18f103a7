"""The link-emulation backend interface.

A backend is injected into Mininet like Mininet's own ``link=`` class:

    backend = select_backend("auto", journal)          # testbed.links.select_backend
    net = Mininet(topo=..., link=backend.link_class, switch=LinuxBridge, controller=None)

``backend.link_class`` is a :class:`mininet.link.Link` subclass (or a partial of one)
that accepts two extra keyword parameters from ``Topo.addLink``:

    shape1: LinkShape   # direction node1 -> node2 (traffic leaving node1's interface)
    shape2: LinkShape   # direction node2 -> node1

Every created link object also implements :class:`ShapedLink`, the runtime primitives
that fault injection builds on (live change, down/up).
"""
from __future__ import annotations

import abc
from typing import Protocol, runtime_checkable

from testbed.shape import LinkShape


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this kernel/machine; the message says why."""


@runtime_checkable
class ShapedLink(Protocol):
    """Runtime operations every minimesh link supports, whatever the backend."""

    def get_shapes(self) -> tuple[LinkShape, LinkShape]:
        """(node1->node2, node2->node1) shapes currently in force."""
        ...

    def set_shapes(self, forward: LinkShape | None = None, backward: LinkShape | None = None) -> None:
        """Change the shape live, while traffic flows; None keeps that direction as is.
        Takes effect within 100 ms (it is synchronous: done when this returns)."""
        ...

    def set_up(self, up: bool) -> None:
        """Administratively bring both ends of the link down (no traffic) or up."""
        ...


class LinkBackend(abc.ABC):
    """A way of emulating link shapes. Chosen once per run."""

    name: str = ""

    @property
    @abc.abstractmethod
    def link_class(self) -> type:
        """A Mininet Link class (or partial) accepting shape1=/shape2= parameters."""

    def describe(self) -> str:
        return self.name
