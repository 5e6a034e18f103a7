"""minimesh's substitutions into stock Mininet, for a kernel without what Mininet assumes.

    kernel = probe_kernel()     # netem? openvswitch module? the reference user switch?
    install(kernel)             # patches mininet.link / mininet.node / mininet.net in place

What is substituted, and only where the kernel lacks it (stock behaviour is kept where
netem and OVS exist):

- no ``sch_netem``: ``mininet.link.TCLink`` / ``TCULink`` become :class:`TCLink` (a
  :class:`~testbed.links.userspace.UserspaceLink` taking TCLink's parameters),
  ``TCIntf`` becomes :class:`TCIntf` (a :class:`~testbed.links.tcparams.ShapedIntf`), and a
  plain ``Link`` given TCIntf interfaces (``Mininet(intf=custom(TCIntf, bw=10))``) is built
  as :class:`TCLink`, since a veth cannot be shaped here;
- no ``openvswitch`` module, Open vSwitch installed: the runner starts a private Open
  vSwitch for the run (:mod:`testbed.compat.ovs`) and ``OVSSwitch``/``OVSKernelSwitch``
  (Mininet's default switch) become :class:`UserOVSSwitch`, ``OVSBridge``
  :class:`UserOVSBridge`: Mininet's own classes with ``datapath='user'``; so does
  ``UserSwitch`` when ``ofdatapath`` is not installed. Controllers stay stock (the shim's
  ``controller`` runs Open vSwitch's ``ovs-testcontroller`` where the reference one is not
  packaged);
- no ``openvswitch`` module and no Open vSwitch: the OVS switches become :class:`Bridge`, a
  Linux bridge that accepts OVS's options (so does ``UserSwitch`` without ``ofdatapath``),
  and with no OpenFlow switch at all ``Controller``/``OVSController``/``NOX``/``Ryu`` and
  ``DefaultController`` become :class:`NoController`, which runs nothing (a remote
  controller is left as it is: it starts nothing here);
- a kernel that does not lend rt runtime between CPUs (no ``RT_RUNTIME_SHARE``, Linux >= 5.10)
  on more than one core: ``CPULimitedHost`` becomes :class:`CPULimitedHost`, whose
  ``sched='rt'`` limit is f of the machine again (pinned to ceil(f x cores) CPUs, see there);
  ``sched='cfs'`` is stock;
- no ``8021q`` module: ``vconfig add`` and ``ip link add ... type vlan`` in the hosts make
  a userspace VLAN interface (:mod:`testbed.compat.vlan`; the shim's ``vconfig`` and ``ip``).

Each substitution is printed once per process, to stderr, when it first takes effect.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from mininet.link import Link
from mininet.node import Controller, OVSBridge, OVSSwitch
from mininet.node import CPULimitedHost as StockCPULimitedHost
from mininet.nodelib import LinuxBridge

from testbed.journal import Journal
from testbed.links.tcparams import ShapedIntf, wants_shaping
from testbed.links.userspace import UserspaceLink
from testbed.paths import REPO

__all__ = ["Kernel", "probe_kernel", "install", "shim_env", "SHIM_DIR", "ENV", "TCLink", "TCULink",
           "TCIntf", "Bridge", "NoController", "CPULimitedHost", "probe_rt_share", "rt_plan", "parse_cpus",
           "spread_cpus"]

SHIM_DIR = Path(__file__).resolve().parent / "shim"
ENV = "MINIMESH_MININET"          # the probed Kernel as JSON: set by the runner, read by the shim
OVS_OPTIONS = ("failMode", "datapath", "inband", "protocols", "reconnectms", "batch", "dpopts")


@dataclass(frozen=True)
class Kernel:
    """What this kernel/machine offers stock Mininet, with the reasons."""

    netem: bool
    netem_why: str
    ovs: bool
    ovs_why: str
    user_switch: bool
    user_switch_why: str
    rt_share: bool
    rt_share_why: str
    vlan: bool = True
    vlan_why: str = "not probed"
    ovs_user: bool = False           # a private Open vSwitch (userspace datapath) runs for the run
    ovs_user_why: str = "not probed"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Kernel":
        return cls(**json.loads(text))


def _probe_module(name: str) -> tuple[bool, str]:
    """Is kernel module ``name`` loaded, or loadable?"""
    if os.path.isdir(f"/sys/module/{name}"):
        return True, f"the {name} module is loaded"
    if shutil.which("modprobe") and subprocess.run(["modprobe", "-q", name],
                                                   capture_output=True).returncode == 0:
        return True, f"the {name} module could be loaded"
    return False, f"the kernel has no {name} module (modprobe {name} failed)"


def _probe_ovs() -> tuple[bool, str]:
    return _probe_module("openvswitch")


SCHED_FEATURES = ("/sys/kernel/debug/sched/features", "/sys/kernel/debug/sched_features")


def probe_rt_share(features: tuple[str, ...] = SCHED_FEATURES, release: str | None = None) -> tuple[bool, str]:
    """Does an rt runqueue borrow its group's unused runtime from other CPUs (the scheduler
    feature RT_RUNTIME_SHARE)? Read from debugfs's sched features where readable; otherwise
    (debugfs is usually not mounted) the kernel version decides: RT_RUNTIME_SHARE is off by
    default from Linux 5.10 on, and on before."""
    for path in features:
        try:
            words = Path(path).read_text().split()
        except OSError:
            continue
        if "RT_RUNTIME_SHARE" in words:
            return True, f"{path} has RT_RUNTIME_SHARE"
        return False, f"{path} has no RT_RUNTIME_SHARE"
    release = platform.release() if release is None else release
    m = re.match(r"(\d+)\.(\d+)", release)
    if m and (int(m[1]), int(m[2])) >= (5, 10):
        return False, (f"kernel {release} >= 5.10: rt runtime is not shared between CPUs "
                       "(RT_RUNTIME_SHARE off by default)")
    return True, f"kernel {release} < 5.10: rt runtime is shared between CPUs (RT_RUNTIME_SHARE)"


def probe_kernel() -> Kernel:
    """Probe once: kernel netem (a scratch namespace), the openvswitch and 8021q modules,
    ofdatapath, rt runtime sharing."""
    from testbed.links import probe_netem    # late: pyroute2, only when the kernel is probed
    netem, netem_why = probe_netem()
    ovs, ovs_why = _probe_ovs()
    user = shutil.which("ofdatapath") is not None
    vlan, vlan_why = _probe_module("8021q")
    return Kernel(netem, netem_why, ovs, ovs_why, user,
                  "ofdatapath is installed" if user else "the reference switch (ofdatapath) is not installed",
                  *probe_rt_share(), vlan, vlan_why)


# --- printed once --------------------------------------------------------------------------

_announced: set[str] = set()


def announce(key: str, message: str) -> None:
    """Print a substitution the first time it takes effect in this process."""
    if key not in _announced:
        _announced.add(key)
        print(f"*** minimesh: {message}", file=sys.stderr, flush=True)


_state: dict[str, Any] = {"kernel": None, "journal": None}


def _why(attr: str) -> str:
    kernel = _state["kernel"]
    return getattr(kernel, attr) if kernel is not None else "substituted"


def _journal() -> Journal:
    """One journal per process for the links' emulator processes; cleaned up at exit (and by
    ``minimesh clean`` if the process was killed)."""
    if _state["journal"] is None:
        journal = Journal()
        _state["journal"] = journal
        atexit.register(journal.cleanup)
    return _state["journal"]


# --- the substitutes -----------------------------------------------------------------------

class TCIntf(ShapedIntf):
    """Mininet's TCIntf on minimesh's link backend: ``config(bw=, delay=, jitter=, loss=,
    max_queue_size=)`` changes the shape of what this interface sends."""

    minimesh_tcintf = True


class TCLink(UserspaceLink):
    """Mininet's TCLink on minimesh's userspace link emulator (same parameters)."""

    def __init__(self, node1: Any, node2: Any, **params: Any):
        announce("tclink", f"TCLink/TCIntf -> minimesh's userspace link emulator ({_why('netem_why')})")
        super().__init__(node1, node2, journal=_journal(), **params)


class TCULink(TCLink):
    """TCULink: TCLink with transmit/receive checksum offload off, as Mininet's."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.update(txo=False, rxo=False)
        super().__init__(*args, **kwargs)


class Bridge(LinuxBridge):
    """A Linux bridge standing in for an OVS (or reference user) switch; OVS's own options
    (failMode, datapath, protocols, ...) have no meaning for it and are dropped, as said."""

    def __init__(self, name: str, stp: bool = False, **params: Any):
        dropped = sorted(k for k in OVS_OPTIONS if params.pop(k, None) is not None)
        note = f"; OVS options without meaning on a bridge: {', '.join(dropped)}" if dropped else ""
        announce("switch", f"OVS switch -> Linux bridge ({_why('ovs_why')}){note}")
        super().__init__(name, stp=stp, **params)


def _user_datapath(params: dict[str, Any]) -> None:
    """Take the switch's own ``datapath=`` out of ``params`` (it runs on the userspace one) and
    announce the substitution, naming a datapath the script asked for."""
    asked = params.pop("datapath", "kernel")
    note = "" if asked == "user" else f" (datapath={asked!r} asked)"
    announce("switch", f"OVS switch -> Open vSwitch's userspace datapath{note}, on this run's own Open "
             f"vSwitch in {os.environ.get('OVS_RUNDIR', '?')} ({_why('ovs_why')})")


class UserOVSSwitch(OVSSwitch):
    """Mininet's OVSSwitch with ``datapath='user'`` on the run's private Open vSwitch
    (:mod:`testbed.compat.ovs`): OpenFlow, ``ovs-ofctl`` and controllers as with OVS's kernel
    datapath, forwarding done by ovs-vswitchd."""

    def __init__(self, name: str, **params: Any):
        _user_datapath(params)
        super().__init__(name, datapath="user", **params)


class UserOVSBridge(OVSBridge):
    """Mininet's OVSBridge (standalone, no controller) with ``datapath='user'``."""

    def __init__(self, name: str, **params: Any):
        _user_datapath(params)
        super().__init__(name, datapath="user", **params)


class NoController(Controller):
    """A controller that runs nothing: Linux bridges learn by themselves."""

    def __init__(self, name: str, **params: Any):
        announce("controller", "OpenFlow controller -> none (the switches are Linux bridges, "
                 "which need none)")
        params = {k: v for k, v in params.items() if k in ("ip", "port", "inNamespace")}
        super().__init__(name, **params)

    @classmethod
    def isAvailable(cls) -> bool:  # Mininet's name
        return True

    def checkListening(self) -> None:  # Mininet's name
        pass

    def start(self) -> None:
        pass

    def stop(self, *args: Any, **kwargs: Any) -> None:
        from mininet.node import Node    # late: Node.stop ends the node's shell
        Node.stop(self, *args, **kwargs)

    def IP(self, intf: Any = None) -> str:  # Mininet's name
        return "127.0.0.1"


def parse_cpus(cores: Any) -> list[int]:
    """Mininet's ``cores=`` (a CPU number, a list of them, or a cpuset list such as '0-1,3')
    as sorted CPU numbers."""
    if cores is None:
        return []
    if isinstance(cores, int):
        return [cores]
    if isinstance(cores, (list, tuple, set)):
        return sorted({int(c) for c in cores})
    cpus: set[int] = set()
    for part in str(cores).split(","):
        if part.strip():
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return sorted(cpus)


def rt_plan(f: float, ncores: int, period_us: int, cores: list[int] | None = None,
            max_ratio: float = 1.0) -> tuple[int, int] | None:
    """(k CPUs, rt_runtime_us) that give an rt host f of an ``ncores`` machine when rt runtime
    is not shared between CPUs: k = ceil(f x ncores) (or the k CPUs of ``cores``), each with
    period x f x ncores / k, at most ``max_ratio`` of the period (what the kernel lets a group
    have). None where stock Mininet's period x f on every CPU is already that: one core, or
    k would be every core."""
    if ncores <= 1 or not f or f <= 0:
        return None
    k = len(cores) if cores else min(ncores, math.ceil(round(f * ncores, 9)))
    if k >= ncores:
        return None
    return k, min(round(period_us * f * ncores / k), int(period_us * min(1.0, max_ratio)))


def spread_cpus(available: list[int], k: int, start: int) -> list[int]:
    """k CPUs of ``available`` from position ``start`` on, wrapping (hosts in turn, as
    Mininet's autoPinCpus)."""
    return sorted({available[(start + i) % len(available)] for i in range(k)})


def _rt_max_ratio() -> float:
    """The share of each CPU the kernel lets rt groups have (sched_rt_runtime_us / period)."""
    try:
        runtime = int(Path("/proc/sys/kernel/sched_rt_runtime_us").read_text())
        period = int(Path("/proc/sys/kernel/sched_rt_period_us").read_text())
    except (OSError, ValueError):
        return 1.0
    return 1.0 if runtime < 0 or period <= 0 else runtime / period


def _cgget(param: str, group: str) -> str:
    from mininet.util import errRun    # late: as the other Mininet helpers here
    out, _err, code = errRun(f"cgget -n -v -r {param} /{group}")
    return out.strip() if code == 0 else ""


class CPULimitedHost(StockCPULimitedHost):
    """CPULimitedHost whose ``sched='rt'`` limit is f of the machine, as Mininet documents
    ("overall system CPU fraction"), on a kernel that does not share rt runtime between CPUs.

    Mininet 2.3.0 sets ``cpu.rt_runtime_us`` = period x f, a budget *per CPU*. Kernels before
    5.10 lent a runqueue its group's unused runtime from the other CPUs (RT_RUNTIME_SHARE), so
    one busy process got f of the machine; from 5.10 on it gets f of one CPU, f / cores of the
    machine. Here the host's cpuset is k = ceil(f x cores) CPUs (those of ``cores=``, else the
    next k in turn) and each has period x f x cores / k (:func:`rt_plan`): k such CPUs are f of
    the machine, and the ceil(f x cores) busy processes Mininet's ``runCpuLimitTest`` runs use
    all of it. Where k would be every core, or on one core, nothing changes. The kernel counts
    f x cores / k per rt group against sched_rt_runtime_us (95 % of a CPU) for all groups
    together, so fewer rt hosts fit than stock (4 at 10 % on 2 cores, not 9); a host the
    kernel refuses gets stock's limit, and says so. ``sched='cfs'`` is stock; for both, the
    host's cgroup is removed from every hierarchy at cleanup (:meth:`cgroupDel`)."""

    _next_cpu = 0       # the next CPU to pin an rt host to (class-wide, as Mininet's nextCore)

    def __init__(self, name: str, sched: str = "cfs", **kwargs: Any):
        self.minimesh_cores: list[int] = []
        super().__init__(name, sched=sched, **kwargs)

    def config(self, cpu: float = -1, cores: Any = None, **params: Any) -> Any:
        self.minimesh_cores = parse_cpus(cores) if cores else []     # stock ignores cores=0 too
        return super().config(cpu=cpu, cores=cores, **params)

    def setCPUs(self, cores: Any, mems: Any = 0) -> None:  # Mininet's name
        if cores:
            self.minimesh_cores = parse_cpus(cores)
        super().setCPUs(cores, mems)

    def setCPUFrac(self, f: float, sched: str | None = None) -> None:  # Mininet's name
        from mininet.log import error, info    # late: Mininet's log, as the original
        from mininet.util import numCores
        sched = sched or self.sched
        plan = rt_plan(f, numCores(), self.period_us, self.minimesh_cores, _rt_max_ratio()) \
            if sched == "rt" else None
        if plan is None:
            super().setCPUFrac(f, sched)
            return
        k, runtime = plan
        cpus = self.minimesh_cores or self._next_cpus(k)
        self.cgroupSet("rt_period_us", self.period_us)
        if not self._set_runtime(runtime):
            error(f"*** minimesh: {self.name}: the kernel refused rt_runtime_us={runtime} (all rt groups "
                  "together may have sched_rt_runtime_us of each CPU); Mininet's per-CPU limit instead\n")
            super().setCPUFrac(f, sched)
            return
        if not self._pin(cpus):
            self._set_runtime(0)
            error(f"*** minimesh: {self.name}: could not pin to CPU {cpus}; Mininet's per-CPU limit instead\n")
            super().setCPUFrac(f, sched)
            return
        announce("cpu-rt", "CPULimitedHost(sched='rt') -> minimesh's: pinned to ceil(f x cores) CPUs with "
                 f"f x cores / that many of each, so f of the machine ({_why('rt_share_why')})")
        info("(%s %d/%dus on CPU %s) " % (self.chrt(), runtime, self.period_us, ",".join(map(str, cpus))))

    def _next_cpus(self, k: int) -> list[int]:
        from mininet.util import numCores
        available = parse_cpus(_cgget("cpuset.cpus", "")) or list(range(numCores()))
        cpus = spread_cpus(available, k, CPULimitedHost._next_cpu)
        CPULimitedHost._next_cpu = (CPULimitedHost._next_cpu + k) % len(available)
        return cpus

    def _set_runtime(self, runtime: int) -> bool:
        from mininet.util import errRun
        errRun(f"cgset -r cpu.rt_runtime_us={runtime} /{self.name}")
        return _cgget("cpu.rt_runtime_us", self.name) == str(runtime)

    def _pin(self, cpus: list[int]) -> bool:
        """The host's cpuset: these CPUs, the root's memory nodes (a cpuset needs both), and
        the host's shell in it (what it starts inherits it)."""
        from mininet.util import errRun
        mems = _cgget("cpuset.mems", "") or "0"
        errRun(f"cgset -r cpuset.cpus={','.join(map(str, cpus))} /{self.name}")
        errRun(f"cgset -r cpuset.mems={mems} /{self.name}")
        try:
            if parse_cpus(_cgget("cpuset.cpus", self.name)) != sorted(cpus):
                return False
        except ValueError:
            return False
        return errRun(f"cgclassify -g cpuset:/{self.name} {self.pid}")[2] == 0

    def cleanup(self) -> None:
        """Node's cleanup, then the cgroup's, as stock's (whose ``super(CPULimitedHost, self)``
        finds this class once it is mininet.node's CPULimitedHost, and would call itself)."""
        from mininet.util import retry
        super(StockCPULimitedHost, self).cleanup()
        retry(retries=3, delaySecs=.1, fn=self.cgroupDel)

    def cgroupDel(self) -> bool:  # Mininet's name
        """Stock's ``cgdelete -r cpu,cpuacct,cpuset:/NAME``, then each hierarchy on its own:
        where the three are mounted apart (as here), cgroup-tools 2.0's cgdelete removes the
        group from the first one only, and NAME stayed in cpuacct and cpuset (with its pinning)."""
        from mininet.util import errRun
        done = bool(super().cgroupDel())
        controllers, _, path = self.cgroup.partition(":")
        for controller in controllers.split(","):
            _out, err, code = errRun(f"cgdelete -r {controller}:{path}")
            done = done and (code == 0 or "no such file" in err.lower())
        return done


# --- installing them -------------------------------------------------------------------------

def _swap(module: Any, names: tuple[str, ...], new: Any) -> dict[Any, Any]:
    """module.NAME = new for each NAME; returns {old object: new} for the defaults below."""
    swapped = {}
    for name in names:
        old = getattr(module, name, None)
        if old is not None and old is not new:
            swapped[old] = new
            setattr(module, name, new)
    return swapped


def _swap_defaults(fn: Callable[..., Any], swapped: dict[Any, Any]) -> None:
    """Replace swapped objects among a function's default arguments (Mininet(switch=OVSKernelSwitch,
    controller=DefaultController) bound the stock classes when net.py was imported)."""
    defaults = fn.__defaults__
    if defaults:
        fn.__defaults__ = tuple(swapped.get(d, d) if _hashable(d) else d for d in defaults)


def _hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def _shaping_add_link(original: Callable[..., Any]) -> Callable[..., Any]:
    """Mininet.addLink that builds a plain Link with shaping interfaces as minimesh's TCLink."""
    def addLink(self: Any, node1: Any, node2: Any, port1: Any = None, port2: Any = None,  # Mininet's name
                cls: Any = None, **params: Any) -> Any:
        link_cls = self.link if cls is None else cls
        intfs = [params.get("intf", self.intf), params.get("cls1"), params.get("cls2")]
        if link_cls is Link and any(wants_shaping(c) for c in intfs if c is not None):
            announce("intf-link", "Link with TCIntf interfaces -> minimesh's TCLink (a veth cannot "
                     f"be shaped: {_why('netem_why')})")
            cls = TCLink
        return original(self, node1, node2, port1, port2, cls, **params)
    addLink.minimesh_substitute = True      # type: ignore[attr-defined]  # marks it installed
    return addLink


def iperf_probe_lines() -> int:
    """How many '/sec' result lines an iperf server prints for Mininet's iperf: 2 (the
    telnet probe of ``waitListening`` and the test) up to iperf 2.0.13; from 2.0.14 on the
    probe's connection prints none, so Mininet 2.3.0's wait for a second line never ends
    (mininet/mininet#1060)."""
    try:
        out = subprocess.run(["iperf", "-v"], capture_output=True, text=True)
    except FileNotFoundError:
        return 2                        # no iperf: Mininet's own iperf says so
    m = re.search(r"iperf version (\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if not m:
        return 2
    return 2 if tuple(int(g) for g in m.groups()) <= (2, 0, 13) else 1


def _iperf(self: Any, hosts: Any = None, l4Type: str = "TCP", udpBw: str = "10M",  # Mininet's names
           fmt: str | None = None, seconds: int = 5, port: int = 5001) -> list[str]:
    """Mininet 2.3.0's Mininet.iperf, waiting for as many server result lines as this iperf
    prints (:func:`iperf_probe_lines`) instead of always two."""
    from mininet.log import debug, output    # late: Mininet's log, as the original
    from mininet.util import waitListening
    announce("iperf", "Mininet.iperf -> minimesh's, which waits for one server result line "
             "(iperf >= 2.0.14 prints none for the telnet probe: mininet/mininet#1060)")
    client, server = hosts or [self.hosts[0], self.hosts[-1]]
    output("*** Iperf: testing", l4Type, "bandwidth between", client, "and", server, "\n")
    server.cmd("killall -9 iperf")
    iperf_args, bw_args = f"iperf -p {port} ", ""
    if l4Type == "UDP":
        iperf_args += "-u "
        bw_args = "-b " + udpBw + " "
    elif l4Type != "TCP":
        raise Exception(f"Unexpected l4 type: {l4Type}")
    if fmt:
        iperf_args += f"-f {fmt} "
    server.sendCmd(iperf_args + "-s")
    if l4Type == "TCP" and not waitListening(client, server.IP(), port):
        raise Exception(f"Could not connect to iperf on port {port}")
    cliout = client.cmd(iperf_args + f"-t {seconds} -c " + server.IP() + " " + bw_args)
    debug(f"Client output: {cliout}\n")
    servout = ""
    count = _state.setdefault("iperf_lines", iperf_probe_lines()) if l4Type == "TCP" else 1
    while len(re.findall("/sec", servout)) < count:
        servout += server.monitor(timeoutms=5000)
    server.sendInt()
    servout += server.waitOutput()
    debug(f"Server output: {servout}\n")
    result = [self._parseIperf(servout), self._parseIperf(cliout)]
    if l4Type == "UDP":
        result.insert(0, udpBw)
    output(f"*** Results: {result}\n")
    return result


def install(kernel: Kernel | None = None) -> Kernel:
    """Patch Mininet for this kernel (probed, or from $MINIMESH_MININET). Idempotent."""
    import mininet.link as mlink    # late: the modules being patched
    import mininet.net as mnet
    import mininet.node as mnode

    if kernel is None:
        env = os.environ.get(ENV)
        kernel = Kernel.from_json(env) if env else probe_kernel()
    _state["kernel"] = kernel
    if getattr(mnet.Mininet.addLink, "minimesh_substitute", False):
        return kernel
    swapped: dict[Any, Any] = {}
    if iperf_probe_lines() == 1:
        mnet.Mininet.iperf = _iperf
    if not kernel.netem:
        _swap(mlink, ("TCLink",), TCLink)
        _swap(mlink, ("TCULink",), TCULink)
        _swap(mlink, ("TCIntf",), TCIntf)
        mnet.Mininet.addLink = _shaping_add_link(mnet.Mininet.addLink)
    if not kernel.ovs and kernel.ovs_user:
        from testbed.compat.ovs import stop_at_exit    # late: only where the runner started one
        stop_at_exit()
        swapped.update(_swap(mnode, ("OVSSwitch", "OVSKernelSwitch"), UserOVSSwitch))
        swapped.update(_swap(mnode, ("OVSBridge",), UserOVSBridge))
        if not kernel.user_switch:
            swapped.update(_swap(mnode, ("UserSwitch",), UserOVSSwitch))
        mnet.OVSKernelSwitch = mnode.OVSKernelSwitch     # net.py's own imported name
        _swap_defaults(mnet.Mininet.__init__, swapped)
    elif not kernel.ovs:
        swapped.update(_swap(mnode, ("OVSSwitch", "OVSKernelSwitch", "OVSBridge"), Bridge))
        if not kernel.user_switch:
            swapped.update(_swap(mnode, ("UserSwitch",), Bridge))
        swapped.update(_swap(mnode, ("Controller", "OVSController", "NOX", "Ryu", "DefaultController"),
                             NoController))
        mnode.DefaultControllers = [NoController]
        mnode.findController.__defaults__ = ((NoController,),)
        for name in ("OVSKernelSwitch", "DefaultController"):   # net.py's own imported names
            setattr(mnet, name, getattr(mnode, name))
        _swap_defaults(mnet.Mininet.__init__, swapped)
    if not kernel.rt_share:
        _swap(mnode, ("CPULimitedHost",), CPULimitedHost)
    return kernel


def shim_env(kernel: Kernel, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``minimesh mn`` / ``mininet`` run Mininet material in: the shim's
    sitecustomize and minimesh first on PYTHONPATH, its ``python`` first on PATH (the
    interpreter minimesh runs on) and, where the kernel lacks them, its stand-ins for
    ``ovs-vsctl`` (bridge commands) and the reference switch's ``ofdatapath``/``ofprotocol``,
    which scripts such as Mininet's scratchnet call by hand, and its ``vconfig`` and ``ip``
    (userspace VLAN interfaces) where the kernel has no 8021q; the probed kernel in
    $MINIMESH_MININET."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SHIM_DIR), str(REPO), env.get("PYTHONPATH")) if p)
    bins = [SHIM_DIR / "bin"]
    if not kernel.ovs and kernel.ovs_user:   # ovs-vsctl add-br -> userspace datapath; controller
        bins.append(SHIM_DIR / "ovs-user-bin")
    elif not kernel.ovs:                # ovs-vsctl's bridge commands -> Linux bridge
        bins.append(SHIM_DIR / "ovs-bin")
    if not kernel.user_switch:          # ofdatapath/ofprotocol -> Linux bridge
        bins.append(SHIM_DIR / "ofdp-bin")
    if not kernel.vlan:                 # vconfig / ip link add ... type vlan -> userspace VLAN
        bins.append(SHIM_DIR / "vlan-bin")
    env["PATH"] = os.pathsep.join([*map(str, bins), *([env["PATH"]] if env.get("PATH") else [])])
    env["MINIMESH_PYTHON"] = sys.executable
    env[ENV] = kernel.to_json()
    return env
