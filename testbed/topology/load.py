"""Topology YAML: load, validate completely, return frozen specs. Nothing is created here.

    topo = load_topology("topologies/line3.yaml")    # or resolve_topology("tree,2,2")
    mn_topo = topo.to_mininet()                       # a mininet.topo.Topo

Schema reference: docs/topology.md. Every error is a :class:`TopologyError` whose
text is ``file:line: field: problem; allowed ...``. Later issues add top-level sections
(e.g. ``mesh:``) with :func:`register_section`.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Callable

from yaml.nodes import Node

from testbed.shape import SHAPE_FIELDS, LinkShape, ShapeError, parse_params
from testbed.topology.spec import (DEFAULT_IP_BASE, IFNAME_MAX, HostSpec, LinkSpec, SwitchSpec,
                                   Topology, TopologyError, default_addresses, node_name_problem)
from testbed.topology.stock import STOCK_HELP, stock_topology
from testbed.topology.reader import Context, compose

__all__ = ["parse_topology", "load_topology", "resolve_topology",
           "register_section"]

CORE_FIELDS = ("name", "ip_base", "hosts", "switches", "links")
HOST_FIELDS = ("ip", "mac")
SWITCH_FIELDS: tuple[str, ...] = ()
DIRECTIONS = ("forward", "reverse")
LINK_FIELDS = ("between", *SHAPE_FIELDS, *DIRECTIONS)
_TOPO_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# names of the machine's own interfaces, which a root-namespace bridge must never take
_SYSTEM_IFNAME_RE = re.compile(r"lo|eth\d+|en[ospx]\w*|wlan\d+|wl[op]\w*|docker\d+|virbr\d+|"
                               r"br\d+|bond\d+|ifb\d+|tun\d+|tap\d+|veth\w*|vxlan\d+")
_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")

SectionParser = Callable[[Node, Context], Any]
_SECTIONS: dict[str, SectionParser] = {}


def register_section(name: str, parser: SectionParser) -> None:
    """Allow top-level key ``name``; ``parser(node, ctx)`` validates it (raising through
    ``ctx.error(node, msg)``) after hosts, switches and links, and its result is stored in
    ``Topology.sections[name]``. Registering the same parser again is a no-op."""
    if name in CORE_FIELDS:
        raise ValueError(f"{name!r} is a core topology field")
    if _SECTIONS.get(name, parser) is not parser:
        raise ValueError(f"section {name!r} is already registered by another parser")
    _SECTIONS[name] = parser


def load_topology(path: str | os.PathLike[str]) -> Topology:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TopologyError(str(path), None, f"cannot read topology file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TopologyError(str(path), None, f"not a UTF-8 text file ({e.reason})") from None
    return parse_topology(text, str(path))


def resolve_topology(arg: str) -> Topology:
    """A topology file path, or else a stock topology spec such as ``tree,2,2``."""
    if os.path.isfile(arg):
        return load_topology(arg)
    if arg.endswith((".yaml", ".yml")) or os.sep in arg:
        raise TopologyError(arg, None, "no such topology file")
    try:
        return stock_topology(arg)
    except TopologyError as e:
        if e.message.startswith("unknown stock topology"):
            raise TopologyError(arg, None, "neither a topology file nor a stock topology; "
                                + STOCK_HELP) from None
        raise


def parse_topology(text: str, filename: str = "<string>") -> Topology:
    ctx = Context(filename)
    root = compose(text, filename)
    if root is None:
        raise TopologyError(filename, 1, "the file is empty; a topology needs at least 'hosts:'")
    allowed = [*CORE_FIELDS, *_SECTIONS]
    top = ctx.mapping(root, "top level", allowed, required=("hosts",), null_ok=False)

    name = Path(filename).stem if not filename.startswith("<") else "topology"
    if "name" in top:
        name_node = top["name"][1]
        name = ctx.text(name_node, "name", "a topology name")
        if not _TOPO_NAME_RE.fullmatch(name):
            ctx.error(name_node, f"name: {name!r} is not allowed; use letters, digits, _ . -")
    base = DEFAULT_IP_BASE
    if "ip_base" in top:
        base = _parse_ip_base(ctx, top["ip_base"][1])

    hosts = _parse_hosts(ctx, top["hosts"][1], base)
    ctx.hosts = {h.name: h for h in hosts}
    switches = _parse_switches(ctx, top["switches"][1]) if "switches" in top else ()
    ctx.switches = {s.name: s for s in switches}
    links = _parse_links(ctx, top["links"][1]) if "links" in top else ()
    ctx.linked = frozenset(n for lk in links for n in (lk.node1, lk.node2))

    sections = {key: _SECTIONS[key](value_node, ctx)
                for key, (_, value_node) in top.items() if key in _SECTIONS}
    return Topology(name=name, hosts=hosts, switches=switches, links=links,
                    source=filename, sections=sections)


# --- nodes --------------------------------------------------------------------------

def _parse_ip_base(ctx: Context, node: Node) -> ipaddress.IPv4Network:
    raw = ctx.text(node, "ip_base", "a network such as 10.0.0.0/8")
    try:
        net = ipaddress.IPv4Network(raw, strict=True)
    except ValueError as e:
        ctx.error(node, f"ip_base: {raw!r} is not an IPv4 network such as 10.0.0.0/8 ({e})")
    if net.prefixlen > 30:
        ctx.error(node, f"ip_base: /{net.prefixlen} leaves no room for hosts; use /30 or shorter")
    return net


def _check_name(ctx: Context, key_node: Node, where: str, name: str, taken: dict[str, str]) -> None:
    problem = node_name_problem(name)
    if problem:
        ctx.error(key_node, f"{where}: {problem}")
    if name in taken:
        ctx.error(key_node, f"{where}: name {name!r} is already used by {taken[name]}")


def _parse_hosts(ctx: Context, node: Node, base: ipaddress.IPv4Network) -> tuple[HostSpec, ...]:
    entries = ctx.mapping(node, "hosts", null_ok=False)
    if not entries:
        ctx.error(node, "hosts: at least one host is needed")
    explicit: dict[str, ipaddress.IPv4Address] = {}
    cidr: dict[str, str] = {}
    mac_of: dict[str, str] = {}

    def used_by(other: str) -> str:
        return f"host {other} (line {ctx.line(entries[other][0])})"

    for name, (key_node, value_node) in entries.items():
        where = f"hosts.{name}"
        _check_name(ctx, key_node, where, name, {})
        fields = ctx.mapping(value_node, where, HOST_FIELDS)
        if "ip" in fields:
            ip_node = fields["ip"][1]
            iface = _parse_host_ip(ctx, ip_node, f"{where}.ip", base)
            for other, addr in explicit.items():
                if addr == iface.ip:
                    ctx.error(ip_node, f"{where}.ip: address {addr} is already used by {used_by(other)}")
            explicit[name] = iface.ip
            cidr[name] = iface.with_prefixlen
        if "mac" in fields:
            mac_node = fields["mac"][1]
            mac = _parse_mac(ctx, mac_node, f"{where}.mac")
            for other, m in mac_of.items():
                if m == mac:
                    ctx.error(mac_node, f"{where}.mac: MAC {mac} is already used by {used_by(other)}")
            mac_of[name] = mac
    try:
        cidr.update(default_addresses(entries, explicit, base))
    except ValueError as e:
        ctx.error(node, f"hosts: {e}; set ip_base to a larger network")
    return tuple(HostSpec(name=name, ip=cidr[name], mac=mac_of.get(name), line=ctx.line(key_node))
                 for name, (key_node, _) in entries.items())


def _parse_host_ip(ctx: Context, node: Node, where: str,
                   base: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    raw = ctx.text(node, where, "an IPv4 address such as 10.0.0.1/8")
    try:
        iface = ipaddress.IPv4Interface(raw if "/" in raw else f"{raw}/{base.prefixlen}")
    except ValueError:
        ctx.error(node, f"{where}: {raw!r} is not an IPv4 address with optional prefix, "
                        "e.g. 10.0.0.1/8 (a bare address takes ip_base's prefix)")
    ip, net = iface.ip, iface.network
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local:
        ctx.error(node, f"{where}: {ip} is a loopback/multicast/unspecified/link-local address; "
                        "use a unicast address such as 10.0.0.1/8")
    if net.prefixlen <= 30 and ip in (net.network_address, net.broadcast_address):
        ctx.error(node, f"{where}: {ip} is the {'network' if ip == net.network_address else 'broadcast'} "
                        f"address of {net}; use an address between them")
    return iface


def _parse_mac(ctx: Context, node: Node, where: str) -> str:
    raw = ctx.text(node, where, "a MAC address such as 00:00:00:00:00:01")
    if not _MAC_RE.fullmatch(raw):
        ctx.error(node, f"{where}: {raw!r} is not a MAC address; use six hex pairs such as "
                        "00:00:00:00:00:01")
    mac = raw.lower()
    if int(mac[:2], 16) & 1:
        ctx.error(node, f"{where}: {mac} is a multicast MAC (first byte odd); "
                        "an interface needs a unicast MAC such as 00:00:00:00:00:01")
    if mac == "00:00:00:00:00:00":
        ctx.error(node, f"{where}: 00:00:00:00:00:00 is not a usable MAC")
    return mac


def _parse_switches(ctx: Context, node: Node) -> tuple[SwitchSpec, ...]:
    entries = ctx.mapping(node, "switches")
    out = []
    for name, (key_node, value_node) in entries.items():
        where = f"switches.{name}"
        other = ctx.hosts.get(name)
        _check_name(ctx, key_node, where, name,
                    {other.name: f"host {other.name} (line {other.line})"} if other else {})
        if _SYSTEM_IFNAME_RE.fullmatch(name):
            ctx.error(key_node, f"{where}: {name!r} looks like a system interface name; a switch is a "
                                "Linux bridge of that name in the root namespace, so pick another name")
        ctx.mapping(value_node, where, SWITCH_FIELDS)
        out.append(SwitchSpec(name=name, line=ctx.line(key_node)))
    return tuple(out)


# --- links --------------------------------------------------------------------------

def _parse_links(ctx: Context, node: Node) -> tuple[LinkSpec, ...]:
    if node.tag == "tag:yaml.org,2002:null":
        return ()
    seen: dict[frozenset[str], int] = {}
    degree: dict[str, int] = {}
    bridge_group: dict[str, str] = {s: s for s in ctx.switches}  # union-find over switches
    out = []
    for i, item in enumerate(ctx.sequence(node, "links")):
        where = f"links[{i}]"
        fields = ctx.mapping(item, where, LINK_FIELDS, required=("between",), null_ok=False)
        n1, n2 = _parse_between(ctx, fields["between"][1], f"{where}.between")
        pair = frozenset((n1, n2))
        if pair in seen:
            ctx.error(item, f"{where}: a second link between {n1} and {n2} (first at line "
                            f"{seen[pair]}); minimesh allows one link per pair of nodes")
        seen[pair] = ctx.line(item)
        if n1 in ctx.switches and n2 in ctx.switches:
            r1, r2 = _find(bridge_group, n1), _find(bridge_group, n2)
            if r1 == r2:
                ctx.error(item, f"{where}: link {n1}-{n2} closes a loop of switches; Linux bridges "
                                "without STP would flood it, so switch links must form a tree")
            bridge_group[r1] = r2
        for n in (n1, n2):
            ifname = f"{n}-eth{degree.get(n, 0)}"
            if len(ifname) > IFNAME_MAX:
                ctx.error(item, f"{where}: interface {ifname} would exceed Linux's {IFNAME_MAX}-character "
                                f"limit; give {n} a shorter name")
            degree[n] = degree.get(n, 0) + 1
        common = {k: v for k, v in fields.items() if k in SHAPE_FIELDS}
        overrides = {d: ctx.mapping(fields[d][1], f"{where}.{d}", SHAPE_FIELDS)
                     for d in DIRECTIONS if d in fields}
        shape1 = _shape(ctx, where, common, overrides.get("forward", {}), f"{n1}->{n2}", "forward")
        shape2 = _shape(ctx, where, common, overrides.get("reverse", {}), f"{n2}->{n1}", "reverse")
        out.append(LinkSpec(node1=n1, node2=n2, shape1=shape1, shape2=shape2, line=ctx.line(item)))
    return tuple(out)


def _find(parent: dict[str, str], x: str) -> str:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def _parse_between(ctx: Context, node: Node, where: str) -> tuple[str, str]:
    items = ctx.sequence(node, where)
    if len(items) != 2:
        ctx.error(node, f"{where}: expected a list of two node names such as [h1, s1], "
                        f"got {len(items)} item(s)")
    n1, n2 = (ctx.node_ref(n, where) for n in items)
    if n1 == n2:
        ctx.error(node, f"{where}: a link from {n1} to itself is not allowed")
    return n1, n2


def _shape(ctx: Context, where: str, common: dict[str, tuple[Node, Node]],
           override: dict[str, tuple[Node, Node]], direction: str, dname: str) -> LinkShape:
    """One direction's shape: the link-level parameters, then the direction's overrides."""
    merged = {k: (f"{where}.{k}", v) for k, (_, v) in common.items()}
    merged.update({k: (f"{where}.{dname}.{k}", v) for k, (_, v) in override.items()})
    values: dict[str, Any] = {}
    for key, (field_where, value_node) in merged.items():
        value = ctx.scalar(value_node, field_where)
        if isinstance(value, bool):  # YAML 1.1 reads off/no/yes as booleans; keep the text
            value = value_node.value
        if key == "bw" and value in (0, "0"):
            ctx.error(value_node, f"{field_where}: must be > 0 (leave bw out, or bw: none, for no limit)")
        values[key] = value
    try:
        return parse_params(values)
    except ShapeError as e:
        found = merged.get(e.field)
        if found is None:  # a cross-field rule about a field not written here
            found = next(iter(merged.values()))
        field_where, value_node = found
        note = f" (direction {direction})" if override else ""
        ctx.error(value_node, f"{field_where}{note}: {e.message}")
