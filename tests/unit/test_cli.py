"""CLI parsing without root: argparse subcommands, topology errors (exit 2, file:line),
link command arguments, hyphenated Mininet CLI commands, signals -> Terminated."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from testbed.cli.app import build_parser, main
from testbed.cli.subcommand import Subcommand
from testbed.net.lifecycle import Terminated, teardown_signals
from testbed.shape import ShapeError, parse_direction
from testbed.cli.shell import LinkSetArgs, parse_drop, parse_link_set, parse_pair, parse_restore
from testbed.cli.shell_commands import CLIUsageError

REPO = Path(__file__).resolve().parents[2]


# --- link-set and friends -----------------------------------------------------------------

@pytest.mark.parametrize("line, expected", [
    ("h1 s1 delay=50ms", LinkSetArgs("h1", "s1", {"delay": "50ms"})),
    ("h1 s1 delay=50ms loss=1%", LinkSetArgs("h1", "s1", {"delay": "50ms", "loss": "1%"})),
    ("h1 s1 bw=10Mbit dir=h1->s1", LinkSetArgs("h1", "s1", {"bw": "10Mbit"}, "h1->s1")),
    ("  h1   s1  queue=100  ", LinkSetArgs("h1", "s1", {"queue": "100"})),
    ("h1 s1 dir=s1->h1 jitter=1ms delay=5ms", LinkSetArgs("h1", "s1", {"jitter": "1ms", "delay": "5ms"}, "s1->h1")),
])
def test_parse_link_set(line, expected):
    assert parse_link_set(line) == expected


@pytest.mark.parametrize("line, message", [
    ("", "usage: link-set"),
    ("h1 s1", "usage: link-set"),
    ("h1 delay=5ms", "usage: link-set"),
    ("h1 s1 delay", "expected PARAM=VALUE"),
    ("h1 s1 delay=", "expected PARAM=VALUE"),
    ("h1 s1 =5ms", "expected PARAM=VALUE"),
    ("h1 s1 delay=1ms delay=2ms", "delay given twice"),
    ("h1 s1 dir=h1->s1 dir=s1->h1 delay=1ms", "dir given twice"),
    ("h1 s1 dir=h1->s1", "no link parameter given"),
])
def test_parse_link_set_errors(line, message):
    with pytest.raises(CLIUsageError, match=message):
        parse_link_set(line)


def test_parse_drop_restore_pair():
    assert parse_drop("h1 h2") == ("h1", "h2", False)
    assert parse_drop("h1 h2 oneway") == ("h1", "h2", True)
    for bad in ("h1", "h1 h2 twoway", "h1 h2 oneway x"):
        with pytest.raises(CLIUsageError, match="usage: drop"):
            parse_drop(bad)
    assert parse_restore("") == (None, None)
    assert parse_restore("h1") == ("h1", None)
    assert parse_restore("h1 h2") == ("h1", "h2")
    with pytest.raises(CLIUsageError):
        parse_restore("h1 h2 h3")
    assert parse_pair("h1 s1", "link-down") == ("h1", "s1")
    with pytest.raises(CLIUsageError, match="usage: link-up"):
        parse_pair("h1", "link-up")


def test_parse_direction():
    assert parse_direction("h1->s1", "h1", "s1") is True
    assert parse_direction("s1 -> h1", "h1", "s1") is False
    for bad in ("h1->h2", "h1<-s1", "h1", "h1->s1->h1"):
        with pytest.raises(ShapeError, match="use h1->s1 or s1->h1"):
            parse_direction(bad, "h1", "s1")


# --- the Mininet CLI subclass, driven through a pipe with a recording testbed --------------

class RecordingTestbed:
    """Stands in for testbed.net.network.Testbed: records the primitives the CLI calls."""

    def __init__(self):
        from testbed.shape import LinkShape
        self.net: dict = {}        # no nodes: Mininet's CLI only looks names up in it
        self.calls: list[tuple] = []
        self.host_names = ["h1", "h2", "h3"]
        self.control = types.SimpleNamespace(links=lambda: [], drops=lambda: [],
                                             shapes=lambda a, b: (LinkShape(), LinkShape()))

    def set_link(self, a, b, direction=None, **params):
        from testbed.shape import parse_params
        self.calls.append(("set_link", a, b, direction, params))
        shape = parse_params(params)
        return shape, shape

    def link_down(self, a, b):
        self.calls.append(("down", a, b))

    def link_up(self, a, b):
        self.calls.append(("up", a, b))

    def drop(self, a, b, oneway=False):
        self.calls.append(("drop", a, b, oneway))

    def restore(self, a=None, b=None):
        self.calls.append(("restore", a, b))
        return 0


def run_cli(commands: str):
    from testbed.cli.shell import TestbedCLI
    r, w = os.pipe()
    os.write(w, commands.encode())
    os.close(w)
    tb = RecordingTestbed()
    out = io.StringIO()
    with os.fdopen(r) as stdin:
        cli = TestbedCLI(tb, stdin=stdin, stdout=out)
    return tb, cli, out.getvalue()


def test_hyphenated_commands_dispatch():
    tb, cli, _ = run_cli("link-set h1 s1 delay=5ms loss=1% dir=h1->s1\n"
                         "link-down h1 s1\nlink-up h1 s1\n"
                         "drop h1 h2 oneway\ndrop h1 h3\nrestore h1\nrestore\n"
                         "link-show\n")
    # every command is a fault op of the session's Nemesis (testbed.cli.faults), in one-way
    # steps; `restore` reverts whole drops; the link change is reverted at exit (healed)
    identity = {"delay": 0.0, "jitter": 0.0, "loss": 0.0, "loss_correlation": 0.0, "duplicate": 0.0,
                "reorder": 0.0, "corrupt": 0.0, "bw": None, "queue": 1000}
    assert tb.calls == [
        ("set_link", "h1", "s1", "h1->s1", {"delay": "5ms", "loss": "1%"}),
        ("down", "h1", "s1"), ("up", "h1", "s1"),
        ("drop", "h1", "h2", True), ("drop", "h1", "h3", True), ("drop", "h3", "h1", True),
        ("restore", "h1", "h3"), ("restore", "h3", "h1"), ("restore", "h1", "h2"),
        ("set_link", "h1", "s1", "h1->s1", identity),
    ]
    assert cli.errors == 0


def test_cli_errors_are_counted_not_fatal():
    tb, cli, _ = run_cli("link-set h1 s1 delay=fast\nlink-set h1\ndrop h1\nlink-set h1 s1 delay=1ms\n")
    assert cli.errors == 3                     # delay=fast: the LinkChange fault refuses it
    assert tb.calls[0] == ("set_link", "h1", "s1", None, {"delay": "1ms"})
    assert [c[3] for c in tb.calls[1:]] == ["h1->s1", "s1->h1"]     # reverted at exit, per direction


def test_eof_ends_the_cli_and_comments_are_ignored():
    tb, cli, _ = run_cli("# just a comment\n\nlink-down h1 s1  # trailing\n")
    assert tb.calls == [("down", "h1", "s1"), ("up", "h1", "s1")]      # healed at exit


def test_help_lists_hyphenated_names_only():
    _, _, out = run_cli("help\nhelp link-set\n")
    assert "link-set" in out and "link-show" in out and "link-down" in out
    assert "link_set" not in out
    assert "Change link parameters live" in out


# --- argparse, exit status, registry -------------------------------------------------------

def test_subcommands_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"up", "clean", "doctor", "demo"} <= set(sub.choices)


def test_registry_accepts_new_modules(monkeypatch):
    mod = types.ModuleType("mm_fake_cmds")
    mod.SUBCOMMANDS = [Subcommand("hello", "say hello", lambda p: p.add_argument("--n", type=int),
                                  lambda args: 7 + args.n)]
    monkeypatch.setitem(sys.modules, "mm_fake_cmds", mod)
    args = build_parser(["mm_fake_cmds"]).parse_args(["hello", "--n", "2"])
    assert args._run(args) == 9


def test_bad_backend_is_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["up", "t.yaml", "--link-backend", "turbo"])
    assert e.value.code == 2
    assert "invalid choice: 'turbo'" in capsys.readouterr().err


@pytest.mark.parametrize("yaml_text, line, words", [
    ("name: t\nhosts:\n  h1: {}\nlinks:\n  - between: [h1, nowhere]\n", 5, "unknown node"),
    ("name: t\nhosts:\n  h1: {}\n  h2: {}\nlinks:\n  - between: [h1, h2]\n    delay: 5 lightyears\n", 7, "delay"),
    ("name: t\nhosts:\n  h1: {colour: red}\n", 3, "colour"),
    ("name: t\nhosts:\n  h1: {}\n  h2: {}\nlinks:\n  - between: [h1, h2]\n    loss: 150%\n", 7, "loss"),
])
def test_topology_errors_exit_2_with_file_line(tmp_path, capsys, yaml_text, line, words):
    f = tmp_path / "t.yaml"
    f.write_text(yaml_text)
    assert main(["up", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{f}:{line}: "), err
    assert words in err


def test_missing_topology_file_exits_2(capsys):
    assert main(["up", "/nonexistent/t.yaml"]) == 2
    assert capsys.readouterr().err.startswith("/nonexistent/t.yaml: ")


def test_python_m_testbed_is_minimesh(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("name: t\nhosts:\n  h1: {ip: 10.0.0.300/8}\n")
    p = subprocess.run([sys.executable, "-m", "testbed", "up", str(f)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.startswith(f"{f}:3: ") and p.stdout == ""
    assert "Traceback" not in p.stderr


# --- signals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_raise_terminated_then_quiet(sig):
    old = signal.getsignal(sig)
    with teardown_signals(sigint=True) as guard:
        with pytest.raises(Terminated) as e:
            os.kill(os.getpid(), sig)
            time.sleep(1)
        assert e.value.exit_status == 128 + sig
        assert isinstance(e.value, SystemExit)  # passes through Mininet's log handler
        guard.quiet()
        os.kill(os.getpid(), sig)               # held during teardown, remembered
        assert guard.settle() == sig
    assert signal.getsignal(sig) in (old, signal.default_int_handler)


def test_interactive_keeps_mininet_ctrl_c():
    before = signal.getsignal(signal.SIGINT)
    with teardown_signals(sigint=False):
        assert signal.getsignal(signal.SIGINT) is before  # Mininet's CLI handles Ctrl-C


def test_forked_child_dies_by_signal_instead_of_raising():
    """pyroute2 forks helpers and stops them with SIGTERM; a child that inherited the
    handler must die, not unwind the parent's copied stack (and tear down its network)."""
    with teardown_signals(sigint=True):
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(2)
                os._exit(3)   # the signal was ignored
            except BaseException:
                os._exit(4)   # the handler raised in the child
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status


def test_command_from_another_thread_runs_through_the_shell():
    """TestbedCLI.command (the live page's actions): the shell's own dispatch, its output
    and errors returned, node commands included in nothing, errors not counted in the
    session's status; on_ready runs before the first typed command and its stop at the end."""
    import threading
    from testbed.cli.shell import TestbedCLI
    results, order = {}, []

    def on_ready(cli):
        def act():
            results["ok"] = cli.command("link-set h1 s1 delay=7ms")
            results["bad"] = cli.command("link-set h1")
        t = threading.Thread(target=act)
        t.start()
        t.join()
        order.append("ready")
        return lambda: order.append("stopped")
    r, w = os.pipe()
    os.write(w, b"link-down h1 s1\n")
    os.close(w)
    tb = RecordingTestbed()
    with os.fdopen(r) as stdin:
        cli = TestbedCLI(tb, stdin=stdin, stdout=io.StringIO(), on_ready=on_ready)
    ok, text = results["ok"]
    assert ok and "delay=7ms" in text
    bad_ok, bad_text = results["bad"]
    assert not bad_ok and bad_text.startswith("*** usage: link-set NODE1 NODE2"), bad_text
    assert cli.errors == 0
    assert tb.calls[0] == ("set_link", "h1", "s1", None, {"delay": "7ms"})
    assert ("down", "h1", "s1") in tb.calls
    assert order == ["ready", "stopped"]


def test_sigint_during_end_of_input_teardown_exits_130(monkeypatch, capsys):
    """Issue 14, point 8: the body ended normally (end of input), Ctrl-C arrives while the
    network is torn down: teardown still completes, and the status is 130, not 0."""
    import testbed.net.lifecycle as lifecycle
    import testbed.net.network as network
    stopped = []

    class FakeTestbed:
        def __init__(self, *a, **k):
            pass

        def start(self):
            return self

        def stop(self):
            os.kill(os.getpid(), signal.SIGINT)       # Ctrl-C in the middle of teardown
            time.sleep(0.05)
            stopped.append(True)                       # ... which still runs to its end
            return []

    monkeypatch.setattr(network, "Testbed", FakeTestbed)
    monkeypatch.setattr(lifecycle, "clean_stale_report", lambda: 0)
    status = lifecycle.run_testbed("up", None, "fake", lambda tb: 0)
    assert status == 130 and stopped == [True]
    assert "SIGINT during teardown" in capsys.readouterr().err
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, [])    # nothing left blocked
    assert lifecycle.run_testbed("up", None, "fake", lambda tb: 0) == 130   # and again
