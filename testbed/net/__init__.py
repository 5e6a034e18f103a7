"""The emulated network of one run, as a library: build it, change it live, tear it down.

- :mod:`testbed.net.network`: :class:`Testbed` (a Mininet net built from a topology, every
  resource journaled) and :class:`TestbedNet`, its ``Mininet`` subclass;
- :mod:`testbed.net.hosts`: :class:`TestbedHost` (private /etc/hosts and resolv.conf),
  the journaled bridge, :class:`NameTaken`;
- :mod:`testbed.net.control`: the runtime primitives (live link changes, drops);
- :mod:`testbed.net.running`: :class:`RunningTestbed`, the protocol of a started network
  that the CLI, the runner, the capture and the mesh are typed against;
- :mod:`testbed.net.lifecycle`: :func:`run_testbed` (build, run a body, tear down on every
  exit path, signals included), :func:`require_root`, the exit statuses;
- :mod:`testbed.net.dns`: a dnsmasq inside the network.

May import testbed.links, testbed.topology, testbed.apps and the leaves (testbed.shape,
journal, history, paths, aio); never testbed.faults, testbed.mesh, testbed.run or
testbed.cli. Modules here import each other by module path, not through this package.

Importing this package is cheap (``minimesh --help`` imports it, and must not import
Mininet): each name below loads its module on first use (those of network and hosts
import Mininet).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.lazy import lazy_exports

if TYPE_CHECKING:   # the names for mypy ("X as X": re-exported); at run time each loads on first use
    from testbed.net.control import Control as Control
    from testbed.net.control import ControlError as ControlError
    from testbed.net.control import DropRule as DropRule
    from testbed.net.dns import DnsError as DnsError
    from testbed.net.dns import DnsServer as DnsServer
    from testbed.net.hosts import JournaledBridge as JournaledBridge
    from testbed.net.hosts import NameTaken as NameTaken
    from testbed.net.hosts import TestbedHost as TestbedHost
    from testbed.net.lifecycle import EXIT_FAIL as EXIT_FAIL
    from testbed.net.lifecycle import EXIT_OK as EXIT_OK
    from testbed.net.lifecycle import Terminated as Terminated
    from testbed.net.lifecycle import clean_stale_report as clean_stale_report
    from testbed.net.lifecycle import require_root as require_root
    from testbed.net.lifecycle import run_testbed as run_testbed
    from testbed.net.lifecycle import startup_errors as startup_errors
    from testbed.net.lifecycle import teardown_signals as teardown_signals
    from testbed.net.network import Testbed as Testbed
    from testbed.net.network import TestbedNet as TestbedNet
    from testbed.net.running import RunningTestbed as RunningTestbed

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "testbed.net.network": ("Testbed", "TestbedNet"),
    "testbed.net.hosts": ("TestbedHost", "JournaledBridge", "NameTaken"),
    "testbed.net.running": ("RunningTestbed",),
    "testbed.net.control": ("Control", "ControlError", "DropRule"),
    "testbed.net.dns": ("DnsServer", "DnsError"),
    "testbed.net.lifecycle": ("EXIT_OK", "EXIT_FAIL", "Terminated", "teardown_signals", "require_root",
                              "startup_errors", "clean_stale_report", "run_testbed"),
})
