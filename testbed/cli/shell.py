"""Mininet's CLI, extended with minimesh's runtime commands.

    link-set h1 s1 delay=50ms loss=1% [dir=h1->s1]   change link parameters live
    link-show                                          shapes of every link, active drops
    link-down h1 s1 / link-up h1 s1                    administrative down/up
    drop h1 h2 [oneway]                                drop traffic (h1->h2 only with oneway)
    restore [h1 [h2]]                                  remove drops (all / of h1 / between)
    partition / heal / crash / restart / pause / resume / faults   the fault model
                                                       (testbed/cli/faults.py; healed at exit)
    apply FILE...                                      Istio rules to the mesh (mesh: section)
    registry [list]                                    the mesh's services and endpoints

``apply`` and ``registry``, and the mesh that runs for the session, are registered by
:mod:`testbed.cli.mesh` in :mod:`testbed.cli.shell_commands`; this module does not import them.

Every command that changes the network or a process (link-set, link-down/up, drop,
restore and the fault commands) is a fault op of the session's Nemesis: listed by
``faults``, reverted by ``heal`` and at exit, and appended to the session's history
(``minimesh up --out DIR``) as it happens.

Other terminals run the same commands through the control socket (:mod:`testbed.cli.control`):
:meth:`TestbedCLI.remote` runs a line as if typed, one command at a time (a lock around
``onecmd``), and returns what it printed.

``cmd.Cmd`` reads a command name as a run of ``identchars``; '-' is added to them and
each hyphenated command is registered under its hyphenated name (``do_link-set``), so
``help``, completion and dispatch all see ``link-set``. When standard input is not a
terminal, commands are read line by line (echoed after the prompt) and the CLI returns
at EOF; node commands then do not read standard input, so a later line never leaks into
an earlier command.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, IO, Iterator

from mininet.cli import CLI
from mininet.log import LEVELS, StreamHandlerNoNewline, error, lg, output

from testbed.cli.control import REFUSED
from testbed.cli.faults import FaultCommandError, FaultCommands, session_for
from testbed.cli.shell_commands import CLIUsageError, ShellCommand, mesh_session, registered_commands
from testbed.faults.base import FaultError
from testbed.faults.targets import TargetError
from testbed.net.control import ControlError
from testbed.net.running import RunningTestbed
from testbed.shape import ShapeError

__all__ = ["TestbedCLI", "route_output_to_stdout", "LinkSetArgs", "parse_link_set", "parse_pair", "parse_drop",
           "parse_output", "link_show", "banner_text", "MINIMESH_COMMANDS"]

MINIMESH_COMMANDS = ("link-set", "link-show", "link-down", "link-up", "drop", "restore")


def banner_text(hosts: list[tuple[str, str]], services: list[str], extra: list[str]) -> str:
    """What the shell says before its first prompt: the hosts and their addresses, the mesh's
    services (name:port and VIP), and which commands are minimesh's (the rest are Mininet's)."""
    lines = ["*** hosts: " + ", ".join(f"{h} {ip}" for h, ip in hosts)]
    if services:
        lines.append("*** services: " + ", ".join(services))
    lines.append("*** minimesh's commands: " + ", ".join([*MINIMESH_COMMANDS, *extra])
                 + " (help NAME); the others are Mininet's (help)")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LinkSetArgs:
    a: str
    b: str
    params: dict[str, str] = field(default_factory=dict)
    direction: str | None = None


LINK_SET_USAGE = "usage: link-set NODE1 NODE2 PARAM=VALUE... [dir=NODE1->NODE2]  (e.g. delay=50ms loss=1%)"


def parse_link_set(line: str) -> LinkSetArgs:
    """'h1 s1 delay=50ms loss=1% dir=h1->s1' -> LinkSetArgs. Values are parsed (with units)
    later by testbed.shape.parse_params; here only the command's shape is checked."""
    words = line.split()
    if len(words) < 3:
        raise CLIUsageError(LINK_SET_USAGE)
    a, b, *rest = words
    if "=" in a or "=" in b:
        raise CLIUsageError(LINK_SET_USAGE)
    params: dict[str, str] = {}
    direction = None
    for word in rest:
        key, sep, value = word.partition("=")
        if not sep or not key or not value:
            raise CLIUsageError(f"{word!r}: expected PARAM=VALUE; {LINK_SET_USAGE}")
        if key in params or (key == "dir" and direction is not None):
            raise CLIUsageError(f"{key} given twice")
        if key == "dir":
            direction = value
        else:
            params[key] = value
    if not params:
        raise CLIUsageError(f"no link parameter given; {LINK_SET_USAGE}")
    return LinkSetArgs(a, b, params, direction)


def parse_pair(line: str, command: str) -> tuple[str, str]:
    words = line.split()
    if len(words) != 2:
        raise CLIUsageError(f"usage: {command} NODE1 NODE2")
    return words[0], words[1]


def parse_drop(line: str) -> tuple[str, str, bool]:
    words = line.split()
    if len(words) == 3 and words[2] == "oneway":
        return words[0], words[1], True
    if len(words) == 2:
        return words[0], words[1], False
    raise CLIUsageError("usage: drop HOST1 HOST2 [oneway]  (oneway: only HOST1 -> HOST2)")


def parse_restore(line: str) -> tuple[str | None, str | None]:
    words = line.split()
    if len(words) > 2:
        raise CLIUsageError("usage: restore [HOST1 [HOST2]]")
    return (words + [None, None])[0], (words + [None, None])[1]


def parse_output(line: str, command: str) -> str:
    """``[-o table|json]`` (kubectl's flag) -> the format; anything else is a usage error."""
    words = line.split()
    if not words:
        return "table"
    if len(words) == 2 and words[0] in ("-o", "--output") and words[1] in ("table", "json"):
        return words[1]
    if len(words) == 1 and words[0] in ("-ojson", "--output=json", "-otable", "--output=table"):
        return words[0].rpartition("json")[1] or "table"
    raise CLIUsageError(f"usage: {command} [-o json]")


def link_show(ctl: Any, fmt: str = "table") -> str:
    """``link-show``: each link's shape per direction (and whether it is down), then the drops;
    ``fmt`` "json": {"links": [{"a", "b", "up", "forward", "backward"}], "drops": [{"src", "dst", "src_ip"}]}
    with the shapes in netem's units (LinkShape's fields)."""
    links, lines = [], []
    for a, b, link in ctl.links():
        if hasattr(link, "get_shapes"):
            fwd, back = link.get_shapes()
            up = getattr(link, "is_up", lambda: True)() is not False
            links.append({"a": a, "b": b, "up": up, "forward": dataclasses.asdict(fwd),
                          "backward": dataclasses.asdict(back)})
            down = "" if up else "  [DOWN]"
            lines.append(f"{a:>8} -> {b:<8} {fwd.describe()}{down}\n{b:>8} -> {a:<8} {back.describe()}{down}\n")
        else:
            links.append({"a": a, "b": b, "up": True, "forward": None, "backward": None})
            lines.append(f"{a} <-> {b}: (not shaped)\n")
    drops = [{"src": r.src, "dst": r.dst, "src_ip": r.src_ip} for r in ctl.drops()]
    if fmt == "json":
        return json.dumps({"links": links, "drops": drops}, indent=1) + "\n"
    return "".join(lines) + "".join(f"drop {d['src']} -> {d['dst']} ({d['src_ip']})\n" for d in drops)


def route_output_to_stdout() -> None:
    """Mininet logs everything, command output included, to stderr. Send the 'output'
    level (what commands print) to stdout, so ``... | minimesh up t.yaml | grep`` works;
    progress, warnings and errors stay on stderr. Idempotent."""
    if any(getattr(h, "_minimesh_stdout", False) for h in lg.handlers):
        return
    level = LEVELS["output"]
    for h in lg.handlers:
        h.addFilter(lambda rec: rec.levelno != level)
    out = StreamHandlerNoNewline(sys.stdout)
    out.setFormatter(lg.handlers[0].formatter if lg.handlers else None)
    out.addFilter(lambda rec: rec.levelno == level)
    out._minimesh_stdout = True
    lg.addHandler(out)


class TestbedCLI(FaultCommands, CLI):
    """``TestbedCLI(testbed)`` runs the CLI (Mininet's CLI runs from its constructor). With
    ``history`` (a :class:`~testbed.history.History`) every fault op, the heal at exit
    included, is appended to it, timed on ``clock`` (the history's RunClock). ``on_ready(cli)``
    runs once the mesh and the fault session exist, before the first command; what it returns
    (a callable, or None) is called when the session ends (``minimesh up --ui`` starts and
    stops its server so). :meth:`command` runs one command from another thread (the page)."""

    __test__ = False   # not a pytest class

    prompt = "minimesh> "
    identchars = CLI.identchars + "-"
    HYPHENATED = ("link-set", "link-show", "link-down", "link-up")

    def __init__(self, testbed: RunningTestbed, stdin: IO[str] = sys.stdin, history: Any = None,
                 clock: Any = None, on_ready: Callable[["TestbedCLI"], Any] | None = None,
                 control: Callable[["TestbedCLI"], ContextManager[Any]] | None = None, **kwargs: Any):
        self.tb = testbed
        self.errors = 0
        self._lock = threading.RLock()      # one command at a time: typed, from the control socket or the page
        self.extra_commands = {cmd.name: cmd for cmd in registered_commands()}
        for cmd in self.extra_commands.values():
            setattr(self, "do_" + cmd.name, self._registered_command(cmd))
        # the mesh (None without a mesh: section) imports its logs into the history as it stops
        with mesh_session(testbed, history, clock) as self.mesh:
            self.faults_session = session_for(testbed, self.mesh, clock=clock, history=history)
            stop = None
            try:
                stop = on_ready(self) if on_ready is not None else None
                # the control socket (minimesh COMMAND --run ID) lives as long as the prompt
                with control(self) if control is not None else contextlib.nullcontext():
                    super().__init__(testbed.net, stdin=stdin, **kwargs)
            finally:
                if stop is not None:
                    stop()
                self.close_faults()                 # every session ends healed

    def command(self, line: str) -> tuple[bool, str]:
        """Run one shell command from another thread, as if typed: (ok, what it printed,
        errors included). Waits for a command the shell is running. A rejected command is
        answered to its caller, not counted in the session's exit status."""
        with self._lock:
            out, err, failed = self._run_captured(line)
        return not failed, out + err

    def _run_captured(self, line: str) -> tuple[str, str, bool]:
        """``line`` through the shell's own dispatch, the caller holding the lock (or nested):
        (what it printed, its warnings and errors, whether it failed); a failure is the caller's,
        the session's error count is left as it was."""
        with _captured() as (out, err):
            before = self.errors
            super().onecmd(line)
            failed, self.errors = self.errors > before, before
        return out.getvalue(), err.getvalue(), failed

    # --- commands from another terminal (testbed.cli.control) ------------------------------

    def onecmd(self, line: str) -> bool:
        with self._lock:
            return bool(super().onecmd(line))

    def remote(self, line: str, client: str = "", nested: bool = False) -> tuple[str, str, int]:
        """Run ``line`` as if typed at the prompt (the same fault ops, history, capture
        comments); returns (stdout, stderr, status 0/1). Its output is also shown here. A
        failed remote command is the caller's failure, not the session's (``errors`` unchanged).
        ``nested``: the caller descends from this process, e.g. ``sh minimesh apply ...`` typed
        here; while the prompt's command waits for it, waiting for the prompt would deadlock,
        so it runs at once, as a nested command."""
        name = line.split(maxsplit=1)[0] if line.strip() else ""
        if name in REFUSED or "do_" + name not in self.get_names():
            known = name in getattr(getattr(self, "mn", None), "nameToNode", {})
            why = (f"{name} is a node: use minimesh exec {name} CMD..." if known else
                   f"{name!r} is not a command this shell takes from another terminal")
            return "", f"*** {why}\n", 2
        got = self._lock.acquire(blocking=not nested)
        try:
            output(f"{self.prompt}{line}    # from {client or 'another terminal'}\n")
            out, err, failed = self._run_captured(line)     # the lock is ours, or (nested) the prompt's
        finally:
            if got:
                self._lock.release()
        return out, err, int(failed)

    # --- minimesh commands -------------------------------------------------------------

    def do_link_set(self, line: str) -> None:
        """Change link parameters live, e.g. link-set h1 s1 delay=50ms jitter=1ms loss=1% bw=10Mbit
        queue=100 [dir=h1->s1]. Parameters: delay jitter loss loss_correlation duplicate reorder
        corrupt bw (bw=none: unlimited) queue. Without dir=, both directions change."""
        def run() -> None:
            args = parse_link_set(line)
            output(self.faults_session.link_set(args.a, args.b, args.params, args.direction))
        self._guard(run)

    def do_link_show(self, line: str) -> None:
        """Show every link's shape per direction, and active drops. Usage: link-show [-o json]"""
        self._guard(lambda: output(link_show(self.tb.control, parse_output(line, "link-show"))))

    def do_link_down(self, line: str) -> None:
        """Bring a link down (both ends). Usage: link-down NODE1 NODE2"""
        self._guard(lambda: output(self.faults_session.link_down(*parse_pair(line, "link-down"))))

    def do_link_up(self, line: str) -> None:
        """Bring a downed link back up. Usage: link-up NODE1 NODE2"""
        self._guard(lambda: output(self.faults_session.link_up(*parse_pair(line, "link-up"))))

    def do_drop(self, line: str) -> None:
        """Drop traffic between two hosts. Usage: drop HOST1 HOST2 [oneway]"""
        self._guard(lambda: output(self.faults_session.drop(*parse_drop(line))))

    def do_restore(self, line: str) -> None:
        """Remove drops (and partitions): all, those of one host, or those between two.
        Usage: restore [HOST1 [HOST2]]"""
        self._guard(lambda: output(self.faults_session.restore(*parse_restore(line))))

    def _registered_command(self, cmd: ShellCommand) -> Any:
        """``do_<name>`` of a command registered in testbed.cli.shell_commands."""
        def do(line: str) -> None:
            self._guard(lambda: output(cmd.run(self.mesh, line)))
        do.__doc__ = cmd.help
        return do

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except (CLIUsageError, ControlError, ShapeError, KeyError, FaultCommandError, FaultError, TargetError) as e:
            self.errors += 1
            error(f"*** {e.args[0] if isinstance(e, KeyError) else e}\n")

    # --- hyphenated names ---------------------------------------------------------------

    def get_names(self) -> list[str]:
        hidden = {"do_" + n.replace("-", "_") for n in self.HYPHENATED}
        return [n for n in super().get_names() if n not in hidden] + ["do_" + n for n in self.extra_commands]

    # --- standard input that is not a terminal -------------------------------------------

    def banner(self) -> str:
        hosts = [(h.name, h.IP()) for h in getattr(self.mn, "hosts", ()) if hasattr(h, "IP")]   # Mininet's nodes
        spec = getattr(self.mesh, "spec", None)
        vips = dict(spec.vips) if spec is not None else {}
        services = [f"{s.name}:{s.port}" + (f" ({vips[s.name]})" if s.name in vips else "")
                    for s in (spec.services if spec is not None else ())]
        return banner_text(hosts, services, sorted(self.extra_commands))

    def do_help(self, line: str) -> None:
        super().do_help(line)
        if not line:
            output(f"minimesh's commands: {', '.join([*MINIMESH_COMMANDS, *sorted(self.extra_commands)])}; "
                   "the others are Mininet's.\n")

    def run(self) -> None:
        print(self.banner(), end="", file=sys.stderr, flush=True)   # as up's other *** lines
        if self.isatty():
            super().run()
            return
        while True:
            raw = self.stdin.readline()
            if not raw:
                break  # EOF: the caller tears down
            line = raw.rstrip("\n")
            output(f"{self.prompt}{line}\n")
            if self.onecmd(self.precmd(line)):
                break

    def waitForNode(self, node: Any) -> None:  # Mininet's name
        if self.isatty():
            super().waitForNode(node)
            return
        try:
            while node.waiting:
                output(node.monitor())
        except KeyboardInterrupt:
            node.sendInt()
            raise


@contextlib.contextmanager
def _captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """What this thread logs through Mininet's logger: 'output' into the first buffer,
    warnings and errors into the second (the terminal's handlers still print it all)."""
    out, err = io.StringIO(), io.StringIO()
    me, level = threading.get_ident(), LEVELS["output"]

    class Tee(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            if rec.thread == me and (rec.levelno == level or rec.levelno >= logging.WARNING):
                (out if rec.levelno == level else err).write(rec.getMessage())
    handler = Tee()
    lg.addHandler(handler)
    try:
        yield out, err
    finally:
        lg.removeHandler(handler)


for _name in TestbedCLI.HYPHENATED:
    setattr(TestbedCLI, "do_" + _name, getattr(TestbedCLI, "do_" + _name.replace("-", "_")))
