"""`minimesh lab check LAB EXERCISE FILE...` for real, as root: each exercise's solution
(docs/labs/exercises/) is graded held (exit 0), and — with MINIMESH_LAB_CHECKS=all, about
10 more minutes — each of its two wrong files (tests/configs/lab_exercises/) not held
(exit 1), with the check that failed named. Every tshark line the run printed is run again
and finds the frames it said (tests/integration/test_lab_questions.py: tshark_rows_hold)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_lab_questions import tshark_rows_hold

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
WRONG = REPO / "tests" / "configs" / "lab_exercises"
ALL = os.environ.get("MINIMESH_LAB_CHECKS") == "all"

CASES = [
    ("header_routing", "android-20", "docs/labs/exercises/android-20.yaml", None),
    ("crash_failover", "zero-errors", "docs/labs/exercises/zero-errors.yaml", None),
    ("etcd_leader_latency", "no-election", "docs/labs/exercises/no-election.yaml", None),
    ("front_proxy", "retry-flaky", "docs/labs/exercises/retry-flaky.yaml", None),
    ("header_routing", "android-20", WRONG / "android-20-everyone.yaml", "no iPhone request served by v2"),
    ("header_routing", "android-20", WRONG / "android-20-all-v2.yaml", "Android v2 share"),
    ("crash_failover", "zero-errors", WRONG / "zero-errors-no-retries.yaml", "0 client errors"),
    ("crash_failover", "zero-errors", WRONG / "zero-errors-v2-only.yaml", "experiment ran"),
    ("etcd_leader_latency", "no-election", WRONG / "no-election-jump.yaml", "no new leader elected"),
    ("etcd_leader_latency", "no-election", WRONG / "no-election-wrong-measure.yaml", "writes measured"),
    ("front_proxy", "retry-flaky", WRONG / "retry-flaky-seed.yaml", "every client request got 200"),
    ("front_proxy", "retry-flaky", WRONG / "retry-flaky-connect-failure.yaml", "every client request got 200"),
]


@pytest.mark.parametrize("lab, exercise, path, fails", CASES, ids=[f"{c[1]}-{Path(c[2]).stem}" for c in CASES])
def test_lab_check(tmp_path, lab, exercise, path, fails):
    if fails and not ALL:
        pytest.skip("wrong solutions run with MINIMESH_LAB_CHECKS=all (tests/unit/test_lab_exercises.py grades them)")
    if lab in ("etcd_leader_latency",) and shutil.which("etcd") is None:
        pytest.skip("etcd not installed")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "testbed", "lab", "check", lab, exercise, str(REPO / path),
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    res = json.loads((out / "results.json").read_text())
    failed = [n for n, v in res["verdicts"].items() if not v["valid"]]
    if fails is None:
        assert r.returncode == 0 and not failed, (failed, r.stdout[-4000:], r.stderr[-2000:])
        assert "every check held" in r.stdout and "[held]" in r.stdout and "NOT held" not in r.stdout
        tshark_rows_hold(out, res)
    else:
        assert r.returncode == 1 and any(fails in n for n in failed), (failed, r.stdout[-3000:])
        assert "[NOT held]" in r.stdout and "evidence:" in r.stdout
