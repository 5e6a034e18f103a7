"""A running ``minimesh up`` driven from another terminal: its control socket, and the
client side (``minimesh COMMAND ... [--run ID]``, ``minimesh ps``, ``minimesh exec``).

``minimesh up`` publishes itself in ``<state dir>/up/<pid>.json`` (topology, hosts and
their pids, the control socket, --out/--capture) and listens on ``<state dir>/up/<pid>.sock``,
a unix socket of mode 0600 in a directory of mode 0700: only root opens it. Both files are
journaled before they are created and removed on every exit path. The run's ID is the pid of
its ``minimesh up`` (the ``--run PID`` that ``apply`` and ``registry`` already take).

Protocol: one JSON line per connection, ``{"line": "link-set h1 s1 delay=50ms", "client": "..."}``;
the answer is one JSON object ``{"stdout": ..., "stderr": ..., "status": 0|1}``. The line is
run by the shell itself (:meth:`testbed.cli.shell.TestbedCLI.remote`), so a remote command
takes exactly the path a typed one takes: the same fault ops, history and capture comments.

Mininet-free and light: this module is imported by ``minimesh --help``.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import socketserver
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from testbed.journal import proc_alive, proc_start, state_dir

__all__ = ["ControlServer", "ControlError", "RunInfo", "up_dir", "running_ups", "find_run", "send_line",
           "REMOTE_BUILTINS", "REFUSED", "split_run", "absolutize", "exec_argv", "format_ps", "ps_rows",
           "remote_command", "table"]

# the shell commands of testbed.cli.shell and testbed.cli.faults (Mininet-free copy of their
# names and one-line help; registered commands add theirs through testbed.cli.shell_commands)
REMOTE_BUILTINS: dict[str, str] = {
    "link-set": "change link parameters live: NODE1 NODE2 PARAM=VALUE... [dir=NODE1->NODE2]",
    "link-show": "show every link's shape per direction, and active drops [-o json]",
    "link-down": "bring a link down: NODE1 NODE2",
    "link-up": "bring a downed link back up: NODE1 NODE2",
    "drop": "drop traffic between two hosts: HOST1 HOST2 [oneway]",
    "restore": "remove drops (and partitions): [HOST1 [HOST2]]",
    "partition": "partition hosts: H1,H2 H3,H4 ... | isolate HOST | halves|ring|bridge|isolate-one [SEED]",
    "heal": "revert every outstanding fault",
    "crash": "signal a mesh process (default SIGKILL): NAME [SIGNAL]",
    "restart": "restart a mesh process (ends its crash): NAME",
    "pause": "freeze a mesh process (SIGSTOP): NAME",
    "resume": "continue a paused process (SIGCONT): NAME",
    "faults": "list outstanding faults and the processes that can be named",
}
# shell commands that make no sense from another terminal (they end the session or read a file)
REFUSED = {"exit", "quit", "EOF", "source", "x", "xterm", "gterm", "noecho"}


class ControlError(RuntimeError):
    """No such run, several runs, no access: the message says what to do. ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def up_dir() -> Path:
    return state_dir() / "up"


@dataclass(frozen=True)
class RunInfo:
    """One running ``minimesh up``, as published."""

    pid: int
    topology: str
    socket: str
    started: float
    hosts: dict[str, int]          # host -> pid of its shell (its namespaces)
    switches: list[str]
    out: str | None = None
    capture: str | None = None
    mesh: bool = False
    ips: dict[str, str] = field(default_factory=dict)     # host -> its IP

    @classmethod
    def from_dict(cls, d: dict) -> "RunInfo":
        return cls(int(d["pid"]), str(d.get("topology", "")), str(d["socket"]), float(d.get("started", 0)),
                   {str(k): int(v) for k, v in (d.get("hosts") or {}).items()}, list(d.get("switches") or []),
                   d.get("out"), d.get("capture"), bool(d.get("mesh")),
                   {str(k): str(v) for k, v in (d.get("ips") or {}).items()})

    def as_json(self) -> dict:
        return {"id": self.pid, "topology": self.topology, "socket": self.socket, "started": self.started,
                "hosts": self.hosts, "switches": self.switches, "out": self.out, "capture": self.capture,
                "mesh": self.mesh, "ips": self.ips}


# --- server side (inside `minimesh up`) ---------------------------------------------------------

class _Handler(socketserver.StreamRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        raw = self.rfile.readline(1 << 20)
        try:
            req = json.loads(raw)
            line = str(req["line"])
        except (ValueError, KeyError, TypeError):
            answer: dict[str, Any] = {"stdout": "", "stderr": "bad request: expected one JSON line "
                                      '{"line": "..."}\n', "status": 2}
        else:
            nested = descends_from(peer_pid(self.request), os.getpid())
            out, err, status = self.server.execute(line, str(req.get("client", "")), nested)
            answer = {"stdout": out, "stderr": err, "status": status}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of a Unix socket (SO_PEERCRED); 0 if unknown."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0
    return struct.unpack("3i", creds)[0]


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` is ``ancestor`` or one of its descendants (by /proc's parent links)."""
    for _ in range(64):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    execute: Callable[[str, str, bool], tuple[str, str, int]]


class ControlServer:
    """The control socket of one ``minimesh up``: ``execute(line, client, nested)`` -> (stdout,
    stderr, status) runs a shell line; ``nested``: the caller is one of the up's own descendants
    (``sh minimesh ...`` or ``h1 minimesh ...`` typed at its prompt). ``publish`` is what ``minimesh ps`` shows. Both
    files are journaled (``journal.record("path", ...)``) before creation."""

    def __init__(self, journal: Any, execute: Callable[[str, str, bool], tuple[str, str, int]], publish: dict,
                 directory: Path | None = None):
        self.journal, self.execute, self.publish = journal, execute, publish
        self.dir = directory or up_dir()
        pid = os.getpid()
        self.socket_path = self.dir / f"{pid}.sock"
        self.info_path = self.dir / f"{pid}.json"
        self._eids: list[int] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ControlServer":
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._eids.append(self.journal.record("path", path=str(self.socket_path)))
        self.socket_path.unlink(missing_ok=True)
        old = os.umask(0o177)                 # the socket is created 0600: no window for others
        try:
            self._server = _Server(str(self.socket_path), _Handler)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        self._server.execute = self.execute
        self._eids.append(self.journal.record("path", path=str(self.info_path)))
        info = dict(self.publish, pid=os.getpid(), start=proc_start(os.getpid()), socket=str(self.socket_path),
                    started=time.time())
        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.chmod(tmp, 0o600)
        tmp.replace(self.info_path)
        self._thread = threading.Thread(target=self._server.serve_forever, name="minimesh-control",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        print(f"*** control: this testbed is ID {os.getpid()}; from another terminal: sudo minimesh ps, "
              f"sudo minimesh COMMAND ... [--run {os.getpid()}], sudo minimesh exec HOST CMD...",
              file=sys.stderr, flush=True)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for path in (self.info_path, self.socket_path):
            path.unlink(missing_ok=True)
        for eid in self._eids:
            self.journal.forget(eid)
        self._eids.clear()

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --- client side --------------------------------------------------------------------------------

def running_ups(directory: Path | None = None) -> list[RunInfo]:
    """The published ``minimesh up`` runs whose process is alive, oldest first."""
    d = directory or up_dir()
    out = []
    if d.is_dir() and not os.access(d, os.R_OK | os.X_OK):    # glob would just find nothing
        raise ControlError(f"cannot read {d}: the running testbeds are root's; run with sudo")
    files = sorted(d.glob("*.json"))
    for f in files:
        try:
            data = json.loads(f.read_text())
        except PermissionError:
            raise ControlError(f"cannot read {f}: the running testbeds are root's; run with sudo") from None
        except (OSError, ValueError):
            continue
        if proc_alive(int(data.get("pid", 0)), data.get("start")):
            out.append(RunInfo.from_dict(data))
    return sorted(out, key=lambda r: r.started)


def find_run(run: int | None, directory: Path | None = None) -> RunInfo:
    """The run ``run`` (a pid), or the only one: ControlError (status 1, or 2 when a choice is needed)."""
    runs = running_ups(directory)
    if not runs:
        raise ControlError("no running testbed; start one with: sudo minimesh up TOPOLOGY "
                           "(or check `sudo minimesh ps`)")
    if run is not None:
        for r in runs:
            if r.pid == run:
                return r
        raise ControlError(f"no running testbed with ID {run}; running: "
                           + ", ".join(f"{r.pid} ({r.topology})" for r in runs))
    if len(runs) > 1:
        raise ControlError("several testbeds are running; choose one with --run ID: "
                           + ", ".join(f"{r.pid} ({r.topology})" for r in runs), status=2)
    return runs[0]


def send_line(run: RunInfo, line: str, client: str = "", timeout_s: float | None = None) -> dict:
    """Run one shell line in ``run``; the answer {stdout, stderr, status}."""
    if not os.access(run.socket, os.R_OK | os.W_OK):
        raise ControlError(f"cannot open the control socket {run.socket} (root only): run with sudo")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect(run.socket)
        s.sendall(json.dumps({"line": line, "client": client}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise ControlError(f"testbed {run.pid}: control socket {run.socket}: {e.strerror or e}") from None
    finally:
        s.close()
    try:
        return dict(json.loads(data))
    except ValueError:
        raise ControlError(f"testbed {run.pid} closed the connection without an answer "
                           "(is it shutting down?)") from None


def split_run(words: Sequence[str]) -> tuple[int | None, list[str]]:
    """``--run ID`` / ``--run=ID`` taken out of a command's words (anywhere)."""
    run: int | None = None
    rest: list[str] = []
    it = iter(words)
    for w in it:
        if w == "--run" or w.startswith("--run="):
            value = w.partition("=")[2] if "=" in w else next(it, "")
            if not value.isdigit():
                raise ControlError(f"--run {value!r}: expected a testbed ID (see minimesh ps)", status=2)
            run = int(value)
        else:
            rest.append(w)
    return run, rest


def absolutize(words: Sequence[str], cwd: str | None = None) -> list[str]:
    """Words naming an existing file relative to ``cwd`` made absolute: the testbed runs in
    another directory (``minimesh apply rules.yaml`` from this terminal means this one)."""
    base = Path(cwd or os.getcwd())
    out = []
    for w in words:
        p = base / w
        out.append(str(p.resolve()) if not w.startswith("-") and not os.path.isabs(w) and "=" not in w
                   and p.exists() else w)
    return out


def remote_command(name: str, words: Sequence[str]) -> int:
    """``minimesh NAME WORDS... [--run ID]``: the shell's NAME in the running testbed."""
    try:
        run_id, rest = split_run(words)
        run = find_run(run_id)
        line = shlex.join([name, *absolutize(rest)])
        answer = send_line(run, line, client=f"pid {os.getpid()}")
    except ControlError as e:
        print(f"minimesh {name}: {e}", file=sys.stderr)
        return e.status
    sys.stdout.write(answer.get("stdout", ""))
    sys.stderr.write(answer.get("stderr", ""))
    return int(answer.get("status", 1))


def exec_argv(run: RunInfo, node: str, cmd: Sequence[str]) -> list[str]:
    """nsenter into ``node``'s network and mount namespaces (its /etc/hosts) running ``cmd``.
    A word that is a host's name becomes its IP, as Mininet's CLI does (``exec h1 ping h2``)."""
    if node not in run.hosts:
        if node in run.switches:
            raise ControlError(f"{node} is a switch of testbed {run.pid}: switches live in the root "
                               "namespace, run the command directly")
        raise ControlError(f"testbed {run.pid} has no host {node!r}; hosts: {', '.join(sorted(run.hosts))}")
    if not cmd:
        raise ControlError("usage: minimesh exec [--run ID] NODE CMD [ARG...]", status=2)
    pid = run.hosts[node]
    if not proc_alive(pid, None):
        raise ControlError(f"host {node} of testbed {run.pid} has no shell (pid {pid} is gone)")
    return ["nsenter", "-t", str(pid), "-n", "-m", "--", cmd[0], *(run.ips.get(w, w) for w in cmd[1:])]


def ps_rows(runs: Sequence[RunInfo], now: float | None = None) -> list[tuple[str, ...]]:
    now = time.time() if now is None else now
    rows: list[tuple[str, ...]] = [("ID", "TOPOLOGY", "HOSTS", "MESH", "UP", "OUT", "CAPTURE")]
    for r in runs:
        up = int(now - r.started)
        rows.append((str(r.pid), r.topology, str(len(r.hosts)), "yes" if r.mesh else "no",
                     f"{up // 3600}h{up % 3600 // 60:02d}m{up % 60:02d}s" if up >= 3600 else
                     f"{up // 60}m{up % 60:02d}s", r.out or "-", r.capture or "-"))
    return rows


def format_ps(runs: Sequence[RunInfo], now: float | None = None) -> str:
    if not runs:
        return "no running testbeds\n"
    return table(ps_rows(runs, now))


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns left-aligned, two spaces apart, as kubectl and istioctl print them."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows)
