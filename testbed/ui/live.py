"""``minimesh up --ui``: the live page on a running shell session.

:func:`start_live` is what ``up`` passes as the shell's ``on_ready``: it builds the
:class:`~testbed.ui.collect.Collector` on the shell's testbed, mesh, fault session and
history, starts the :class:`~testbed.ui.server.UIServer`, prints the URL with its token,
and returns the server's ``stop``. Every action from the page becomes one shell command
line, run by the shell's own dispatch (``cli.command``): the same parsing, the same fault
session (so the same history and capture comments), the same error text.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any, Callable

from testbed.ui.collect import Collector
from testbed.ui.server import UIServer

__all__ = ["start_live", "action_line"]


def action_line(command: str, args: str, apply_path: Path | None) -> str:
    """The shell command line of a page action. Raises ValueError for arguments that are
    not one line of printable text (a page cannot smuggle a second command)."""
    if any(c in args for c in "\r\n\0") or not args.isprintable() and args:
        raise ValueError(f"{command}: arguments must be one line of printable text")
    if command == "apply":
        return f"apply {apply_path if apply_path is not None else '-'}"
    return f"{command} {args}".strip()


def start_live(cli: Any, address: str, port: int, history: Any, clock: Any,
               interval_s: float = 1.0) -> Callable[[], None]:
    """Serve the live page of ``cli`` (a running :class:`testbed.cli.shell.TestbedCLI`)."""
    collector = Collector(cli.tb, cli.mesh, cli.faults_session, history, clock)
    counter = itertools.count(1)

    def run_action(command: str, args: str, text: str) -> tuple[bool, str]:
        path = None
        run_dir = getattr(cli.mesh, "run_dir", None)
        if command == "apply" and run_dir is not None:
            path = Path(run_dir) / f"ui-apply-{next(counter)}.yaml"   # inside the mesh's run dir: removed with it
            path.write_text(text, encoding="utf-8")
        try:
            line = action_line(command, args, path)
        except ValueError as e:
            return False, f"*** {e}\n"
        print(f"*** ui: {line}", file=sys.stderr, flush=True)
        return cli.command(line)

    server = UIServer(collector, run_action, address, port, interval_s).start()
    print(f"*** ui: live view at {server.page_url}  (actions need this token; "
          f"listening on {server.address}:{server.port})", file=sys.stderr, flush=True)
    return server.stop
