"""The mesh's network plumbing on Mininet hosts: service names and traffic capture.

* **Names.** Every host's private /etc/hosts maps each service name (and
  ``<name>.default.svc.cluster.local``) to its VIP (``model.service_vips``, 10.96.0.0/16).
* **Capture.** On every mesh host (a host with an instance or a client sidecar), iptables
  ``nat OUTPUT -p tcp -d 10.96.0.0/16 -j REDIRECT --to-ports 15001`` sends connections
  to a VIP to the host's capture sidecar; the rule is journaled before insertion (argv
  lists, like testbed.net.control), so a crashed run's ``minimesh clean`` removes it.
* **Route.** ``10.96.0.0/16 dev <host-eth0> src <host ip>``: the VIP range needs a route
  with a usable source address (docs/control-plane.md), whatever the topology's ip_base.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from testbed.journal import proc_start
from testbed.mesh.spec import OUTBOUND_PORT, VIP_CIDR
from testbed.net.running import RunningTestbed

__all__ = ["CAPTURE_COMMENT", "capture_args", "Plumbing"]

CAPTURE_COMMENT = "minimesh-mesh-capture"


def capture_args(port: int = OUTBOUND_PORT, cidr: str = VIP_CIDR) -> list[str]:
    """The capture rule as iptables arguments after -I/-D."""
    return ["OUTPUT", "-t", "nat", "-p", "tcp", "-d", cidr, "-m", "comment", "--comment",
            CAPTURE_COMMENT, "-j", "REDIRECT", "--to-ports", str(port)]


class Plumbing:
    """Installs names, routes and capture rules on a Testbed; ``remove()`` undoes them."""

    def __init__(self, tb: RunningTestbed):
        self.tb = tb
        self._rules: list[tuple[str, int, list[str]]] = []   # (host, journal id, args)
        self._routes: list[str] = []
        self._old_names: dict[str, dict[str, str]] = {}

    def set_names(self, vips: Mapping[str, str], hosts: Iterable[str]) -> None:
        for name in hosts:
            h = self.tb.host(name)
            self._old_names.setdefault(name, dict(h.hosts_entries))
            entries = dict(h.hosts_entries)
            for svc, vip in vips.items():
                entries[svc] = vip
                entries[f"{svc}.default.svc.cluster.local"] = vip
            h.set_hosts_entries(entries)

    def capture(self, host: str, port: int = OUTBOUND_PORT) -> None:
        h = self.tb.host(host)
        intf = h.defaultIntf()
        self._run(h, ["ip", "route", "replace", VIP_CIDR, "dev", intf.name, "src", h.IP()])
        self._routes.append(host)
        args = capture_args(port)
        eid = self.tb.journal.record("iptables", pid=h.pid, start=proc_start(h.pid), args=args,
                                     what=f"mesh capture on {host}")
        try:
            self._run(h, ["iptables", "-w", "-I", *args])
        except BaseException:
            self.tb.journal.forget(eid)
            raise
        self._rules.append((host, eid, args))

    def remove(self) -> list[str]:
        """Undo everything (best effort); returns what could not be undone."""
        errors = []
        for host, eid, args in reversed(self._rules):
            try:
                self._run(self.tb.host(host), ["iptables", "-w", "-D", *args])
                self.tb.journal.forget(eid)
            except Exception as e:  # the journal still removes it on stop
                errors.append(f"capture rule on {host}: {e}")
        self._rules.clear()
        for host in self._routes:
            try:
                self._run(self.tb.host(host), ["ip", "route", "del", VIP_CIDR])
            except Exception as e:  # the namespace takes it along
                errors.append(f"VIP route on {host}: {e}")
        self._routes.clear()
        for host, old in self._old_names.items():
            try:
                self.tb.host(host).set_hosts_entries(old)
            except Exception as e:  # reported with the other teardown errors
                errors.append(f"/etc/hosts of {host}: {e}")
        self._old_names.clear()
        return errors

    @staticmethod
    def _run(h: Any, argv: list[str]) -> None:
        out, err, code = h.pexec(argv)
        if code != 0:
            raise RuntimeError(f"{h.name}: {' '.join(argv)} failed: {(err or out).strip()}")
