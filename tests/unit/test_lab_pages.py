"""Lab pages true to their runs (issue 15, point 2): each page's "Recorded run" block is
generated from a stored run (docs/labs/runs/<lab>.json, by `minimesh lab record`) and must
equal what that run renders to; the README's question table names only flags the
experiments have."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.run.labpage import BEGIN, END, page_block, record, render

REPO = Path(__file__).resolve().parents[2]
RUNS = sorted((REPO / "docs" / "labs" / "runs").glob("*.json"))


@pytest.mark.parametrize("stored", RUNS, ids=[p.stem for p in RUNS])
def test_recorded_block_is_the_runs(stored):
    res = json.loads(stored.read_text())
    page = REPO / "docs" / "labs" / f"{res['experiment']}.md"
    assert page_block(page.read_text()) == render(res), f"{page}: regenerate with `minimesh lab record`"


def test_record_and_render(tmp_path):
    res = {"experiment": "canary", "seed": 1, "valid": False, "failed": ["split"],
           "params": {"quick": True, "seed": 1, "out": "/x"},
           "metrics": {"elapsed_s": 41.5, "tshark": [{"file": "c0-eth0.pcapng", "filter": "a || b", "options": [],
                                                      "frames": 7}], "big": list(range(100))},
           "verdicts": {"split": {"valid": False, "detail": "v2 served 1/2"}}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps(res))
    page = tmp_path / "canary.md"
    page.write_text("# Lab\n\ntext\n")
    stored = record(page, tmp_path / "run", tmp_path)
    text = page.read_text()
    assert text.startswith("# Lab\n\ntext\n\n" + BEGIN) and text.rstrip().endswith(END)
    assert "| split | **no** | v2 served 1/2 |" in text and "| `c0-eth0.pcapng` | `-Y a \\|\\| b` | 7 |" in text
    assert "FAILED: split" in text and "run time 41.5 s" in text
    assert "big" not in stored.read_text() and "/x" not in stored.read_text()
    record(page, tmp_path / "run", tmp_path)              # again: replaced, not appended
    assert page.read_text().count(BEGIN) == 1


def test_question_table_flags_exist():
    """Every `X.py --flag` in docs/labs/README.md's question table is a flag of experiments/X.py."""
    text = (REPO / "docs" / "labs" / "README.md").read_text()
    rows = [ln for ln in text.splitlines() if re.match(r"\| \w+ [\w ,()]+ \| `", ln)]
    assert len(rows) >= 15
    helps: dict[str, str] = {}
    for ln in rows:
        cmd = ln.split("|")[2]
        for lab, flags in re.findall(r"(\w+)\.py ([^`]*)", cmd):
            if lab not in helps:
                helps[lab] = subprocess.run([sys.executable, f"experiments/{lab}.py", "--help"], cwd=REPO,
                                            capture_output=True, text=True, check=True).stdout
            for flag in re.findall(r"--[\w-]+", flags):
                assert flag in helps[lab], f"{lab}.py has no {flag} ({ln})"
