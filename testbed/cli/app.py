"""``minimesh`` (== ``python -m testbed``): the parser of every subcommand, and :func:`main`.

The subcommand modules are imported here, top-down, and listed in :data:`SUBCOMMAND_MODULES`
(the order of ``minimesh --help``); each defines ``SUBCOMMANDS`` (see
:mod:`testbed.cli.subcommand`). No subcommand module imports this one.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Iterator, Sequence

import testbed.cli.clean as clean
import testbed.cli.demo as demo
import testbed.cli.doctor as doctor
import testbed.cli.lab as lab
import testbed.cli.mesh as mesh
import testbed.cli.run as run
import testbed.cli.up as up
from testbed.cli.subcommand import Subcommand
from testbed.net.lifecycle import EXIT_FAIL

__all__ = ["SUBCOMMAND_MODULES", "iter_subcommands", "build_parser", "main"]

SUBCOMMAND_MODULES: tuple[ModuleType, ...] = (up, clean, doctor, demo, run, lab, mesh)


def iter_subcommands(modules: Sequence[ModuleType | str] | None = None) -> Iterator[Subcommand]:
    """The subcommands of ``modules`` (modules or their names; default :data:`SUBCOMMAND_MODULES`)."""
    for module in SUBCOMMAND_MODULES if modules is None else modules:
        yield from (importlib.import_module(module) if isinstance(module, str) else module).SUBCOMMANDS


def build_parser(modules: Sequence[ModuleType | str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minimesh", description="Mininet-based network emulation testbed for service-mesh experiments")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in iter_subcommands(modules):
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args))
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_FAIL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
