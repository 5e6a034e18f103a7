"""Stock Mininet material (``mn``, users' scripts, Mininet's examples) on a kernel that
lacks what Mininet assumes: ``substitute`` swaps TCLink/TCIntf for minimesh's link backend
when there is no sch_netem; OVS switches, when there is no openvswitch module, for Mininet's
own on a private Open vSwitch with the userspace datapath (``ovs``) where Open vSwitch is
installed, else for Linux bridges with no controller; VLAN interfaces for userspace ones
(``vlan``) when there is no 8021q module; and CPULimitedHost
for one whose ``sched='rt'`` limit is f of the machine where the kernel does not share rt
runtime between CPUs; each substitution
is printed once, at first use. ``shim/`` is put first on PYTHONPATH (its
``sitecustomize``) and PATH (its ``python``) by ``minimesh mn`` / ``minimesh mininet``, so
Python processes a script starts get the same substitutions.

May import ``testbed.net`` and below.
"""
from testbed.compat.substitute import Kernel, SHIM_DIR, install, probe_kernel, shim_env

__all__ = ["Kernel", "SHIM_DIR", "install", "probe_kernel", "shim_env"]
