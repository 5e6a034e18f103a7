"""In-memory link backend for unit tests: no interface, no process, no root.

``FakeLink`` is a :class:`mininet.link.Link` whose ``makeIntfPair`` creates nothing and
whose interfaces (:class:`FakeIntf`) run no commands, so it works with any node object
that has Mininet's ``newPort``/``addIntf``/``delIntf`` (real Mininet nodes too, but then
no frame can flow). It records what callers asked for: the shapes in force, every
``set_shapes`` call, and the up/down state, for tests of code built on
:class:`~testbed.links.base.ShapedLink` (fault injection, the CLI's link commands).
"""
from __future__ import annotations

from typing import Any

from mininet.link import Intf, Link

from testbed.links.tcparams import ShapedIntf, prepare_link
from testbed.shape import LinkShape


class FakeIntf(Intf):
    """An interface that only remembers its configuration."""

    def config(self, mac: str | None = None, ip: str | None = None, ifconfig: Any = None,
               up: bool = True, **_params: Any) -> dict[str, Any]:
        self.mac = mac
        if ip:
            self.ip, _, plen = ip.partition("/")
            self.prefixLen = int(plen) if plen else None
        self.up = up
        return {}

    def cmd(self, *args: Any, **kwargs: Any) -> str:
        return ""

    def ifconfig(self, *args: Any) -> str:
        if "up" in args:
            self.up = True
        if "down" in args:
            self.up = False
        return ""

    def delete(self) -> None:
        if self.node is not None:
            self.node.delIntf(self)
        self.link = None

    def status(self) -> str:
        return "OK"


class FakeShapedIntf(ShapedIntf, FakeIntf):
    """A FakeIntf that takes TCIntf's parameters like the real links' interfaces."""


class FakeLink(Link):
    def __init__(self, node1: Any, node2: Any, shape1: LinkShape | None = None,
                 shape2: LinkShape | None = None, journal: Any = None, **params: Any):
        self._shapes = prepare_link(shape1, shape2, params, default_intf=FakeShapedIntf)
        self.history: list[tuple[str, Any]] = [("create", self._shapes)]
        self._up = True
        params["fast"] = True
        super().__init__(node1, node2, **params)

    def makeIntfPair(self, intfname1: str, intfname2: str, *args: Any, **kwargs: Any) -> None:  # Mininet's name
        self.intf_names = (intfname1, intfname2)

    def get_shapes(self) -> tuple[LinkShape, LinkShape]:
        return self._shapes

    def set_shapes(self, forward: LinkShape | None = None, backward: LinkShape | None = None) -> None:
        self._shapes = (forward or self._shapes[0], backward or self._shapes[1])
        self.history.append(("set_shapes", self._shapes))

    def set_up(self, up: bool) -> None:
        self._up = bool(up)
        for intf in (self.intf1, self.intf2):
            intf.up = self._up
        self.history.append(("set_up", self._up))

    def is_up(self) -> bool:
        return self._up
