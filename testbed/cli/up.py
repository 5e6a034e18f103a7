"""``minimesh up TOPOLOGY``: build a topology and open the shell on it
(:class:`testbed.cli.shell.TestbedCLI`; reads stdin when it is not a terminal), with the
mesh of its ``mesh:`` section. ``--out DIR`` records the session's fault operations in
DIR/history.jsonl; ``--capture DIR`` records pcapng per host interface, annotated at exit;
with a mesh that runs Citadel, the sidecars' TLS secrets are embedded in every file then
(``editcap --inject-secrets``), and the lines printed to open them carry the Decode As the
service ports need. While the shell runs, its control socket (:mod:`testbed.cli.control`)
takes the same commands from other terminals (``minimesh COMMAND --run ID``, ``ps``,
``exec``). What it writes for the user is handed to SUDO_UID (:func:`testbed.paths.hand_over`).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from testbed.cli.subcommand import (BACKENDS, EXIT_USAGE, Subcommand, load_custom_or_exit,
                                    load_topology_or_exit)
from testbed.net.lifecycle import EXIT_FAIL, EXIT_OK
from testbed.mesh.spec import mesh_names
from testbed.net.lifecycle import require_root, run_testbed
from testbed.net.running import RunningTestbed
from testbed.paths import hand_over_tree, user_dir

__all__ = ["SUBCOMMANDS", "HISTORY", "UP_SOURCE", "UpOptionError", "up_history_path", "open_history"]

HISTORY = "history.jsonl"
UP_SOURCE = "minimesh-up"        # source of the session's own events in the history


class UpOptionError(ValueError):
    """``--out``/``--capture`` cannot be used as given (nothing has been created)."""


def _configure_up(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology", nargs="?", help="topology YAML file, or a stock topology such as linear,3")
    p.add_argument("--custom", metavar="FILE.py[,FILE.py]", help="Mininet custom topology file(s) "
                   "defining topos = {'name': TopoClass}, as mn --custom; pick one with --topo")
    p.add_argument("--topo", metavar="NAME[,ARGS]", help="with --custom: the topology to build "
                   "(mn's syntax, e.g. mytopo,3,k=2); alone: a stock topology, as the positional")
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
    p.add_argument("--ui", nargs="?", const="127.0.0.1:0", metavar="ADDR:PORT",
                   help="serve a live view of the network, the mesh and the faults (docs/ui.md); default "
                   "127.0.0.1 on a free port, printed at start with the token actions need; another "
                   "address only when given")


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
    try:
        user_dir(path.parent)
        path.open("x").close()
    except FileExistsError:
        raise UpOptionError(f"{path} exists; a history is never overwritten") from None
    except OSError as e:
        raise UpOptionError(f"cannot create {path}: {e.strerror or e}") from None
    from testbed.history import History     # late: light start-up (the history module loads asyncio)
    return History(path, clock=clock)


KEYLOG_DIR = ".tls-keys"           # under --capture DIR: the sidecars' key logs during the session
KEYLOG = "tls-keys.log"             # under --capture DIR: all of them, also embedded in each pcapng


def with_capture_keylogs(topology: Any, capture: str | None) -> Any:
    """With ``--capture DIR`` and a mesh that runs Citadel, every minimesh-proxy sidecar
    writes its TLS key log under DIR (it outlives the mesh's run dir), so the captures can
    carry the secrets at exit. Otherwise the topology as it is."""
    mesh = (getattr(topology, "sections", None) or {}).get("mesh")
    if not capture or mesh is None or not mesh.security.citadel:
        return topology
    from dataclasses import replace
    keylog_dir = Path(capture).expanduser().resolve() / KEYLOG_DIR
    security = replace(mesh.security, keylog=True, keylog_dir=str(keylog_dir))
    return replace(topology, sections={**topology.sections, "mesh": replace(mesh, security=security)})


def _up_session(tb: RunningTestbed, args: argparse.Namespace, history_path: Path | None) -> int:
    """The CLI on a built network, with its history and capture (both closed on every exit
    path, before teardown: the heal at exit is recorded and captured, tcpdump flushes)."""
    # late: Mininet's CLI (--help and the unit tests do without it); the history and the
    # capture for a light start-up
    from testbed.cli.shell import TestbedCLI
    from testbed.history import History, RunClock
    from testbed.run.capture import Capture
    clock, cap, hist, ended, status = RunClock(), None, None, "exit", EXIT_FAIL
    try:
        if args.capture:
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
        if args.ui and hist is None:        # the page's timeline needs the session's fault ops
            hist = History(stream=open(os.devnull, "w"), clock=clock)
        on_ready = _ui_starter(args.ui, hist, clock) if args.ui else None
        status = EXIT_FAIL if TestbedCLI(tb, history=hist, clock=clock, on_ready=on_ready,
                                            control=_control(tb, args, history_path)).errors else EXIT_OK
    except UpOptionError as e:
        print(f"minimesh up: {e}", file=sys.stderr)
    except BaseException as e:
        ended = type(e).__name__
        raise
    finally:
        if hist is not None:
            hist.event(UP_SOURCE, "session_end", how=ended)
            hist.close()
        finished = cap is None or _finish_capture(cap, history_path, clock.wall0, _names(tb), *_ports(tb))
        if args.out and history_path is not None and history_path.exists():
            _write_report(history_path.parent, tb, cap)
        for d in {p for p in (history_path.parent if history_path else None, cap.dir if cap else None) if p}:
            hand_over_tree(d)           # what this session wrote there is the sudo user's
    return status if finished else EXIT_FAIL


def _write_report(out: Path, tb: RunningTestbed, cap: Any) -> None:
    """``up --out DIR``: DIR/report.html, the session on one page (docs/ui.md)."""
    from testbed.ui.page.report import write_report     # late: light start-up (the history module)
    try:
        path = write_report(out, getattr(tb, "topology", None), captures=cap.dir if cap is not None else None)
        print(f"*** report: {path}", file=sys.stderr)
    except (OSError, ValueError) as e:
        print(f"minimesh up --out: report.html not written: {e}", file=sys.stderr)


def _ui_starter(listen: str, hist: Any, clock: Any) -> Any:
    """The shell's on_ready for ``--ui``: the live page (testbed.ui.live)."""
    from testbed.ui.live import start_live      # late: aiohttp
    from testbed.ui.server import parse_listen
    address, port = parse_listen(listen)
    return lambda cli: start_live(cli, address, port, hist, clock)


def _control(tb: RunningTestbed, args: argparse.Namespace, history_path: Path | None) -> Any:
    """The control socket's factory for the shell (``minimesh COMMAND --run ID``, ``ps``, ``exec``)."""
    from testbed.cli.control import ControlServer    # late: the shell's thread server, when a shell runs
    publish = {"topology": getattr(tb.topology, "name", "") or args.topology,
               "hosts": {h: tb.host(h).pid for h in tb.host_names}, "ips": {h: tb.ip(h) for h in tb.host_names},
               "switches": [s.name for s in getattr(tb.net, "switches", [])],
               "out": str(history_path.parent) if history_path is not None and args.out else None,
               "capture": str(Path(args.capture).expanduser().resolve()) if args.capture else None,
               "mesh": bool((getattr(tb.topology, "sections", None) or {}).get("mesh"))}
    return lambda cli: ControlServer(tb.journal, cli.remote, publish)


def _names(tb: RunningTestbed) -> dict[str, str]:
    """Host names, and with a mesh: section its instances, Pilot, VIPs and etcd members."""
    names = {tb.ip(h): h for h in tb.host_names}
    spec = (getattr(getattr(tb, "topology", None), "sections", None) or {}).get("mesh")
    if spec is not None:
        names.update(mesh_names(spec, tb.ip))
    return names


def _ports(tb: RunningTestbed) -> tuple[list[int], list[str]]:
    """The mesh's service ports on the wire (sidecar to sidecar), for Decode As, and the
    hosts that run its instances (their captures are the ones worth opening first)."""
    spec = (getattr(getattr(tb, "topology", None), "sections", None) or {}).get("mesh")
    if spec is None:
        return [], []
    return sorted({i.port for i in spec.instances}), [i.host for i in spec.instances]


def _embed_secrets(cap: Any, ports: list[int], hosts: tuple[str, ...] = ()) -> None:
    """The sidecars' TLS key logs merged into DIR/tls-keys.log and embedded in every capture
    (Wireshark then decrypts without settings); prints how to open the files."""
    from testbed.run.capture import merge_keylogs, viewer_lines     # late: light start-up
    keys_dir, merged = cap.dir / KEYLOG_DIR, cap.dir / KEYLOG
    secrets = merge_keylogs(keys_dir, merged)
    if keys_dir.is_dir():
        for f in keys_dir.glob("*.keys"):
            f.unlink()
        keys_dir.rmdir()
    if secrets:
        n = cap.inject_secrets(merged)
        print(f"*** capture: {secrets} TLS secrets embedded in {n} files ({merged}); Wireshark "
              "and tshark decrypt the sidecars' mTLS without options", file=sys.stderr)
    files = [f.path for f in sorted(cap.files, key=lambda f: f.host not in hosts)   # a service's host first
             if f.path.exists() and f.path.stat().st_size > 0]
    if ports and files:
        print("*** capture: open with (Decode As for the mesh's service ports):", file=sys.stderr)
        for line in viewer_lines(files, ports, tls=secrets > 0):
            print(line, file=sys.stderr)


def _finish_capture(cap: Any, history_path: Path | None, wall0: float, names: dict[str, str],
                    ports: list[int] | None = None, hosts: list[str] | tuple[str, ...] = ()) -> bool:
    """Stop tcpdump, put the history's fault ops on the packets as comments, the TLS
    secrets, then the name block (last: editcap drops name blocks). A failure is reported
    (False), files are kept."""
    from testbed.history import HistoryError, read_history     # late: light start-up
    try:
        cap.stop()
        if history_path is not None and history_path.exists():
            added = cap.annotate(read_history(history_path).faults, wall0)
            if added:
                print(f"*** capture: fault comments in {len(added)} files "
                      f"(tshark -r FILE -Y frame.comment)", file=sys.stderr)
        _embed_secrets(cap, ports or [], tuple(hosts))
        cap.write_names(names)
        return True
    except (subprocess.CalledProcessError, OSError, ValueError, HistoryError) as e:
        print(f"minimesh up --capture: could not finish the captures under {cap.dir}: {e} "
              f"{getattr(e, 'stderr', '') or ''}".rstrip(), file=sys.stderr)
        return False


def _check_listen(value: str) -> None:
    """``--ui`` checked before anything is built, by the parser the page's server uses."""
    from testbed.ui.server import parse_listen      # late: aiohttp, only with --ui
    try:
        parse_listen(value)
    except ValueError as e:
        raise UpOptionError(str(e)) from None


def _topology(args: argparse.Namespace) -> Any:
    """The topology up builds: a YAML or stock one, or Mininet's --custom/--topo (exit 2 when
    the arguments do not name exactly one)."""
    if args.custom:
        if args.topology or not args.topo:
            print("minimesh up: --custom needs --topo NAME[,ARGS] and no topology argument", file=sys.stderr)
            raise SystemExit(EXIT_USAGE)
        return load_custom_or_exit(args.custom.split(","), args.topo)
    if bool(args.topology) == bool(args.topo):
        print("minimesh up: give one topology (a file, a stock one, or --custom FILE.py --topo NAME)",
              file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return load_topology_or_exit(args.topology or args.topo)


def _run_up(args: argparse.Namespace) -> int:
    topology = with_capture_keylogs(_topology(args), args.capture)
    try:
        history_path = up_history_path(args.out, args.capture)
        if args.ui:
            _check_listen(args.ui)
    except UpOptionError as e:
        print(f"minimesh up: {e}", file=sys.stderr)
        return EXIT_USAGE
    require_root("up")
    # late: Mininet (--help and the unit tests do without it)
    from mininet.log import setLogLevel

    from testbed.cli.shell import route_output_to_stdout

    setLogLevel("info" if args.verbose else "output")
    route_output_to_stdout()
    return run_testbed("up", topology, args.link_backend, lambda tb: _up_session(tb, args, history_path),
                       sigint=not sys.stdin.isatty())


SUBCOMMANDS = [
    Subcommand("up", "build a topology and open the Mininet CLI (reads stdin if not a terminal)",
               _configure_up, _run_up),
]
