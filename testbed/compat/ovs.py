"""A private Open vSwitch with its userspace datapath, for a kernel without the
``openvswitch`` module.

Open vSwitch forwards in userspace when a bridge's ``datapath_type`` is ``netdev``: no kernel
module, only packet sockets on the ports and a TAP for the bridge's own port. So where
Open vSwitch is installed (``openvswitch-switch``) but its module is missing, ``minimesh mn``
/ ``minimesh mininet`` start one Open vSwitch for the run, before the command:

- ``ovsdb-server`` and ``ovs-vswitchd`` in ``<state dir>/ovs-<runner pid>-<start>/``, each in
  its own session (a Ctrl-C at Mininet's prompt is not theirs), journaled as they start, and
  ended by the kernel when the command ends however it ends (``PR_SET_PDEATHSIG``);
- ``OVS_RUNDIR``, ``OVS_DBDIR`` and ``OVS_LOGDIR`` point there, so Mininet's ``ovs-vsctl``,
  and ``ovs-ofctl``/``ovs-vsctl``/``ovs-appctl`` typed at its prompt (``sh ovs-ofctl
  dump-flows s1``), reach this Open vSwitch and no other (a system one is never touched);
- ``$MINIMESH_OVS`` tells the command's Python (the runner execs it: same pid) to stop both
  and remove the directory at exit; ``minimesh clean`` removes the directory if that process
  was killed. Either way a process holding a control socket there (``NAME.PID.ctl``: an
  ``ovs-testcontroller`` started by the ``controller`` stand-in, which a killed Mininet
  leaves running on its port) is ended too.

Mininet's OVS switches then run on it with ``datapath='user'`` (Mininet's own option:
:class:`testbed.compat.substitute.UserOVSSwitch`). Written here: starting two daemons in
a private directory is what Open vSwitch's ``ovs-ctl`` does for the system instance, which
cannot be pointed elsewhere.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from testbed.journal import Journal, proc_alive, proc_start, remove_ovs_dir, state_dir
from testbed.links.tap import PR_SET_PDEATHSIG, prctl

__all__ = ["ENV", "available", "start", "stop", "stop_at_exit"]

ENV = "MINIMESH_OVS"
BINARIES = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl")
SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
START_TIMEOUT_S = 15.0


def available() -> tuple[bool, str]:
    """Can a private Open vSwitch with the userspace datapath run here?"""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return False, (f"Open vSwitch is not installed ({', '.join(missing)} missing: "
                       "apt-get install openvswitch-switch)")
    if not SCHEMA.exists():
        return False, f"Open vSwitch's schema {SCHEMA} is missing"
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError as e:
        return False, f"/dev/net/tun is not usable ({e.strerror}): the userspace datapath needs TAP devices"
    return True, "Open vSwitch is installed; its userspace datapath needs no module"


def _env(d: Path) -> dict[str, str]:
    return {"OVS_RUNDIR": str(d), "OVS_DBDIR": str(d), "OVS_LOGDIR": str(d)}


def _die_with_parent() -> None:
    """In the daemon, before exec: SIGTERM when the process that started it ends, however it
    ends (the runner execs the command, so that is the command)."""
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(journal: Journal, argv: list[str], d: Path, what: str) -> int:
    proc = subprocess.Popen(argv, cwd=d, env={**os.environ, **_env(d)}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_parent)
    journal.record_process(proc.pid, what=what)
    return proc.pid


def _wait_for(check: Callable[[], bool], what: str, pids: list[int]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if check():
            return
        if not all(proc_alive(p, None) for p in pids):
            raise RuntimeError(f"{what} exited while starting")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {START_TIMEOUT_S:.0f} s")


def start(journal: Journal) -> dict[str, str]:
    """Start the run's Open vSwitch; the environment the command gets (OVS_* and $MINIMESH_OVS).
    On failure everything started is removed and RuntimeError says why."""
    d = state_dir() / f"ovs-{os.getpid()}-{proc_start(os.getpid())}"     # pids repeat (pid namespaces)
    journal.record("ovs_dir", path=str(d))
    pids: list[int] = []
    try:
        d.mkdir(mode=0o700, parents=True)
        db = d / "conf.db"
        subprocess.run(["ovsdb-tool", "create", str(db), str(SCHEMA)], check=True, capture_output=True, text=True)
        sock = d / "db.sock"
        pids.append(_spawn(journal, ["ovsdb-server", str(db), f"--remote=punix:{sock}", "--no-chdir",
                                     f"--pidfile={d / 'ovsdb-server.pid'}", f"--log-file={d / 'ovsdb-server.log'}",
                                     f"--unixctl={d / 'ovsdb-server.ctl'}"], d, "Open vSwitch ovsdb-server"))
        _wait_for(sock.exists, "ovsdb-server", pids)
        env = {**os.environ, **_env(d)}
        # userspace-tso: packets a host's TCP left with a partial checksum (veth offloads) keep it
        # marked through ovs-vswitchd, which then completes it; without it they leave with a
        # wrong checksum and only ping works
        subprocess.run(["ovs-vsctl", f"--db=unix:{sock}", "--no-wait", "init", "--", "set", "Open_vSwitch", ".",
                        "other_config:userspace-tso-enable=true"], check=True, capture_output=True,
                       text=True, env=env, timeout=START_TIMEOUT_S)
        pids.append(_spawn(journal, ["ovs-vswitchd", f"unix:{sock}", "--no-chdir",
                                     f"--pidfile={d / 'ovs-vswitchd.pid'}", f"--log-file={d / 'ovs-vswitchd.log'}",
                                     f"--unixctl={d / 'ovs-vswitchd.ctl'}"], d, "Open vSwitch ovs-vswitchd"))
        _wait_for((d / "ovs-vswitchd.pid").exists, "ovs-vswitchd", pids)
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        stop({"pids": [[p, proc_start(p)] for p in pids], "dir": str(d)})
        journal.cleanup()
        detail = getattr(e, "stderr", "") or str(e)
        raise RuntimeError(f"could not start a private Open vSwitch in {d}: {str(detail).strip()}") from None
    journal.close(delete=False)
    info = {"owner": os.getpid(), "dir": str(d), "journal": str(journal.path),
            "pids": [[p, proc_start(p)] for p in pids]}
    return {**_env(d), ENV: json.dumps(info)}


def stop(info: dict[str, object]) -> None:
    """Stop the daemons (ovs-vswitchd first: it removes its bridges' TAPs), remove the directory."""
    pids = list(info.get("pids") or [])   # type: ignore[call-overload]
    for pid, start in reversed(pids):
        if proc_alive(pid, start):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
    deadline = time.monotonic() + 5
    for pid, start in pids:
        while proc_alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc_alive(pid, start):
            os.kill(pid, signal.SIGKILL)
    d = Path(str(info.get("dir", "")))
    if d.is_absolute() and d.name.startswith("ovs-") and d.parent == state_dir():
        # also a controller the stand-in started on it (scratchnet's, by hand) and the
        # datapath's persistent TAPs (ovs-netdev, bridges' own ports)
        with contextlib.suppress(OSError):
            remove_ovs_dir(d)
    journal = info.get("journal")
    if journal:
        Path(str(journal)).unlink(missing_ok=True)


def stop_at_exit() -> None:
    """In the command the runner exec'd (same pid): stop the run's Open vSwitch at exit."""
    text = os.environ.get(ENV)
    if not text:
        return
    info = json.loads(text)
    if info.get("owner") == os.getpid():
        import atexit
        atexit.register(stop, info)
