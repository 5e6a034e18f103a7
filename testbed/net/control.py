"""Runtime primitives on a running network: the small, stable API fault injection uses.

- ``link(a, b)``: the link object between two nodes (any backend's ShapedLink:
  ``get_shapes()``, ``set_shapes(forward, backward)``, ``set_up(bool)``), live.
- ``set_link(a, b, direction=None, delay="50ms", loss="1%", ...)``: change parameters live,
  on both directions or one (``"a->b"``); unspecified parameters keep their values.
- ``set_link_up(a, b, up)``: administrative link down/up (both ends).
- ``drop(a, b, oneway=False)`` / ``restore(a=None, b=None)``: drop IP traffic from ``a``
  to ``b`` (and from ``b`` to ``a`` unless ``oneway``) with an iptables DROP rule in the
  *receiver's* INPUT chain, i.e. packets vanish in flight as in a partition. Each rule is
  journaled before insertion; argv lists, no shell strings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from testbed.journal import Journal, proc_start
from testbed.shape import LinkShape, ShapeError, link_directions, parse_params

__all__ = ["Control", "ControlError", "DropRule"]

RULE_COMMENT = "minimesh-drop"


class ControlError(ValueError):
    """A runtime request names something that does not exist or is not allowed."""


@dataclass(frozen=True)
class DropRule:
    """Packets from ``src`` (``src_ip``) are dropped on arrival at ``dst``."""
    src: str
    dst: str
    src_ip: str

    @property
    def args(self) -> list[str]:
        """The rule as iptables arguments after -I/-D."""
        return ["INPUT", "-s", self.src_ip, "-m", "comment", "--comment", RULE_COMMENT, "-j", "DROP"]


class Control:
    """Runtime operations on a Mininet net built with a minimesh link class."""

    def __init__(self, net: Any, journal: Journal):
        self.net = net
        self.journal = journal
        self._drops: dict[DropRule, int] = {}   # rule -> journal entry id

    # --- nodes and links -------------------------------------------------------------

    def _node(self, name: str) -> Any:
        if name not in self.net.nameToNode:
            raise ControlError(f"no node {name!r}; nodes: {', '.join(sorted(self.net.nameToNode))}")
        return self.net.nameToNode[name]

    def _host(self, name: str) -> Any:
        node = self._node(name)
        if node not in self.net.hosts:
            raise ControlError(f"{name!r} is not a host; hosts: {', '.join(h.name for h in self.net.hosts)}")
        return node

    def link(self, a: str, b: str) -> Any:
        links = self.net.linksBetween(self._node(a), self._node(b))
        if not links:
            raise ControlError(f"no link between {a} and {b}; links: "
                               + ", ".join(f"{x}-{y}" for x, y, _ in self.links()))
        link = links[0]
        if not hasattr(link, "set_shapes"):
            raise ControlError(f"link {a}-{b} ({type(link).__name__}) has no live shaping")
        return link

    def links(self) -> list[tuple[str, str, Any]]:
        """(node1, node2, link) for every link, in creation order."""
        return [(lk.intf1.node.name, lk.intf2.node.name, lk) for lk in self.net.links]

    def shapes(self, a: str, b: str) -> tuple[LinkShape, LinkShape]:
        """(a->b, b->a) shapes in force."""
        link = self.link(a, b)
        fwd, back = link.get_shapes()
        return (fwd, back) if link.intf1.node.name == a else (back, fwd)

    def set_link(self, a: str, b: str, direction: str | None = None,
                 **params: Any) -> tuple[LinkShape, LinkShape]:
        """Change link parameters live (units as in YAML: delay="50ms", loss="1%", bw="10Mbit",
        bw=None to unlimit). ``direction``: None for both, or "a->b"/"b->a". Returns the new
        (a->b, b->a) shapes. Raises ShapeError (naming the parameter) or ControlError."""
        if not params:
            raise ControlError("no link parameter given; allowed: delay, jitter, loss, "
                               "loss_correlation, duplicate, reorder, corrupt, bw, queue")
        link = self.link(a, b)
        a_is_1 = link.intf1.node.name == a
        fwd, back = link.get_shapes()
        try:
            change_ab, change_ba = link_directions(direction, a, b)
        except ShapeError as e:  # not a shape parameter: a link that has no such direction
            raise ControlError(str(e)) from None
        ab, ba = (fwd, back) if a_is_1 else (back, fwd)
        new_ab = parse_params(params, base=ab) if change_ab else ab
        new_ba = parse_params(params, base=ba) if change_ba else ba
        if a_is_1:
            link.set_shapes(forward=new_ab, backward=new_ba)
        else:
            link.set_shapes(forward=new_ba, backward=new_ab)
        return new_ab, new_ba

    def set_link_up(self, a: str, b: str, up: bool) -> None:
        self.link(a, b).set_up(up)

    # --- partitions --------------------------------------------------------------------

    def drop(self, a: str, b: str, oneway: bool = False) -> list[DropRule]:
        """Drop traffic a->b (and b->a unless oneway). Idempotent. Returns rules added."""
        if a == b:
            raise ControlError(f"drop needs two different hosts, got {a} twice")
        pairs = [(a, b)] if oneway else [(a, b), (b, a)]
        added = []
        for src, dst in pairs:
            for ip in self._ips(src):
                rule = DropRule(src, dst, ip)
                if rule not in self._drops:
                    self._insert(rule)
                    added.append(rule)
        return added

    def restore(self, a: str | None = None, b: str | None = None) -> int:
        """Remove drop rules: all, those involving host ``a``, or those between a and b
        (both ways). Returns how many were removed."""
        if b is not None and a is None:
            raise ControlError("restore: give no host, one host, or two hosts")
        for name in (a, b):
            if name is not None:
                self._host(name)
        chosen = [r for r in self._drops
                  if (a is None or a in (r.src, r.dst)) and (b is None or b in (r.src, r.dst))]
        for rule in chosen:
            self._iptables(rule.dst, ["-D", *rule.args])
            self.journal.forget(self._drops.pop(rule))
        return len(chosen)

    def drops(self) -> list[DropRule]:
        return list(self._drops)

    def _ips(self, host: str) -> list[str]:
        h = self._host(host)
        ips = [i.IP() for i in h.intfList() if i.IP() and i.name != "lo"]
        if not ips:
            raise ControlError(f"host {host} has no IP address to drop")
        return ips

    def _insert(self, rule: DropRule) -> None:
        dst = self._host(rule.dst)
        eid = self.journal.record("iptables", pid=dst.pid, start=proc_start(dst.pid), args=rule.args,
                                  what=f"drop {rule.src}->{rule.dst}")
        try:
            self._iptables(rule.dst, ["-I", *rule.args])
        except BaseException:
            self.journal.forget(eid)
            raise
        self._drops[rule] = eid

    def _iptables(self, host: str, args: list[str]) -> None:
        out, err, code = self._host(host).pexec(["iptables", "-w", *args])
        if code != 0:
            raise ControlError(f"iptables {' '.join(args)} in {host} failed: {(err or out).strip()}")

