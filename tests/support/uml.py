"""A full kernel for tests: Debian's user-mode-linux (UML) run as an ordinary process.

    result = run_in_guest(["python", "-m", "pytest", "-q", "tests/..."], timeout=300)
    result.returncode, result.output, result.boot_s, result.run_s

The guest boots with the host's filesystem as its root (hostfs), so the checkout and its
venv are there at the same paths. Its kernel (6.1) has what this machine's may lack:
sch_netem, sch_htb, sch_tbf, openvswitch, veth, bridge, tun. It is its own kernel, so
namespaces, links and `/run/minimesh` inside it can never meet another testbed's.

The guest's set-up lives here and only here (:data:`INIT`): PATH, /proc, /sys, a tmpfs on
/run and /tmp (the host's /tmp is not the guest's scratch space), devtmpfs and devpts, the
cgroup v1 hierarchies stock Mininet's ``CPULimitedHost`` uses (cgcreate/cgset), the modules
loaded up front. Its writes to the host's filesystem are real: the command runs in the
checkout, and its output, exit status and any reports land in ``outdir`` (bind-mounted at
``/run/mm-out`` in the guest).

On the host the rig creates one thing outside ``outdir``: the symlink
``/lib/modules/<release>`` -> ``/usr/lib/uml/modules/<release>`` the guest's modprobe needs
(:func:`ensure_modules_link`, idempotent; it refuses to replace anything else there). A guest
that outlives ``timeout`` is killed with every host process of its session.

    python -m tests.support.uml [--timeout S] [--outdir DIR] -- CMD [ARGS...]
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KERNEL", "REPO", "GuestResult", "GuestTimeout", "available", "ensure_modules_link",
           "run_in_guest", "guest_python", "session_pids", "IN_GUEST_ENV"]

KERNEL = os.environ.get("MINIMESH_UML", "/usr/bin/linux.uml")
MODULES = Path("/usr/lib/uml/modules")
REPO = Path(__file__).resolve().parents[2]
IN_GUEST_ENV = "MINIMESH_IN_UML"  # set to 1 inside the guest
GUEST_PATH = "/run/mm-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PRELOAD = ("sch_netem", "sch_htb", "sch_tbf", "veth", "bridge", "tun", "openvswitch",
           "ip_tables", "iptable_filter", "iptable_nat", "xt_comment")
OUT = "/run/mm-out"

INIT = r"""#!/bin/sh
# minimesh UML guest init (tests/support/uml.py). Runs as PID 1 of the guest kernel.
export PATH={path}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 tmpfs /run
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run/netns /run/minimesh /run/lock {out}
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
mount -t tmpfs tmpfs /dev/shm
mount --bind {outdir} {out}
mount -t tmpfs tmpfs /tmp
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
for c in cpu,cpuacct cpuset memory; do
  mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
done
for m in {preload}; do modprobe $m || echo "guest: modprobe $m failed" >&2; done
# Debian's UML kernel has x_tables but not nf_tables' ip family (NF_TABLES_IPV4 unset), so
# iptables means iptables-legacy here (as on hosts configured that way)
mkdir -p /run/mm-bin
for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -s /usr/sbin/${{t%%-*}}-legacy${{t#${{t%%-*}}}} /run/mm-bin/$t
done
ip link set lo up
hostname mm-uml
echo "guest: up $(cut -d' ' -f1 /proc/uptime)" > {out}/boot
cd {cwd}
env -i {env} sh -c {cmd} > {out}/output 2>&1 < /dev/null
echo $? > {out}/rc
echo "guest: done $(cut -d' ' -f1 /proc/uptime)" >> {out}/boot
sync
poweroff -f
"""


class GuestTimeout(RuntimeError):
    """The guest ran longer than its timeout and was killed (with all its host processes)."""

    def __init__(self, message: str, session: int = 0):
        super().__init__(message)
        self.session = session  # the host session id its processes had


@dataclass(frozen=True)
class GuestResult:
    returncode: int
    output: str          # the command's stdout and stderr
    console: str         # the guest kernel's console (boot messages)
    boot_s: float        # host wall time from start to the guest's init running the command
    run_s: float         # host wall time of the whole guest (boot, command, power-off)
    outdir: Path


def release() -> str | None:
    """The UML kernel's release (its modules' directory name), None if not installed."""
    if not os.access(KERNEL, os.X_OK) or not MODULES.is_dir():
        return None
    names = sorted(p.name for p in MODULES.iterdir())
    return names[-1] if names else None


def available() -> tuple[bool, str]:
    """Can a UML guest run here? (True, "") or (False, why)."""
    if not os.access(KERNEL, os.X_OK):
        return False, f"{KERNEL} not found: install Debian's user-mode-linux (sudo ./minimesh test does)"
    if release() is None:
        return False, f"no modules under {MODULES}"
    if os.geteuid() != 0:
        return False, "the guest runs as root (its hostfs root is the host's /)"
    return True, ""


def ensure_modules_link() -> Path:
    """``/lib/modules/<release>`` -> ``/usr/lib/uml/modules/<release>`` on the host (what the
    guest's modprobe reads). Idempotent; never replaces a file or a different link."""
    rel = release()
    if rel is None:
        raise RuntimeError(f"user-mode-linux is not installed ({KERNEL}, {MODULES})")
    link, target = Path("/lib/modules") / rel, MODULES / rel
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return link
    if link.exists() or link.is_symlink():
        raise RuntimeError(f"{link} exists and is not a link to {target}; not replacing it")
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(target)
    except FileExistsError:  # another rig made it meanwhile
        if not (link.is_symlink() and Path(os.readlink(link)) == target):
            raise
    return link


def _init_script(argv: list[str], cwd: Path, env: dict[str, str], outdir: Path) -> str:
    envs = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    return INIT.format(path=GUEST_PATH, out=OUT, outdir=shlex.quote(str(outdir)),
                       preload=" ".join(PRELOAD), cwd=shlex.quote(str(cwd)), env=envs,
                       cmd=shlex.quote(shlex.join(argv)))


def session_pids(sid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # field 6 of stat: the session id; a zombie is dead already (its reaper is init,
        # or under `unshare --pid` whatever runs as PID 1)
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(d))
    return pids


def _kill_session(sid: int) -> None:
    """SIGKILL every host process of the guest's session (UML forks one per guest mm)."""
    for _ in range(50):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"UML guest processes of session {sid} survive SIGKILL: {session_pids(sid)}")


def guest_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
           "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", IN_GUEST_ENV: "1"}
    env.update(extra or {})
    return env


def run_in_guest(argv: list[str], *, timeout: float = 300, mem: str = "2G",
                 cwd: Path = REPO, env: dict[str, str] | None = None,
                 outdir: Path | None = None) -> GuestResult:
    """Boot a guest, run ``argv`` in ``cwd`` as root, power off; the exit status and output.
    Raises :class:`GuestTimeout` (after killing the guest) past ``timeout`` seconds."""
    ok, why = available()
    if not ok:
        raise RuntimeError(f"cannot run a UML guest: {why}")
    ensure_modules_link()
    outdir = Path(outdir or tempfile.mkdtemp(prefix="mm-uml-")).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    init = outdir / "init.sh"
    init.write_text(_init_script(argv, cwd, guest_env(env), outdir))
    init.chmod(0o755)
    for stale in ("rc", "output", "boot"):
        (outdir / stale).unlink(missing_ok=True)
    t0 = time.monotonic()
    with open(outdir / "console", "wb") as console:
        proc = subprocess.Popen(
            [KERNEL, f"mem={mem}", "rootfstype=hostfs", "rootflags=/", "rw", f"init={init}",
             "con=null", "con0=fd:0,fd:1"],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            cwd=outdir, start_new_session=True)
        try:
            boot_s = _wait(proc, outdir, t0, timeout)
        except GuestTimeout as e:
            e.session = proc.pid  # start_new_session: the session id is the kernel's pid
            raise
        finally:
            _kill_session(proc.pid)
            proc.wait()
    run_s = time.monotonic() - t0
    rc_file = outdir / "rc"
    text = (outdir / "console").read_text(errors="replace")
    if not rc_file.exists():
        raise RuntimeError(f"the UML guest stopped without running the command (exit "
                           f"{proc.returncode}); console tail:\n{text[-2000:]}")
    return GuestResult(int(rc_file.read_text()), (outdir / "output").read_text(errors="replace"),
                       text, boot_s, run_s, outdir)


def _wait(proc: subprocess.Popen, outdir: Path, t0: float, timeout: float) -> float:
    """Wait for the guest to power off; the boot time (when its init started the command)."""
    boot_s = -1.0
    while proc.poll() is None:
        if boot_s < 0 and (outdir / "boot").exists():
            boot_s = time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise GuestTimeout(f"UML guest still running after {timeout:.0f} s; killed "
                               f"(output so far in {outdir}/output)")
        time.sleep(0.05)
    return boot_s


def guest_python() -> str:
    """The venv's python (as seen in the guest: the same path)."""
    return str(Path(sys.executable))


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.support.uml",
                                 description="run a command as root inside a UML guest")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--outdir", type=Path)
    ap.add_argument("--mem", default="2G")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    ns = ap.parse_args(args)
    cmd = ns.cmd[1:] if ns.cmd[:1] == ["--"] else ns.cmd
    if not cmd:
        ap.error("no command")
    res = run_in_guest(cmd, timeout=ns.timeout, mem=ns.mem, outdir=ns.outdir)
    sys.stdout.write(res.output)
    print(f"[uml] exit {res.returncode}; boot {res.boot_s:.1f} s, total {res.run_s:.1f} s; "
          f"files in {res.outdir}", file=sys.stderr)
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
