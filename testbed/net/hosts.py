"""Journaled Mininet nodes: every shell, namespace and bridge is on the journal first.

- :class:`JournaledNode` (a mixin for any Mininet ``Node``) records the node's shell
  process the moment it is spawned and, for nodes in their own namespace, a
  ``netns_procs`` entry with the namespace inode once the shell runs, so a SIGKILLed
  runner's hosts can be swept by ``minimesh clean`` (it kills exactly the processes in
  that network namespace).
- :class:`TestbedHost` is a Mininet ``Host`` with its own ``/etc/hosts`` and
  ``/etc/resolv.conf``. Mininet's ``mnexec -n`` already gives every host a private mount
  namespace (with ``/`` marked private, so nothing propagates back); Mininet's
  ``privateDirs`` only mounts *directories*, so the two files are bind-mounted here from
  journaled files ``<state dir>/<run id>.<host>.hosts|resolv`` that the runner rewrites
  in place (same inode) when names or the resolver change.
- :class:`JournaledBridge` is ``mininet.nodelib.LinuxBridge`` recording the bridge
  before ``brctl addbr``; where bridged frames traverse iptables (br_netfilter) it also
  accepts its own frames in the root FORWARD chain (journaled rule, removed at stop).

Mininet instantiates node classes as ``cls(name, **params)``; bind the journal with
``functools.partial(TestbedHost, journal=j)``.
"""
from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

from mininet.moduledeps import pathCheck
from mininet.node import Host
from mininet.nodelib import LinuxBridge

from testbed.journal import Journal, netns_of, pin_netns

__all__ = ["JournaledNode", "TestbedHost", "JournaledBridge", "render_hosts", "render_resolv",
           "NameTaken", "refuse_taken_name"]


class NameTaken(RuntimeError):
    """A root-namespace interface name this run needs already exists."""


def refuse_taken_name(ifname: str, what: str) -> None:
    """Mininet deletes an existing interface of the same name before creating its own,
    which would silently break another run (root-namespace names are global). Refuse
    instead; call it *before* journaling the name, so cleanup never touches the other's."""
    from pyroute2 import IPRoute    # late: pyroute2 (~150 ms) only when a network is built
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=ifname):
            raise NameTaken(f"{what} {ifname!r} already exists in the root namespace (another "
                            "minimesh or Mininet run with the same names?); rename the node, or "
                            "stop that run / `minimesh clean` first")


class JournaledNode:
    """Mixin: journal the node's shell (and namespace) as Mininet starts it."""

    journal: Journal
    name: str             # provided by the Mininet Node this is mixed into
    pid: int
    inNamespace: bool     # Mininet's name

    def _init_journal(self, journal: Journal) -> None:
        self.journal = journal
        self._spawning_shell = False
        self._ns_eid: int | None = None

    def startShell(self, mnopts: Any = None) -> None:  # Mininet's name
        if self.inNamespace:
            # before anything exists; the namespace inode is filled in once the shell runs
            self._pin = str(self.journal.dir / "ns" / f"{self.journal.run_id}-{self.name}")
            self._ns_eid = self.journal.record("netns_procs", what=f"node {self.name}", pin=self._pin)
        self._spawning_shell = True
        try:
            super().startShell(mnopts)  # type: ignore[misc]  # a mixin: Mininet's Node has startShell
        finally:
            self._spawning_shell = False
        if self._ns_eid is not None:
            ns = netns_of(self.pid)
            if ns is None or ns == netns_of(os.getpid()):
                # never journal our own namespace for a sweep (/proc/1/ns may be unreadable)
                raise RuntimeError(f"{self.name}: shell did not get its own network namespace")
            pinned = pin_netns(self.pid, self._pin)
            self.journal.update(self._ns_eid, netns=pinned, pid=self.pid)

    def _popen(self, cmd: list[str], **params: Any) -> subprocess.Popen:
        popen = super()._popen(cmd, **params)  # type: ignore[misc]  # a mixin: Mininet's Node has _popen
        if self._spawning_shell:
            self.journal.record_process(popen.pid, f"shell of {self.name}")
        return popen


def render_hosts(own_name: str, own_ip: str | None, entries: Mapping[str, str]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if own_ip:
        lines.append(f"{own_ip}\t{own_name}")
    for name, ip in sorted(entries.items()):
        ipaddress.ip_address(ip)  # refuse garbage before it reaches the file
        lines.append(f"{ip}\t{name}")
    return "\n".join(lines) + "\n"


def render_resolv(nameserver: str | None) -> str:
    if nameserver is None:
        return "# minimesh: no DNS server in this network yet (Testbed.set_resolver)\n"
    ipaddress.ip_address(nameserver)
    return f"# minimesh testbed DNS\nnameserver {nameserver}\noptions timeout:1 attempts:2\n"


class TestbedHost(JournaledNode, Host):
    """A Mininet Host, journaled, with private /etc/hosts and /etc/resolv.conf."""

    __test__ = False   # not a pytest class

    def __init__(self, name: str, journal: Journal, **params: Any):
        self._init_journal(journal)
        self.hosts_entries: dict[str, str] = {}
        self.resolver: str | None = None
        stem = journal.dir / f"{journal.run_id}.{name}"
        self.hosts_file = Path(f"{stem}.hosts")
        self.resolv_file = Path(f"{stem}.resolv")
        super().__init__(name, **params)
        self._mount_private_files()

    def _own_ip(self) -> str | None:
        ip = self.params.get("ip")
        return str(ip).split("/")[0] if ip else None

    def _mount_private_files(self) -> None:
        for path in (self.hosts_file, self.resolv_file):
            self.journal.record("path", path=str(path))
        self._write_files()
        for src, dst in ((self.hosts_file, "/etc/hosts"), (self.resolv_file, "/etc/resolv.conf")):
            out, err, code = self.pexec(["mount", "--bind", str(src), dst])
            if code != 0:
                raise RuntimeError(f"{self.name}: cannot bind-mount {src} on {dst}: {err.strip() or out.strip()}")

    def _write_files(self) -> None:
        # write in place: the bind mount pins the inode, a rename would not be seen
        with open(self.hosts_file, "w") as f:
            f.write(render_hosts(self.name, self._own_ip(), self.hosts_entries))
        with open(self.resolv_file, "w") as f:
            f.write(render_resolv(self.resolver))

    def set_hosts_entries(self, entries: Mapping[str, str]) -> None:
        """Replace the extra name -> IP lines of this host's /etc/hosts."""
        self.hosts_entries = dict(entries)
        self._write_files()

    def set_resolver(self, ip: str | None) -> None:
        """Point this host's /etc/resolv.conf at a DNS server (None: none)."""
        self.resolver = ip
        self._write_files()


class JournaledBridge(JournaledNode, LinuxBridge):
    """Mininet's LinuxBridge; the bridge is journaled before ``brctl addbr``. Mininet's
    ``stop`` deletes it; the entry stays until the journal's cleanup confirms it is gone."""

    def __init__(self, name: str, journal: Journal, **params: Any):
        refuse_taken_name(name, "bridge")
        self._init_journal(journal)
        self._br_eid: int | None = None
        self._fw_eid: int | None = None
        super().__init__(name, **params)

    @classmethod
    def setup(cls) -> None:
        """Mininet's check, without its warning about bridge firewalling: when the kernel
        passes bridged IPv4 frames through iptables (br_netfilter), :meth:`start` lets this
        bridge's own traffic through the FORWARD chain instead (a journaled rule), so a host
        whose FORWARD policy is DROP (Docker's) does not silently cut the testbed."""
        pathCheck("brctl", moduleName="bridge-utils")

    def start(self, controllers: Any) -> None:
        if self._br_eid is None:
            self._br_eid = self.journal.record("bridge", name=self.name)
        super().start(controllers)
        if self._fw_eid is None and bridge_calls_iptables():
            args = forward_rule(self.name)
            self._fw_eid = self.journal.record("iptables", pid=None, args=args)
            subprocess.run(["iptables", "-w", "-I", *args], capture_output=True, check=True)

    def stop(self, deleteIntfs: bool = True) -> None:  # Mininet's name
        if self._fw_eid is not None:
            subprocess.run(["iptables", "-w", "-D", *forward_rule(self.name)], capture_output=True, check=False)
            self.journal.forget(self._fw_eid)
            self._fw_eid = None
        super().stop(deleteIntfs)


def bridge_calls_iptables(path: str = "/proc/sys/net/bridge/bridge-nf-call-iptables") -> bool:
    """True when bridged IPv4 frames traverse the root namespace's iptables (br_netfilter)."""
    try:
        return Path(path).read_text().strip() == "1"
    except OSError:
        return False


def forward_rule(bridge: str) -> list[str]:
    """The FORWARD rule (iptables arguments after -I/-D) accepting frames bridged on ``bridge``."""
    return ["FORWARD", "-i", bridge, "-o", bridge, "-m", "comment", "--comment", "minimesh testbed bridge",
            "-j", "ACCEPT"]
