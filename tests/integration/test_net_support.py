"""Shared helpers for the testbed integration tests (no tests here).

Names carry this process's pid (``TAG``) so concurrent test runs never share a bridge or
interface name in the root namespace; leftovers are found by that tag.
"""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TAG = str(os.getpid() % 100000)
SW = f"ms{TAG}"          # bridge in the root namespace: the name must be unique
HA, HB, HC = f"ha{TAG}", f"hb{TAG}", f"hc{TAG}"


def topology_yaml(delay_a: str = "5ms") -> str:
    return f"""\
name: mq{TAG}
hosts:
  {HA}: {{}}
  {HB}: {{}}
  {HC}: {{}}
switches:
  {SW}: {{}}
links:
  - between: [{HA}, {SW}]
    delay: {delay_a}
  - between: [{HB}, {SW}]
  - between: [{HC}, {SW}]
"""


def write_topology(dirpath: Path, delay_a: str = "5ms") -> Path:
    p = dirpath / f"mq{TAG}.yaml"
    p.write_text(topology_yaml(delay_a))
    return p


def minimesh(state_dir: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, MINIMESH_STATE_DIR=str(state_dir), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "testbed", *args], cwd=REPO, env=env, text=True, **kwargs)


def run_minimesh(state_dir: Path, *args: str, input: str | None = None, timeout: float = 90):
    p = minimesh(state_dir, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(input or "", timeout=timeout)
    return p.returncode, out, err


def interactive_up(state_dir: Path, *args: str) -> subprocess.Popen:
    """``minimesh up ARGS`` with pipes, for tests that type commands and signal it."""
    return minimesh(state_dir, "up", *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def type_until(proc: subprocess.Popen, commands: str, marker: str) -> str:
    """Send ``commands`` to the CLI and read its output until a line holds ``marker``."""
    proc.stdin.write(commands)
    proc.stdin.flush()
    seen = ""
    while marker not in seen:
        line = proc.stdout.readline()
        assert line, f"CLI ended early: {seen}"
        seen += line
    return seen


def terminate(proc: subprocess.Popen, timeout: float = 30) -> tuple[str, str]:
    """SIGTERM the CLI, wait for it (killed if it hangs); returns its (stdout, stderr)."""
    import signal
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Snapshot:
    netns: frozenset[str]        # net:[inode] of every process
    links: frozenset[str]        # interface names in the root namespace
    tagged_pids: frozenset[int]  # processes whose command line carries TAG


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def snapshot() -> Snapshot:
    from pyroute2 import IPRoute
    nss, tagged = set(), set()
    me = os.getpid()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            nss.add(os.readlink(p / "ns" / "net"))
        except OSError:
            pass
        if int(p.name) != me and re.search(rf"\b(mininet:)?(ha|hb|hc|ms|mq){TAG}\b", _cmdline(p.name)):
            tagged.add(int(p.name))
    with IPRoute() as ipr:
        links = {lk.get_attr("IFLA_IFNAME") for lk in ipr.get_links()}
    return Snapshot(frozenset(nss), frozenset(links), frozenset(tagged))


def ours(name: str) -> bool:
    return TAG in name


def assert_nothing_left(before: Snapshot, journal_netns: set[str] = frozenset(), wait_s: float = 3.0) -> None:
    """No tagged process, no new tagged interface, none of the run's namespaces (and no
    new namespace holding a tagged process). Waits up to ``wait_s`` for dying processes."""
    deadline = time.monotonic() + wait_s
    while True:
        now = snapshot()
        left_links = {n for n in now.links - before.links if ours(n)}
        left_ns = (now.netns - before.netns) & set(journal_netns)
        left_procs = set(now.tagged_pids)
        if not (left_links or left_ns or left_procs) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left_links, f"interfaces left: {left_links}"
    assert not left_ns, f"namespaces left: {left_ns}"
    assert not left_procs, f"processes left: {[(p, _cmdline(str(p))) for p in left_procs]}"


_RTT = re.compile(r"time=([\d.]+) ms")


def rtts(text: str) -> list[float]:
    return [float(x) for x in _RTT.findall(text)]


def median(xs: list[float]) -> float:
    assert xs, "no RTT samples"
    return statistics.median(xs)


def journal_entries(state_dir: Path) -> list[dict]:
    from testbed.journal import read_journal
    out = []
    for p in state_dir.glob("*.jsonl"):
        _, entries = read_journal(p)
        out += entries.values()
    return out
