"""The experiments checked at full length: every experiment without --quick writes
results.json (all checks valid), history.jsonl, PNG plots and one pcapng per host interface
that Wireshark opens, with the fault (or milestone) comments that ``tshark -Y frame.comment``
finds and the names embedded. About 15 minutes in all, so opt-in:

    sudo MINIMESH_FULL_RUNS=1 ./minimesh test tests/integration/test_experiments_full.py
    sudo MINIMESH_FULL_RUNS=1 MINIMESH_FULL_RUNS_OUT=/srv/runs ./minimesh test ...   # keep them
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_experiments import REPO, _comments, _why

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("MINIMESH_FULL_RUNS") != "1",
                                 reason="full-length experiment runs (~15 min): set MINIMESH_FULL_RUNS=1")]

# experiment -> what its capture comments must mention (a fault, or a milestone without one)
EXPERIMENTS = {
    "front_proxy": "minimesh fault", "canary": "rules_applied", "header_routing": "rules_applied",
    "crash_failover": "crash echo-v1-0", "link_delay": "delay=200ms",
    "etcd_leader_latency": "delay=2400ms", "registry_split_brain": "partition",
    "control_plane_partition": "partition",
}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_full_run_writes_results_plots_and_annotated_captures(name, tmp_path):
    base = Path(os.environ.get("MINIMESH_FULL_RUNS_OUT") or tmp_path)
    out = base / name
    r = subprocess.run([sys.executable, f"experiments/{name}.py", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    res = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    assert r.returncode == 0 and res.get("valid") is True, _why(r, res)
    assert res["params"]["quick"] is False and (out / "history.jsonl").stat().st_size > 0
    assert list(out.glob("*.png")), "no plot"
    pcaps = [p for p in (out / "pcap").glob("*.pcapng") if p.stat().st_size > 0]
    assert pcaps and (out / "pcap" / "hosts").read_text().strip()
    for p in pcaps:                  # every capture opens (tshark reads it to the end)
        subprocess.run(["tshark", "-r", str(p), "-c", "1"], check=True, capture_output=True)
    comments = _comments(out / "pcap")
    assert any(EXPERIMENTS[name] in c for c in comments), comments[:5]
