"""Outlier event log (bootstrap cluster_manager.outlier_detection.event_log_path): the lines
the detector writes (Envoy 1.40's OutlierDetectionEvent JSON), the bootstrap field, and
their import into a run's history (testbed.run.outlier_events)."""
from __future__ import annotations

import asyncio
import io
import json

import pytest

from proxy.config.bootstrap import parse_bootstrap
from proxy.config.reader import ConfigError
from proxy.config.cluster import ClusterSpec, EndpointSpec, OutlierSpec
from proxy.upstream.cluster import Cluster
from proxy.upstream.outlier_log import OutlierEventLog, format_event, format_timestamp, upstream_url
from proxy.stats import Stats
from testbed.history import History, read_history
from testbed.mesh.pilot.resources import NodeInfo, sidecar_bootstrap
from testbed.run.outlier_events import first_ejection, import_outlier_logs, outlier_records

WALL0 = 1_795_000_000.0          # 2026-11-18T11:06:40Z


class FakeWall:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeLoop:
    """The detector's loop: a settable monotonic time, timers never fire by themselves."""

    def __init__(self):
        self.now = 100.0

    def time(self) -> float:
        return self.now

    def call_later(self, delay, cb, *args):
        return asyncio.get_event_loop().call_later(3600, lambda: None)


# --- the lines ---------------------------------------------------------------------------

def test_timestamp_is_proto_json_at_millisecond_precision():
    assert format_timestamp(WALL0 + 0.4975) == "2026-11-18T11:06:40.497Z"
    assert format_timestamp(WALL0) == "2026-11-18T11:06:40Z"          # no fraction at .000
    assert format_timestamp(WALL0 + 0.05) == "2026-11-18T11:06:40.050Z"
    assert upstream_url("10.0.0.3", 8080) == "10.0.0.3:8080" and upstream_url("::1", 80) == "[::1]:80"


def test_eject_and_uneject_lines_match_envoys_field_names_and_order():
    eject = format_event(action="EJECT", type_="CONSECUTIVE_GATEWAY_FAILURE", wall_s=WALL0 + 1.25, cluster="od",
                         upstream="127.0.0.1:9", num_ejections=1, enforced=True, secs_since_last_action=None)
    # exactly what real Envoy 1.40 writes for a first ejection (keys, order, compact separators)
    assert eject == ('{"type":"CONSECUTIVE_GATEWAY_FAILURE","timestamp":"2026-11-18T11:06:41.250Z",'
                     '"cluster_name":"od","upstream_url":"127.0.0.1:9","action":"EJECT","num_ejections":1,'
                     '"enforced":true,"eject_consecutive_event":{}}')
    un = json.loads(format_event(action="UNEJECT", type_="CONSECUTIVE_GATEWAY_FAILURE", wall_s=WALL0, cluster="od",
                                 upstream="127.0.0.1:9", num_ejections=1, enforced=True, secs_since_last_action=30))
    # UNEJECT: uint64 wrapper as a string, enum default type, never enforced, no detail
    assert list(un) == ["type", "timestamp", "secs_since_last_action", "cluster_name", "upstream_url", "action",
                        "num_ejections", "enforced"]
    assert un["type"] == "CONSECUTIVE_5XX" and un["secs_since_last_action"] == "30" and un["enforced"] is False
    with pytest.raises(ValueError, match="allowed: EJECT, UNEJECT"):
        format_event(action="eject", type_="CONSECUTIVE_5XX", wall_s=0, cluster="c", upstream="u",
                     num_ejections=0, enforced=False, secs_since_last_action=None)


def _cluster(log: OutlierEventLog, **od) -> Cluster:
    spec = ClusterSpec("od", outlier=OutlierSpec(**{"consecutive_5xx": 3, "max_ejection_percent": 100,
                                                    "interval_s": 1.0, "base_ejection_time_s": 2.0, **od}),
                       endpoints=(EndpointSpec("10.0.0.1", 80), EndpointSpec("10.0.0.2", 80)))
    c = Cluster(spec, Stats(), log)
    c.set_hosts((e.address, e.port, e) for e in spec.endpoints)
    c.outlier.loop = FakeLoop()
    return c


def test_detector_writes_eject_then_uneject_with_a_fake_clock(tmp_path):
    async def run():
        wall = FakeWall(WALL0)
        log = OutlierEventLog(str(tmp_path / "od.log"), wall=wall)
        c = _cluster(log)
        bad, loop = c.hosts[1], c.outlier.loop
        for _ in range(3):
            c.outlier.report(bad, 503)
        assert bad.ejected
        wall.t, loop.now = WALL0 + 2.5, loop.now + 2.5
        c.outlier._tick()                                   # 2 s ejection over: back in
        assert not bad.ejected and bad.consecutive_5xx == bad.consecutive_gw == 0
        wall.t, loop.now = WALL0 + 4.0, loop.now + 1.5
        for _ in range(3):
            c.outlier.report(bad, 500)
        log.close()
    asyncio.run(run())
    lines = [json.loads(x) for x in (tmp_path / "od.log").read_text().splitlines()]
    assert [(e["action"], e["num_ejections"], e["enforced"], e.get("secs_since_last_action")) for e in lines] == [
        ("EJECT", 1, True, None), ("UNEJECT", 1, False, "2"), ("EJECT", 2, True, "1")]
    assert {e["upstream_url"] for e in lines} == {"10.0.0.2:80"} and lines[0]["type"] == "CONSECUTIVE_5XX"
    assert [e["timestamp"] for e in lines] == ["2026-11-18T11:06:40Z", "2026-11-18T11:06:42.500Z",
                                               "2026-11-18T11:06:44Z"]


def test_unenforced_detection_is_logged_and_needs_a_fresh_run_of_failures(tmp_path):
    async def run():
        log = OutlierEventLog(str(tmp_path / "od.log"), wall=FakeWall(WALL0))
        c = _cluster(log, consecutive_5xx=100, consecutive_gateway_failure=2,
                     enforcing_consecutive_gateway_failure=0.0)
        for _ in range(5):          # detections at the 2nd and 4th failure (the counter restarts)
            c.outlier.report(c.hosts[0], 502)
        assert not c.hosts[0].ejected
        log.close()
    asyncio.run(run())
    lines = [json.loads(x) for x in (tmp_path / "od.log").read_text().splitlines()]
    assert [(e["type"], e["enforced"], e["num_ejections"]) for e in lines] == [
        ("CONSECUTIVE_GATEWAY_FAILURE", False, 0)] * 2


# --- the bootstrap field -------------------------------------------------------------------

def test_bootstrap_accepts_the_event_log_path_and_rejects_wrong_types():
    b = parse_bootstrap({"cluster_manager": {"outlier_detection": {"event_log_path": "/tmp/x.log"}}})
    assert b.outlier_event_log_path == "/tmp/x.log" and parse_bootstrap({}).outlier_event_log_path == ""
    with pytest.raises(ConfigError) as e:
        parse_bootstrap({"cluster_manager": {"outlier_detection": {"event_log_path": 5}}})
    assert e.value.path == "cluster_manager.outlier_detection.event_log_path" and "expected str" in str(e.value)
    with pytest.raises(ConfigError, match="unsupported field 'event_service'"):
        parse_bootstrap({"cluster_manager": {"outlier_detection": {"event_service": {}}}})
    with pytest.raises(ConfigError, match="unsupported field 'local_cluster_name'"):
        parse_bootstrap({"cluster_manager": {"local_cluster_name": "x"}})


def test_cluster_level_event_log_paths_are_errors_not_ignored():
    ep = {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}]}]}
    base = {"name": "c", "connect_timeout": "1s", "type": "STATIC", "load_assignment": ep}
    with pytest.raises(ConfigError, match="cluster_manager.outlier_detection.event_log_path") as e:
        parse_bootstrap({"static_resources": {"clusters": [{**base, "outlier_detection": {"event_log_path": "/x"}}]}})
    assert e.value.path == "static_resources.clusters[0].outlier_detection.event_log_path"
    hc = {"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
          "tcp_health_check": {}, "event_log_path": "/x"}
    with pytest.raises(ConfigError, match="health-check event logging is not supported"):
        parse_bootstrap({"static_resources": {"clusters": [{**base, "health_checks": [hc]}]}})


def test_sidecar_bootstrap_carries_the_path_and_parses():
    node = NodeInfo.make("10.0.0.5", "echo-v1-0", "echo")
    plain = sidecar_bootstrap(node, ("10.0.0.1", 15010), 15000)
    assert "cluster_manager" not in plain
    boot = sidecar_bootstrap(node, ("10.0.0.1", 15010), 15000, outlier_log="/run/logs/echo-v1-0.outlier.log")
    assert parse_bootstrap(boot).outlier_event_log_path == "/run/logs/echo-v1-0.outlier.log"


def test_server_start_fails_clearly_on_an_unwritable_path(tmp_path):
    from proxy.errors import StartupError
    from proxy.server import Server
    b = parse_bootstrap({"cluster_manager": {"outlier_detection": {
        "event_log_path": str(tmp_path / "missing" / "x.log")}}})

    async def run():
        s = Server(b)
        try:
            await s.start()
        finally:
            await s.stop()
    with pytest.raises(StartupError, match="event_log_path: cannot open .*No such file"):
        asyncio.run(run())


# --- into the history ----------------------------------------------------------------------

class _Spec:
    class _I:
        def __init__(self, instance, ip, port):
            self.instance, self.ip, self.port = instance, ip, port
    instances = (_I("echo-v1-0", "10.0.0.3", 8080), _I("echo-v1-1", "10.0.0.4", 8080))


def _log_text(wall: FakeWall) -> str:
    lines = []
    for action, t, n, since in (("EJECT", 3.0, 1, None), ("UNEJECT", 33.2, 1, 30), ("EJECT", 40.0, 1, 6)):
        lines.append(format_event(action=action, type_="CONSECUTIVE_GATEWAY_FAILURE", wall_s=WALL0 + t,
                                  cluster="outbound|8080|v1|echo", upstream="10.0.0.3:8080", num_ejections=n,
                                  enforced=t != 40.0, secs_since_last_action=since))
    return "\n".join(lines) + "\n{\"type\":\"CONSEC"          # a truncated last line is skipped


def test_importer_turns_a_sidecars_log_into_history_events(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "client@c0.outlier.log").write_text(_log_text(FakeWall(WALL0)))
    (logs / "client@c0.access.log").write_text("not an outlier log\n")
    with History(tmp_path / "history.jsonl") as h:
        assert import_outlier_logs(h, logs, WALL0 + 1.0, _Spec(), config="resilient") == 3
    evs = read_history(tmp_path / "history.jsonl").events
    assert [(e.source, e.kind, round(e.t, 3)) for e in evs] == [
        ("sidecar:client@c0", "ejection", 2.0), ("sidecar:client@c0", "unejection", 32.2),
        ("sidecar:client@c0", "ejection", 39.0)]
    first = evs[0].details
    assert first == {"cluster": "outbound|8080|v1|echo", "upstream": "10.0.0.3:8080", "instance": "echo-v1-0",
                     "type": "CONSECUTIVE_GATEWAY_FAILURE", "num_ejections": 1, "enforced": True,
                     "secs_since_last_action": None, "config": "resilient"}
    # the unejection carries the type of the ejection it ends (Envoy writes the enum default)
    assert evs[1].details["type"] == "CONSECUTIVE_GATEWAY_FAILURE" and evs[1].details["secs_since_last_action"] == 30
    # first_ejection: enforced ones only, by time window and sidecar
    assert first_ejection(evs, "echo-v1-0", 0.0) is evs[0]
    assert first_ejection(evs, "echo-v1-0", 5.0) is None                   # the later one was not enforced
    assert first_ejection(evs, "echo-v1-0", 0.0, sidecar="client@c1") is None
    assert first_ejection(evs, "echo-v1-1", 0.0) is None


def test_outlier_records_without_names_leave_the_instance_empty():
    recs = outlier_records(_log_text(FakeWall(WALL0)).splitlines(), WALL0, {})
    assert len(recs) == 3 and all(d["instance"] is None for _, _, d in recs)
    out = io.StringIO()
    with History(stream=out) as h:
        assert import_outlier_logs(h, "/nonexistent-dir", WALL0) == 0
    assert out.getvalue() == ""
