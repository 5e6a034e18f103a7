"""The tutorial's front-proxy section on Mininet: experiments/front_proxy.py
--quick must pass: the seed's YAML unmodified on h1, DNS inside the testbed, curl from h2 gets the
stand-in's page and the stand-in saw Host: gwadvnet20.github.io from 10.0.0.1; then an open-loop
workload through the proxy with a delay on web's link, recorded in history.jsonl, drawn in
timeline.png and written as packet comments in every capture. The same experiment with real Envoy
(v3 translation) checks the experiment itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testbed.history import read_history
from tests.integration.test_experiments import _comments, _nothing_left, _run, _why
from tests.support.procs import REPO

pytestmark = [pytest.mark.root, pytest.mark.slow]
HOST_CHECK = "upstream saw Host: gwadvnet20.github.io (host_rewrite)"


def _check_common(out, res: dict, elapsed: float) -> None:
    assert elapsed <= 75 and res["metrics"]["elapsed_s"] <= 60, f"--quick took {elapsed:.0f} s"
    assert res["verdicts"][HOST_CHECK]["valid"] and res["params"]["quick"] is True
    hist = read_history(out / "history.jsonl")
    curls = [r for r in hist.requests if r.client == "curl"]
    load = [r for r in hist.requests if r.client == "h2"]
    assert len(curls) == 1 and curls[0].status == 200 and curls[0].t_end > curls[0].t_start
    assert len(load) == res["metrics"]["workload_requests"] >= 200 and all(r.ok for r in load)
    assert [f.phase for f in hist.faults] == ["apply", "revert"] and all(f.ok for f in hist.faults)
    on, off = hist.faults[0].t_end, hist.faults[1].t_start
    p50 = res["metrics"]["p50_ms"]
    assert 95 <= p50["during"] - p50["before"] <= 120, p50   # one round trip: 2 x 50 ms
    slow = [r for r in load if on + 0.5 <= r.t_start and r.t_end < off]
    assert slow and min(r.latency_s for r in slow) >= 0.095, "every request in the fault window pays 2 x delay"
    assert (out / "timeline.png").stat().st_size > 10_000
    assert (out / "curl.txt").read_text().count("< HTTP/1.1 200") == 1
    comments = _comments(out / "pcap")        # tshark -r FILE -Y frame.comment, every capture
    assert sum("apply" in c and "link web-mmtfp1 delay=50ms" in c for c in comments) == 4, comments
    assert sum("revert" in c for c in comments) == 4, comments
    assert "gwadvnet20.github.io" in (out / "pcap" / "hosts").read_text()
    _nothing_left("mmtfp1")


def test_front_proxy_section_with_minimesh_proxy(tmp_path, minimesh_proxy):
    out = tmp_path / "out"
    r, res, elapsed = _run([sys.executable, "experiments/front_proxy.py"], out, timeout_s=180)
    assert r.returncode == 0 and res.get("valid") is True, _why(r, res)
    assert "< Host: google.com" not in r.stdout and "> Host: google.com" in r.stdout
    for n in range(1, 8):
        assert f"=== Step {n}: " in r.stdout, f"step {n} missing from the printout"
    assert "h1$ getent ahostsv4 gwadvnet20.github.io" in r.stdout and "  from 10.0.0.1: GET /  Host: " \
        "gwadvnet20.github.io" in r.stdout
    _check_common(out, res, elapsed)


def test_front_proxy_section_with_real_envoy(tmp_path, envoy_bin):
    out = tmp_path / "out"
    r, res, elapsed = _run([sys.executable, "experiments/front_proxy.py", "--proxy", "envoy"], out, timeout_s=180)
    assert r.returncode == 0 and res.get("valid") is True, _why(r, res)
    assert "server: envoy" in r.stdout and res["params"]["proxy"] == "envoy"
    assert "envoy-v3.yaml" in r.stdout
    _check_common(out, res, elapsed)


def test_front_proxy_fails_when_the_proxy_cannot_start(tmp_path, minimesh_proxy):
    """A proxy that never listens: exit status 1, a failed verdict naming the address and the
    proxy's own words, and nothing left behind."""
    out = tmp_path / "out"
    fake = tmp_path / "envoy"       # --proxy envoy with a binary that exits at once
    fake.write_text("#!/bin/sh\necho 'envoy: cannot start (test stand-in)' >&2\nexit 1\n")
    fake.chmod(0o755)
    r = subprocess.run([sys.executable, "experiments/front_proxy.py", "--quick", "--no-capture", "--proxy", "envoy",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MINIMESH_ENVOY": str(fake)})
    res = json.loads((out / "results.json").read_text())
    assert r.returncode == 1 and res["valid"] is False
    ran = res["verdicts"]["experiment ran"]
    assert not ran["valid"] and "10.0.0.1:15001 not reachable from h2" in ran["detail"], ran
    assert "cannot start (test stand-in)" in (out / "logs" / "proxy.log").read_text()
    _nothing_left("mmtfp1")
