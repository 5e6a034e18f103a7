"""What every ``minimesh`` subcommand module builds on: :class:`Subcommand`, the exit
statuses, and the argument helpers they share.

A subcommand module defines ``SUBCOMMANDS``, a list of :class:`Subcommand`, and keeps heavy
imports (Mininet) inside ``run`` so that ``minimesh --help`` and argument errors stay fast
and need no root; :mod:`testbed.cli.app` lists the modules and builds the parser.

Exit status: 0 ok, 1 failure, 2 usage or topology error (``file:line: message``),
128 + N when stopped by signal N (after an orderly teardown, :mod:`testbed.net.lifecycle`).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable

from testbed.topology.load import resolve_topology
from testbed.topology.spec import TopologyError

__all__ = ["Subcommand", "EXIT_USAGE", "BACKENDS", "load_topology_or_exit", "load_custom_or_exit"]

EXIT_USAGE = 2
BACKENDS = ("auto", "netem", "userspace")      # --link-backend choices


@dataclass(frozen=True)
class Subcommand:
    """``minimesh NAME``: ``configure(parser)`` adds its arguments, ``run(args)`` returns the exit status.
    A ``passthrough`` command takes the rest of the command line as it is, in ``args.args``
    (``minimesh mn --topo linear,3`` hands ``--topo linear,3`` to mn)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    passthrough: bool = False


def load_topology_or_exit(arg: str) -> Any:
    """Resolve a topology, or print ``file:line: message`` and exit 2 (nothing created)."""
    try:
        return resolve_topology(arg)
    except TopologyError as e:
        print(e, file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def load_custom_or_exit(files: list[str], topo: str) -> Any:
    """Mininet's ``--custom FILES --topo NAME[,ARGS]`` as a Topo, or print the error and exit 2."""
    from testbed.topology.custom import custom_topology    # late: runs the file, which imports Mininet
    try:
        return custom_topology(files, topo)
    except TopologyError as e:
        print(e, file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
