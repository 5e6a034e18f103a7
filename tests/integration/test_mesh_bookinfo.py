"""Bookinfo through `minimesh up` (root): topologies/bookinfo.yaml (node names prefixed per
run) comes up with etcd, Pilot and minimesh-proxy sidecars; the CLI's `registry` lists
the six instances; `apply` of a reviews VirtualService visibly changes which version
answers; trace headers reach every service; `minimesh apply` from the root namespace."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
NODES = ("u1", "pp", "det", "rv1", "rv2", "rv3", "rat", "e1", "e2", "e3", "cp", "s1")
TRACE = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
         "b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"}


def bookinfo_text(prefix: str) -> str:
    text = (REPO / "topologies/bookinfo.yaml").read_text()
    text = re.sub(r"\b(" + "|".join(NODES) + r")\b", lambda m: prefix + m.group(1), text)
    return text.replace("rules: [bookinfo/", f"rules: [{REPO}/topologies/bookinfo/")


def curl_json(h: str, url: str, headers: dict[str, str] | None = None) -> str:
    args = " ".join(f"-H '{k}: {v}'" for k, v in (headers or {}).items())
    return f"{h} curl -s {args} {url}\n"


def test_bookinfo_up_registry_apply_and_trace(tmp_path):
    p = "mb" + "".join(random.choice(string.ascii_lowercase) for _ in range(3))
    topo = tmp_path / "bookinfo.yaml"
    topo.write_text(bookinfo_text(p))
    url = "http://productpage:9080/productpage"
    script = "".join([
        "registry\n",
        curl_json(f"{p}u1", url, TRACE),
        f"apply {REPO}/topologies/bookinfo/reviews-v3.yaml\n",
        *[curl_json(f"{p}u1", url) for _ in range(4)],
        f"apply {REPO}/topologies/bookinfo/reviews-jason.yaml\n",
        curl_json(f"{p}u1", url, {"end-user": "jason"}),
        curl_json(f"{p}u1", url, {"end-user": "someone"}),
        f"sh {sys.executable} -m testbed apply -f {REPO}/topologies/bookinfo/reviews-v3.yaml --run $PPID_OF_UP\n",
    ])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "up", str(topo)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    # the last line needs the runner's pid: substitute it now that we know it
    try:
        out, err = proc.communicate(script.replace("$PPID_OF_UP", str(proc.pid)), timeout=120)
    except subprocess.TimeoutExpired:       # tear the testbed down as Ctrl-C does, then fail
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"minimesh up did not finish its script in 120 s:\n{err[-3000:]}")
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, err[-3000:]
    assert re.search(r"\*\*\* mesh: 6 instances, .* ready in [\d.]+ s", err), err[-2000:]
    registry = out.split("minimesh> ")[1]
    for inst in ("productpage-v1-0", "details-v1-0", "reviews-v1-0", "reviews-v2-0", "reviews-v3-0",
                 "ratings-v1-0"):
        assert inst in registry, registry
    answers = [json.loads(line) for line in out.splitlines() if line.startswith('{"service": "productpage"')]
    assert len(answers) == 7, out[-3000:]
    first = answers[0]
    assert first["details"]["service"] == "details" and "error" not in first["details"]
    for svc in (first, first["details"], first["reviews"]):
        assert svc["trace"]["traceparent"] == TRACE["traceparent"] and svc["trace"]["b3"] == TRACE["b3"]
        assert svc["trace"]["x-request-id"] == first["trace"]["x-request-id"]
    assert [a["reviews"]["version"] for a in answers[1:5]] == ["v3"] * 4
    assert all(a["reviews"]["stars"] == "red" and a["reviews"]["reviews"][0]["rating"]["color"] == "red"
               for a in answers[1:5])
    assert (answers[5]["reviews"]["version"], answers[5]["reviews"]["stars"]) == ("v2", "black")
    assert (answers[6]["reviews"]["version"], answers[6]["reviews"]["stars"]) == ("v1", None)
    assert "applied 1 file(s)" in out.split("minimesh> ")[-1], out[-1500:]
    assert elapsed < 60
