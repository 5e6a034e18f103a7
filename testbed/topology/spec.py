"""Topology specs: validated, frozen data describing a network before anything exists.

A :class:`Topology` is produced by :mod:`testbed.topology.load` (YAML files, stock
topologies) and turned into a Mininet ``Topo`` by :meth:`Topology.to_mininet`; the
running network is built elsewhere from that ``Topo``.
"""
from __future__ import annotations

import ipaddress
import re
import types
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from testbed.shape import LinkShape

__all__ = ["TopologyError", "HostSpec", "SwitchSpec", "LinkSpec", "Topology",
           "NODE_NAME_RE", "NODE_NAME_MAX", "IFNAME_MAX", "node_name_problem", "DEFAULT_IP_BASE",
           "default_addresses", "switch_dpids"]


class TopologyError(Exception):
    """A topology is invalid. ``str(e)`` is ``file:line: message`` (``file: message``
    when no line applies, e.g. a file that cannot be read)."""

    def __init__(self, file: str, line: int | None, message: str):
        self.file = file
        self.line = line
        self.message = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")


# Mininet names interfaces <node>-eth<N>; Linux allows 15 characters (IFNAMSIZ - 1).
# 10 + len("-eth") + one digit = 15; the parser also checks nodes with >= 10 links.
NODE_NAME_MAX = 10
IFNAME_MAX = 15
NODE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
DEFAULT_IP_BASE = ipaddress.IPv4Network("10.0.0.0/8")


def node_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a node name, or None if it can."""
    if not NODE_NAME_RE.fullmatch(name):
        return (f"bad node name {name!r}: use a letter followed by letters, digits or _ "
                "(Mininet names interfaces <node>-eth<N>)")
    if len(name) > NODE_NAME_MAX:
        return (f"node name {name!r} is {len(name)} characters, at most {NODE_NAME_MAX} allowed "
                "(interface <node>-eth<N> must fit Linux's 15-character limit)")
    return None


@dataclass(frozen=True)
class HostSpec:
    name: str
    ip: str            # CIDR, e.g. "10.0.0.1/8"; always filled in
    mac: str | None    # "00:00:00:00:00:01" (lower case) or None for Mininet's random MAC
    line: int          # 1-based line in the source, 0 for stock topologies


@dataclass(frozen=True)
class SwitchSpec:
    name: str
    line: int


@dataclass(frozen=True)
class LinkSpec:
    node1: str
    node2: str
    shape1: LinkShape  # node1 -> node2
    shape2: LinkShape  # node2 -> node1
    line: int

    def shape_from(self, node: str) -> LinkShape:
        """The shape of traffic leaving ``node`` over this link."""
        if node == self.node1:
            return self.shape1
        if node == self.node2:
            return self.shape2
        raise KeyError(f"{node} is not an end of link {self.node1}-{self.node2}")


@dataclass(frozen=True)
class Topology:
    name: str
    hosts: tuple[HostSpec, ...]
    switches: tuple[SwitchSpec, ...]
    links: tuple[LinkSpec, ...]
    source: str = "<string>"   # file path, "<string>" or "stock:<spec>"
    sections: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.sections, types.MappingProxyType):
            object.__setattr__(self, "sections", types.MappingProxyType(dict(self.sections)))

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in topology {self.name!r}; hosts: "
                       + ", ".join(h.name for h in self.hosts))

    def link(self, a: str, b: str) -> LinkSpec:
        """The link between nodes ``a`` and ``b`` (either order)."""
        for lk in self.links:
            if {lk.node1, lk.node2} == {a, b}:
                return lk
        raise KeyError(f"no link between {a!r} and {b!r} in topology {self.name!r}")

    def node_names(self) -> set[str]:
        return {h.name for h in self.hosts} | {s.name for s in self.switches}

    def to_mininet(self) -> Any:
        """A ``mininet.topo.Topo`` with the hosts, switches and links in this order.

        Links carry ``shape1``/``shape2`` (LinkShape) parameters for the minimesh link
        class; the Mininet net must be built with such a ``link=`` class.
        """
        from mininet.topo import Topo  # lazy: specs are usable without Mininet

        topo = Topo()
        for h in self.hosts:
            params: dict[str, Any] = {"ip": h.ip}
            if h.mac is not None:
                params["mac"] = h.mac
            topo.addHost(h.name, **params)
        dpids = switch_dpids([s.name for s in self.switches])
        for s in self.switches:
            topo.addSwitch(s.name, **({"dpid": dpids[s.name]} if s.name in dpids else {}))
        for lk in self.links:
            topo.addLink(lk.node1, lk.node2, shape1=lk.shape1, shape2=lk.shape2)
        return topo


def switch_dpids(names: Iterable[str]) -> dict[str, str]:
    """Datapath IDs for switches whose names hold no digits.

    Mininet derives a switch's dpid from the first number in its name (s23 -> 23) and
    refuses names without one; such switches get the smallest numbers no other switch
    derives, as 16 hex digits. Names with digits are left to Mininet (absent here).
    """
    names = list(names)
    taken = {int(m.group()) for n in names if (m := re.search(r"\d+", n))}
    out: dict[str, str] = {}
    nxt = 1
    for name in names:
        if not re.search(r"\d", name):
            while nxt in taken:
                nxt += 1
            out[name] = f"{nxt:016x}"
            taken.add(nxt)
    return out


def default_addresses(order: Iterable[str], explicit: Mapping[str, ipaddress.IPv4Address],
                      base: ipaddress.IPv4Network = DEFAULT_IP_BASE) -> dict[str, str]:
    """Mininet's numbering: a counter starts at base + 1 and advances once per host in
    ``order`` (as ``Mininet.addHost`` does); a host not in ``explicit`` takes the
    counter's address, skipping addresses that some host states explicitly.

    Returns name -> CIDR for the hosts not in ``explicit``. Raises ValueError when
    ``base`` runs out of addresses.
    """
    used = set(explicit.values())
    out: dict[str, str] = {}
    nxt = 1
    last = base.num_addresses - 2  # keep the broadcast address free
    for name in order:
        if name not in explicit:
            while base.network_address + nxt in used:
                nxt += 1
            if nxt > last:
                raise ValueError(f"no free address left in {base} for host {name}")
            addr = base.network_address + nxt
            used.add(addr)
            out[name] = f"{addr}/{base.prefixlen}"
        nxt += 1
    return out
