"""The outlier event log (bootstrap cluster_manager.outlier_detection.event_log_path),
real Envoy against minimesh-proxy, on loopback: the cluster ``od`` of tests/configs/faults.yaml
(a good and an always-503 endpoint, round robin) with a 1 s interval and base ejection time.

- enforced: 12 requests (the bad endpoint ejected after 3), 3.5 s for it to come back, 12
  more, 3.5 s again: both proxies write EJECT, UNEJECT, EJECT, UNEJECT with the same fields,
  key order, types, counts and flags; secs_since_last_action within 1 s of each other's;
  every timestamp inside the run's wall-clock window.
- detected but not enforced (consecutive_gateway_failure 2, enforcing 0 by default): the bad
  endpoint's 6 failures of 12 requests give 3 EJECT lines with enforced false, num_ejections 0.
- both thresholds at 1, both enforced: the first 503 is a CONSECUTIVE_GATEWAY_FAILURE ejection.
- max_ejection_percent 10 (Envoy's default) with 2 hosts: 1 of 2 is 50 %, so nothing is
  ejected (Envoy 1.40 no longer ejects a first host past the cap) and nothing is logged.
"""
from __future__ import annotations

import calendar
import http.client
import json
import re
import time
from pathlib import Path

import pytest

from tests.support.configs import render
from tests.support.ports import free_ports
from tests.support.procs import start_proxy
from tests.support.scenarios import FAULTS
from tests.support.upstream import Upstreams

KINDS = ["envoy", "minimesh"]
_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")


# outlier_detection variants of the od cluster (replacing its "consecutive_5xx: 3")
VARIANTS = {"enforced": "consecutive_5xx: 3",
            "unenforced": "consecutive_5xx: 100\n      consecutive_gateway_failure: 2",
            "both": "consecutive_5xx: 1\n      consecutive_gateway_failure: 1\n"
                    "      enforcing_consecutive_gateway_failure: 100",
            "default-cap": "consecutive_5xx: 3"}
CAP = {"default-cap": 10}         # max_ejection_percent; 100 in the others


def _config(values: dict, log: Path, variant: str) -> str:
    text = render("faults.yaml", values).replace("interval: 10s", "interval: 1s") \
        .replace("base_ejection_time: 30s", "base_ejection_time: 1s").replace("consecutive_5xx: 3", VARIANTS[variant]) \
        .replace("max_ejection_percent: 100", f"max_ejection_percent: {CAP.get(variant, 100)}")
    return text.replace("static_resources:", "cluster_manager:\n  outlier_detection:\n"
                        f"    event_log_path: {log}\nstatic_resources:", 1)


def _events(kind: str, tmp: Path, rounds: int, pause_s: float, variant: str) -> tuple[list[dict], float, float, int]:
    """Run ``kind``; returns (events, wall start, wall end, the bad endpoint's port)."""
    log = tmp / f"{kind}.outlier.log"
    with Upstreams(FAULTS.upstreams) as ups:
        values = {f"UPSTREAM_{n.upper()}_PORT": ups.port(n) for n in FAULTS.upstreams}
        values["LISTEN_PORT"], values["ADMIN_PORT"] = free_ports(2)
        t0 = time.time()
        with start_proxy(kind, _config(values, log, variant), values["ADMIN_PORT"]):
            for _ in range(rounds):
                for i in range(12):
                    conn = http.client.HTTPConnection("127.0.0.1", values["LISTEN_PORT"], timeout=5)
                    conn.request("GET", f"/od/{i}")
                    conn.getresponse().read()
                    conn.close()
                time.sleep(pause_s)
        t1 = time.time()          # stopped: Envoy has flushed the file
        return [json.loads(x) for x in log.read_text().splitlines()], t0, t1, ups.port("bad")


def _shape(e: dict, bad_port: int) -> tuple:
    return (list(e), e["type"], e["cluster_name"], e["upstream_url"] == f"127.0.0.1:{bad_port}", e["action"],
            e["num_ejections"], e["enforced"], e.get("eject_consecutive_event"))


@pytest.fixture(scope="module")
def runs(envoy_bin, minimesh_proxy, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("odlog")
    return {k: _events(k, tmp, 2, 3.5, "enforced") for k in KINDS}


def test_enforced_ejections_are_logged_like_envoy(runs):
    shapes = {}
    for kind, (evs, t0, t1, bad) in runs.items():
        assert [e["action"] for e in evs] == ["EJECT", "UNEJECT", "EJECT", "UNEJECT"], f"{kind}: {evs}"
        for e in evs:
            assert _TS.match(e["timestamp"]), f"{kind}: {e['timestamp']}"
            wall = calendar.timegm(time.strptime(e["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
            assert t0 - 1 <= wall <= t1 + 1, f"{kind}: {e['timestamp']} outside the run"
        shapes[kind] = [_shape(e, bad) for e in evs]
    assert shapes["minimesh"] == shapes["envoy"], json.dumps(shapes, indent=1)
    secs = {k: [e.get("secs_since_last_action") for e in runs[k][0]] for k in KINDS}
    assert [s is None for s in secs["minimesh"]] == [s is None for s in secs["envoy"]] == [True, False, False, False]
    for m, e in zip(secs["minimesh"][1:], secs["envoy"][1:], strict=True):
        assert isinstance(m, str) and abs(int(m) - int(e)) <= 1, secs


@pytest.mark.parametrize("kind", KINDS)
def test_unenforced_detections_are_logged_as_not_enforced(kind, request, tmp_path):
    request.getfixturevalue("envoy_bin")
    if kind == "minimesh":
        request.getfixturevalue("minimesh_proxy")
    evs, _, _, bad = _events(kind, tmp_path, 1, 0.0, "unenforced")
    assert [_shape(e, bad)[1:] for e in evs] == [
        ("CONSECUTIVE_GATEWAY_FAILURE", "od", True, "EJECT", 0, False, {})] * 3, f"{kind}: {evs}"


@pytest.mark.parametrize("kind", KINDS)
def test_a_503_past_both_thresholds_is_a_gateway_failure_ejection(kind, request, tmp_path):
    """Envoy checks the gateway-failure counter before the 5xx one: with both thresholds at 1
    and both enforced, the first 503 ejects as CONSECUTIVE_GATEWAY_FAILURE (what a mesh
    DestinationRule with consecutiveGatewayErrors: 1, consecutive5xxErrors: 1 gives)."""
    request.getfixturevalue("envoy_bin")
    if kind == "minimesh":
        request.getfixturevalue("minimesh_proxy")
    evs, _, _, bad = _events(kind, tmp_path, 1, 0.0, "both")
    assert [_shape(e, bad)[1:] for e in evs] == [
        ("CONSECUTIVE_GATEWAY_FAILURE", "od", True, "EJECT", 1, True, {})], f"{kind}: {evs}"


@pytest.mark.parametrize("kind", KINDS)
def test_the_ejection_cap_applies_to_the_first_host_too(kind, request, tmp_path):
    request.getfixturevalue("envoy_bin")
    if kind == "minimesh":
        request.getfixturevalue("minimesh_proxy")
    evs, _, _, _ = _events(kind, tmp_path, 1, 0.0, "default-cap")
    assert evs == [], f"{kind}: {evs}"
