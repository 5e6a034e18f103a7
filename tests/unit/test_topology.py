"""Valid topologies: defaults as in Mininet, per-direction overrides, to_mininet(),
sections, and the shipped example files. No root needed."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import testbed.mesh.spec  # noqa: F401  (registers the mesh: section the shipped meshes use)
from testbed.shape import LinkShape
from testbed.topology.load import load_topology, parse_topology, register_section, resolve_topology
from testbed.topology.reader import Context
from testbed.topology.spec import TopologyError

REPO = Path(__file__).resolve().parents[2]

ISSUE_EXAMPLE = """\
name: line3
hosts:
  h1: {}
  h2: {ip: 10.0.0.2/8}
switches:
  s1: {}
links:
  - between: [h1, s1]
    delay: 10ms
    jitter: 1ms
    loss: 0.5%
    bw: 20Mbit
    queue: 100
  - between: [h2, s1]
"""


def test_issue_example() -> None:
    t = parse_topology(ISSUE_EXAMPLE, "x.yaml")
    assert t.name == "line3" and t.source == "x.yaml"
    assert [(h.name, h.ip, h.mac, h.line) for h in t.hosts] == [
        ("h1", "10.0.0.1/8", None, 3), ("h2", "10.0.0.2/8", None, 4)]
    assert [(s.name, s.line) for s in t.switches] == [("s1", 6)]
    first, second = t.links
    want = LinkShape(delay_ms=10, jitter_ms=1, loss_pct=0.5, bw_mbit=20, queue_pkts=100)
    assert (first.node1, first.node2, first.shape1, first.shape2, first.line) == ("h1", "s1", want, want, 8)
    assert (second.shape1, second.shape2, second.line) == (LinkShape(), LinkShape(), 14)
    assert t.node_names() == {"h1", "h2", "s1"}
    assert t.host("h2").ip == "10.0.0.2/8"
    assert t.link("s1", "h1") is first
    assert first.shape_from("s1") == want
    with pytest.raises(KeyError):
        t.host("s1")


def test_specs_are_frozen() -> None:
    t = parse_topology(ISSUE_EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.name = "other"  # type: ignore[misc]  (frozen: the error is the point)
    with pytest.raises(TypeError):
        t.sections["mesh"] = {}  # type: ignore[index]  (read-only: the error is the point)


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    p = tmp_path / "my_net.yaml"
    p.write_text("hosts: {a: {}}\n")
    assert load_topology(p).name == "my_net"
    assert parse_topology("hosts: {a: {}}\n").name == "topology"


@pytest.mark.parametrize("hosts,want", [
    # Mininet: the n-th host gets 10.0.0.n/8
    ("h1: {}\nh2: {}\nh3: {}", ["10.0.0.1/8", "10.0.0.2/8", "10.0.0.3/8"]),
    # the counter advances for every host, as in Mininet.addHost
    ("a: {ip: 10.0.0.50/8}\nb: {}", ["10.0.0.50/8", "10.0.0.2/8"]),
    # addresses someone states are skipped instead of handed out twice
    ("a: {}\nb: {}\nc: {ip: 10.0.0.2/8}", ["10.0.0.1/8", "10.0.0.3/8", "10.0.0.2/8"]),
    # a bare address takes ip_base's prefix length (default /8)
    ("a: {ip: 10.1.2.3}", ["10.1.2.3/8"]),
    # a null value is an empty host
    ("a:\nb:", ["10.0.0.1/8", "10.0.0.2/8"]),
])
def test_default_addresses(hosts: str, want: list[str]) -> None:
    text = "hosts:\n" + "".join(f"  {line}\n" for line in hosts.splitlines())
    assert [h.ip for h in parse_topology(text).hosts] == want


def test_ip_base() -> None:
    t = parse_topology("ip_base: 192.168.7.0/24\nhosts: {a: {}, b: {ip: 192.168.7.9}}\n")
    assert [h.ip for h in t.hosts] == ["192.168.7.1/24", "192.168.7.9/24"]


def test_mac_is_read_as_text_and_lowercased() -> None:
    # unquoted, YAML 1.1 would read 10:20:30:40:50:58 as a base-60 integer
    t = parse_topology("hosts:\n  h1: {mac: 10:20:30:40:50:58}\n  h2: {mac: 00:00:00:00:00:AB}\n")
    assert [h.mac for h in t.hosts] == ["10:20:30:40:50:58", "00:00:00:00:00:ab"]


def test_per_direction_overrides() -> None:
    t = parse_topology("""\
hosts: {h1: {}, h2: {}}
links:
  - between: [h1, h2]
    delay: 10ms
    bw: 20Mbit
    forward: {delay: 5ms, loss: 1%}
    reverse: {bw: none, queue: 50}
""")
    (lk,) = t.links
    assert lk.shape1 == LinkShape(delay_ms=5, loss_pct=1, bw_mbit=20)           # h1 -> h2
    assert lk.shape2 == LinkShape(delay_ms=10, bw_mbit=None, queue_pkts=50)     # h2 -> h1


@pytest.mark.parametrize("params,want", [
    ("delay: 250us", LinkShape(delay_ms=0.25)),
    ("delay: 1.5s", LinkShape(delay_ms=1500)),
    ("delay: 7", LinkShape(delay_ms=7)),                   # a bare number is ms
    ("bw: 1Gbit", LinkShape(bw_mbit=1000)),
    ("bw: 500kbit", LinkShape(bw_mbit=0.5)),
    ("bw: 1mbps", LinkShape(bw_mbit=8)),                    # tc: bps = bytes/s
    ("bw: 12.5", LinkShape(bw_mbit=12.5)),                  # a bare number is Mbit/s
    ("bw: off", LinkShape()),                               # YAML 1.1 bool, read as text
    ("loss: 2", LinkShape(loss_pct=2)),
    ("{delay: 10ms, duplicate: 1%, reorder: 25%, corrupt: 0.1%, loss: 3%, loss_correlation: 50%}",
     LinkShape(delay_ms=10, duplicate_pct=1, reorder_pct=25, corrupt_pct=0.1, loss_pct=3,
               loss_corr_pct=50)),
])
def test_units(params: str, want: LinkShape) -> None:
    body = params[1:-1].replace(", ", "\n    ") if params.startswith("{") else params
    t = parse_topology(f"hosts: {{a: {{}}, b: {{}}}}\nlinks:\n  - between: [a, b]\n    {body}\n")
    assert t.links[0].shape1 == want == t.links[0].shape2


def test_merge_keys_share_link_settings() -> None:
    t = parse_topology("""\
hosts: {a: {}, b: {}, c: {}}
links:
  - &wan {between: [a, b], delay: 20ms, loss: 1%}
  - {<<: *wan, between: [b, c], delay: 5ms}
""")
    assert t.links[1].shape1 == LinkShape(delay_ms=5, loss_pct=1)
    assert (t.links[1].node1, t.links[1].node2) == ("b", "c")


def test_optional_sections_may_be_empty() -> None:
    t = parse_topology("hosts: {h1: {}}\nswitches:\nlinks:\n")
    assert (t.switches, t.links) == ((), ())


def test_to_mininet() -> None:
    pytest.importorskip("mininet.topo")
    t = parse_topology(ISSUE_EXAMPLE.replace("h2: {ip: 10.0.0.2/8}",
                                             "h2: {ip: 10.0.0.2/8, mac: '00:00:00:00:00:02'}"))
    topo = t.to_mininet()
    assert topo.hosts(sort=False) == ["h1", "h2"] and topo.switches() == ["s1"]
    assert topo.nodeInfo("h1") == {"ip": "10.0.0.1/8"}
    assert topo.nodeInfo("h2") == {"ip": "10.0.0.2/8", "mac": "00:00:00:00:00:02"}
    links = sorted(topo.links(sort=False, withInfo=True), key=lambda x: x[2]["node1"])
    (a, b, info1), (_, _, info2) = links
    assert (a, b, info1["port1"], info1["port2"]) == ("h1", "s1", 0, 1)   # h1-eth0 <-> s1-eth1
    assert (info2["node1"], info2["port1"], info2["port2"]) == ("h2", 0, 2)
    assert info1["shape1"] == t.links[0].shape1 and info1["shape2"] == t.links[0].shape2


def test_to_mininet_gives_switches_without_digits_a_dpid() -> None:
    # Mininet derives a dpid from the digits in a switch name and refuses names without any
    pytest.importorskip("mininet.topo")
    t = parse_topology("hosts: {a: {}}\nswitches: {s1: {}, core: {}, s2: {}, edge: {}}\n")
    topo = t.to_mininet()
    assert topo.nodeInfo("s1") == {"isSwitch": True} == topo.nodeInfo("s2")   # Mininet's s1 -> 1
    assert topo.nodeInfo("core")["dpid"] == "0000000000000003"
    assert topo.nodeInfo("edge")["dpid"] == "0000000000000004"


def test_register_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("testbed.topology.load._SECTIONS", {})

    def parse_mesh(node, ctx: Context):
        fields = ctx.mapping(node, "mesh", allowed=("registry",), required=("registry",))
        members = ctx.sequence(fields["registry"][1], "mesh.registry")
        return tuple(ctx.node_ref(m, "mesh.registry", "host") for m in members)

    register_section("mesh", parse_mesh)
    register_section("mesh", parse_mesh)  # idempotent
    text = "hosts: {h1: {}, h2: {}}\nswitches: {s1: {}}\nmesh:\n  registry: [h1, h2]\n"
    assert parse_topology(text).sections == {"mesh": ("h1", "h2")}
    with pytest.raises(TopologyError) as info:
        parse_topology(text.replace("[h1, h2]", "[h1,\n    s1]"), "m.yaml")
    assert (info.value.line, info.value.message) == \
        (5, "mesh.registry: 's1' is a switch; this needs a host; hosts: h1, h2")
    with pytest.raises(TopologyError) as info:
        parse_topology("hosts: {h1: {}}\nmeshh: {}\n")
    assert info.value.line == 2 and "allowed: name, ip_base, hosts, switches, links, mesh" in info.value.message
    with pytest.raises(ValueError):
        register_section("hosts", parse_mesh)
    with pytest.raises(ValueError):
        register_section("mesh", lambda n, c: None)


def test_context_value_rejects_duplicate_keys() -> None:
    import yaml
    ctx = Context("f.yaml")
    node = yaml.compose("a: {x: 1, y: [1, two]}\nb: 2\n")
    assert ctx.value(node, "sec") == {"a": {"x": 1, "y": [1, "two"]}, "b": 2}
    with pytest.raises(TopologyError) as info:
        ctx.value(yaml.compose("a: 1\nb: 2\na: 3\n"), "sec")
    assert str(info.value) == "f.yaml:3: sec: duplicate key 'a' (first at line 1)"


def test_resolve_topology(tmp_path: Path) -> None:
    p = tmp_path / "t.yaml"
    p.write_text("hosts: {x1: {}}\n")
    assert resolve_topology(str(p)).hosts[0].name == "x1"
    assert resolve_topology("tree,2,2").source == "stock:tree,2,2"


@pytest.mark.parametrize("path", sorted((REPO / "topologies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_topologies_load(path: Path) -> None:
    t = load_topology(path)
    assert t.hosts and t.name


def test_line3_is_the_default_demo() -> None:
    t = load_topology(REPO / "topologies" / "line3.yaml")
    assert [h.ip for h in t.hosts] == ["10.0.0.1/8", "10.0.0.2/8", "10.0.0.3/8"]
    assert t.link("h1", "s1").shape1 == LinkShape(delay_ms=10) == t.link("h1", "s1").shape2
