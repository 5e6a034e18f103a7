"""Kill-at-random (issue 14): `minimesh up` of a line and of a mesh topology, stopped at a
seeded random moment by SIGINT or SIGKILL; after each kill and `minimesh clean` nothing is
left (namespaces, interfaces and bridges, iptables rules, mounts, processes, run files
such as a mesh's /run/minimesh/mesh-XXXX), and the next `up` works.

Root. It runs `minimesh clean`, which sweeps every journal of the state directory, so
outside /work/bin/mm-isolated the test re-runs itself in private namespaces (private /run).
CI: a seeded slice (3 line kills, 2 mesh kills); MINIMESH_LONG_RELIABILITY=1: 20 kills per topology.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from reliability_support import (LONG, REPO, SEED, census, isolated, minimesh_cmd, minimesh_env, record, rerun_isolated,
                                 wait_clean)

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

STATE = Path("/run/minimesh")
# topology, kills (slice, long), kill window in seconds (covers build, start and steady state),
# the command and output that prove the next `up` works
TOPOLOGIES = {
    "line": (REPO / "topologies" / "line3.yaml", (3, 20), 5.0, "h1 ping -c 1 -W 5 h2\n", " 0% packet loss"),
    "mesh": (REPO / "topologies" / "mesh-echo.yaml", (2, 20), 30.0,
             "h0 curl -s -m 10 -o /dev/null -w 'code=%{http_code}\\n' http://echo:8080/\n", "code=200"),
}


def _kill_once(topo: Path, when_s: float, sig: int) -> tuple[int, float]:
    """Start `up` (stdin held open, as `sleep 60 | minimesh up`), signal it after ``when_s``;
    returns (exit status, seconds it took to exit after the signal)."""
    proc = subprocess.Popen(minimesh_cmd("up", str(topo)), cwd=REPO, env=minimesh_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(when_s)
        proc.send_signal(sig)
        t0 = time.monotonic()
        rc = proc.wait(timeout=120)
        return rc, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdin:
            proc.stdin.close()


def _clean() -> subprocess.CompletedProcess:
    return subprocess.run(minimesh_cmd("clean"), cwd=REPO, env=minimesh_env(), capture_output=True, text=True,
                          timeout=120)


def _next_up_works(topo: Path, command: str, expect: str) -> None:
    p = subprocess.run(minimesh_cmd("up", str(topo)), cwd=REPO, env=minimesh_env(), input=command,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and expect in p.stdout, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])


@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_kill_at_random_leaves_nothing(name, request):
    if not isolated():                  # `minimesh clean` sweeps the state dir: never the machine's
        return rerun_isolated(request.node.nodeid)
    topo, (slice_n, long_n), window_s, command, expect = TOPOLOGIES[name]
    rng = random.Random(f"{SEED}-{name}")
    assert _clean().returncode == 0
    before = census(STATE)
    kills, statuses, problems = 0, [], []
    for i in range(long_n if LONG else slice_n):
        when = rng.uniform(0.2, window_s)
        sig = (signal.SIGKILL, signal.SIGINT)[i % 2]          # both, whatever the seed
        rc, exit_s = _kill_once(topo, when, sig)
        kills += 1
        statuses.append((signal.Signals(sig).name, round(when, 2), rc))
        if sig == signal.SIGINT and rc == 0:
            problems.append(f"kill {i}: SIGINT at {when:.2f}s exited 0")
        cleaned = _clean()
        if cleaned.returncode != 0:
            problems.append(f"kill {i}: clean failed: {cleaned.stderr[-500:]}")
        left = wait_clean(before, STATE)
        if left:
            problems.append(f"kill {i} ({signal.Signals(sig).name} at {when:.2f}s): left {left}")
    _next_up_works(topo, command, expect)
    left = wait_clean(before, STATE)
    record("kills", topology=name, kills=kills, statuses=statuses, leftovers=len(problems), after_next_up=left)
    assert not problems and not left, "\n".join(problems) + (f"\nafter the next up: {left}" if left else "")
