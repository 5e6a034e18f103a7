"""Malformed topology YAML: each case asserts the exact line and that the message names
the field (and, where there is a set, what is allowed). No root needed."""
from __future__ import annotations

import textwrap

import pytest

from testbed.topology.load import load_topology, parse_topology, resolve_topology
from testbed.topology.spec import TopologyError

OK_HOSTS = "hosts:\n  h1: {}\n  h2: {}\nswitches:\n  s1: {}\n"  # lines 1-5


def link(body: str) -> str:
    """OK_HOSTS plus a links section whose first item starts on line 7."""
    return OK_HOSTS + "links:\n" + textwrap.dedent(body)


# (id, yaml text, expected line, substrings the message must contain)
CASES = [
    ("empty-file", "", 1, ["empty", "hosts"]),
    ("only-comments", "# nothing here\n", 1, ["empty", "hosts"]),
    ("syntax-error", "hosts:\n  h1: {}\n  h2: [unclosed\nswitches: {}\n", 4, ["YAML syntax error"]),
    ("unclosed-flow-list", "hosts:\n  h1: {}\nlinks:\n  - between: [h1, s1\n  - between: [h2, s1]\n", 5,
     ["YAML syntax error", "starts at line 4"]),
    ("bad-indentation", "hosts:\n  h1: {}\n h2: {}\n", 3, ["YAML syntax error"]),
    ("top-level-list", "- h1\n- h2\n", 1, ["top level", "expected a mapping"]),
    ("missing-hosts", "name: x\nswitches: {s1: {}}\n", 1, ["'hosts'", "missing"]),
    ("unknown-top-level", "name: x\nhots:\n  h1: {}\n", 2,
     ["unknown field 'hots'", "allowed: name, ip_base, hosts, switches, links"]),
    ("hosts-is-list", "hosts:\n  - h1\n  - h2\n", 2, ["hosts", "expected a mapping", "a list"]),
    ("hosts-empty", "hosts: {}\n", 1, ["hosts", "at least one host"]),
    ("unknown-host-field", "hosts:\n  h1: {}\n  h2: {ipaddr: 10.0.0.2}\n", 3,
     ["hosts.h2", "unknown field 'ipaddr'", "allowed: ip, mac"]),
    ("host-value-is-list", "hosts:\n  h1: [10.0.0.1]\n", 2, ["hosts.h1", "expected a mapping"]),
    ("duplicate-host-key", "hosts:\n  h1: {}\n  h2: {}\n  h1: {ip: 10.0.0.9}\n", 4,
     ["hosts", "duplicate key 'h1'", "line 2"]),
    ("host-and-switch-same-name", "hosts:\n  h1: {}\n  s1: {}\nswitches:\n  s1: {}\n", 5,
     ["switches.s1", "already used by host s1", "line 3"]),
    ("bad-node-name-dash", "hosts:\n  h1: {}\n  web-1: {}\n", 3, ["hosts.web-1", "bad node name", "letter"]),
    ("bad-node-name-digit", "hosts:\n  1h: {}\n", 2, ["hosts.1h", "bad node name"]),
    ("node-name-too-long", "hosts:\n  h1: {}\nswitches:\n  switch_core1: {}\n", 4,
     ["switches.switch_core1", "at most 10", "15-character"]),
    ("invalid-ip", "hosts:\n  h1: {}\n  h2:\n    ip: 10.0.0.300/8\n", 4, ["hosts.h2.ip", "not an IPv4 address"]),
    ("invalid-prefix", "hosts:\n  h1: {ip: 10.0.0.1/33}\n", 2, ["hosts.h1.ip", "not an IPv4 address"]),
    ("ip-is-network-address", "hosts:\n  h1: {ip: 10.0.0.0/8}\n", 2, ["hosts.h1.ip", "network address"]),
    ("ip-loopback", "hosts:\n  h1: {ip: 127.0.0.2/8}\n", 2, ["hosts.h1.ip", "loopback"]),
    ("duplicate-ip", "hosts:\n  h1: {ip: 10.0.0.5/8}\n  h2: {}\n  h3: {ip: 10.0.0.5/24}\n", 4,
     ["hosts.h3.ip", "10.0.0.5", "already used by host h1"]),
    ("ip-is-list", "hosts:\n  h1:\n    ip: [10.0.0.1/8]\n", 3, ["hosts.h1.ip", "expected an IPv4 address"]),
    ("bad-mac", "hosts:\n  h1: {mac: '00:00:00:00:01'}\n", 2, ["hosts.h1.mac", "six hex pairs"]),
    ("multicast-mac", "hosts:\n  h1: {mac: '01:00:5e:00:00:01'}\n", 2, ["hosts.h1.mac", "multicast"]),
    ("duplicate-mac", "hosts:\n  h1: {mac: 00:00:00:00:00:0a}\n  h2: {mac: 00:00:00:00:00:0A}\n", 3,
     ["hosts.h2.mac", "already used by host h1"]),
    ("unknown-switch-field", "hosts:\n  h1: {}\nswitches:\n  s1: {stp: true}\n", 4,
     ["switches.s1", "unknown field 'stp'"]),
    ("switch-named-like-system-nic", "hosts:\n  h1: {}\nswitches:\n  s1: {}\n  eth0: {}\n", 5,
     ["switches.eth0", "system interface name"]),
    ("switches-is-list", "hosts:\n  h1: {}\nswitches: [s1]\n", 3, ["switches", "expected a mapping"]),
    ("links-is-mapping", OK_HOSTS + "links:\n  h1: s1\n", 7, ["links", "expected a list"]),
    ("link-item-is-string", link("  - h1-s1\n"), 7, ["links[0]", "expected a mapping"]),
    ("link-missing-between", link("  - delay: 10ms\n"), 7, ["links[0]", "'between'", "missing"]),
    ("unknown-link-field", link("  - between: [h1, s1]\n    latency: 10ms\n"), 8,
     ["links[0]", "unknown field 'latency'", "allowed: between, delay, jitter, loss"]),
    ("between-three-names", link("  - between: [h1, h2, s1]\n"), 7,
     ["links[0].between", "two node names", "3"]),
    ("between-is-string", link("  - between: h1 s1\n"), 7, ["links[0].between", "expected a list"]),
    ("unknown-node", link("  - between: [h1, s1]\n  - between: [h2, s9]\n"), 8,
     ["links[1].between", "unknown node 's9'", "nodes: h1, h2, s1"]),
    ("link-to-itself", link("  - between: [s1, s1]\n"), 7, ["links[0].between", "itself"]),
    ("duplicate-link", link("  - between: [h1, s1]\n  - between: [h2, s1]\n  - between: [s1, h1]\n"), 9,
     ["links[2]", "second link between s1 and h1", "line 7"]),
    ("bad-time-unit", link("  - between: [h1, s1]\n    delay: 10 msec\n"), 8,
     ["links[0].delay", "bad time", "us, ms or s"]),
    ("bad-rate-unit", link("  - between: [h1, s1]\n    bw: 20 Mbps/s\n"), 8,
     ["links[0].bw", "bad rate", "kbit"]),
    ("loss-over-100", link("  - between: [h1, s1]\n    delay: 1ms\n    loss: 120%\n"), 9,
     ["links[0].loss", "between 0% and 100%"]),
    ("negative-delay", link("  - between: [h1, s1]\n    delay: -5\n"), 8, ["links[0].delay", "between 0 and 3600s"]),
    ("zero-bw", link("  - between: [h1, s1]\n    bw: 0\n"), 8, ["links[0].bw", "> 0"]),
    ("zero-queue", link("  - between: [h1, s1]\n    queue: 0\n"), 8, ["links[0].queue", "between 1 and 4294967295"]),
    ("queue-not-integer", link("  - between: [h1, s1]\n    queue: 1.5\n"), 8,
     ["links[0].queue", "whole number"]),
    ("jitter-over-delay", link("  - between: [h1, s1]\n    delay: 1ms\n    jitter: 5ms\n"), 9,
     ["links[0].jitter", "must not exceed delay"]),
    ("delay-is-list", link("  - between: [h1, s1]\n    delay: [1ms, 2ms]\n"), 8,
     ["links[0].delay", "single value", "a list"]),
    ("override-unknown-field", link("  - between: [h1, s1]\n    forward:\n      latency: 3ms\n"), 9,
     ["links[0].forward", "unknown field 'latency'", "delay"]),
    ("override-is-list", link("  - between: [h1, s1]\n    reverse: [delay, 3ms]\n"), 8,
     ["links[0].reverse", "expected a mapping"]),
    ("override-bad-unit", link("  - between: [h1, s1]\n    delay: 5ms\n    reverse: {delay: 5 sec}\n"), 9,
     ["links[0].reverse.delay", "bad time"]),
    ("override-makes-jitter-exceed", link(
        "  - between: [h1, s1]\n    delay: 5ms\n    jitter: 2ms\n    forward: {delay: 1ms}\n"), 9,
     ["links[0].jitter", "direction h1->s1", "must not exceed"]),
    ("duplicate-link-field", link("  - between: [h1, s1]\n    delay: 5ms\n    delay: 7ms\n"), 9,
     ["links[0]", "duplicate key 'delay'", "line 8"]),
    ("switch-loop", "hosts: {h1: {}}\nswitches: {s1: {}, s2: {}, s3: {}}\nlinks:\n"
                    "  - between: [s1, s2]\n  - between: [s2, s3]\n  - between: [s3, s1]\n", 6,
     ["links[2]", "loop of switches"]),
    ("bad-topology-name", "name: my topo!\nhosts: {h1: {}}\n", 1, ["name", "not allowed"]),
    ("bad-ip-base", "ip_base: 10.0.0.1/8\nhosts: {h1: {}}\n", 1, ["ip_base", "not an IPv4 network"]),
    ("ip-base-exhausted", "ip_base: 192.168.0.0/30\nhosts: {h1: {}, h2: {}, h3: {}}\n", 2,
     ["hosts", "no free address", "ip_base"]),
    ("alias-cycle-merge", "hosts:\n  h1: {}\n  h2: &a {<<: *a}\n", 3, ["hosts.h2", "alias refers back"]),
    # issue 14, point 7: values no backend can honour, and a misleading message
    ("bw-infinite", link("  - between: [h1, s1]\n    bw: .inf\n"), 8, ["links[0].bw", "at most 1Tbit"]),
    ("bw-nan", link("  - between: [h1, s1]\n    bw: .nan\n"), 8, ["links[0].bw", "at most"]),
    ("queue-over-32-bits", link("  - between: [h1, s1]\n    queue: 10000000000000\n"), 8,
     ["links[0].queue", "4294967295", "32-bit"]),
    ("delay-100000s", link("  - between: [h1, s1]\n    delay: 100000s\n"), 8,
     ["links[0].delay", "between 0 and 3600s", "100000s"]),
    ("delay-1e30s", link("  - between: [h1, s1]\n    delay: 1e30s\n"), 8,
     ["links[0].delay", "between 0 and 3600s", "1e30s"]),
    ("delay-nan", link("  - between: [h1, s1]\n    delay: .nan\n"), 8, ["links[0].delay", "between 0 and"]),
    ("jitter-reverse-huge", link("  - between: [h1, s1]\n    reverse: {jitter: 5000s}\n"), 8,
     ["links[0].reverse.jitter", "3600s"]),
    ("python-tag",
     "hosts:\n  h1: {}\n  h2: {}\nlinks:\n  - between: [h1, h2]\n    delay: !!python/object:os.system x\n", 6,
     ["links[0].delay", "cannot read value"]),
]


@pytest.mark.parametrize("text,line,parts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed(text: str, line: int, parts: list[str]) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "bad.yaml")
    e = info.value
    assert (e.file, e.line) == ("bad.yaml", line), str(e)
    assert str(e) == f"bad.yaml:{line}: {e.message}"
    for part in parts:
        assert part in e.message, f"{part!r} not in {e.message!r}"


def test_error_names_the_real_file(tmp_path) -> None:
    p = tmp_path / "t.yaml"
    p.write_text("hosts:\n  h1: {}\nlinks:\n  - between: [h1, x]\n")
    with pytest.raises(TopologyError) as info:
        load_topology(p)
    assert str(info.value).startswith(f"{p}:4: links[0].between: unknown node 'x'")


def test_missing_file_is_a_topology_error(tmp_path) -> None:
    with pytest.raises(TopologyError) as info:
        load_topology(tmp_path / "nope.yaml")
    assert info.value.line is None and "cannot read" in str(info.value)


def test_non_utf8_file(tmp_path) -> None:
    p = tmp_path / "t.yaml"
    p.write_bytes(b"hosts:\n  h\xff: {}\n")
    with pytest.raises(TopologyError) as info:
        load_topology(p)
    assert "UTF-8" in info.value.message


@pytest.mark.parametrize("arg,parts", [
    ("nope.yaml", ["no such topology file"]),
    ("ring,3", ["neither a topology file nor a stock topology", "linear"]),
    ("linear,0", ["k must be a whole number >= 1"]),
    ("tree,depth=2,fan=3", ["unknown parameter 'fan'", "depth, fanout"]),
    ("single,3,4", ["unexpected parameter '4'"]),
    ("linear,k=2,3", ["unexpected parameter '3'"]),
    ("single,k=2,k=3", ["given twice"]),
    ("tree,10,10", ["more than the 1000"]),
])
def test_bad_stock_spec(arg: str, parts: list[str]) -> None:
    with pytest.raises(TopologyError) as info:
        resolve_topology(arg)
    for part in parts:
        assert part in info.value.message, info.value.message


def test_interface_name_limit_counts_links() -> None:
    # a 10-character switch is fine up to eth9, its 11th link would be <name>-eth10 (16 chars)
    hosts = "".join(f"  h{i}: {{}}\n" for i in range(11))
    links = "".join(f"  - between: [h{i}, switch0001]\n" for i in range(11))
    text = "hosts:\n" + hosts + "switches:\n  switch0001: {}\nlinks:\n" + links
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "t.yaml")
    assert info.value.line == 1 + 11 + 2 + 1 + 11
    assert "switch0001-eth10" in info.value.message
