"""Kernel link backend: a veth pair with a netem qdisc on each end's egress (pyroute2 tc).

netem alone does delay, jitter, loss (+correlation), duplicate, reorder, corrupt, the
queue limit, and the rate limit (netem's own ``rate``, which serialises packets after
their delay: the same model the userspace emulator implements). ``shape1`` goes on
node1's interface (it shapes what node1 sends: node1 -> node2), ``shape2`` on node2's.
Every tc/link error raises; nothing is printed and skipped.
"""
from __future__ import annotations

import errno
from typing import Any

from mininet.link import Link

from testbed.journal import Journal
from testbed.links.nodes import netns_path
from testbed.links.base import BackendUnavailable
from testbed.links.tcparams import prepare_link
from testbed.shape import LinkShape

NETEM_HANDLE = 0x10000  # "1:"
_U32_BYTES_PER_S = 2**32 - 1


def netem_options(shape: LinkShape) -> dict[str, Any]:
    """LinkShape -> keyword arguments of pyroute2's ``tc(..., "netem", ...)``.

    pyroute2 takes delay/jitter in microseconds, probabilities in percent, the limit in
    packets and the rate in bytes per second (netem's 32-bit ``TCA_NETEM_RATE``).
    """
    opts: dict[str, Any] = {
        "delay": int(round(shape.delay_ms * 1000)),
        "jitter": int(round(shape.jitter_ms * 1000)),
        "limit": shape.queue_pkts,
        "loss": shape.loss_pct,
        "duplicate": shape.duplicate_pct,
    }
    if shape.loss_pct and shape.loss_corr_pct:
        opts["loss_corr"] = shape.loss_corr_pct
    if shape.reorder_pct:
        opts["prob_reorder"] = shape.reorder_pct  # pyroute2 sets gap=1 as tc does
    if shape.corrupt_pct:
        opts["prob_corrupt"] = shape.corrupt_pct
    if shape.bw_mbit is not None:
        rate = int(round(shape.bw_mbit * 1e6 / 8))
        if rate > _U32_BYTES_PER_S:
            raise ValueError(f"bw {shape.bw_mbit:g} Mbit/s is above netem's 32-bit rate "
                             f"limit ({_U32_BYTES_PER_S * 8 / 1e6:.0f} Mbit/s)")
        opts["rate"] = max(rate, 1)
    return opts


def _ipr(netns: str | None) -> Any:
    from pyroute2 import IPRoute    # late: pyroute2 (~150 ms); netem_options is used without it
    return IPRoute(netns=netns) if netns else IPRoute()


def netem_request(index: int, shape: LinkShape) -> Any:
    """The RTM_NEWQDISC message that makes a root netem qdisc ``1:`` on ``index`` (pyroute2's
    ``tcmsg``, options encoded by pyroute2's netem plug-in).

    Built here rather than by ``IPRoute.tc("replace", "netem", ..., rate=...)``: pyroute2
    (0.9.7) turns every keyword of ``tc()`` that names a tcmsg attribute into that attribute,
    and ``rate`` names ``TCA_RATE`` (a byte string: the rate estimator), so a netem rate
    crashed the encoder (``TypeError: object of type 'int' has no len()``). Its htb, tbf,
    cake, bpf and clsact plug-ins drop ``rate`` from the request; its netem plug-in does not.
    Here the rate goes only where netem reads it, ``TCA_OPTIONS``/``TCA_NETEM_RATE``.
    """
    # late: pyroute2 (~150 ms); netem_options is used without it
    from pyroute2.netlink.rtnl import TC_H_ROOT
    from pyroute2.netlink.rtnl.tcmsg import sched_netem, tcmsg
    msg = tcmsg()
    msg["index"] = index
    msg["handle"] = NETEM_HANDLE
    msg["parent"] = TC_H_ROOT
    msg["attrs"] = [["TCA_KIND", "netem"],
                    ["TCA_OPTIONS", sched_netem.get_parameters(netem_options(shape))]]
    return msg


def apply_netem(ipr: Any, ifname: str, shape: LinkShape) -> None:
    """Install (or change in place) the root netem qdisc of ``ifname``; ``ipr`` is an open
    pyroute2 IPRoute in the interface's namespace."""
    # late: pyroute2, as in _ipr
    from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.rtnl import RTM_NEWQDISC
    msg = netem_request(_index(ipr, ifname), shape)
    msg["header"]["type"] = RTM_NEWQDISC
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    try:
        # the batch call: pyroute2 0.9.7's synchronous nlm_request reads a status key only
        # its async core has (KeyError 'nlm_generator')
        ipr.nlm_request_batch([msg])
    except NetlinkError as e:
        if e.code == errno.ENOENT:
            raise BackendUnavailable(
                f"netem: cannot add a netem qdisc on {ifname}: the kernel has no sch_netem "
                "(try `modprobe sch_netem`, or use --link-backend userspace)") from None
        raise RuntimeError(f"netem: tc qdisc replace on {ifname} "
                           f"({shape.describe()}) failed: {e}") from None


def _index(ipr: Any, ifname: str) -> int:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise RuntimeError(f"netem: interface {ifname} not found")
    return int(idx[0])


def set_admin_state(ipr: Any, ifname: str, up: bool) -> None:
    ipr.link("set", index=_index(ipr, ifname), state="up" if up else "down")


class NetemLink(Link):
    """A Mininet veth link shaped by kernel netem. Parameters as UserspaceLink: TCLink's,
    or shape1 (node1 -> node2), shape2 (node2 -> node1); and journal."""

    def __init__(self, node1: Any, node2: Any, shape1: LinkShape | None = None,
                 shape2: LinkShape | None = None, journal: Journal | None = None,
                 **params: Any):
        self._shapes = prepare_link(shape1, shape2, params)     # TCLink's parameters too
        self._journal = journal
        self._eids: list[int] = []
        self._up = True
        # one netlink socket per end, open while the link lives: opening one in a namespace
        # forks a pyroute2 helper (5 ms here, 220 ms in a UML guest), too slow for a live change
        self._iprs: dict[str | None, Any] = {}
        params["fast"] = True
        super().__init__(node1, node2, **params)
        try:
            self._apply(self._shapes)
        except BaseException:
            self.delete()
            raise

    def makeIntfPair(self, intfname1: str, intfname2: str, addr1: str | None = None,
                     addr2: str | None = None, node1: Any = None, node2: Any = None,
                     deleteIntfs: bool = True) -> Any:  # Mininet's name
        self.intf_names = (intfname1, intfname2)
        if self._journal:
            # deleting either end of a veth removes both; the record names both anyway
            self._eids = [self._journal.record("link", name=n, netns=netns_path(node))
                          for n, node in ((intfname1, node1), (intfname2, node2))]
        return Link.makeIntfPair(intfname1, intfname2, addr1, addr2, node1, node2,
                                 deleteIntfs=deleteIntfs)

    def _ends(self) -> list[tuple[str, str | None]]:
        return [(self.intf1.name, netns_path(self.intf1.node)),
                (self.intf2.name, netns_path(self.intf2.node))]

    def _ipr(self, netns: str | None) -> Any:
        if netns not in self._iprs:
            self._iprs[netns] = _ipr(netns)
        return self._iprs[netns]

    def _apply(self, shapes: tuple[LinkShape | None, LinkShape | None]) -> None:
        for (ifname, ns), shape in zip(self._ends(), shapes, strict=True):
            if shape is not None:
                apply_netem(self._ipr(ns), ifname, shape)

    # --- ShapedLink ----------------------------------------------------------------

    def get_shapes(self) -> tuple[LinkShape, LinkShape]:
        return self._shapes

    def set_shapes(self, forward: LinkShape | None = None, backward: LinkShape | None = None) -> None:
        if getattr(self, "intf1", None) is not None:    # else: being built, __init__ applies them
            self._apply((forward, backward))
        self._shapes = (forward or self._shapes[0], backward or self._shapes[1])

    def set_up(self, up: bool) -> None:
        for ifname, ns in self._ends():
            set_admin_state(self._ipr(ns), ifname, up)
        self._up = bool(up)

    def is_up(self) -> bool:
        return self._up

    def delete(self) -> None:
        for ipr in self._iprs.values():
            ipr.close()
        self._iprs = {}
        if getattr(self, "intf1", None) is not None:
            super().delete()
        if self._journal:
            for eid in self._eids:
                self._journal.forget(eid)
        self._eids = []
