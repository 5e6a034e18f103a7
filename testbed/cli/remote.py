"""``minimesh ps``, ``minimesh exec NODE CMD...``, and every command of the ``up`` shell as
``minimesh COMMAND ... [--run ID]`` (the running testbed's control socket,
:mod:`testbed.cli.control`).

The forwarded commands are the fault commands (:data:`~testbed.cli.control.REMOTE_BUILTINS`)
and whatever :mod:`testbed.cli.shell_commands` has registered (``apply``, ``registry``,
``proxy-status``, ...), except names that are subcommands of their own. :mod:`testbed.cli.app`
asks :func:`forwarders` for them after the other subcommands are known.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterable

from testbed.cli.control import (REMOTE_BUILTINS, ControlError, exec_argv, find_run, format_ps,
                                 remote_command, running_ups)
from testbed.cli.shell_commands import registered_commands
from testbed.cli.subcommand import Subcommand
from testbed.net.lifecycle import EXIT_FAIL, EXIT_OK

__all__ = ["SUBCOMMANDS", "forwarders", "forwarded_names"]


def _configure_ps(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")


def _run_ps(args: argparse.Namespace) -> int:
    try:
        runs = running_ups()
    except ControlError as e:
        print(f"minimesh ps: {e}", file=sys.stderr)
        return e.status
    if args.output == "json":
        print(json.dumps([r.as_json() for r in runs], indent=1))
    else:
        sys.stdout.write(format_ps(runs))
    return EXIT_OK


def _configure_exec(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=int, default=None, metavar="ID", help="the testbed (see minimesh ps), "
                   "when several run")
    p.add_argument("node", metavar="NODE", help="a host of the running testbed")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD",
                   help="the command and its arguments (stdin, stdout and the terminal pass through)")


def _run_exec(args: argparse.Namespace) -> int:
    try:
        run = find_run(args.run)
        cmd = list(args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
        argv = exec_argv(run, args.node, cmd)
    except ControlError as e:
        print(f"minimesh exec: {e}", file=sys.stderr)
        return e.status
    if os.geteuid() != 0:
        print("minimesh exec: entering a host's namespaces needs root: run with sudo", file=sys.stderr)
        return EXIT_FAIL
    try:
        os.execvp(argv[0], argv)         # the terminal, stdin and signals are the command's
    except OSError as e:
        print(f"minimesh exec: {argv[0]}: {e.strerror or e}", file=sys.stderr)
    return EXIT_FAIL


SUBCOMMANDS = [
    Subcommand("ps", "list the running testbeds (minimesh up), with their IDs", _configure_ps, _run_ps),
    Subcommand("exec", "run a command in a host of the running testbed (like kubectl exec, Mininet's m)",
               _configure_exec, _run_exec),
]


def forwarded_names(taken: Iterable[str] = ()) -> dict[str, str]:
    """Shell command -> help, for every command forwarded to a running ``up``."""
    skip = set(taken)
    names = dict(REMOTE_BUILTINS)
    names.update({c.name: c.help.split(". Usage")[0] for c in registered_commands()})
    return {n: h for n, h in names.items() if n not in skip}


def _forward(name: str, help: str) -> Subcommand:
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run", type=int, default=None, metavar="ID",
                       help="the testbed (see minimesh ps); needed only when several run")
        p.add_argument("words", nargs=argparse.REMAINDER, metavar="ARG",
                       help=f"the arguments of the up shell's `{name}`; relative paths of existing "
                            "files are made absolute")

    def run(args: argparse.Namespace) -> int:
        words = list(args.words)
        if args.run is not None:
            words += ["--run", str(args.run)]
        return remote_command(name, words)
    return Subcommand(name, f"{help} (in the running testbed)", configure, run)


def forwarders(taken: Iterable[str]) -> list[Subcommand]:
    return [_forward(n, h) for n, h in forwarded_names(taken).items()]

