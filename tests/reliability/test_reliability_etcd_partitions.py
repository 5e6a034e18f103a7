"""etcd under partitions (issue 14): tests/reliability/etcd_partitions.py, >= 10 partition/heal
cycles of the registry (isolate the leader, random halves, bridge, in turn); no acknowledged
write lost, every member agrees at the end, the history is linearizable.

Root; it builds a testbed (fixed switch name), so outside /work/bin/mm-isolated it re-runs
itself in private namespaces. CI: 10
cycles of 2 s cuts and 2 s heals (~70 s with the mesh start); MINIMESH_LONG_RELIABILITY=1:
20 cycles of 5 s + 5 s.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from reliability_support import LONG, REPO, SEED, isolated, record, rerun_isolated

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd not installed")]


def test_no_acknowledged_write_lost_over_partition_cycles(tmp_path, request):
    if not isolated():                  # a fixed switch name: keep the testbed private
        return rerun_isolated(request.node.nodeid)
    cycles, cut, heal = (20, 5.0, 5.0) if LONG else (10, 2.0, 2.0)
    out = tmp_path / "etcd"
    r = subprocess.run([sys.executable, "tests/reliability/etcd_partitions.py", "--out", str(out), "--no-capture",
                        "--seed", str(SEED), "--cycles", str(cycles), "--cut-s", str(cut), "--heal-s", str(heal)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    res = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    m = res.get("metrics", {})
    lin = res.get("verdicts", {}).get("linearizability (linearizable ops)", {})
    record("etcd_partitions", cycles=m.get("cycles"), kinds=[c["kind"] for c in m.get("cuts", [])],
           writes=m.get("writes"), acknowledged=m.get("acknowledged"), unknown=m.get("unknown"),
           failed=m.get("failed"), lost=m.get("lost_count"), committed=m.get("committed_count"),
           linearizable=lin.get("outcome"), operations=lin.get("operations"), valid=res.get("valid"))
    assert r.returncode == 0 and res.get("valid") is True, (r.returncode, json.dumps(res.get("verdicts"))[:3000],
                                                              r.stdout[-2000:], r.stderr[-3000:])
    assert m["cycles"] >= 10 and {c["kind"] for c in m["cuts"]} == {"isolate-leader", "halves", "bridge"}
    assert m["lost_count"] == 0 and m["acknowledged"] > 100 and lin["outcome"] == "linearizable"
