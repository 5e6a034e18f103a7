"""Every experiment with --quick, as root, the way users run them: exit status 0
only when its checks hold; results.json, history.jsonl, plots and captures with the fault
comments that Wireshark finds (``tshark -r FILE -Y frame.comment``); nothing left behind."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.history import read_history

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _run(argv: list[str], out: Path, timeout_s: float = 150) -> tuple[subprocess.CompletedProcess, dict, float]:
    t0 = time.monotonic()
    r = subprocess.run(argv + ["--quick", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=timeout_s)
    elapsed = time.monotonic() - t0
    res = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    return r, res, elapsed


def _why(r: subprocess.CompletedProcess, res: dict) -> str:
    bad = {k: v for k, v in res.get("verdicts", {}).items() if not v.get("valid")}
    return f"exit {r.returncode}; failed: {json.dumps(bad)[:3000]}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def _comments(pcap_dir: Path) -> list[str]:
    found = []
    for f in sorted(pcap_dir.glob("*.pcapng")):
        out = subprocess.run(["tshark", "-r", str(f), "-Y", "frame.comment", "-T", "fields", "-e", "frame.comment"],
                             capture_output=True, text=True).stdout
        found += [ln for ln in out.splitlines() if ln.strip()]
    return found


def _nothing_left(tag: str) -> None:
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert tag not in links, links
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "testbed.run.workload" not in ps or "--t0" not in ps


def _common(out: Path, res: dict, elapsed: float, tag: str, fault_word: str) -> None:
    assert elapsed <= 75, f"--quick took {elapsed:.0f} s"            # <= 60 s of run + start-up slack
    assert (out / "report.html").exists(), "every experiment writes its report.html"
    assert res["metrics"]["elapsed_s"] <= 60
    assert (out / "history.jsonl").exists() and read_history(out / "history.jsonl").faults
    comments = _comments(out / "pcap")
    assert any(fault_word in c for c in comments), comments[:5]
    assert (out / "pcap" / "hosts").exists()
    _nothing_left(tag)


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs Debian's python3")
def test_link_delay_via_system_python3(tmp_path):
    """`sudo python3 experiments/X.py`: _bootstrap re-execs under the project's venv."""
    out = tmp_path / "ld"
    r, res, elapsed = _run(["/usr/bin/python3", "experiments/link_delay.py"], out)
    assert r.returncode == 0 and res.get("valid") is True, _why(r, res)
    steps = {s["delay_ms"]: s for s in res["metrics"]["steps"]}
    assert steps[0]["ut"] == 0 and steps[200]["ut"] == steps[200]["requests"] > 0
    assert (out / "timeline.png").stat().st_size > 10_000 and (out / "latency_vs_delay.png").exists()
    _common(out, res, elapsed, "mmld1", "delay=100ms")


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd not installed")
def test_etcd_leader_latency_via_minimesh_run(tmp_path):
    out = tmp_path / "el"
    r, res, elapsed = _run([sys.executable, "-m", "testbed", "run", "experiments/etcd_leader_latency.py"], out)
    assert r.returncode == 0 and res.get("valid") is True, _why(r, res)
    runs = res["metrics"]["runs"]
    assert runs["default"]["leaders_after_jump"] and not runs["tuned"]["leaders_after_jump"]
    assert all(len(r["nodes"]) == 3 for r in runs.values())          # c1's, h1's and h2's sidecars
    # every step had registry changes, and each one Pilot committed reached every sidecar
    assert all(w["changes"] > 0 and w["unacked"] == 0 for r in runs.values() for w in r["windows"])
    acks = [e for e in read_history(out / "history.jsonl").events if e.source == "pilot" and e.kind == "ack"]
    assert {e.details["config"] for e in acks} == {"default", "tuned"}
    assert (out / "pilot_latency.png").stat().st_size > 10_000
    _common(out, res, elapsed, "mmem1", "delay=2400ms")


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd not installed")
def test_registry_split_brain(tmp_path):
    out = tmp_path / "sb"
    r, res, elapsed = _run([sys.executable, "experiments/registry_split_brain.py"], out)
    assert r.returncode == 0 and res.get("valid") is True, _why(r, res)
    lin = res["verdicts"]["linearizability (linearizable ops)"]
    assert lin["outcome"] == "linearizable" and lin["operations"] > 100
    assert res["verdicts"]["stale reads"]["stale_serializable"] > 0
    m = res["metrics"]          # Pilot on the minority: watch flagged failed, then healthy again
    assert m["pilot_unhealthy_after_s"] is not None and m["pilot_healthy_after_heal_s"] is not None
    assert "echo-v1-1" in m["pilot_served_at_heal"] and 0 < m["lease_expired_after_s"] <= 3 + 5
    # the mesh's data plane: c2's sidecar routed to the instance the registry had removed,
    # and during the cut each client was answered by its own side's instance only
    assert m["removed_endpoint_requests_in_cut"] > 0
    assert m["removed_endpoint_routing"]["by_instance"][0][0] == "echo-v1-1"
    assert set(m["cut"]["c1"]["by_instance"]) == {"echo-v1-0"} and set(m["cut"]["c2"]["by_instance"]) == {"echo-v1-1"}
    assert m["cut"]["c1"]["success"] >= 0.95 and m["cut"]["c2"]["success"] >= 0.95
    # each client's sidecar ejected the instance across the cut (its outlier log, in the history)
    ej = m["ejected_in_cut"]
    assert ej["c1"]["instance"] == "echo-v1-1" and ej["c2"]["instance"] == "echo-v1-0"
    assert all(v["after_s"] is not None and 0 <= v["after_s"] <= 5 and v["type"] == "CONSECUTIVE_GATEWAY_FAILURE"
               for v in ej.values()), ej
    assert (out / "timeline.png").exists()
    _common(out, res, elapsed, "mmsplit1", "partition")


def test_a_failing_check_exits_non_zero(tmp_path):
    """Same experiment, a delay sweep whose claim cannot hold (no step above the per-try
    timeout): the 'every request times out' check fails and the exit status says so."""
    out = tmp_path / "bad"
    r = subprocess.run([sys.executable, "experiments/link_delay.py", "--out", str(out), "--delays", "0,20",
                        "--step", "3", "--no-capture"], cwd=REPO, capture_output=True, text=True, timeout=120)
    res = json.loads((out / "results.json").read_text())
    assert r.returncode == 1 and res["valid"] is False
    assert res["failed"] == ["every request times out (504 UT) after 3 tries once 2 x delay > per-try timeout"]
    assert not (out / "pcap").exists()
    _nothing_left("mmld1")
