"""Mininet's stock topologies (``mn --topo``) as :class:`Topology` specs.

``stock_topology("tree,depth=2,fanout=2")`` gives the same node names, links (order and
ends) and addresses as ``mininet.topolib.TreeTopo(depth=2, fanout=2)`` built by
``Mininet``: hosts are numbered in Mininet's natural name order (h2 before h10).
Links are unshaped. The generators are re-implemented (a few lines each) so that
specs need no Mininet import; tests compare them with Mininet's classes.
"""
from __future__ import annotations

import re
from typing import Callable

from testbed.shape import LinkShape
from testbed.topology.spec import (HostSpec, LinkSpec, SwitchSpec, Topology, TopologyError,
                                   default_addresses)

__all__ = ["stock_topology", "STOCK", "STOCK_HELP", "natural_key"]

MAX_NODES = 1000


class _Builder:
    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.switches: list[str] = []
        self.links: list[tuple[str, str]] = []

    def host(self, name: str) -> str:
        self.hosts.append(name)
        return name

    def switch(self, name: str) -> str:
        self.switches.append(name)
        return name

    def link(self, a: str, b: str) -> None:
        self.links.append((a, b))


def _single(b: _Builder, k: int = 2) -> None:
    s = b.switch("s1")
    for h in range(1, k + 1):
        b.link(b.host(f"h{h}"), s)


def _minimal(b: _Builder) -> None:
    _single(b, 2)


def _linear(b: _Builder, k: int = 2, n: int = 1) -> None:
    last = None
    for i in range(1, k + 1):
        s = b.switch(f"s{i}")
        for j in range(1, n + 1):
            b.link(b.host(f"h{i}" if n == 1 else f"h{j}s{i}"), s)
        if last:
            b.link(s, last)
        last = s


def _tree(b: _Builder, depth: int = 1, fanout: int = 2) -> None:
    counters = {"h": 1, "s": 1}

    def add(d: int) -> str:
        kind = "s" if d > 0 else "h"
        name = f"{kind}{counters[kind]}"
        counters[kind] += 1
        if d == 0:
            return b.host(name)
        b.switch(name)
        for _ in range(fanout):
            b.link(name, add(d - 1))
        return name

    add(depth)


# name -> (generator, parameter names in positional order, node count for the parameters)
STOCK: dict[str, tuple[Callable[..., None], tuple[str, ...], Callable[..., int]]] = {
    "minimal": (_minimal, (), lambda: 3),
    "single": (_single, ("k",), lambda k=2: k + 1),
    "linear": (_linear, ("k", "n"), lambda k=2, n=1: k * (n + 1)),
    "tree": (_tree, ("depth", "fanout"),
             lambda depth=1, fanout=2: sum(fanout ** i for i in range(depth + 1))),
}
STOCK_HELP = ("stock topologies: minimal, single[,k], linear[,k[,n]], tree[,depth[,fanout]] "
              "(as Mininet's --topo; e.g. single,3  linear,4,2  tree,depth=2,fanout=2)")


def natural_key(text: str) -> list[object]:
    """Mininet's ``natural`` sort key: digit runs compare as numbers."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", text)]


def stock_topology(spec: str) -> Topology:
    file = f"stock:{spec}"
    kind, *args = [a.strip() for a in spec.split(",")]
    if kind not in STOCK:
        raise TopologyError(file, None, f"unknown stock topology {kind!r}; {STOCK_HELP}")
    build, names, count = STOCK[kind]
    params: dict[str, int] = {}
    keywords = False
    for pos, arg in enumerate(args):
        key, sep, raw = arg.partition("=")
        keywords = keywords or bool(sep)
        if not sep:
            if pos >= len(names) or keywords:
                raise TopologyError(file, None, f"{kind}: unexpected parameter {arg!r}; "
                                    f"parameters: {', '.join(names) or 'none'}")
            key, raw = names[pos], arg
        if key not in names:
            raise TopologyError(file, None, f"{kind}: unknown parameter {key!r}; "
                                f"parameters: {', '.join(names) or 'none'}")
        if key in params:
            raise TopologyError(file, None, f"{kind}: parameter {key!r} given twice")
        if not raw.isdigit() or int(raw) < (0 if key == "depth" else 1):
            raise TopologyError(file, None, f"{kind}: {key} must be a whole number >= "
                                f"{0 if key == 'depth' else 1}, got {raw!r}")
        params[key] = int(raw)
    if count(**params) > MAX_NODES:
        raise TopologyError(file, None, f"{kind}: {count(**params)} nodes is more than the "
                            f"{MAX_NODES} minimesh supports")
    b = _Builder()
    build(b, **params)
    ips = default_addresses(sorted(b.hosts, key=natural_key), {})
    none = LinkShape()
    name = "-".join([kind, *(str(params[k]) for k in names if k in params)])
    return Topology(
        name=name,
        hosts=tuple(HostSpec(name=h, ip=ips[h], mac=None, line=0) for h in b.hosts),
        switches=tuple(SwitchSpec(name=s, line=0) for s in b.switches),
        links=tuple(LinkSpec(node1=a, node2=z, shape1=none, shape2=none, line=0) for a, z in b.links),
        source=file,
    )
