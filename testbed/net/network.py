"""The running network: a Mininet net built from a Topology, with every resource journaled.

    with Testbed(resolve_topology("topologies/line3.yaml"), link_backend="auto") as tb:
        tb.host("h1").cmd("ping -c1 h2")
        tb.set_link("h1", "s1", delay="50ms")            # live (testbed.net.control)
        proc = tb.popen("h2", ["iperf3", "-s"])         # journaled process in h2

Built on Mininet's own classes: :class:`TestbedNet` is a ``Mininet`` whose hosts are
:class:`~testbed.net.hosts.TestbedHost`, switches :class:`~testbed.net.hosts.JournaledBridge`
(LinuxBridge, no controller), links the chosen backend's ``link_class``. ``stop()`` runs
Mininet's orderly stop and then the journal's cleanup, on every exit path.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from typing import IO, Any, Mapping, Sequence

from mininet.net import Mininet
from mininet.node import Node

from testbed.net.control import Control
from testbed.net.hosts import JournaledBridge, TestbedHost, refuse_taken_name
from testbed.journal import Journal, proc_start
from testbed.links import select_backend
from testbed.links.base import LinkBackend

__all__ = ["TestbedNet", "Testbed"]


class TestbedNet(Mininet):
    """Mininet that journals the root-namespace end of every link before creating it
    (a link between two root-namespace nodes would otherwise survive a SIGKILL)."""

    __test__ = False   # not a pytest class

    def __init__(self, *, journal: Journal, **kwargs: Any):
        self.journal = journal
        super().__init__(**kwargs)

    def addLink(self, node1: Any, node2: Any, port1: int | None = None,  # Mininet's name
                port2: int | None = None, cls: Any = None, **params: Any) -> Any:
        n1 = self[node1] if isinstance(node1, str) else node1
        n2 = self[node2] if isinstance(node2, str) else node2
        port1 = n1.newPort() if port1 is None else port1
        port2 = n2.newPort() if port2 is None else port2
        # Mininet's naming (Link.intfName), made explicit so the journal and the link agree
        params.setdefault("intfName1", f"{n1.name}-eth{port1}")
        params.setdefault("intfName2", f"{n2.name}-eth{port2}")
        ends = [name for node, name in ((n1, params["intfName1"]), (n2, params["intfName2"]))
                if not node.inNamespace]
        for ifname in ends:
            refuse_taken_name(ifname, "interface")
        for ifname in ends:
            self.journal.record("link", name=ifname, netns=None)
        return super().addLink(n1, n2, port1, port2, cls, **params)


class Testbed:
    """A Mininet network for one run. Context manager; ``stop()`` is idempotent."""

    def __init__(self, topology: Any, link_backend: str | LinkBackend = "auto",
                 journal: Journal | None = None, out: IO[str] | None = None):
        """topology: a testbed.topology.load.Topology (or anything with ``to_mininet()``), or a
        mininet Topo. link_backend: "auto" | "netem" | "userspace" | "fake", or a
        LinkBackend object."""
        self.topology = topology
        self._backend_arg = link_backend
        self.journal = journal
        self.out = out if out is not None else sys.stderr
        self.backend: LinkBackend | None = None
        self.net: TestbedNet | None = None
        self.control: Control | None = None
        self._stopped = False
        self._owner = os.getpid()

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> "Testbed":
        if self.net is not None:
            return self
        try:
            self.journal = self.journal or Journal()
            self.backend = self._select_backend()
            print(f"*** link backend: {self.backend.name} ({_reason(self.backend)})",
                  file=self.out, flush=True)
            topo = self.topology.to_mininet() if hasattr(self.topology, "to_mininet") else self.topology
            self.net = TestbedNet(
                journal=self.journal, topo=topo, build=False, controller=None,
                host=functools.partial(TestbedHost, journal=self.journal),
                switch=functools.partial(JournaledBridge, journal=self.journal),
                link=self.backend.link_class)
            self.control = Control(self.net, self.journal)
            self.net.build()
            self.net.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _select_backend(self) -> LinkBackend:
        if isinstance(self._backend_arg, LinkBackend) or not isinstance(self._backend_arg, str):
            return self._backend_arg
        return select_backend(self._backend_arg, self.journal)

    def stop(self) -> list[str]:
        """Stop Mininet, then remove whatever the journal still lists. Returns the errors
        of the journal cleanup (empty when everything is gone)."""
        if self._stopped or os.getpid() != self._owner:
            return []  # a fork()ed child (e.g. pyroute2's helpers) must not tear down our net
        self._stopped = True
        errors: list[str] = []
        try:
            if self.net is not None:
                try:
                    self.net.stop()
                except Exception as e:  # the journal below still removes everything
                    errors.append(f"mininet stop: {e}")
        finally:
            if self.journal is not None:
                errors += self.journal.cleanup()
        return errors

    def __enter__(self) -> "Testbed":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- access ----------------------------------------------------------------------

    def _require(self) -> TestbedNet:
        if self.net is None:
            raise RuntimeError("testbed is not started")
        return self.net

    def node(self, name: str) -> Node:
        net = self._require()
        if name not in net.nameToNode:
            raise KeyError(f"no node {name!r}; nodes: {', '.join(sorted(net.nameToNode))}")
        return net.nameToNode[name]

    def host(self, name: str) -> TestbedHost:
        node = self.node(name)
        if not isinstance(node, TestbedHost):
            raise KeyError(f"{name!r} is a switch, not a host; hosts: {', '.join(self.host_names)}")
        return node

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self._require().hosts]

    def ip(self, host: str) -> str:
        return self.host(host).IP()

    def popen(self, host: str | TestbedHost, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` in ``host``'s namespaces (Mininet's ``host.popen``); journaled, so
        it is killed on stop, and by ``minimesh clean`` if the runner dies."""
        h = self.host(host) if isinstance(host, str) else host
        j = self.journal
        assert j is not None
        eid = j.record("process", what=f"{h.name}: {' '.join(argv)}")
        try:
            proc = h.popen(list(argv), **kwargs)
        except BaseException:
            j.forget(eid)
            raise
        j.update(eid, pid=proc.pid, start=proc_start(proc.pid))
        return proc

    def set_hosts_entries(self, host: str, entries: Mapping[str, str]) -> None:
        self.host(host).set_hosts_entries(entries)

    def set_resolver(self, host: str, ip: str | None) -> None:
        self.host(host).set_resolver(ip)

    # --- runtime primitives (testbed.net.control) -----------------------------------------

    def link(self, a: str, b: str) -> Any:
        return self._ctl().link(a, b)

    def set_link(self, a: str, b: str, direction: str | None = None, **params: Any) -> Any:
        return self._ctl().set_link(a, b, direction, **params)

    def link_down(self, a: str, b: str) -> None:
        self._ctl().set_link_up(a, b, False)

    def link_up(self, a: str, b: str) -> None:
        self._ctl().set_link_up(a, b, True)

    def drop(self, a: str, b: str, oneway: bool = False) -> None:
        self._ctl().drop(a, b, oneway)

    def restore(self, a: str | None = None, b: str | None = None) -> int:
        return self._ctl().restore(a, b)

    def _ctl(self) -> Control:
        self._require()
        assert self.control is not None
        return self.control


def _reason(backend: Any) -> str:
    return getattr(backend, "reason", "") or backend.describe()
