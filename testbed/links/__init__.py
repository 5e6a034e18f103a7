"""Link-emulation backends: kernel netem, the userspace emulator, and an in-memory fake.

    backend = select_backend("auto", journal)    # "auto" | "netem" | "userspace" | "fake"
    print(backend.reason)                         # which one and why
    net = Mininet(topo, link=backend.link_class, switch=LinuxBridge, controller=None)

``auto`` probes the kernel once per process (:func:`probe_netem`) and picks netem when a
netem qdisc can really be added, else userspace. Asking for ``netem`` where it is missing
raises :class:`BackendUnavailable`; there is no silent fallback.
"""
from __future__ import annotations

import errno
import functools
import os
from typing import Any

from testbed.journal import Journal
from testbed.links.base import BackendUnavailable, LinkBackend, ShapedLink

__all__ = ["select_backend", "probe_netem", "probe_tun", "BackendUnavailable", "LinkBackend",
           "ShapedLink", "BACKEND_NAMES", "NetemBackend", "UserspaceBackend", "FakeBackend"]

BACKEND_NAMES = ("auto", "netem", "userspace", "fake")
_probe_cache: tuple[bool, str] | None = None


class _Backend(LinkBackend):
    def __init__(self, journal: Journal | None, reason: str):
        self.journal = journal
        self.reason = reason

    def _cls(self) -> type:
        raise NotImplementedError

    @property
    def link_class(self) -> Any:
        return functools.partial(self._cls(), journal=self.journal)

    def describe(self) -> str:
        return f"{self.name}: {self.reason}"


class NetemBackend(_Backend):
    name = "netem"

    def _cls(self) -> type:
        from testbed.links.netem import NetemLink   # late: the backends' link classes are Mininet's
        return NetemLink


class UserspaceBackend(_Backend):
    name = "userspace"

    def _cls(self) -> type:
        from testbed.links.userspace import UserspaceLink   # late: Mininet
        return UserspaceLink


class FakeBackend(_Backend):
    name = "fake"

    def _cls(self) -> type:
        from testbed.links.fake import FakeLink     # late: Mininet
        return FakeLink


def probe_tun() -> tuple[bool, str]:
    """Can this process create TAP devices (what the userspace backend needs)?"""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as e:
        return False, f"cannot open /dev/net/tun ({e.strerror}): load the tun module or run as root"
    os.close(fd)
    return True, "/dev/net/tun is usable"


def probe_netem(journal: Journal | None = None, *, refresh: bool = False) -> tuple[bool, str]:
    """Does the kernel do netem? Tries to add a netem qdisc on ``lo`` in a scratch
    namespace ``mmprobe-PID`` (journaled, removed afterwards). Cached per process."""
    global _probe_cache
    if _probe_cache is None or refresh:
        _probe_cache = _probe_netem(journal)
    return _probe_cache


def _probe_netem(journal: Journal | None) -> tuple[bool, str]:
    # late: pyroute2 (~150 ms) only when the kernel is probed, not for `minimesh --help`
    from pyroute2 import IPRoute, netns
    from pyroute2.netlink.exceptions import NetlinkError

    if os.geteuid() != 0:
        return False, "not root, so the kernel's netem could not be probed"
    name = f"mmprobe-{os.getpid()}"
    eid = journal.record("netns", name=name) if journal else None
    try:
        netns.create(name)
        with IPRoute(netns=name) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            try:
                ipr.tc("add", "netem", lo, handle=0x10000, delay=1000)
            except NetlinkError as e:
                if e.code == errno.ENOENT:
                    return False, ("the kernel has no sch_netem (adding a netem qdisc failed: "
                                   "unknown qdisc kind)")
                return False, f"adding a netem qdisc failed: {e}"
        return True, "a netem qdisc could be added in a scratch namespace"
    except OSError as e:
        return False, f"netem probe could not run: {e}"
    finally:
        if name in netns.listnetns():
            netns.remove(name)
        if journal and eid is not None:
            journal.forget(eid)


def select_backend(name: str, journal: Journal | None = None) -> LinkBackend:
    """The backend called ``name``; ``auto`` picks netem when the kernel has it."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown link backend {name!r}; allowed: {', '.join(BACKEND_NAMES)}")
    if name == "fake":
        return FakeBackend(journal, "in-memory fake for unit tests (no frames flow)")
    if name == "netem":
        ok, why = probe_netem(journal)
        if not ok:
            raise BackendUnavailable(f"link backend 'netem' is not available: {why}; "
                                     "use --link-backend userspace (or auto)")
        return NetemBackend(journal, f"requested; {why}")
    if name == "userspace":
        ok, why = probe_tun()
        if not ok:
            raise BackendUnavailable(f"link backend 'userspace' is not available: {why}")
        return UserspaceBackend(journal, "requested")
    ok, why = probe_netem(journal)
    if ok:
        return NetemBackend(journal, f"auto: kernel netem works ({why})")
    tun_ok, tun_why = probe_tun()
    if not tun_ok:
        raise BackendUnavailable(f"no link backend works here: netem: {why}; userspace: {tun_why}")
    return UserspaceBackend(journal, f"auto: {why}, so links are emulated in userspace (TAP)")
