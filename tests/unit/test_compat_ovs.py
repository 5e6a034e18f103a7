"""testbed.compat.ovs (no root): when a private Open vSwitch can run, and that stopping it
leaves nothing (its daemons, its directory, its journal). Starting one needs root: see
tests/integration/test_mininet_compat.py (mn on it, and `minimesh clean` after a SIGKILL)."""
import json
import os
import subprocess

from testbed.compat import ovs
from testbed.journal import proc_alive, proc_start


def test_not_available_without_open_vswitch(monkeypatch):
    monkeypatch.setattr(ovs.shutil, "which", lambda name: None if name == "ovs-vswitchd" else f"/usr/bin/{name}")
    ok, why = ovs.available()
    assert not ok and "ovs-vswitchd missing" in why and "apt-get install openvswitch-switch" in why


def test_stop_ends_the_daemons_and_removes_directory_and_journal(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMESH_STATE_DIR", str(tmp_path))
    d = tmp_path / "ovs-4242"
    d.mkdir()
    (d / "conf.db").write_text("x")
    journal = tmp_path / "4242-1.jsonl"
    journal.write_text("{}\n")
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    info = {"owner": 4242, "dir": str(d), "journal": str(journal),
            "pids": [[p.pid, proc_start(p.pid)] for p in procs]}
    ovs.stop(json.loads(json.dumps(info)))
    for p in procs:
        p.wait(timeout=5)
        assert not proc_alive(p.pid, None)
    assert not d.exists() and not journal.exists()


def test_stop_never_removes_a_directory_outside_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMESH_STATE_DIR", str(tmp_path / "state"))
    other = tmp_path / "ovs-1"
    other.mkdir()
    ovs.stop({"dir": str(other), "pids": []})
    assert other.exists()


def test_stop_at_exit_only_in_the_process_that_started_it(monkeypatch):
    registered = []
    monkeypatch.setattr("atexit.register", lambda fn, *a: registered.append(a))
    monkeypatch.setenv(ovs.ENV, json.dumps({"owner": os.getpid() + 1, "pids": []}))
    ovs.stop_at_exit()
    assert registered == []
    monkeypatch.setenv(ovs.ENV, json.dumps({"owner": os.getpid(), "pids": []}))
    ovs.stop_at_exit()
    assert registered == [({"owner": os.getpid(), "pids": []},)]
