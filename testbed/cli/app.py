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
import testbed.cli.inspection  # noqa: F401  (registers proxy-status, proxy-config, describe in the up shell)
import testbed.cli.lab as lab
import testbed.cli.mesh as mesh
import testbed.cli.remote as remote
import testbed.cli.mininet as mininet
import testbed.cli.run as run
import testbed.cli.up as up
from testbed.cli.subcommand import Subcommand
from testbed.net.lifecycle import EXIT_FAIL

__all__ = ["SUBCOMMAND_MODULES", "iter_subcommands", "build_parser", "package_version", "main"]

SUBCOMMAND_MODULES: tuple[ModuleType, ...] = (up, clean, doctor, demo, run, lab, mesh, remote, mininet)


def iter_subcommands(modules: Sequence[ModuleType | str] | None = None) -> Iterator[Subcommand]:
    """The subcommands of ``modules`` (modules or their names; default :data:`SUBCOMMAND_MODULES`)."""
    for module in SUBCOMMAND_MODULES if modules is None else modules:
        yield from (importlib.import_module(module) if isinstance(module, str) else module).SUBCOMMANDS


def build_parser(modules: Sequence[ModuleType | str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minimesh", description="Mininet-based network emulation testbed for service-mesh experiments")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = list(iter_subcommands(modules))
    if modules is None:     # the up shell's other commands, run in the running testbed (testbed.cli.remote)
        commands += remote.forwarders(c.name for c in commands)
        commands.append(COMPLETION)
    for cmd in commands:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def _configure_completion(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", nargs="?", choices=("bash", "zsh", "tcsh"), default="bash")


def _run_completion(args: argparse.Namespace) -> int:
    """The completion script, made from this very parser by shtab (static: no Python runs at TAB)."""
    import shtab    # late: only this command needs it
    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


COMPLETION = Subcommand("completion", "print the shell completion script (as kubectl completion bash; "
                        "./minimesh installs it in /etc/bash_completion.d)", _configure_completion, _run_completion)


def package_version(dist: str = "minimesh") -> str:
    """The installed distribution's version (pyproject.toml), as pip shows it."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown (not installed: run ./minimesh once)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for cmd in iter_subcommands():
        if cmd.passthrough and argv[:1] == [cmd.name]:     # argparse would read mn's options
            return int(cmd.run(argparse.Namespace(args=argv[1:])))
    if argv and argv[1:2] not in (["-h"], ["--help"]) and argv[0] in remote.forwarded_names(
            c.name for c in iter_subcommands()):
        # the shell's own options and --run may come anywhere: the line is the shell's to parse
        return remote.remote_command(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args))
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_FAIL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
