"""``minimesh doctor [--json]``: what this machine can do, and the link backend ``auto`` picks.

Each check is a function returning a :class:`Check`. The JSON output maps every check's
key to a boolean, plus ``link_backend`` ("netem" | "userspace" | null when neither works)
and ``details`` (key -> one-line explanation). Exit status 0 when everything *required*
works (root, namespaces, Mininet, iptables, a link backend), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from testbed.cli.subcommand import Subcommand
from testbed.journal import Journal
from testbed.links import probe_netem, probe_tun

__all__ = ["Check", "run_checks", "report", "SUBCOMMANDS"]


@dataclass(frozen=True)
class Check:
    key: str
    label: str
    ok: bool
    detail: str
    required: bool = False


def _run(argv: list[str], timeout: float = 5.0) -> tuple[bool, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    out = (p.stdout or p.stderr).strip().splitlines()
    return p.returncode == 0, out[0] if out else f"exit status {p.returncode}"


def check_root(journal: Any = None) -> Check:
    ok = os.geteuid() == 0
    return Check("root", "root", ok, "running as root" if ok else "not root: use sudo", True)


def check_namespaces(journal: Any = None) -> Check:
    if not Path("/proc/self/ns/net").exists():
        return Check("namespaces", "network namespaces", False, "kernel has no network namespaces", True)
    if os.geteuid() != 0:
        return Check("namespaces", "network namespaces", True, "supported (not tried: not root)", True)
    ok, why = _run(["unshare", "--net", "--mount", "true"])
    return Check("namespaces", "network namespaces", ok,
                 "a net+mount namespace could be created" if ok else f"unshare failed: {why}", True)


def check_mininet(journal: Any = None) -> Check:
    try:
        from mininet.net import VERSION     # late: Mininet is what this checks (and it may be missing)
    except ImportError as e:
        return Check("mininet", "Mininet", False, f"cannot import mininet ({e}): apt install mininet", True)
    mnexec = shutil.which("mnexec")
    if not mnexec:
        return Check("mininet", "Mininet", False, f"mininet {VERSION} importable but mnexec not on PATH", True)
    return Check("mininet", "Mininet", True, f"mininet {VERSION}, {mnexec}", True)


def check_netem(journal: Any = None) -> Check:
    ok, why = probe_netem(journal)
    return Check("netem", "kernel netem", ok, why)


def check_ovs(journal: Any = None) -> Check:
    loaded = Path("/sys/module/openvswitch").exists()
    if not loaded:
        avail, _ = _run(["modprobe", "-n", "openvswitch"])
        detail = ("openvswitch module not loaded but loadable" if avail else
                  "no openvswitch kernel module (minimesh uses Linux bridges; not needed)")
        return Check("ovs", "Open vSwitch module", avail, detail)
    vsctl = shutil.which("ovs-vsctl")
    return Check("ovs", "Open vSwitch module", True,
                 "openvswitch module loaded" + ("" if vsctl else ", ovs-vsctl not installed"))


def check_tun(journal: Any = None) -> Check:
    ok, why = probe_tun()
    return Check("tun", "TUN/TAP", ok, why)


def _tool(key: str, label: str, argv: list[str], required: bool = False, hint: str = "") -> Check:
    if not shutil.which(argv[0]):
        return Check(key, label, False, f"{argv[0]} not found{hint}", required)
    ok, line = _run(argv)
    return Check(key, label, ok, line, required)


def check_iptables(journal: Any = None) -> Check:
    return _tool("iptables", "iptables", ["iptables", "--version"], True, ": apt install iptables")


def check_tcpdump(journal: Any = None) -> Check:
    return _tool("tcpdump", "tcpdump", ["tcpdump", "--version"], hint=": apt install tcpdump")


def check_tshark(journal: Any = None) -> Check:
    return _tool("tshark", "tshark", ["tshark", "--version"], hint=": apt install tshark")


def check_ping(journal: Any = None) -> Check:
    return _tool("ping", "ping", ["ping", "-V"], hint=": apt install iputils-ping (the demo measures RTT)")


def check_etcd(journal: Any = None) -> Check:
    c = _tool("etcd", "etcd", ["etcd", "--version"], hint=": apt install etcd-server")
    if c.ok and not shutil.which("etcdctl"):
        return Check("etcd", "etcd", False, c.detail + "; etcdctl missing: apt install etcd-client")
    return c


# each check takes the run's journal (or None); only probes that create something use it
CHECKS: list[Callable[[Any], Check]] = [
    check_root, check_namespaces, check_mininet, check_netem, check_ovs, check_tun,
    check_iptables, check_ping, check_tcpdump, check_tshark, check_etcd,
]


def run_checks(journal: Any = None) -> list[Check]:
    out = []
    for fn in CHECKS:
        try:
            out.append(fn(journal))
        except Exception as e:  # a broken check is a failed check, reported as such
            key = fn.__name__.removeprefix("check_")
            out.append(Check(key, key, False, f"check failed: {e}"))
    return out


def auto_backend(checks: list[Check]) -> tuple[str | None, str]:
    by = {c.key: c for c in checks}
    if by["netem"].ok:
        return "netem", "kernel netem works"
    if by["tun"].ok:
        return "userspace", f"{by['netem'].detail}; TUN/TAP works, so links are emulated in userspace"
    return None, "neither netem nor TUN/TAP works: no link backend"


def report(checks: list[Check]) -> dict[str, Any]:
    backend, why = auto_backend(checks)
    data: dict[str, Any] = {c.key: c.ok for c in checks}
    data["link_backend"] = backend
    data["details"] = {c.key: c.detail for c in checks} | {"link_backend": why}
    data["ok"] = all(c.ok for c in checks if c.required) and backend is not None
    return data


def _print_table(checks: list[Check], data: dict[str, Any]) -> None:
    from rich.console import Console  # late: keeps `minimesh` start-up and --help light
    from rich.table import Table
    table = Table(title="minimesh doctor")
    table.add_column("check")
    table.add_column("status")
    table.add_column("details", overflow="fold")
    for c in checks:
        status = "[green]ok[/]" if c.ok else ("[red]MISSING[/]" if c.required else "[yellow]no[/]")
        table.add_row(c.label + (" *" if c.required else ""), status, c.detail)
    backend = data["link_backend"]
    table.add_row("link backend (auto)", f"[bold]{backend or 'NONE'}[/]", data["details"]["link_backend"])
    console = Console()
    console.print(table)
    console.print("* required" + ("" if data["ok"] else "  [red]— something required is missing[/]"))


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _run_doctor(args: argparse.Namespace) -> int:
    journal = None
    if os.geteuid() == 0:  # the netem probe creates a scratch namespace: journal it
        journal = Journal()
    try:
        checks = run_checks(journal)
    finally:
        if journal is not None:
            journal.cleanup()
    data = report(checks)
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(checks, data)
    return 0 if data["ok"] else 1


SUBCOMMANDS = [Subcommand("doctor", "check this machine (root, namespaces, Mininet, netem, TUN, ...) "
                          "and show the link backend auto would use", _configure, _run_doctor)]
