"""A running `minimesh up` driven from another terminal, without root: the shell (with a
recording testbed) serves its control socket; `minimesh COMMAND --run ID`, `ps` and
`exec` find it through the published file. The socket's mode, the journal entries, the
errors for a missing run or node, and that a remote command takes the typed path."""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import threading
import time

import pytest

from testbed.cli import control
from testbed.cli.app import main
from testbed.cli.control import ControlError, ControlServer, RunInfo, absolutize, exec_argv, find_run, split_run
from testbed.journal import Journal, read_journal

from test_cli import RecordingTestbed


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMESH_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def wait_for(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def drive(state, client, publish=None):
    """Run the shell (stdin: a pipe held open) with its control socket; ``client()`` runs in
    a thread once the socket is up; returns (testbed, cli, shell stdout, client's result)."""
    from testbed.cli.shell import TestbedCLI
    journal = Journal(state)
    tb = RecordingTestbed()
    r, w = os.pipe()
    result: dict = {}
    sock = state / "up" / f"{os.getpid()}.sock"

    def run_client():
        try:
            wait_for(state / "up" / f"{os.getpid()}.json")
            result["journal"] = read_journal(journal.path)[1]
            result["mode"] = stat.S_IMODE(sock.stat().st_mode), stat.S_IMODE((state / "up").stat().st_mode)
            result["value"] = client()
        except BaseException as e:       # reported by the test body
            result["error"] = e
        finally:
            os.close(w)
    t = threading.Thread(target=run_client)
    t.start()
    out = io.StringIO()
    with os.fdopen(r) as stdin:
        cli = TestbedCLI(tb, stdin=stdin, stdout=out,
                         control=lambda c: ControlServer(journal, c.remote, publish or {"topology": "t",
                                                         "hosts": {"h1": os.getpid()}, "switches": ["s1"]}))
    t.join()
    if "error" in result:
        raise result["error"]
    assert not sock.exists() and not (state / "up" / f"{os.getpid()}.json").exists()   # removed at exit
    assert journal.outstanding() == []
    journal.close()
    return tb, cli, out.getvalue(), result


def test_remote_commands_take_the_shell_path(state, capsys):
    def client():
        codes = [main(["link-set", "h1", "s1", "delay=5ms", "--run", str(os.getpid())]),
                 main(["drop", "h1", "h2", "oneway"]),
                 main(["faults"]),
                 main(["link-set", "h1"]),              # usage error: status 1, the session's count unchanged
                 main(["heal"])]
        return codes, capsys.readouterr()
    tb, cli, shell_out, result = drive(state, client)
    codes, (out, err) = result["value"]
    assert codes == [0, 0, 0, 1, 0]
    assert ("set_link", "h1", "s1", None, {"delay": "5ms"}) in tb.calls
    assert ("drop", "h1", "h2", True) in tb.calls
    assert "#0: link h1-s1 delay=5ms" in out
    assert "#1: cut h1->h2  (dropping h1 -> h2; restore or heal lifts it)" in out
    assert "usage: link-set" in err
    assert "healed #1" in out and "healed #0" in out
    assert cli.errors == 0                                 # a remote failure is the caller's
    assert result["mode"] == (0o600, 0o700)
    kinds = sorted(e["path"].rsplit("/", 1)[1] for e in result["journal"].values() if e["kind"] == "path")
    assert kinds == [f"{os.getpid()}.json", f"{os.getpid()}.sock"]      # journaled before creation


def test_remote_refuses_exit_and_node_commands(state):
    def client():
        run = find_run(None)
        return [control.send_line(run, line) for line in ("exit", "h1 ls", "nonsense x", "faults")]
    _, _, _, result = drive(state, client)
    exit_, node, nonsense, faults = result["value"]
    assert exit_["status"] == 2 and "not a command this shell takes" in exit_["stderr"]
    assert node["status"] == 2 and nonsense["status"] == 2
    assert faults["status"] == 0 and "no outstanding faults" in faults["stdout"]


def test_link_show_json_remote(state):
    def client():
        return control.send_line(find_run(None), "link-show -o json")
    _, _, _, result = drive(state, client)
    assert result["value"]["status"] == 0
    assert json.loads(result["value"]["stdout"]) == {"links": [], "drops": []}


def test_ps_lists_the_run_and_json(state, capsys):
    def client():
        assert main(["ps"]) == 0
        table = capsys.readouterr().out
        assert main(["ps", "-o", "json"]) == 0
        return table, json.loads(capsys.readouterr().out)
    _, _, _, result = drive(state, client, {"topology": "lab", "hosts": {"h1": 1, "h2": 2}, "switches": [],
                                            "out": "/tmp/o", "mesh": True})
    table, listing = result["value"]
    assert table.splitlines()[0].split() == ["ID", "TOPOLOGY", "HOSTS", "MESH", "UP", "OUT", "CAPTURE"]
    assert table.splitlines()[1].split()[:4] == [str(os.getpid()), "lab", "2", "yes"]
    assert listing[0]["id"] == os.getpid() and listing[0]["hosts"] == {"h1": 1, "h2": 2}
    assert listing[0]["out"] == "/tmp/o" and listing[0]["capture"] is None


@pytest.fixture
def other_pid():
    """A second live process (not the parent: under nohup that may be init, pid 1, which the
    test below asks for as a missing ID)."""
    other = subprocess.Popen(["sleep", "60"])
    yield other.pid
    other.kill()
    other.wait()


def test_no_run_missing_run_and_ambiguous(state, capsys, tmp_path, other_pid):
    assert main(["heal"]) == 1
    assert "no running testbed; start one with: sudo minimesh up" in capsys.readouterr().err
    d = state / "up"
    d.mkdir(parents=True)
    from testbed.journal import proc_start
    for pid in (os.getpid(), other_pid):
        (d / f"{pid}.json").write_text(json.dumps({"pid": pid, "start": proc_start(pid), "topology": f"t{pid}",
                                                   "socket": str(d / f"{pid}.sock"), "started": time.time()}))
    assert main(["heal"]) == 2
    assert "several testbeds are running; choose one with --run ID" in capsys.readouterr().err
    assert main(["heal", "--run", "1"]) == 1
    assert "no running testbed with ID 1; running:" in capsys.readouterr().err
    assert main(["exec", "--run", "1", "h1", "true"]) == 1
    (d / "99999999.json").write_text(json.dumps({"pid": 99999999, "socket": "x"}))   # a dead run: not listed
    assert sorted(r.pid for r in control.running_ups()) == sorted([os.getpid(), other_pid])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_not_root_is_told_to_use_sudo(state, capsys):
    (state / "up").mkdir(parents=True)
    os.chmod(state / "up", 0o700)
    os.chmod(state / "up", 0o000)
    try:
        assert main(["faults"]) == 1
        assert "the running testbeds are root's; run with sudo" in capsys.readouterr().err
        assert main(["ps"]) == 1
    finally:
        os.chmod(state / "up", 0o700)


def test_exec_argv_and_errors():
    run = RunInfo(1, "t", "/x.sock", 0.0, {"h1": os.getpid(), "h2": 1}, ["s1"], ips={"h1": "10.0.0.1",
                                                                                        "h2": "10.0.0.2"})
    assert exec_argv(run, "h1", ["curl", "-s", "x"]) == ["nsenter", "-t", str(os.getpid()), "-n", "-m", "--",
                                                          "curl", "-s", "x"]
    # host names become IPs, as in Mininet's CLI (h1 ping h2)
    assert exec_argv(run, "h1", ["ping", "-c1", "h2"])[-3:] == ["ping", "-c1", "10.0.0.2"]
    with pytest.raises(ControlError, match="has no host 'h9'; hosts: h1, h2"):
        exec_argv(run, "h9", ["true"])
    with pytest.raises(ControlError, match="s1 is a switch"):
        exec_argv(run, "s1", ["true"])
    with pytest.raises(ControlError, match="usage: minimesh exec"):
        exec_argv(run, "h1", [])


def test_split_run_and_absolutize(tmp_path):
    assert split_run(["-f", "a.yaml", "--run", "12"]) == (12, ["-f", "a.yaml"])
    assert split_run(["--run=7", "x"]) == (7, ["x"])
    with pytest.raises(ControlError, match="expected a testbed ID"):
        split_run(["--run", "abc"])
    (tmp_path / "r.yaml").write_text("x")
    assert absolutize(["-f", "r.yaml", "h1", "delay=5ms"], str(tmp_path)) == \
        ["-f", str(tmp_path / "r.yaml"), "h1", "delay=5ms"]


def test_forwarded_help_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["link-set", "--help"])
    assert e.value.code == 0 and "--run ID" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("minimesh ")


def test_a_command_typed_at_the_prompt_may_call_back_without_deadlock(state):
    """`sh minimesh apply ... --run ID` typed at the up prompt (the bookinfo test does it): the
    prompt's command waits for the child, so the child's remote command must not wait for the
    prompt; it runs at once as a nested command (the child descends from the up process)."""
    import sys
    from testbed.cli.shell import TestbedCLI
    from testbed.paths import REPO
    journal = Journal(state)
    tb = RecordingTestbed()
    line = (f"sh timeout 20 env PYTHONPATH={REPO} {sys.executable} -m testbed link-set h1 s1 delay=9ms "
            f"--run {os.getpid()}\n")
    out = io.StringIO()
    started = time.monotonic()
    r, w = os.pipe()
    os.write(w, line.encode())
    os.close(w)
    with os.fdopen(r) as stdin:
        cli = TestbedCLI(tb, stdin=stdin, stdout=out,
                         control=lambda c: ControlServer(journal, c.remote, {"topology": "t", "switches": ["s1"],
                                                                            "hosts": {"h1": os.getpid()}}))
    assert time.monotonic() - started < 20, "the nested command waited for the prompt"
    assert ("set_link", "h1", "s1", None, {"delay": "9ms"}) in tb.calls
    assert cli.errors == 0
    journal.close()


def test_descends_from_follows_parent_links():
    import subprocess
    child = subprocess.Popen(["sleep", "5"])
    try:
        assert control.descends_from(child.pid, os.getpid())
        assert control.descends_from(os.getpid(), os.getpid())
        assert not control.descends_from(os.getpid(), child.pid)
        assert not control.descends_from(1, os.getpid())
    finally:
        child.kill()
        child.wait()
