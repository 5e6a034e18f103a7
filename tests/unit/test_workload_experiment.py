"""The experiment runner's command line and `minimesh run` (no root needed)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cli.app import build_parser
from testbed.cli.run import script_argv

REPO = Path(__file__).resolve().parents[2]


def test_run_is_a_subcommand_and_passes_options_through():
    args = build_parser().parse_args(["run", "experiments/link_delay.py", "--out", "x", "--quick"])
    assert args.script == "experiments/link_delay.py" and args.args == ["--out", "x", "--quick"]


def test_script_argv_uses_this_interpreter_and_names_the_choices(monkeypatch):
    monkeypatch.chdir(REPO)
    assert script_argv("experiments/link_delay.py", ["--quick"]) == [sys.executable, "experiments/link_delay.py",
                                                                    "--quick"]
    with pytest.raises(ValueError, match="link_delay.py"):
        script_argv("experiments/nope.py", [])
    with pytest.raises(ValueError, match="not a .py"):
        script_argv("README.md", [])


ALL = ["link_delay", "etcd_leader_latency", "registry_split_brain", "canary", "header_routing",
       "crash_failover", "control_plane_partition"]


@pytest.mark.parametrize("name", ALL)
def test_experiment_help_lists_the_shared_options(name):
    r = subprocess.run([sys.executable, f"experiments/{name}.py", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for opt in ("--out", "--seed", "--quick", "--capture", "--no-capture", "--link-backend"):
        assert opt in r.stdout


@pytest.mark.parametrize("name", ALL)
def test_every_experiment_has_a_lab_page(name):
    page = (REPO / "docs" / "labs" / f"{name}.md").read_text()
    for section in ("## The tutorial passage", "## Run", "## What to look at", "## Expected observations",
                    "## Questions"):
        assert section in page, f"{name}.md lacks {section!r}"
