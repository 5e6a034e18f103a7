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
Mininet): only :mod:`~testbed.net.lifecycle` and :mod:`~testbed.net.running` load with it;
the other names load on first use (those of network and hosts import Mininet).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from testbed.net.lifecycle import (EXIT_FAIL, EXIT_OK, Terminated, clean_stale_report, require_root,
                                   run_testbed, startup_errors, teardown_signals)
from testbed.net.running import RunningTestbed

if TYPE_CHECKING:
    from testbed.net.control import Control, ControlError, DropRule
    from testbed.net.dns import DnsError, DnsServer
    from testbed.net.hosts import JournaledBridge, NameTaken, TestbedHost
    from testbed.net.network import Testbed, TestbedNet

__all__ = ["Testbed", "TestbedNet", "TestbedHost", "JournaledBridge", "NameTaken", "RunningTestbed",
           "Control", "ControlError", "DropRule", "DnsServer", "DnsError", "EXIT_OK", "EXIT_FAIL",
           "Terminated", "teardown_signals", "require_root", "startup_errors", "clean_stale_report",
           "run_testbed"]

_ON_FIRST_USE = {"Testbed": "testbed.net.network", "TestbedNet": "testbed.net.network",
                 "TestbedHost": "testbed.net.hosts", "JournaledBridge": "testbed.net.hosts",
                 "NameTaken": "testbed.net.hosts", "Control": "testbed.net.control",
                 "ControlError": "testbed.net.control", "DropRule": "testbed.net.control",
                 "DnsServer": "testbed.net.dns", "DnsError": "testbed.net.dns"}


def __getattr__(name: str) -> Any:
    if name in _ON_FIRST_USE:
        return getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
