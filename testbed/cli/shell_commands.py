"""Commands that other CLI modules add to the ``minimesh up`` shell
(:class:`testbed.cli.shell.TestbedCLI`), so that the shell never imports them.

- :func:`register_command`: a :class:`ShellCommand` (``apply FILE...``, ``registry``, ...):
  its ``run(mesh, line)`` returns the text to print, or raises :class:`CLIUsageError`;
- :func:`register_mesh_session`: what starts the topology's mesh for the shell's lifetime
  (yields the mesh, or None without a ``mesh:`` section).

:mod:`testbed.cli.mesh` registers both when imported (:mod:`testbed.cli.app` imports it).
Mininet-free: registering costs nothing at ``minimesh --help``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

from testbed.net.running import RunningTestbed

__all__ = ["CLIUsageError", "ShellCommand", "MeshSession", "register_command", "registered_commands",
           "register_mesh_session", "mesh_session"]


class CLIUsageError(ValueError):
    """A shell command is malformed or cannot be done now: printed and counted, not fatal."""


@dataclass(frozen=True)
class ShellCommand:
    name: str
    help: str                            # what ``help NAME`` prints
    run: Callable[[Any, str], str]       # (the session's mesh or None, argument line) -> text to print


# (testbed, history or None, clock or None) -> context manager yielding the mesh or None
MeshSession = Callable[[RunningTestbed, Any, Any], ContextManager[Any]]

_commands: dict[str, ShellCommand] = {}
_mesh_session: MeshSession | None = None


def register_command(command: ShellCommand) -> None:
    _commands[command.name] = command


def registered_commands() -> list[ShellCommand]:
    return list(_commands.values())


def register_mesh_session(session: MeshSession) -> None:
    global _mesh_session
    _mesh_session = session


def mesh_session(tb: RunningTestbed, history: Any = None, clock: Any = None) -> ContextManager[Any]:
    """The registered mesh session on ``tb``, or one yielding None when none is registered."""
    if _mesh_session is None:
        return contextlib.nullcontext(None)
    return _mesh_session(tb, history, clock)
