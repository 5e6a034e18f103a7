"""``minimesh`` (== ``python -m testbed``): the command line.

Subcommands come from a registry: each module in :data:`SUBCOMMAND_MODULES` defines
``SUBCOMMANDS``, a list of :class:`Subcommand` (name, help, ``configure(parser)``,
``run(args) -> exit status``). A later issue adds a subcommand by writing its module and
appending it to :data:`SUBCOMMAND_MODULES`; modules keep heavy imports (Mininet) inside
``run`` so ``minimesh --help`` and argument errors stay fast and need no root.

Exit status: 0 ok, 1 failure, 2 usage or topology error (``file:line: message``),
128 + N when stopped by signal N (after an orderly teardown).
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

__all__ = ["Subcommand", "SUBCOMMAND_MODULES", "build_parser", "main", "Terminated",
           "teardown_signals", "load_topology_or_exit", "require_root", "startup_errors", "run_testbed"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
BACKENDS = ("auto", "netem", "userspace")


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMAND_MODULES: list[str] = ["testbed.cli.main", "testbed.cli.doctor", "testbed.cli.demo", "testbed.cli.run",
                                  "testbed.cli.mesh"]


class Terminated(SystemExit):
    """Raised in the main thread by SIGTERM/SIGHUP (and SIGINT where asked) so that every
    ``finally`` runs: the network is torn down and the journal emptied. A SystemExit, so
    that handlers which swallow everything else (Mininet's log handler re-raises only
    KeyboardInterrupt and SystemExit) let it through."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class teardown_signals:
    """Context manager: turn SIGTERM, SIGHUP (and SIGINT if ``sigint``) into Terminated,
    and ignore them while ``quiet()`` is in force (during teardown)."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self, sigint: bool = True):
        self.signals = self.SIGNALS + ((signal.SIGINT,) if sigint else ())
        self._old: dict[int, Any] = {}
        self._owner = os.getpid()

    def _raise(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self._owner:
            # A fork()ed child (pyroute2 forks helpers for namespace work and stops them
            # with SIGTERM) inherits this handler; raising there would unwind the copied
            # stack and tear down the parent's network from the child. Die as by default.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(signum)

    def __enter__(self) -> "teardown_signals":
        for s in self.signals:
            self._old[s] = signal.signal(s, self._raise)
        return self

    def quiet(self) -> None:
        for s in self.signals + (signal.SIGINT,):
            signal.signal(s, signal.SIG_IGN)

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def load_topology_or_exit(arg: str) -> Any:
    """Resolve a topology, or print ``file:line: message`` and exit 2 (nothing created)."""
    from testbed.topology.load import TopologyError, resolve_topology
    try:
        return resolve_topology(arg)
    except TopologyError as e:
        print(e, file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        print(f"minimesh {what}: needs root (Mininet creates network namespaces); "
              f"run: sudo minimesh {what} ...", file=sys.stderr)
        raise SystemExit(EXIT_FAIL)


def startup_errors() -> tuple[type[BaseException], ...]:
    """Errors of building a network that are the user's to fix: reported in one line."""
    from testbed.net.hosts import NameTaken
    from testbed.links.base import BackendUnavailable
    return (BackendUnavailable, NameTaken)


def clean_stale_report(quiet_if_none: bool = True) -> int:
    """Remove what crashed runs left (by their journals); print a summary."""
    from testbed.journal import clean_stale, stale_journals
    runs = len(stale_journals())
    count, errors = clean_stale()
    if runs or not quiet_if_none:
        print(f"*** clean: removed {count} journaled item{'s' if count != 1 else ''} "
              f"left by {runs} crashed run{'s' if runs != 1 else ''}", file=sys.stderr)
    for err in errors:
        print(f"*** clean: could not remove {err}", file=sys.stderr)
    return len(errors)


# --- up ---------------------------------------------------------------------------------

HISTORY = "history.jsonl"
UP_SOURCE = "minimesh-up"        # source of the session's own events in the history


class UpOptionError(ValueError):
    """``--out``/``--capture`` cannot be used as given (nothing has been created)."""


def _configure_up(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology", help="topology YAML file, or a stock topology such as linear,3")
    p.add_argument("--link-backend", choices=BACKENDS, default="auto",
                   help="link emulation: kernel netem, userspace emulator, or auto (probe)")
    p.add_argument("-v", "--verbose", action="store_true", help="Mininet's progress messages")
    p.add_argument("--out", metavar="DIR", help=f"record the session's fault operations (every link-set, "
                   f"link-down/up, drop, restore, partition, crash, ..., heal, and the heal at exit) in a new "
                   f"DIR/{HISTORY}, line by line as they happen, in the experiments' history format; DIR is "
                   f"created if needed; refused (exit 2) if DIR/{HISTORY} exists: a history is never overwritten")
    p.add_argument("--capture", metavar="DIR", help="record pcapng per host interface under DIR for the "
                   "session (tcpdump in each host; Wireshark name file DIR/hosts); at exit each file gets "
                   f"the fault operations as packet comments and a name block. Without --out the "
                   f"history is DIR/{HISTORY}, next to the captures")


def up_history_path(out: str | None, capture: str | None) -> Path | None:
    """Where ``up`` writes its history: OUT/history.jsonl, else (with --capture only)
    CAPTURE/history.jsonl, else nowhere. Raises UpOptionError, in the options' words, when
    the directory is not one or the history exists already."""
    option, where = ("--out", out) if out else ("--capture", capture)
    if not where:
        return None
    d = Path(where).expanduser().resolve()
    if d.exists() and not d.is_dir():
        raise UpOptionError(f"{option} {where}: not a directory")
    path = d / HISTORY
    if path.exists():
        why = "" if out else " (without --out the history goes next to the captures)"
        raise UpOptionError(f"{option} {where}: {path} exists{why}; a history is never overwritten: "
                            f"give another directory or remove the file")
    return path


def open_history(path: Path, clock: Any) -> Any:
    """A History on ``path``, created now (exclusively: an existing file is an UpOptionError)."""
    from testbed.run.history import History
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.open("x").close()
    except FileExistsError:
        raise UpOptionError(f"{path} exists; a history is never overwritten") from None
    except OSError as e:
        raise UpOptionError(f"cannot create {path}: {e.strerror or e}") from None
    return History(path, clock=clock)


def run_testbed(what: str, topology: Any, backend: str, body: Callable[[Any], int],
                sigint: bool = True) -> int:
    """Clean up after crashed runs, build the network, run ``body(testbed)`` and tear down on
    every exit path: normal end, exception, Ctrl-C, SIGTERM/SIGHUP (SIGINT too when
    ``sigint``; an interactive Mininet CLI keeps Ctrl-C for interrupting node commands).
    Returns body's exit status, 1 for a startup error or a failed cleanup, 128+N on signal N."""
    from testbed.net.network import Testbed

    sig = teardown_signals(sigint=sigint)
    with sig:
        tb = None
        try:
            clean_stale_report()
            tb = Testbed(topology, link_backend=backend)
            tb.start()
            status = body(tb)
        except startup_errors() as e:
            print(f"minimesh {what}: {e}", file=sys.stderr)
            status = EXIT_FAIL
        except KeyboardInterrupt:
            print("\n*** interrupted: tearing down", file=sys.stderr)
            status = 128 + signal.SIGINT
        except Terminated as t:
            print(f"\n*** signal {signal.Signals(t.signum).name}: tearing down", file=sys.stderr)
            status = t.exit_status
        finally:
            sig.quiet()
            if tb is not None:
                errors = tb.stop()
                for err in errors:
                    print(f"*** cleanup: could not remove {err}", file=sys.stderr)
                if errors:
                    status = EXIT_FAIL
    return status


def _up_session(tb: Any, args: argparse.Namespace, history_path: Path | None) -> int:
    """The CLI on a built network, with its history and capture (both closed on every exit
    path, before teardown: the heal at exit is recorded and captured, tcpdump flushes)."""
    from testbed.run.history import RunClock
    from testbed.cli.shell import MeshCLI
    clock, cap, hist, ended, status = RunClock(), None, None, "exit", EXIT_FAIL
    try:
        if args.capture:
            from testbed.run.capture import Capture
            try:
                cap = Capture(tb, Path(args.capture).expanduser().resolve()).start()
            except (RuntimeError, OSError) as e:     # no tcpdump, tcpdump did not start, no directory
                print(f"minimesh up --capture {args.capture}: {e}", file=sys.stderr)
                return EXIT_FAIL
            print(f"*** capture: {len(cap.files)} pcapng files under {cap.dir}", file=sys.stderr)
        if history_path is not None:
            hist = open_history(history_path, clock)
            hist.event(UP_SOURCE, "session_start", topology=getattr(tb.topology, "name", ""), wall0=clock.wall0)
            print(f"*** history: fault operations go to {history_path}", file=sys.stderr)
        status = EXIT_FAIL if MeshCLI(tb, history=hist, clock=clock).errors else EXIT_OK
    except UpOptionError as e:
        print(f"minimesh up: {e}", file=sys.stderr)
    except BaseException as e:
        ended = type(e).__name__
        raise
    finally:
        if hist is not None:
            hist.event(UP_SOURCE, "session_end", how=ended)
            hist.close()
        finished = cap is None or _finish_capture(cap, history_path, clock.wall0, _names(tb))
    return status if finished else EXIT_FAIL


def _names(tb: Any) -> dict[str, str]:
    """Host names, and with a mesh: section its instances, Pilot, VIPs and etcd members."""
    names = {tb.ip(h): h for h in tb.host_names}
    spec = (getattr(getattr(tb, "topology", None), "sections", None) or {}).get("mesh")
    if spec is not None:
        from testbed.mesh.spec import mesh_names
        names.update(mesh_names(spec, tb.ip))
    return names


def _finish_capture(cap: Any, history_path: Path | None, wall0: float, names: dict[str, str]) -> bool:
    """Stop tcpdump, put the history's fault ops on the packets as comments, then the name
    block (last: editcap drops name blocks). A failure is reported (False), files are kept."""
    import subprocess

    from testbed.run.history import HistoryError, read_history
    try:
        cap.stop()
        if history_path is not None and history_path.exists():
            added = cap.annotate(read_history(history_path).faults, wall0)
            if added:
                print(f"*** capture: fault comments in {len(added)} files "
                      f"(tshark -r FILE -Y frame.comment)", file=sys.stderr)
        cap.write_names(names)
        return True
    except (subprocess.CalledProcessError, OSError, ValueError, HistoryError) as e:
        print(f"minimesh up --capture: could not finish the captures under {cap.dir}: {e} "
              f"{getattr(e, 'stderr', '') or ''}".rstrip(), file=sys.stderr)
        return False


def _run_up(args: argparse.Namespace) -> int:
    topology = load_topology_or_exit(args.topology)
    try:
        history_path = up_history_path(args.out, args.capture)
    except UpOptionError as e:
        print(f"minimesh up: {e}", file=sys.stderr)
        return EXIT_USAGE
    require_root("up")
    from mininet.log import setLogLevel

    from testbed.cli.shell import route_output_to_stdout

    setLogLevel("info" if args.verbose else "output")
    route_output_to_stdout()
    return run_testbed("up", topology, args.link_backend, lambda tb: _up_session(tb, args, history_path),
                       sigint=not sys.stdin.isatty())


def _configure_clean(p: argparse.ArgumentParser) -> None:
    pass


def _run_clean(args: argparse.Namespace) -> int:
    require_root("clean")
    return EXIT_FAIL if clean_stale_report(quiet_if_none=False) else EXIT_OK


SUBCOMMANDS = [
    Subcommand("up", "build a topology and open the Mininet CLI (reads stdin if not a terminal)",
               _configure_up, _run_up),
    Subcommand("clean", "remove what crashed runs left (namespaces, links, processes...) by their journals",
               _configure_clean, _run_clean),
]


# --- registry and entry point -----------------------------------------------------------------

def iter_subcommands(modules: Sequence[str] | None = None) -> Iterator[Subcommand]:
    for name in modules if modules is not None else SUBCOMMAND_MODULES:
        module = sys.modules[__name__] if name == __name__ else importlib.import_module(name)
        yield from getattr(module, "SUBCOMMANDS")


def build_parser(modules: Sequence[str] | None = None) -> argparse.ArgumentParser:
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
