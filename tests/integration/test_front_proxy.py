"""The tutorial's front-proxy section on Mininet (issue 3 item 2): experiments/front_proxy.py
--quick must pass: the seed's YAML unmodified on h1, DNS inside the testbed, curl from h2
gets the stand-in's page and the stand-in saw Host: gwadvnet20.github.io from 10.0.0.1.
The same experiment with real Envoy (v3 translation) checks the experiment itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.procs import REPO

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _run(tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "experiments/front_proxy.py", "--quick", "--out", str(out),
                        "--base-id-offset", str(os.getpid()), *extra],
                       cwd=REPO, capture_output=True, text=True, timeout=180)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    return r, results


def _failed(r: subprocess.CompletedProcess, results: dict) -> str:
    bad = [c for c in results.get("checks", []) if not c["ok"]]
    return f"exit {r.returncode}; failed checks: {bad}\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}"


def test_front_proxy_section_with_minimesh_proxy(tmp_path, minimesh_proxy):
    r, results = _run(tmp_path)
    assert r.returncode == 0 and results.get("passed") is True, _failed(r, results)
    names = {c["name"] for c in results["checks"] if c["ok"]}
    assert "upstream saw Host: gwadvnet20.github.io (host_rewrite)" in names
    assert "< Host: google.com" not in r.stdout and "> Host: google.com" in r.stdout


def test_front_proxy_section_with_real_envoy(tmp_path, envoy_bin):
    r, results = _run(tmp_path, "--proxy", "envoy")
    assert r.returncode == 0 and results.get("passed") is True, _failed(r, results)
    assert "server: envoy" in r.stdout
