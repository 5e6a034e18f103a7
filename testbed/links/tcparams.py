"""Mininet's TCLink/TCIntf parameters on minimesh's links.

A script written for Mininet shapes links with ``TCIntf.config``'s parameters, on a link
(both interfaces) or per interface (``params1``/``params2``)::

    net.addLink(h1, s1, cls=TCLink, bw=10, delay='5ms', loss=1, max_queue_size=100)
    net.addLink(h1, s1, params1={'delay': '20ms'}, params2={'bw': 5})
    link.intf1.config(delay='15ms')          # later: changes the live link

Here they become :class:`~testbed.shape.LinkShape` s: what an interface is configured with
shapes the traffic it *sends* (its egress qdisc, in tc), so intf1's parameters shape
node1 -> node2 (``shape1``) and intf2's node2 -> node1 (``shape2``).

Units as tc reads them, because that is what TCLink hands them to: ``bw`` in Mbit/s (a
number), ``delay``/``jitter`` a tc time (``'5ms'``, ``'1s'``, ``'250us'``; a bare number is
microseconds, as tc has it), ``loss`` in percent (a number, or ``'1%'``),
``max_queue_size`` in packets (netem's ``limit``). ``use_htb`` (HTB for the rate limit,
which Mininet 2.3's TCIntf does anyway) is accepted: the rate limiter is always the one of
the link model. A parameter that cannot be emulated (``use_hfsc``, ``use_tbf``,
``enable_ecn``, ``enable_red``, ``speedup``, ``latency_ms``) or that nobody knows is an
:class:`~testbed.shape.ShapeError` naming it: Mininet's ``Intf.config`` swallows unknown
parameters, which is how a delay silently goes missing.

As with TCIntf, each ``config`` call with shaping parameters *replaces* the interface's
shaping (``config(loss=50)`` after ``config(bw=10)`` leaves only the loss), and a call
without any keeps it.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from mininet.link import Intf

from testbed.shape import LinkShape, ShapeError, parse_percent

__all__ = ["TC_SHAPING", "INTF_PARAMS", "OFFLOAD_PARAMS", "UNSUPPORTED", "tc_shape",
           "split_link_params", "ShapedIntf", "parse_tc_time_ms", "intf_classes", "wants_shaping",
           "check_names", "prepare_link", "LINK_ARGS"]

TC_SHAPING = ("bw", "delay", "jitter", "loss", "max_queue_size", "use_htb")
INTF_PARAMS = ("mac", "ip", "ifconfig", "up", "port")     # Intf.config's own (port: Mininet's)
OFFLOAD_PARAMS = ("gro", "txo", "rxo", "disable_gro")     # TCIntf's ethtool -K switches
UNSUPPORTED = {
    "use_hfsc": "HFSC scheduling", "use_tbf": "a TBF rate limiter", "latency_ms": "TBF's latency",
    "enable_ecn": "RED with ECN marking", "enable_red": "RED queueing",
    "speedup": "the experimental switch-side speedup",
}
_TC_TIME = {"us": 0.001, "usec": 0.001, "usecs": 0.001, "ms": 1.0, "msec": 1.0, "msecs": 1.0,
            "s": 1000.0, "sec": 1000.0, "secs": 1000.0}


def parse_tc_time_ms(field: str, value: Any) -> float:
    """A time as tc reads it, in ms: '5ms', '1.5s', '250us'; a bare number is microseconds."""
    if isinstance(value, bool):
        raise ShapeError(field, f"expected a time such as '5ms', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ShapeError(field, f"must be >= 0, got {value!r}")
        return float(value) / 1000.0
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)", str(value).strip().lower())
    if not m or (m.group(2) and m.group(2) not in _TC_TIME):
        raise ShapeError(field, f"bad time {value!r}: use tc's units, e.g. '5ms', '1s', '250us'")
    return float(m.group(1)) * (_TC_TIME[m.group(2)] if m.group(2) else 0.001)


def _bw(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShapeError("bw", f"expected a number of Mbit/s (as TCLink's bw=10), got {value!r}")
    if value <= 0:
        raise ShapeError("bw", f"must be > 0 Mbit/s, got {value!r}")
    return float(value)


def _queue(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShapeError("max_queue_size", f"expected a whole number of packets >= 1, got {value!r}")
    return value


def tc_shape(params: Mapping[str, Any], where: str = "") -> LinkShape | None:
    """The shape TCIntf.config(**params) asks for, or None when it names no shaping
    parameter (TCIntf then keeps what the interface has). ``params`` holds shaping
    parameters only (see :func:`split_link_params`). Errors name the parameter."""
    given = {k: v for k, v in params.items() if v is not None and k != "use_htb"}
    if not given:
        return None
    fields: dict[str, Any] = {}
    try:
        if "bw" in given:
            fields["bw_mbit"] = _bw(given["bw"])
        if "delay" in given:
            fields["delay_ms"] = parse_tc_time_ms("delay", given["delay"])
        if "jitter" in given:
            fields["jitter_ms"] = parse_tc_time_ms("jitter", given["jitter"])
        if "loss" in given:
            fields["loss_pct"] = parse_percent("loss", given["loss"])
        if "max_queue_size" in given:
            fields["queue_pkts"] = _queue(given["max_queue_size"])
        return LinkShape(**fields)
    except ShapeError as e:
        user = {"delay_ms": "delay", "jitter_ms": "jitter", "loss_pct": "loss", "bw_mbit": "bw",
                "queue_pkts": "max_queue_size"}.get(e.field, e.field)
        raise ShapeError(f"{where}{user}", e.message) from None


def check_names(params: Mapping[str, Any], where: str = "") -> None:
    """Refuse a parameter no Mininet interface knows, or one minimesh cannot emulate."""
    for name in params:
        if name in UNSUPPORTED:
            raise ShapeError(f"{where}{name}", f"{UNSUPPORTED[name]} cannot be emulated by minimesh's "
                             f"link backends; shaping parameters: {', '.join(TC_SHAPING)}")
        if name not in TC_SHAPING + INTF_PARAMS + OFFLOAD_PARAMS:
            raise ShapeError(f"{where}{name}", "unknown link parameter; allowed: "
                             + ", ".join(TC_SHAPING + INTF_PARAMS + OFFLOAD_PARAMS))


LINK_ARGS = ("port1", "port2", "intfName1", "intfName2", "addr1", "addr2", "fast", "intf", "cls1", "cls2")  # Link's own


def _pop_shaping(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params.pop(k) for k in TC_SHAPING if k in params}


def split_link_params(params: dict[str, Any], params1: Mapping[str, Any] | None,
                      params2: Mapping[str, Any] | None
                      ) -> tuple[LinkShape | None, LinkShape | None, dict[str, Any], dict[str, Any]]:
    """Take the shaping parameters out of a Mininet link's arguments, as Link does:
    link-level ``params`` go to both interfaces, ``params1``/``params2`` (which win) to one.
    Returns (shape1, shape2, params1 rest, params2 rest); ``params`` loses its shaping keys.
    Names are checked first, so an unknown one is refused before anything is created."""
    p1, p2 = dict(params1 or {}), dict(params2 or {})
    for label, p in (("", params), ("params1: ", p1), ("params2: ", p2)):
        check_names({k: v for k, v in p.items() if k not in LINK_ARGS}, label)
    common = _pop_shaping(params)
    s1 = tc_shape({**common, **_pop_shaping(p1)}, "intf1 ")
    s2 = tc_shape({**common, **_pop_shaping(p2)}, "intf2 ")
    return s1, s2, p1, p2


class ShapedIntf(Intf):
    """A Mininet interface of a minimesh link: ``config`` takes TCIntf's parameters and
    changes the shape of the direction this interface sends (live, through the link's
    ``set_shapes``); it refuses what it cannot do instead of ignoring it."""

    def config(self, mac: str | None = None, ip: str | None = None, ifconfig: Any = None,
               up: bool = True, **params: Any) -> dict[str, Any]:
        where = f"{self.name}: "
        check_names(params, where)
        shaping = _pop_shaping(params)
        result = super().config(mac=mac, ip=ip, ifconfig=ifconfig, up=up)
        if any(k in params for k in OFFLOAD_PARAMS):
            self._offload(**params)
        shape = tc_shape(shaping, where)
        if shape is not None:
            self._set_shape(shape)
            result["shape"] = shape
        return result

    def _offload(self, gro: bool = False, txo: bool = True, rxo: bool = True,
                 disable_gro: bool | None = None) -> None:
        """TCIntf's offload switches (``ethtool -K``); a refusal is an error, not a log line."""
        if disable_gro is not None:
            gro = not disable_gro
        on = {True: "on", False: "off"}
        argv = ["ethtool", "-K", self.name, "gro", on[bool(gro)], "tx", on[bool(txo)], "rx", on[bool(rxo)]]
        _out, err, code = self.node.pexec(argv)
        if code != 0 and "Could not change any device features" not in err:
            raise ShapeError(f"{self.name}: offload", f"{' '.join(argv)} failed: {err.strip()}")

    def _set_shape(self, shape: LinkShape) -> None:
        link = self.link
        if link is None or not hasattr(link, "set_shapes"):
            raise ShapeError(f"{self.name}: shaping", "this interface is not on a minimesh link "
                             "(give the link cls=TCLink, or build it with minimesh's link class)")
        if _is_intf1(link, self):
            link.set_shapes(forward=shape)
        else:
            link.set_shapes(backward=shape)

    def shape(self) -> LinkShape:
        """The shape of the direction this interface sends."""
        forward, backward = self.link.get_shapes()
        return forward if _is_intf1(self.link, self) else backward


def _is_intf1(link: Any, intf: Intf) -> bool:
    """Does ``intf`` send node1 -> node2? While Link.__init__ builds the interfaces (a
    ``custom(TCIntf, bw=10)`` configures itself then) ``link.intf1`` is not set yet: the
    link's ``intf_names`` (recorded by makeIntfPair) tell."""
    intf1 = getattr(link, "intf1", None)
    if intf1 is not None:
        return intf is intf1
    return intf.name == link.intf_names[0]


def intf_classes(intf: Any, cls1: Any, cls2: Any) -> tuple[Any, Any]:
    """The interface classes of a minimesh link: ShapedIntf where the caller asked for
    Mininet's plain Intf or stock TCIntf (or nothing); any other class (a ShapedIntf
    subclass, ``custom(TCIntf, bw=10)`` of the substituted TCIntf) is the caller's choice."""
    from mininet.link import TCIntf    # late: only to recognise it

    def pick(cls: Any) -> Any:
        base = cls or intf
        return ShapedIntf if base is None or base in (Intf, TCIntf) else base
    return pick(cls1), pick(cls2)


def wants_shaping(cls: Any) -> bool:
    """Is ``cls`` a shaping interface class: a ShapedIntf subclass, or Mininet's
    ``custom(cls, ...)`` / a functools.partial of one?"""
    if isinstance(cls, type):
        return issubclass(cls, ShapedIntf)
    inner = getattr(cls, "func", None)
    if inner is not None:
        return wants_shaping(inner)
    cells = getattr(cls, "__closure__", None) or ()
    return any(isinstance(c.cell_contents, type) and issubclass(c.cell_contents, ShapedIntf)
               for c in cells)


def prepare_link(shape1: LinkShape | None, shape2: LinkShape | None, params: dict[str, Any],
                 default_intf: Any = None) -> tuple[LinkShape, LinkShape]:
    """What a minimesh link class does with its Mininet arguments before ``Link.__init__``:
    TCLink's parameters (link-level, ``params1``, ``params2``) become the two shapes (given
    as ``shape1``/``shape2`` too is an error), and the interfaces become ShapedIntf (or
    ``default_intf``) so that ``intf.config(delay=...)`` later changes the live link.
    ``params`` is changed in place into what ``Link.__init__`` takes."""
    s1, s2, p1, p2 = split_link_params(params, params.pop("params1", None), params.pop("params2", None))
    for n, given, tc in ((1, shape1, s1), (2, shape2, s2)):
        if given is not None and tc is not None:
            raise ShapeError(f"shape{n}", f"give shape{n} or TCLink's parameters, not both")
    params["params1"], params["params2"] = p1, p2
    intf = params.pop("intf", None)
    if default_intf is not None and intf in (None, Intf):
        intf = default_intf
    params["cls1"], params["cls2"] = intf_classes(intf, params.pop("cls1", None), params.pop("cls2", None))
    return shape1 or s1 or LinkShape(), shape2 or s2 or LinkShape()
