"""The cleanup journal: record before create, replay after a crash (no root needed)."""
import json
import os
import subprocess
import sys

from testbed import journal as J


def test_record_update_forget_and_cleanup(tmp_path):
    j = J.Journal(tmp_path)
    victim = tmp_path / "sock"
    victim.write_text("x")
    kept = j.record("path", path=str(victim))
    gone = j.record("path", path=str(tmp_path / "never-made"))
    j.forget(gone)
    assert [e["id"] for e in j.outstanding()] == [kept]
    assert j.cleanup() == []
    assert not victim.exists()
    assert not j.path.exists()


def test_stale_journal_of_dead_runner_is_replayed(tmp_path):
    victim = tmp_path / "left-behind"
    victim.write_text("x")
    # a child process journals a file and a sleeping process, then dies without cleaning up
    code = f"""
import subprocess, os
from testbed.journal import Journal
j = Journal({str(tmp_path)!r})
j.record("path", path={str(victim)!r})
p = subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
j.record_process(p.pid, "sleeper")
print(p.pid, flush=True)
os._exit(0)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    sleeper = int(out.stdout.split()[0])
    assert J.proc_alive(sleeper, None)
    stale = J.stale_journals(tmp_path)
    assert len(stale) == 1
    removed, errors = J.clean_stale(tmp_path)
    assert (removed, errors) == (2, [])
    assert not victim.exists()
    assert not J.proc_alive(sleeper, None)  # gone, or a zombie waiting for init to reap it
    assert J.stale_journals(tmp_path) == []


def test_live_runner_journal_is_not_stale(tmp_path):
    j = J.Journal(tmp_path)
    j.record("path", path=str(tmp_path / "x"))
    assert J.stale_journals(tmp_path) == []
    j.cleanup()


def test_torn_last_line_is_tolerated(tmp_path):
    p = tmp_path / "1-1.jsonl"
    p.write_text(json.dumps({"op": "runner", "pid": 999999999, "start": 1}) + "\n"
                 + json.dumps({"op": "add", "id": 1, "kind": "path", "path": str(tmp_path / "y")}) + "\n"
                 + '{"op": "add", "id": 2, "ki')
    runner, entries = J.read_journal(p)
    assert runner["pid"] == 999999999
    assert list(entries) == [1]


def test_pid_reuse_guard():
    me = os.getpid()
    assert J.proc_alive(me, J.proc_start(me))
    assert not J.proc_alive(me, (J.proc_start(me) or 0) + 12345)


def test_journal_file_goes_when_nothing_is_outstanding(tmp_path):
    """Issue 14, point 2: a clean stop through Mininet's API forgets every entry (links
    forget theirs in Link.stop()); the journal file must not stay for `clean` to count
    as a crashed run."""
    j = J.Journal(tmp_path)
    assert not j.path.exists()                   # nothing recorded yet: no file
    a = j.record("link", name="x-eth0", netns=None)
    b = j.record("process", pid=None, what="emulator")
    assert j.path.exists()
    j.forget(a)
    assert j.path.exists()
    j.forget(b)
    assert not j.path.exists() and J.stale_journals(tmp_path) == []
    c = j.record("path", path=str(tmp_path / "later"))      # used again: the file comes back
    runner, entries = J.read_journal(j.path)
    assert runner["pid"] == os.getpid() and list(entries) == [c]
    assert j.cleanup() == [] and not j.path.exists()


def test_run_directory_is_removed_by_clean(tmp_path):
    """Issue 14, point 1: a mesh run directory (etcd data, logs, sockets) is a journaled
    `dir`, so `clean` removes it after a SIGKILL."""
    run = tmp_path / "mesh-abcd"
    code = f"""
import os, pathlib
from testbed.journal import Journal
j = Journal({str(tmp_path / 'state')!r})
j.record("dir", path={str(run)!r})
(pathlib.Path({str(run)!r}) / "etcd" / "member" / "wal").mkdir(parents=True)
(pathlib.Path({str(run)!r}) / "etcd" / "member" / "wal" / "0.wal").write_bytes(b"x" * 4096)
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert (run / "etcd").is_dir()
    assert J.clean_stale(tmp_path / "state") == (1, [])
    assert not run.exists() and J.stale_journals(tmp_path / "state") == []


def test_dir_remover_refuses_root_and_relative_paths():
    for bad in ("/", "relative/dir"):
        try:
            J.REMOVERS["dir"]({"kind": "dir", "path": bad})
        except ValueError:
            continue
        raise AssertionError(f"removed {bad!r}")


def test_journal_for_another_runner_is_stale_when_that_runner_dies(tmp_path):
    # minimesh's vconfig records a VLAN process for the Mininet process that runs the host
    runner = subprocess.Popen(["sleep", "60"])
    try:
        j = J.Journal(tmp_path, runner=runner.pid)
        j.record("path", path=str(tmp_path / "x"))
        j.close(delete=False)
        assert J.stale_journals(tmp_path) == []          # this process lives on, but it is not the runner
    finally:
        runner.kill()
        runner.wait()
    assert J.stale_journals(tmp_path) == [j.path]


def test_clean_tolerates_a_journal_its_process_removed_meanwhile(tmp_path, monkeypatch):
    j = J.Journal(tmp_path, runner=2 ** 22 + 1)            # no such process
    j.record("path", path=str(tmp_path / "x"))
    j.close(delete=False)
    # the killed process's own exit path removes its journal while clean runs
    monkeypatch.setitem(J.REMOVERS, "path", lambda e: j.path.unlink())
    assert J.clean_stale(tmp_path) == (1, [])


def test_ovs_dir_remover_ends_control_socket_holders_only(tmp_path):
    d = tmp_path / "ovs-1-2"
    d.mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        (d / f"sleep.{holder.pid}.ctl").write_text("")            # NAME.PID.ctl, NAME matches: ended
        (d / f"ovs-vswitchd.{other.pid}.ctl").write_text("")      # pid is not that program: left alone
        (d / "ovsdb-server.ctl").write_text("")
        J.REMOVERS["ovs_dir"]({"path": str(d)})
        holder.wait(timeout=5)
        assert not d.exists()
        assert other.poll() is None
    finally:
        for p in (holder, other):
            p.kill()
            p.wait()
