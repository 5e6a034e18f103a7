"""etcd itself: cluster members as data, their exact command lines, and a launcher with an
injected ``spawn``.

    cluster = EtcdCluster.local(3, data_root=tmp, heartbeat_ms=50, election_ms=500)
    with EtcdRunner(cluster, spawn=local_spawn) as run:     # loopback: plain subprocesses
        run.wait_healthy(10)
        old = run.leader(); run.crash(old.name); run.wait_leader(5, exclude=(old.name,))

On Mininet the members run on hosts, started by the net builder and probed from inside
the hosts (the root namespace cannot reach them)::

    run = EtcdRunner(cluster, spawn=lambda m, argv: tb.popen(m.run_on, argv),
                     probe=popen_probe(tb.popen))

Every member logs JSON lines (``--logger zap``) to ``cluster.log_file(member)``;
:func:`~testbed.mesh.etcd.wire.scan_log` turns them into heartbeat warnings, elections and
leader changes; it and the status format (``MemberStatus``) live in :mod:`testbed.mesh.etcd.wire`.
"""
from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

from testbed.mesh.etcd.wire import LogEvent, MemberStatus, scan_log

DEFAULT_HEARTBEAT_MS = 100    # etcd's own defaults
DEFAULT_ELECTION_MS = 1000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --- the cluster as data ------------------------------------------------------------------

@dataclass(frozen=True)
class EtcdMember:
    """One etcd member: its name, the IP it serves on, and the host that runs it."""

    name: str
    ip: str
    client_port: int = 2379
    peer_port: int = 2380
    host: str = ""  # Mininet host running it; "" means the host called `name`

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"etcd member name {self.name!r}: use letters, digits, '_', '.', '-'")
        try:
            ipaddress.IPv4Address(self.ip)
        except ValueError:
            raise ValueError(f"etcd member {self.name}: ip {self.ip!r} is not an IPv4 address") from None
        for what, port in (("client_port", self.client_port), ("peer_port", self.peer_port)):
            if not 1 <= port <= 65535:
                raise ValueError(f"etcd member {self.name}: {what} {port} not in 1..65535")
        if self.client_port == self.peer_port:
            raise ValueError(f"etcd member {self.name}: client_port and peer_port are both {self.peer_port}")

    @property
    def run_on(self) -> str:
        return self.host or self.name

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{self.peer_port}"


@dataclass(frozen=True)
class EtcdCluster:
    """A static etcd cluster. ``election_ms`` must be >= 5 x ``heartbeat_ms`` (etcd refuses
    to start otherwise) and <= 50000; etcd's defaults are 100 / 1000 ms."""

    members: tuple[EtcdMember, ...]
    data_root: str
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS
    election_ms: int = DEFAULT_ELECTION_MS
    token: str = "minimesh-etcd"
    watch_progress_ms: int = 1000   # progress notifications keep idle watches visibly alive
    log_root: str = ""          # "" -> data_root
    binary: str = "etcd"
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("etcd cluster: members is empty; list at least one member")
        names = [m.name for m in self.members]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"etcd cluster: member names repeated: {', '.join(dup)}")
        seen: dict[tuple[str, int], str] = {}
        for m in self.members:
            places = {(m.ip, m.client_port), (m.ip, m.peer_port)}
            if m.ip != "127.0.0.1":  # it also listens on its host's own loopback
                places.add((f"127.0.0.1 of host {m.run_on}", m.client_port))
            for place in sorted(places):
                if place in seen:
                    raise ValueError(f"etcd cluster: {m.name} and {seen[place]} both use "
                                     f"{place[0]} port {place[1]}")
                seen[place] = m.name
        if self.heartbeat_ms < 1:
            raise ValueError(f"etcd cluster: heartbeat_ms {self.heartbeat_ms} must be >= 1")
        if self.watch_progress_ms < 1:
            raise ValueError(f"etcd cluster: watch_progress_ms {self.watch_progress_ms} must be >= 1")
        if not 5 * self.heartbeat_ms <= self.election_ms <= 50000:
            raise ValueError(f"etcd cluster: election_ms {self.election_ms} must be between "
                             f"5 x heartbeat_ms ({5 * self.heartbeat_ms}) and 50000")

    @classmethod
    def local(cls, n: int, data_root: str, ports: Sequence[int] | None = None, **kw: Any) -> "EtcdCluster":
        """``n`` members on 127.0.0.1 (loopback tests); ``ports`` gives 2n distinct ports
        (client, peer per member), default free ports picked by the kernel."""
        ports = list(ports) if ports is not None else free_ports(2 * n)
        if len(ports) != 2 * n:
            raise ValueError(f"etcd cluster: {n} members need {2 * n} ports, got {len(ports)}")
        members = tuple(EtcdMember(f"e{i + 1}", "127.0.0.1", ports[2 * i], ports[2 * i + 1])
                        for i in range(n))
        return cls(members, data_root, **kw)

    def member(self, name: str) -> EtcdMember:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"no etcd member {name!r}; members: {', '.join(m.name for m in self.members)}")

    def member_id(self, m: EtcdMember) -> int:
        """The raft member ID etcd derives for an initial member (sha1 of its peer URL and
        the cluster token), as in status replies; logs print it in hex."""
        return int.from_bytes(hashlib.sha1((m.peer_url + self.token).encode()).digest()[:8], "big")

    def member_by_id(self, member_id: int | str) -> EtcdMember | None:
        """The member with this ID (an int, or hex as in the logs); None if unknown."""
        mid = int(member_id, 16) if isinstance(member_id, str) else member_id
        return next((m for m in self.members if self.member_id(m) == mid), None)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.client_url for m in self.members)

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def data_dir(self, m: EtcdMember) -> str:
        return os.path.join(self.data_root, f"{m.name}.etcd")

    def log_file(self, m: EtcdMember) -> str:
        return os.path.join(self.log_root or self.data_root, f"{m.name}.log")

    def read_log(self, m: EtcdMember) -> list["LogEvent"]:
        """:func:`scan_log` of member ``m``'s log file ([] before it exists)."""
        try:
            with open(self.log_file(m), errors="replace") as f:
                return scan_log(f)
        except FileNotFoundError:
            return []

    def argv(self, m: EtcdMember) -> list[str]:
        """The exact etcd command line of member ``m``."""
        listen = [m.client_url] + ([] if m.ip == "127.0.0.1" else [f"http://127.0.0.1:{m.client_port}"])
        return [self.binary,
                "--name", m.name,
                "--data-dir", self.data_dir(m),
                "--listen-client-urls", ",".join(listen),
                "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url,
                "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", self.initial_cluster,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
                "--pre-vote",
                "--heartbeat-interval", str(self.heartbeat_ms),
                "--election-timeout", str(self.election_ms),
                "--experimental-watch-progress-notify-interval", f"{self.watch_progress_ms}ms",
                "--logger", "zap",
                "--log-outputs", self.log_file(m),
                *self.extra_args]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now.

    Drawn below the kernel's ephemeral range (32768+ by default), so an outgoing
    connection elsewhere on the machine cannot grab one between this check and etcd's bind.
    """
    out: list[int] = []
    rng = random.Random()
    while len(out) < n:
        port = rng.randrange(20000, 32000)
        if port in out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
    return out


# --- launching -----------------------------------------------------------------------------

Spawn = Callable[[EtcdMember, Sequence[str]], Any]        # -> Popen-like handle
Probe = Callable[[EtcdMember, float], "MemberStatus | None"]


def local_spawn(member: EtcdMember, argv: Sequence[str]) -> subprocess.Popen:
    """Run a member as a plain subprocess (loopback tests). etcd logs to ``--log-outputs``;
    stdout/stderr (fatal start-up errors only) go to ``<log>.stderr``. The member gets
    SIGKILL when the spawning *thread* dies (PR_SET_PDEATHSIG), so a killed test run leaves
    no etcd behind: spawn from a thread that outlives the cluster (e.g. the main thread)."""
    with open(stderr_file(argv), "ab") as err:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def stderr_file(argv: Sequence[str]) -> str:
    return list(argv)[list(argv).index("--log-outputs") + 1] + ".stderr"


def http_probe(member: EtcdMember, timeout_s: float) -> "MemberStatus | None":
    """``/v3/maintenance/status`` of ``member`` over HTTP from this namespace; None if it
    does not answer."""
    req = urllib.request.Request(member.client_url + "/v3/maintenance/status", data=b"{}",
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return MemberStatus.from_json(json.loads(resp.read()))
    except (OSError, ValueError):
        return None


class HostPopen(Protocol):
    """``Testbed.popen``: ``argv`` run in host ``host``, with subprocess.Popen's keyword arguments."""

    def __call__(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen: ...


def popen_probe(popen: HostPopen) -> Probe:
    """A probe that runs ``curl`` inside the member's host (``popen`` is ``Testbed.popen``),
    for members in network namespaces the caller cannot reach."""
    def probe(member: EtcdMember, timeout_s: float) -> MemberStatus | None:
        argv = ["curl", "-s", "-m", f"{timeout_s:.3f}", "-X", "POST", "-d", "{}",
                f"http://127.0.0.1:{member.client_port}/v3/maintenance/status"]
        proc = popen(member.run_on, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            out, _ = proc.communicate(timeout=timeout_s + 2)
            return MemberStatus.from_json(json.loads(out)) if proc.returncode == 0 else None
        except (subprocess.TimeoutExpired, ValueError):
            proc.kill()
            proc.wait()
            return None
    return probe


class EtcdRunner:
    """A running :class:`EtcdCluster`: start/stop, crash/restart/pause/resume by member
    name, health and leader from each member's own status."""

    def __init__(self, cluster: EtcdCluster, spawn: Spawn = local_spawn, probe: Probe = http_probe):
        self.cluster = cluster
        self._spawn = spawn
        self._probe = probe
        self.handles: dict[str, Any] = {}

    def __enter__(self) -> "EtcdRunner":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        Path(self.cluster.data_root).mkdir(parents=True, exist_ok=True)
        Path(self.cluster.log_root or self.cluster.data_root).mkdir(parents=True, exist_ok=True)
        try:
            for m in self.cluster.members:
                self.restart(m.name)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM every member still running, SIGKILL after ``timeout_s``; idempotent."""
        for name in list(self.handles):
            self.crash(name, signal.SIGTERM, timeout_s)

    def running(self, name: str) -> bool:
        h = self.handles.get(name)
        return h is not None and h.poll() is None

    def restart(self, name: str) -> None:
        """(Re)start member ``name`` on its existing data dir (etcd then ignores the
        ``--initial-cluster*`` flags and rejoins from its WAL)."""
        m = self.cluster.member(name)
        if self.running(name):
            raise RuntimeError(f"etcd member {name} is already running (pid {self.handles[name].pid})")
        self.handles[name] = self._spawn(m, self.cluster.argv(m))

    def crash(self, name: str, sig: int = signal.SIGKILL, timeout_s: float = 5.0) -> None:
        """Send ``sig`` to member ``name`` and reap it (SIGKILL if it outlives ``timeout_s``)."""
        h = self.handles.pop(name, None)
        if h is None:
            return
        if h.poll() is None:
            h.send_signal(sig)
            if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT):
                h.send_signal(signal.SIGCONT)   # a paused member must wake up to see it
            try:
                h.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                h.kill()
                h.wait()
        for stream in (getattr(h, "stdout", None), getattr(h, "stderr", None)):
            if stream is not None:
                stream.close()

    def pause(self, name: str) -> None:
        self.handles[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.handles[name].send_signal(signal.SIGCONT)

    def status(self, name: str, timeout_s: float = 1.0) -> "MemberStatus | None":
        return self._probe(self.cluster.member(name), timeout_s) if self.running(name) else None

    def statuses(self, timeout_s: float = 1.0) -> dict[str, "MemberStatus | None"]:
        return {m.name: self.status(m.name, timeout_s) for m in self.cluster.members}

    def leader(self, timeout_s: float = 1.0) -> EtcdMember | None:
        """The leader as seen by the answering member with the highest raft term, or None
        when no answering member knows one (no quorum, election in progress)."""
        knowing = [s for s in self.statuses(timeout_s).values() if s is not None and s.leader_id]
        if not knowing:
            return None
        return self.cluster.member_by_id(max(knowing, key=lambda s: s.raft_term).leader_id)

    def wait_leader(self, timeout_s: float, exclude: Iterable[str] = ()) -> EtcdMember:
        deadline = time.monotonic() + timeout_s
        excluded = set(exclude)
        while True:
            m = self.leader(0.5)
            if m is not None and m.name not in excluded:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd: no leader (other than {sorted(excluded)}) within {timeout_s}s; "
                                   f"statuses: {self._describe()}")
            time.sleep(0.05)

    def wait_healthy(self, timeout_s: float, members: Iterable[str] | None = None) -> EtcdMember:
        """Wait until every listed running member answers and all agree on one leader;
        returns the leader. Raises TimeoutError naming what each member said."""
        names = list(members) if members is not None else [m.name for m in self.cluster.members]
        deadline = time.monotonic() + timeout_s
        while True:
            for n in names:
                h = self.handles.get(n)
                if h is not None and h.poll() is not None:
                    m = self.cluster.member(n)
                    try:
                        err = Path(stderr_file(self.cluster.argv(m))).read_text(errors="replace")[-400:]
                    except OSError:
                        err = ""
                    raise RuntimeError(f"etcd member {n} exited with {h.returncode}: {err.strip()} "
                                       f"(log: {self.cluster.log_file(m)})")
            st = {n: self.status(n, 0.5) for n in names}
            leaders = {s.leader_id for s in st.values() if s is not None}
            if all(s is not None for s in st.values()) and len(leaders) == 1 and 0 not in leaders:
                leader = self.cluster.member_by_id(leaders.pop())
                if leader is not None:
                    return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd not healthy within {timeout_s}s: {self._describe()}")
            time.sleep(0.05)

    def _describe(self) -> str:
        parts = []
        for n, s in self.statuses(0.5).items():
            parts.append(f"{n}: " + ("down" if not self.running(n) else "no answer" if s is None
                                     else f"term {s.raft_term} leader {self._name(s.leader_id)}"))
        return "; ".join(parts)

    def _name(self, member_id: int) -> str:
        m = self.cluster.member_by_id(member_id)
        return m.name if m else ("none" if member_id == 0 else f"{member_id:x}")
