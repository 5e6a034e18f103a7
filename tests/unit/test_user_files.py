"""Files written under sudo belong to the invoking user and are readable
(testbed.paths.hand_over, used by results, plots, captures, histories, up --out)."""
from __future__ import annotations

import os
import stat

import pytest

import testbed.paths as paths
from testbed.history import History
from testbed.paths import hand_over, hand_over_tree, sudo_owner, user_dir
from testbed.run.results import write_results


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def as_root_under_sudo(monkeypatch):
    """euid 0 with SUDO_UID/SUDO_GID set; chown recorded instead of done."""
    calls: list[tuple[str, int, int]] = []
    monkeypatch.setenv("SUDO_UID", "1234")
    monkeypatch.setenv("SUDO_GID", "2345")
    monkeypatch.setattr(paths.os, "geteuid", lambda: 0)
    monkeypatch.setattr(paths.os, "chown", lambda p, u, g: calls.append((os.path.basename(p), u, g)))
    return calls


def test_sudo_owner():
    assert sudo_owner({"SUDO_UID": "1000", "SUDO_GID": "1000"}) == (1000, 1000)
    assert sudo_owner({}) is None
    assert sudo_owner({"SUDO_UID": "0", "SUDO_GID": "0"}) is None      # root's own sudo: nothing to give
    assert sudo_owner({"SUDO_UID": "x", "SUDO_GID": "1"}) is None


def test_results_json_is_readable_and_the_users(tmp_path, as_root_under_sudo):
    out = tmp_path / "a" / "b"
    path = write_results(out, "exp", 1, {}, {"x": 1}, {})
    assert mode(path) == 0o644                     # mkstemp's 0600 no more
    assert mode(out) == 0o755 and mode(tmp_path / "a") == 0o755
    assert ("results.json", 1234, 2345) in as_root_under_sudo
    assert ("b", 1234, 2345) in as_root_under_sudo and ("a", 1234, 2345) in as_root_under_sudo


def test_history_file_handed_over(tmp_path, as_root_under_sudo):
    with History(tmp_path / "history.jsonl") as h:
        h.event("t", "start", t=0.0)
    assert mode(tmp_path / "history.jsonl") == 0o644
    assert ("history.jsonl", 1234, 2345) in as_root_under_sudo


def test_tree_keeps_exec_bits_skips_symlinks(tmp_path, as_root_under_sudo):
    d = tmp_path / "cap"
    d.mkdir(mode=0o700)
    (d / "x.pcapng").write_bytes(b"")
    os.chmod(d / "x.pcapng", 0o600)
    (d / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(d / "run.sh", 0o700)
    os.symlink("/etc/passwd", d / "link")
    hand_over_tree(d)
    assert (mode(d), mode(d / "x.pcapng"), mode(d / "run.sh")) == (0o755, 0o644, 0o755)
    assert {c[0] for c in as_root_under_sudo} == {"cap", "x.pcapng", "run.sh"}


def test_without_sudo_only_the_mode_changes(tmp_path, monkeypatch):
    monkeypatch.delenv("SUDO_UID", raising=False)
    monkeypatch.setattr(paths.os, "chown", lambda *a: pytest.fail("chown without sudo"))
    f = tmp_path / "f"
    f.write_text("x")
    os.chmod(f, 0o600)
    hand_over(f)
    assert mode(f) == 0o644
    assert hand_over(tmp_path / "missing") == tmp_path / "missing"
    assert user_dir(tmp_path / "n" / "m").is_dir()
