"""`--version` of minimesh and minimesh-proxy (from the package metadata), and the bash
completion script `minimesh completion bash` makes (what ./minimesh installs in
/etc/bash_completion.d/minimesh), exercised in a real bash."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=60)


def test_versions_come_from_package_metadata():
    v = version("minimesh")
    assert run("-m", "testbed", "--version").stdout.strip() == f"minimesh {v}"
    assert run("-m", "proxy", "--version").stdout.strip() == f"minimesh-proxy version: {v}"


def complete(script: Path, line: str) -> list[str]:
    """COMPREPLY of the generated completion function for ``line`` (cursor at its end)."""
    words = line.split(" ")
    prog = f"""
source {script}
COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}
COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}
_shtab_minimesh
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, timeout=30)
    return sorted(w for w in out.stdout.split() if w)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_of_subcommands_and_options(tmp_path):
    r = run("-m", "testbed", "completion", "bash")
    assert r.returncode == 0, r.stderr
    script = tmp_path / "minimesh"
    script.write_text(r.stdout)
    assert "complete -o bashdefault -F _shtab_minimesh minimesh" in r.stdout
    assert complete(script, "minimesh link-") == ["link-down", "link-set", "link-show", "link-up"]
    assert complete(script, "minimesh p") == ["partition", "pause", "proxy-config", "proxy-status", "ps"]
    assert "--link-backend" in complete(script, "minimesh up --")
    assert complete(script, "minimesh ps -o ") == ["json", "table"]
    assert "--version" in complete(script, "minimesh --")


def test_bootstrap_installs_the_completion():
    text = (REPO / "minimesh").read_text()
    assert 'minimesh" completion bash > "$COMPLETION_DIR/minimesh.tmp"' in text
    assert "COMPLETION_DIR=${MINIMESH_COMPLETION_DIR:-/etc/bash_completion.d}" in text
    assert "install_completion\n" in text
    assert "shtab" in (REPO / "pyproject.toml").read_text()
