"""What the reliability campaign shares (no tests here): its seed, its size, and a census
of everything a testbed can leave behind.

* ``SEED`` -- ``MINIMESH_RELIABILITY_SEED`` (default 14): every random choice derives from it.
* ``LONG`` -- ``MINIMESH_LONG_RELIABILITY=1`` runs the long campaign (>= 20 kills per
  topology, >= 10,000 requests per proxy); without it CI runs a seeded slice.
* :func:`census` -- namespaces, interfaces (bridges included), iptables rules, mounts,
  processes and run files of the (isolated) machine, for before/after comparisons.
* :func:`record` -- appends a figure to ``MINIMESH_RELIABILITY_LOG`` (JSON lines), which
  docs/reliability.md is written from.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("MINIMESH_RELIABILITY_SEED", "14"))
LONG = os.environ.get("MINIMESH_LONG_RELIABILITY") == "1"


def record(kind: str, **figures: Any) -> None:
    """One line of figures for docs/reliability.md (only when MINIMESH_RELIABILITY_LOG is set)."""
    path = os.environ.get("MINIMESH_RELIABILITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"kind": kind, "seed": SEED, "long": LONG, "time": time.time(), **figures}) + "\n")


def isolated() -> bool:
    """True in a private network namespace holding only ``lo`` (mm-isolated), or when
    MINIMESH_ISOLATED=1 says the machine is a throw-away one: `minimesh clean` is safe."""
    if os.environ.get("MINIMESH_ISOLATED") == "1":
        return True
    try:
        return sorted(os.listdir("/sys/class/net")) == ["lo"]
    except OSError:
        return False


_ISOLATE = ("mount -t tmpfs tmpfs /run && mkdir -p /run/netns /run/minimesh && mount -t sysfs sysfs /sys && "
            "(mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null; ip link set lo up; exec \"$@\")")


def rerun_isolated(nodeid: str, timeout_s: float = 3600) -> None:
    """Run one test again in private network, mount and pid namespaces with a private /run
    and /sys (as /work/bin/mm-isolated does), so `minimesh clean` and fixed switch names
    touch nothing of the machine's; fails with the inner run's output if it fails."""
    argv = ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--propagation", "private",
            "sh", "-c", _ISOLATE, "isolated", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-o", "addopts=", nodeid]
    p = subprocess.run(argv, cwd=REPO, env=dict(os.environ, MINIMESH_ISOLATED="1"), capture_output=True,
                       text=True, timeout=timeout_s)
    assert p.returncode == 0 and re.search(r"(^|\s)1 passed", p.stdout), \
        f"isolated run of {nodeid} failed ({p.returncode}):\n{p.stdout[-6000:]}\n{p.stderr[-2000:]}"


def minimesh_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "testbed", *args]


def minimesh_env(state_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    if state_dir is not None:
        env["MINIMESH_STATE_DIR"] = str(state_dir)
    return env


@dataclass(frozen=True)
class Census:
    netns: frozenset[str]          # net:[inode] of every process, plus /run/netns names
    links: frozenset[str]          # interfaces (bridges, veths, TAPs) of this namespace
    iptables: tuple[str, ...]      # iptables -S of this namespace
    mounts: frozenset[str]         # mount points
    procs: frozenset[tuple[int, str]]   # (pid, command line) of processes not ours
    run_files: tuple[str, ...]     # files and mesh-* directories under the state dir

    def leftovers(self, before: "Census") -> dict[str, list]:
        """What this census has that ``before`` had not (empty: nothing left)."""
        out = {
            "namespaces": sorted(self.netns - before.netns),
            "links": sorted(self.links - before.links),
            "iptables": [r for r in self.iptables if r not in before.iptables],
            "mounts": sorted(self.mounts - before.mounts),
            "processes": sorted(self.procs - before.procs),
            "run_files": [f for f in self.run_files if f not in before.run_files],
        }
        return {k: v for k, v in out.items() if v}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _ours() -> set[int]:
    """This process and its ancestors (pytest, mm-isolated's shell)."""
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            break
    return out | {1}


def census(state_dir: Path) -> Census:
    ours = _ours()
    netns, procs = set(), set()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            netns.add(os.readlink(p / "ns" / "net"))
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        pid = int(p.name)
        cmd = _cmdline(pid)
        if pid not in ours and state != "Z" and cmd and not cmd.startswith(("ip ", "iptables", "findmnt")):
            procs.add((pid, cmd))
    netns |= {f"/run/netns/{n}" for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])}
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    nat = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    mounts = {ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()}
    files = []
    if state_dir.is_dir():
        for root, dirs, names in os.walk(state_dir):
            files += [os.path.join(root, n) for n in names]
            files += [os.path.join(root, d) for d in dirs if d.startswith("mesh-")]
    return Census(frozenset(netns), frozenset(ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines()),
                  tuple(rules.splitlines() + nat.splitlines()), frozenset(mounts), frozenset(procs),
                  tuple(sorted(files)))


def wait_clean(before: Census, state_dir: Path, wait_s: float = 5.0) -> dict[str, list]:
    """Leftovers against ``before``, after waiting up to ``wait_s`` for dying processes."""
    deadline = time.monotonic() + wait_s
    while True:
        left = census(state_dir).leftovers(before)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
