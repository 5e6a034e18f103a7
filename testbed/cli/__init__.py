"""The ``minimesh`` command line: the top layer, nothing in the library imports it.

- :mod:`testbed.cli.app`: :func:`main` and the parser; it imports every subcommand module;
- :mod:`testbed.cli.subcommand`: :class:`~testbed.cli.subcommand.Subcommand`, the exit
  statuses and the argument helpers the subcommand modules share;
- subcommand modules, each defining ``SUBCOMMANDS``: :mod:`~testbed.cli.up`,
  :mod:`~testbed.cli.clean`, :mod:`~testbed.cli.doctor`, :mod:`~testbed.cli.demo`,
  :mod:`~testbed.cli.run`, :mod:`~testbed.cli.mesh` (``apply``, ``analyze``, ``registry``);
- the ``up`` shell: :mod:`testbed.cli.shell` (Mininet's CLI extended), :mod:`testbed.cli.faults`
  (its fault commands) and :mod:`testbed.cli.shell_commands` (commands other modules add to
  it: the mesh's ``apply`` and ``registry``).

Imports go one way: app -> subcommand modules -> subcommand / shell_commands, and up ->
shell -> faults, shell_commands. Any layer below may be imported (lablib, testbed.run,
testbed.mesh, testbed.faults, testbed.net, ...). Modules here import each other by module
path, never through this package. Mininet is imported only when a command runs, so
``minimesh --help`` stays fast.
"""
from testbed.cli.app import main

__all__ = ["main"]
