"""`sudo python3 experiments/X.py` (issue 15, point 5): with the README's setup done the
script re-execs under the checkout's virtualenv; without it the error names the README's
command and this checkout, not a scratch path."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PY = "/usr/bin/python3"
SCRIPT = "import _bootstrap  # noqa\nimport sys, pyroute2, aiohttp\nprint('ran under', sys.executable)\n"

pytestmark = pytest.mark.skipif(not Path(SYSTEM_PY).exists(), reason="needs Debian's python3")


def _checkout(tmp: Path) -> Path:
    (tmp / "experiments").mkdir()
    shutil.copy(REPO / "experiments" / "_bootstrap.py", tmp / "experiments")
    (tmp / "experiments" / "lab.py").write_text(SCRIPT)
    return tmp


def _run(root: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin"}          # what sudo leaves: no MINIMESH_PYTHON, no PYTHONPATH
    return subprocess.run([SYSTEM_PY, "experiments/lab.py"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=60)


def test_without_the_setup_the_error_names_the_readme_command(tmp_path):
    root = _checkout(tmp_path)
    r = _run(root)
    if r.returncode == 0:
        pytest.skip("Debian's python3 here has every dependency: no re-exec needed")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "sudo ./minimesh demo" in r.stderr and f"cd {root}" in r.stderr, r.stderr
    assert "sudo python3 experiments/lab.py" in r.stderr and "setup script" not in r.stderr
    readme = (REPO / "README.md").read_text()
    assert "sudo ./minimesh demo" in readme and "sudo ./minimesh test" in readme   # the command it names exists


def test_after_the_setup_the_checkouts_venv_runs_it(tmp_path):
    root = _checkout(tmp_path)
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests do not run in a virtualenv")
    os.symlink(sys.prefix, root / ".venv")     # the venv `./minimesh demo` creates (here: this one)
    r = _run(root)
    assert r.returncode == 0, r.stderr
    assert f"ran under {root / '.venv' / 'bin' / 'python'}" in r.stdout
