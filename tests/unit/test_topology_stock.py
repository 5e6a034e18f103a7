"""Stock topologies by name: the same names, links, ports and addresses as Mininet's own
SingleSwitchTopo / LinearTopo / TreeTopo built by Mininet (no root: the address
numbering is Mininet's buildFromTopo loop, reproduced with Mininet's ipAdd)."""
from __future__ import annotations

import pytest

from testbed.shape import LinkShape
from testbed.topology.spec import TopologyError
from testbed.topology.stock import stock_topology

mn_topo = pytest.importorskip("mininet.topo")
mn_topolib = pytest.importorskip("mininet.topolib")
mn_util = pytest.importorskip("mininet.util")

CASES = [
    ("minimal", mn_topo.MinimalTopo, {}),
    ("single", mn_topo.SingleSwitchTopo, {}),
    ("single,3", mn_topo.SingleSwitchTopo, {"k": 3}),
    ("single,k=5", mn_topo.SingleSwitchTopo, {"k": 5}),
    ("linear,4", mn_topo.LinearTopo, {"k": 4}),
    ("linear,4,2", mn_topo.LinearTopo, {"k": 4, "n": 2}),
    ("linear,k=3,n=12", mn_topo.LinearTopo, {"k": 3, "n": 12}),
    ("tree", mn_topolib.TreeTopo, {}),
    ("tree,2,2", mn_topolib.TreeTopo, {"depth": 2, "fanout": 2}),
    ("tree,depth=2,fanout=2", mn_topolib.TreeTopo, {"depth": 2, "fanout": 2}),
    ("tree,3,4", mn_topolib.TreeTopo, {"depth": 3, "fanout": 4}),
    ("tree,depth=0", mn_topolib.TreeTopo, {"depth": 0}),
]


def mininet_addresses(topo) -> dict[str, str]:
    """What Mininet(topo=...) assigns: buildFromTopo adds topo.hosts() (natural order),
    Mininet.addHost gives the n-th one ipAdd(n)/8."""
    base, prefix = mn_util.netParse("10.0.0.0/8")
    return {h: f"{mn_util.ipAdd(i, ipBaseNum=base, prefixLen=prefix)}/{prefix}"
            for i, h in enumerate(topo.hosts(), start=1)}


def link_table(topo) -> list[tuple[str, str, int, int]]:
    return sorted((i["node1"], i["node2"], i["port1"], i["port2"])
                  for _, _, i in topo.links(sort=False, withInfo=True))


@pytest.mark.parametrize("spec,cls,kwargs", CASES, ids=[c[0] for c in CASES])
def test_matches_mininet(spec: str, cls, kwargs: dict) -> None:
    ours = stock_topology(spec)
    theirs = cls(**kwargs)
    assert [h.name for h in ours.hosts] == list(theirs.hosts(sort=False))
    assert [s.name for s in ours.switches] == list(theirs.switches(sort=False))
    assert {h.name: h.ip for h in ours.hosts} == mininet_addresses(theirs)
    built = ours.to_mininet()
    assert link_table(built) == link_table(theirs)      # same ends, same port numbers
    assert all(lk.shape1 == lk.shape2 == LinkShape() for lk in ours.links)
    assert ours.source == f"stock:{spec}"


def test_natural_order_addresses() -> None:
    # Mininet numbers hosts in natural name order: h1s1, h1s2, ... before h2s1
    t = stock_topology("linear,2,2")
    assert {h.name: h.ip for h in t.hosts} == {
        "h1s1": "10.0.0.1/8", "h1s2": "10.0.0.2/8", "h2s1": "10.0.0.3/8", "h2s2": "10.0.0.4/8"}


def test_names() -> None:
    assert [stock_topology(s).name for s in ("single,3", "linear,4,2", "tree,depth=2,fanout=3")] == [
        "single-3", "linear-4-2", "tree-2-3"]


def test_stock_error_has_no_line() -> None:
    with pytest.raises(TopologyError) as info:
        stock_topology("tree,x")
    assert info.value.line is None
    assert str(info.value) == "stock:tree,x: tree: depth must be a whole number >= 0, got 'x'"
