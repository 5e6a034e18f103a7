"""The runner's shared helpers without a network: wait_for_config against a scripted Pilot
status, the sidecar stats client against canned admin output, Context.host_link on a
topology, and the one direction parser."""
from __future__ import annotations

import argparse
import types
from pathlib import Path

import pytest

from testbed.faults import FakeTarget, FaultError, LinkChange
from testbed.run import ConfigNotReached, Context, cluster_stats, fetch_stats, parse_prometheus, parse_stats, \
    total, wait_for_config
from testbed.run.sidecar_stats import StatsError
from testbed.shape import ShapeError, link_directions, parse_direction
from testbed.topology.load import parse_topology

# --- wait_for_config ----------------------------------------------------------------------


class FakeMesh:
    """Two instances (echo-0 running, echo-1 crashed) and a client sidecar on c0; status()
    answers from ``statuses`` in turn (the last one forever), an Exception is raised."""

    def __init__(self, statuses: list):
        self.statuses = statuses
        self.calls = 0

    def sidecar_nodes(self):        # echo-1 crashed: its sidecar is not running
        return {"echo-0": "node-echo-0", "client@c0": "node-client-c0"}

    def status(self):
        s = self.statuses[min(self.calls, len(self.statuses) - 1)]
        self.calls += 1
        if isinstance(s, Exception):
            raise s
        return s


def status(gen: int, **synced: bool) -> dict:
    return {"generation": gen, "nodes": {f"node-{k.replace('_', '-')}": {"synced": v} for k, v in synced.items()}}


def test_wait_for_config_returns_once_every_running_sidecar_has_it():
    mesh = FakeMesh([status(7, echo_0=False, client_c0=True), RuntimeError("admin busy"),
                     status(7, echo_0=True, client_c0=True)])
    assert wait_for_config(mesh, "rules", timeout_s=5, poll_s=0.001) == 7
    assert mesh.calls == 3           # the crashed echo-1 is not waited for


def test_wait_for_config_raises_naming_the_version_and_the_sidecars():
    mesh = FakeMesh([status(3, echo_0=True, client_c0=False)])
    with pytest.raises(ConfigNotReached) as e:
        wait_for_config(mesh, "the canary rules", timeout_s=0.05, poll_s=0.01)
    assert (e.value.version, e.value.missing) == (3, ["client@c0"])
    assert str(e.value).startswith("the canary rules: Pilot's config version 3 not ACKed by sidecar client@c0 "
                                   "within 0.05 s")


def test_wait_for_config_when_pilot_never_answers_and_for_chosen_sidecars():
    with pytest.raises(ConfigNotReached, match="Pilot did not answer.*last error: OSError: gone"):
        wait_for_config(FakeMesh([OSError("gone")]), timeout_s=0.02, poll_s=0.01)
    mesh = FakeMesh([status(4, echo_0=False, client_c0=True)])
    assert wait_for_config(mesh, sidecars=["client@c0"], timeout_s=1) == 4
    with pytest.raises(ValueError, match="no running sidecar echo-1"):
        wait_for_config(mesh, sidecars=["echo-1"])


# --- the stats client ---------------------------------------------------------------------

STATS = """cluster.echo.upstream_rq_retry: 4\r
cluster.echo.upstream_rq_total: 20
cluster.echo.outlier_detection.ejections_active: 1
cluster.outbound|8080|v1|echo.upstream_rq_retry: 3
cluster.other.upstream_rq_retry: 9
http.inbound.downstream_rq_time: P0(nan,1) P25(nan,2)
server.live: 1
"""


def test_parse_stats_and_the_helpers():
    stats = parse_stats(STATS)
    assert stats["cluster.echo.upstream_rq_retry"] == 4 and "http.inbound.downstream_rq_time" not in stats
    assert cluster_stats(stats, "echo") == {"upstream_rq_retry": 4, "upstream_rq_total": 20}
    assert total(stats, "cluster.*echo*.upstream_rq_retry") == 7
    prom = parse_prometheus('# TYPE x counter\nenvoy_cluster_upstream_rq_total{envoy_cluster_name="echo"} 5\n')
    assert prom == {'envoy_cluster_upstream_rq_total{envoy_cluster_name="echo"}': 5.0}


def test_fetch_stats_runs_curl_in_the_host():
    seen = []

    class Host:
        def __init__(self, code):
            self.code = code

        def pexec(self, argv):
            seen.append(argv)
            return (STATS, "refused", self.code)
    tb = types.SimpleNamespace(host=lambda name: Host(0 if name == "px" else 7))
    assert fetch_stats(tb, "px", 9901)["server.live"] == 1
    assert seen[-1] == ["curl", "-s", "-m", "2", "http://127.0.0.1:9901/stats"]
    with pytest.raises(StatsError, match="curl exit 7 refused"):
        fetch_stats(tb, "c0", 15000, prometheus=True)
    assert seen[-1][-1] == "http://127.0.0.1:15000/stats/prometheus"


# --- Context.host_link and the direction parser ---------------------------------------------

TOPO = """
name: t
hosts: {a: {}, b: {}, c: {}}
switches: {s1: {}}
links:
  - between: [a, s1]
  - between: [s1, b]
  - between: [c, s1]
  - between: [c, b]
"""


def test_host_link_finds_the_one_link_of_a_host(tmp_path: Path):
    ctx = Context("t", argparse.Namespace(), tmp_path, 1, True, topology=parse_topology(TOPO))
    assert ctx.host_link("a") == ("a", "s1")
    with pytest.raises(ValueError, match="c has 2 links"):
        ctx.host_link("c")


def test_one_direction_parser():
    assert parse_direction("h1 -> s1", "h1", "s1") is True
    assert link_directions(None, "h1", "s1") == (True, True)
    assert link_directions("s1->h1", "h1", "s1") == (False, True)
    with pytest.raises(ShapeError, match="direction: 'h1->h2': use h1->s1 or s1->h1"):
        link_directions("h1->h2", "h1", "s1")
    with pytest.raises(FaultError, match="direction"):
        LinkChange("h1", "s1", {"delay": "1ms"}, direction="s1 - > h1")
    target = FakeTarget(links=[("h1", "s1")])
    with pytest.raises(ShapeError):
        target.set_link("h1", "s1", "h1->h2", delay="1ms")


# --- the package API ----------------------------------------------------------------------------

def test_testbed_run_exports_load_on_first_use():
    import subprocess
    import sys

    import testbed.run
    assert all(getattr(testbed.run, name) is not None for name in testbed.run.__all__)
    code = "import sys, testbed.run.workload; print('testbed.run.experiment' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "False"      # the workload starts without the runner's imports
