"""On-disk journal of everything a run creates, written *before* it is created.

Each run appends JSON lines to ``<state_dir>/<run-id>.jsonl``:

    {"op": "runner", "pid": 123, "start": 456789}           # first line: who owns it
    {"op": "add", "id": 7, "kind": "bridge", "name": "s1"}   # before creating s1
    {"op": "set", "id": 7, "pid": 4242}                       # details known after creation
    {"op": "del", "id": 7}                                    # after removing it

On every exit path the run calls :meth:`Journal.cleanup`, which removes the outstanding
entries in reverse order and deletes the file. If the runner was killed (SIGKILL), the
file stays; ``minimesh clean`` (and the next ``minimesh up``) finds journals whose runner
is dead and removes exactly what they list: no pattern-matching sweeps.

Kinds (each has a remover in :data:`REMOVERS`):

- ``process``: pid, start (``/proc/PID/stat`` start time, guards against PID reuse)
- ``netns_procs``: pin (a file the namespace is bind-mounted on, see :func:`pin_netns`):
  every process in that network namespace is killed and the pin removed, so an unnamed
  Mininet namespace disappears. The pin keeps the inode from being reused meanwhile.
- ``netns``: name (a named namespace under /run/netns)
- ``link``: name, netns (name or None for the root namespace)
- ``bridge``: name
- ``iptables``: pid (process whose netns holds the rule), args (the rule, for ``-D``)
- ``path``: path (a file or socket to unlink)
- ``dir``: path (a run directory, e.g. a mesh's ``<state dir>/mesh-XXXX`` with etcd's data,
  logs and sockets; removed with everything in it)
- ``ovs_dir``: path (a private Open vSwitch's run directory, ``testbed.compat.ovs``): the
  processes holding an ``ovs-appctl`` control socket ``NAME.PID.ctl`` in it are ended (a
  controller started on that Open vSwitch by minimesh's ``controller`` stand-in outlives a
  killed run otherwise, and keeps its port), the persistent TAPs its datapath left
  (:func:`ovs_taps`), then the directory
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

DEFAULT_STATE_DIR = "/run/minimesh"


def state_dir() -> Path:
    return Path(os.environ.get("MINIMESH_STATE_DIR", DEFAULT_STATE_DIR))


def proc_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def proc_alive(pid: int, start: int | None) -> bool:
    """True if the process exists, is not a zombie, and (if given) started at ``start``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and (start is None or int(fields[19]) == start)


def netns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


class Journal:
    """The journal of one run. Not thread-safe; one per process."""

    def __init__(self, directory: Path | str | None = None, run_id: str | None = None,
                 runner: int | None = None):
        """``runner``: the process whose life this journal's things belong to (default: this
        one); ``clean`` removes them once it is gone. A helper that starts something on a
        run's behalf and exits (minimesh's userspace ``vconfig``) names the run's process."""
        self.dir = Path(directory) if directory else state_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        me = os.getpid()
        self.owner = me  # a forked child (e.g. pyroute2's netns helper) must never clean up
        self.runner = runner or me
        self.run_id = run_id or f"{me}-{proc_start(me)}"
        self.path = self.dir / f"{self.run_id}.jsonl"
        self._entries: dict[int, dict[str, Any]] = {}
        self._next = 1
        self._fh: Any = None      # the file exists only while an entry is outstanding

    def _write(self, obj: dict[str, Any]) -> None:
        if self._fh is None or self._fh.closed:
            self._fh = open(self.path, "a", buffering=1)
            me = self.runner
            self._fh.write(json.dumps({"op": "runner", "pid": me, "start": proc_start(me), "time": time.time()})
                           + "\n")
        self._fh.write(json.dumps(obj) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def record(self, kind: str, **data: Any) -> int:
        """Record the intent to create something; returns its entry id."""
        if kind not in REMOVERS:
            raise ValueError(f"unknown journal kind {kind!r}")
        eid = self._next
        self._next += 1
        entry = {"kind": kind, **data}
        self._entries[eid] = entry
        self._write({"op": "add", "id": eid, **entry})
        return eid

    def record_process(self, pid: int, what: str = "") -> int:
        return self.record("process", pid=pid, start=proc_start(pid), what=what)

    def update(self, eid: int, **data: Any) -> None:
        self._entries[eid].update(data)
        self._write({"op": "set", "id": eid, **data})

    def forget(self, eid: int) -> None:
        """The thing was removed by its owner; the journal no longer needs to. When nothing
        is outstanding any more the file goes (a clean ``net.stop()`` through Mininet's API
        leaves no journal for ``clean`` to mistake for a crashed run); the next record
        starts it again."""
        if self._entries.pop(eid, None) is not None:
            if self._entries or os.getpid() != self.owner:
                self._write({"op": "del", "id": eid})
            else:
                self.close(delete=True)

    def outstanding(self) -> list[dict[str, Any]]:
        return [dict(e, id=i) for i, e in self._entries.items()]

    def cleanup(self) -> list[str]:
        """Remove every outstanding entry (newest first) and delete the journal file."""
        if os.getpid() != self.owner:
            return []
        errors = remove_entries(self._entries)
        self._entries.clear()
        self.close(delete=not errors)
        return errors

    def close(self, delete: bool = True) -> None:
        if os.getpid() != self.owner:
            return
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        if delete:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


# --- replay and removal --------------------------------------------------------------

def read_journal(path: Path) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    runner: dict[str, Any] = {}
    entries: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a crash: what was fsynced before it still counts
        op = rec.pop("op", None)
        if op == "runner":
            runner = rec
        elif op == "add":
            entries[rec.pop("id")] = rec
        elif op == "set" and rec.get("id") in entries:
            entries[rec.pop("id")].update(rec)
        elif op == "del":
            entries.pop(rec.get("id"), None)
    return runner, entries


def remove_entries(entries: dict[int, dict[str, Any]]) -> list[str]:
    errors: list[str] = []
    # namespaces' processes first (while their holder still proves the inode is theirs),
    # then other processes (they hold TAP fds), then the rest; newest first within each
    rank = {"netns_procs": 0, "process": 1}
    order = sorted(entries, key=lambda i: (rank.get(entries[i]["kind"], 2), -i))
    for eid in order:
        entry = entries[eid]
        try:
            REMOVERS[entry["kind"]](entry)
        except Exception as e:  # keep going: remove everything we can, report the rest
            errors.append(f"{entry['kind']} {entry.get('name') or entry.get('pid')}: {e}")
    return errors


def stale_journals(directory: Path | None = None) -> list[Path]:
    d = directory or state_dir()
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.jsonl")):
        runner, _ = read_journal(p)
        if not runner or not proc_alive(runner.get("pid", -1), runner.get("start")):
            out.append(p)
    return out


def clean_stale(directory: Path | None = None) -> tuple[int, list[str]]:
    """Remove what dead runs left. Returns (entries removed, errors)."""
    count, errors = 0, []
    for p in stale_journals(directory):
        _, entries = read_journal(p)
        errs = remove_entries(entries)
        count += len(entries)
        errors += errs
        if not errs:
            p.unlink(missing_ok=True)    # a killed process may remove its own journal
    return count, errors


# --- removers --------------------------------------------------------------------------

def _kill(pid: int, start: int | None, timeout: float = 2.0) -> None:
    if not proc_alive(pid, start):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc_alive(pid, start):
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _remove_process(e: dict[str, Any]) -> None:
    if e.get("pid"):
        _kill(e["pid"], e.get("start"))


def _remove_netns_procs(e: dict[str, Any]) -> None:
    pin = e.get("pin")
    ns = e.get("netns")
    if pin and os.path.exists(pin):
        # The pin (a bind mount of the namespace, like `ip netns add` makes) keeps the
        # namespace alive, so its inode cannot have been reused by an unrelated one.
        try:
            ns = f"net:[{os.stat(pin).st_ino}]"
        except OSError:
            ns = None
    elif pin:
        return  # never pinned: the run died before the namespace existed
    if ns and ns not in (netns_of(1), netns_of(os.getpid())):  # never our own namespace
        for _ in range(5):
            pids = [int(p.name) for p in Path("/proc").iterdir()
                    if p.name.isdigit() and netns_of(int(p.name)) == ns]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
    if pin:
        unpin_netns(pin)


def pin_netns(pid: int, pin: str) -> str:
    """Bind-mount /proc/PID/ns/net on ``pin`` (as `ip netns` does); returns ``net:[inode]``."""
    Path(pin).parent.mkdir(parents=True, exist_ok=True)
    Path(pin).touch()
    if _libc().mount(f"/proc/{pid}/ns/net".encode(), pin.encode(), None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        os.unlink(pin)
        raise OSError(err, f"bind-mount of the namespace of {pid} on {pin}: {os.strerror(err)}")
    return f"net:[{os.stat(pin).st_ino}]"


def unpin_netns(pin: str) -> None:
    _libc().umount2(pin.encode(), _MNT_DETACH)  # fails harmlessly if not mounted
    try:
        os.unlink(pin)
    except FileNotFoundError:
        pass


_MS_BIND, _MNT_DETACH = 4096, 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _remove_netns(e: dict[str, Any]) -> None:
    from pyroute2 import netns      # late: pyroute2 (~150 ms) only when there is a namespace to remove
    if e["name"] in netns.listnetns():
        netns.remove(e["name"])


def _remove_link(e: dict[str, Any]) -> None:
    """Delete an interface; ``netns`` is a named netns, a /proc/PID/ns/net path, or None (root)."""
    # late: pyroute2 (~150 ms) only when there is an interface to remove
    from pyroute2 import IPRoute
    from pyroute2 import netns as _netns
    ns = e.get("netns")
    if ns and ns.startswith("/"):
        # an interface inside a Mininet host's (unnamed) namespace: it goes when that
        # namespace's processes are killed (netns_procs entry) or its TAP's holder dies
        return
    if ns and ns not in _netns.listnetns():
        return
    with (IPRoute(netns=ns) if ns else IPRoute()) as ipr:
        idx = ipr.link_lookup(ifname=e["name"])
        if idx:
            ipr.link("del", index=idx[0])


def _remove_iptables(e: dict[str, Any]) -> None:
    pid = e.get("pid")
    if pid and not proc_alive(pid, e.get("start")):
        return  # its namespace is gone, and the rule with it
    prefix = ["nsenter", "-t", str(pid), "-n"] if pid else []
    subprocess.run(prefix + ["iptables", "-w", "-D", *e["args"]], capture_output=True, check=False)


def _remove_path(e: dict[str, Any]) -> None:
    try:
        os.unlink(e["path"])
    except FileNotFoundError:
        pass


def _remove_dir(e: dict[str, Any]) -> None:
    path = Path(e["path"])
    if not path.is_absolute() or path == Path(path.anchor) or path.is_symlink():
        raise ValueError(f"refusing to remove {path} (not an absolute run directory)")
    if path.exists():
        shutil.rmtree(path)


def end_ctl_holders(directory: Path) -> list[int]:
    """End the processes that hold an ``ovs-appctl`` control socket ``NAME.PID.ctl`` in
    ``directory`` (Open vSwitch's daemons and tools name it so), if that process is still
    NAME (``/proc/PID/comm``, 15 characters): a reused pid is left alone. Returns the pids."""
    ended = []
    for ctl in sorted(directory.glob("*.ctl")) if directory.is_dir() else []:
        m = re.fullmatch(r"(.+)\.(\d+)\.ctl", ctl.name)
        if not m:
            continue
        pid = int(m[2])
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm == m[1][:15]:
            _kill(pid, proc_start(pid))
            ended.append(pid)
    return ended


def ovs_taps(directory: Path) -> list[str]:
    """The TAP devices a private Open vSwitch's userspace datapath made and, once its
    ovs-vswitchd is gone, left behind (they are persistent): ``ovs-netdev`` and its bridges'
    own ports, named in its database ``conf.db`` (a log of JSON transactions). Only TAPs that
    no process holds (no carrier) are listed, so a running Open vSwitch's are never touched."""
    names = {"ovs-netdev"}
    try:
        lines = (directory / "conf.db").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            for row in (record.get("Bridge") or {}).values():
                if isinstance(row, dict) and isinstance(row.get("name"), str):
                    names.add(row["name"])
    taps = []
    for name in sorted(names):
        dev = Path("/sys/class/net") / name
        if not (dev / "tun_flags").exists():
            continue
        try:
            carrier = (dev / "carrier").read_text().strip()
        except OSError:
            carrier = "0"          # down: no carrier to read
        if carrier != "1":
            taps.append(name)
    return taps


def remove_ovs_taps(directory: Path) -> None:
    for name in ovs_taps(directory):
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def remove_ovs_dir(directory: Path) -> None:
    """A private Open vSwitch's run directory, once its daemons are gone: the processes
    holding a control socket in it (:func:`end_ctl_holders`), the persistent TAPs its datapath
    left (:func:`ovs_taps`), then the directory."""
    end_ctl_holders(directory)
    remove_ovs_taps(directory)
    _remove_dir({"path": str(directory)})


def _remove_ovs_dir(e: dict[str, Any]) -> None:
    remove_ovs_dir(Path(e["path"]))


REMOVERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "process": _remove_process,
    "netns_procs": _remove_netns_procs,
    "netns": _remove_netns,
    "link": _remove_link,
    "bridge": _remove_link,
    "iptables": _remove_iptables,
    "path": _remove_path,
    "dir": _remove_dir,
    "ovs_dir": _remove_ovs_dir,
}
