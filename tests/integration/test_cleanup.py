"""Cleanup guarantee after SIGKILL of a running `minimesh up` (root only).

The runner gets no chance to clean; `minimesh clean` — and the next `up` — must remove
exactly what its journal lists: namespaces (by killing their processes), the bridge,
the link emulators, the private /etc/hosts files.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from test_net_support import (HA, HB, SW, TAG, assert_nothing_left, journal_entries, minimesh, run_minimesh,
                              snapshot, write_topology)
from test_net_cli import wait_ready

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def start_and_kill(state_dir, topo) -> list[dict]:
    """Start `up` with stdin held open, wait until it answers, SIGKILL it; return the
    journal entries it left."""
    proc = minimesh(state_dir, "up", str(topo), "--link-backend", "userspace",
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        # a daemon in a host outlives its shell: it keeps the namespace alive after SIGKILL
        daemon = f"sleep 6{TAG}"
        proc.stdin.write(f"{HA} ping -c 1 {HB}\n"
                         f"{HA} setsid nohup {daemon} >/dev/null 2>&1 &\n"
                         f"{HA} while ! pgrep -f '^{daemon}$' >/dev/null; do sleep 0.05; done; "
                         "echo daemon-is-$((6*7))\n"
                         "link-show\n")
        proc.stdin.flush()
        wait_ready(proc, "daemon-is-42")  # not in the echoed command line
        wait_ready(proc, f"{HA} -> {SW}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    time.sleep(0.3)
    return journal_entries(state_dir)


def check_killed_run_left_something(entries: list[dict]) -> set[str]:
    """The test is only meaningful if the killed run did leave things behind."""
    netns = {e["netns"] for e in entries if e["kind"] == "netns_procs"}
    assert len(netns) == 3, entries               # one per host
    assert any(e["kind"] == "bridge" and e["name"] == SW for e in entries)
    assert any(e["kind"] == "process" and "emulator" in e.get("what", "") for e in entries)
    now = snapshot()
    assert SW in now.links, "the bridge outlives a SIGKILLed runner"
    assert netns & now.netns, "the host with a daemon keeps its namespace after SIGKILL"
    return netns


def test_clean_after_sigkill_leaves_nothing(tmp_path):
    topo = write_topology(tmp_path)
    before = snapshot()
    entries = start_and_kill(tmp_path, topo)
    netns = check_killed_run_left_something(entries)

    rc, out, err = run_minimesh(tmp_path, "clean")
    assert rc == 0, err
    assert "left by 1 crashed run" in err
    assert not list(tmp_path.glob("*.jsonl")), "clean removes the journal once everything is gone"
    assert not list(tmp_path.glob("*.hosts")) and not list(tmp_path.glob("*.resolv"))
    assert_nothing_left(before, netns)

    rc, out, err = run_minimesh(tmp_path, "clean")
    assert rc == 0 and "removed 0 journaled items left by 0 crashed runs" in err


def test_next_up_cleans_a_killed_run_first(tmp_path):
    topo = write_topology(tmp_path)
    before = snapshot()
    netns = check_killed_run_left_something(start_and_kill(tmp_path, topo))
    # same names again: only works if the stale bridge and links are gone first
    rc, out, err = run_minimesh(tmp_path, "up", str(topo), "--link-backend", "userspace",
                                input=f"{HA} ping -c 2 {HB}\n")
    assert rc == 0, err
    assert "left by 1 crashed run" in err
    assert "2 received" in out
    assert not list(tmp_path.glob("*.jsonl"))
    assert_nothing_left(before, netns)
