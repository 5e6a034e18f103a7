"""``minimesh mn [mn's options]`` and ``minimesh mininet SCRIPT.py [ARGS]``: stock Mininet
material, unchanged, with minimesh's substitutions where the kernel lacks what Mininet
assumes (:mod:`testbed.compat`): TCLink on the userspace link emulator without sch_netem,
Linux bridges for OVS without the openvswitch module, no controller where no OpenFlow
switch runs; each printed once when it takes effect. The kernel is probed once here and
handed down in the environment, with the shim that gives every Python process the script
starts (``python -m mininet.examples.X`` in Mininet's example tests) the same substitutions.

Both replace this process (exec), so signals, the terminal and the exit status are the
command's own.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import TYPE_CHECKING

from testbed.cli.subcommand import EXIT_USAGE, Subcommand
from testbed.net.lifecycle import require_root

if TYPE_CHECKING:
    from testbed.compat import Kernel

__all__ = ["SUBCOMMANDS", "mn_argv", "script_argv"]


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed on unchanged")


def mn_argv(args: list[str]) -> list[str]:
    """The command line ``minimesh mn ARGS`` runs: Mininet's own ``mn`` on our interpreter."""
    mn = shutil.which("mn")
    if mn is None:
        raise SystemExit("minimesh mn: Mininet's mn is not installed (apt-get install mininet)")
    return [sys.executable, mn, *args]


def script_argv(args: list[str]) -> list[str]:
    """The command line ``minimesh mininet SCRIPT.py ARGS`` (or ``-m MODULE ARGS``) runs."""
    if not args or args[0] in ("-h", "--help"):
        raise SystemExit("usage: minimesh mininet SCRIPT.py [ARGS...] | -m MODULE [ARGS...]\n"
                         "runs a Mininet Python script (and the Python processes it starts) with "
                         "minimesh's substitutions")
    if args[0] == "-m":
        if len(args) < 2:
            raise SystemExit("minimesh mininet -m: give a module, e.g. -m mininet.examples.emptynet")
    elif not os.path.isfile(args[0]):
        print(f"minimesh mininet: {args[0]}: no such file", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return [sys.executable, *args]


def _exec(what: str, argv: list[str], probe: bool = True) -> int:
    # late: Mininet and pyroute2 (the kernel probe), only when the command runs
    from testbed.compat import Kernel, probe_kernel, shim_env
    extra: dict[str, str] = {}
    if probe:
        require_root(what)
        kernel = probe_kernel()
        if not kernel.ovs:
            kernel, extra = _private_ovs(kernel)
    else:   # mn --help: nothing runs, nothing to probe
        kernel = Kernel(True, "not probed", True, "not probed", True, "not probed", True, "not probed")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, {**shim_env(kernel), **extra})
    return 1  # pragma: no cover  (execve does not return)


def _private_ovs(kernel: Kernel) -> tuple[Kernel, dict[str, str]]:
    """Without the openvswitch module: the run's own Open vSwitch (userspace datapath) where
    Open vSwitch is installed, started before the command (which stops it at exit: the same
    process, after exec); else Linux bridges stand in. The kernel record says which, and why."""
    from dataclasses import replace

    from testbed.compat import ovs
    from testbed.journal import Journal
    ok, why = ovs.available()
    if not ok:
        return replace(kernel, ovs_user=False, ovs_user_why=why), {}
    try:
        env = ovs.start(Journal())
    except RuntimeError as e:
        print(f"*** minimesh: {e}; OVS switches will be Linux bridges", file=sys.stderr)
        return replace(kernel, ovs_user=False, ovs_user_why=str(e)), {}
    return replace(kernel, ovs_user=True, ovs_user_why=why), env


def _run_mn(args: argparse.Namespace) -> int:
    rest = list(args.args)
    helping = any(a in ("-h", "--help", "--version") for a in rest)
    return _exec("mn", mn_argv(rest), probe=not helping)


def _run_mininet(args: argparse.Namespace) -> int:
    return _exec("mininet", script_argv(list(args.args)))


SUBCOMMANDS = [
    Subcommand("mn", "Mininet's mn with minimesh's links and switches where the kernel lacks netem/OVS "
               "(all of mn's options: --topo, --custom, --link tc,..., --test, -c, ...)",
               _configure, _run_mn, passthrough=True),
    Subcommand("mininet", "run a Mininet Python script (and the Python it starts) with minimesh's "
               "substitutions: minimesh mininet SCRIPT.py [ARGS]", _configure, _run_mininet, passthrough=True),
]
