"""The join behind experiments/etcd_leader_latency.py (experiments/lablib/mesh.py): registry
write -> Pilot's config -> xDS push -> every sidecar's ACK, the probe mesh spec, the window
summaries and the plot. The last test drives the real Pilot on loopback so the join is
checked against the version strings Pilot actually emits."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import aiohttp
import pytest

import testbed.mesh.spec  # noqa: F401  (registers the mesh: section)
from lablib.mesh import (PROBE_SERVICE, keep_etcd_logs, leaders_elected, parse_listing,
                                     pilot_seen_latency, plot_pilot_latency, registry_mesh_spec, window_summary,
                                     write_summary, xds_latency)
from testbed.history import Event
from testbed.topology.load import load_topology

REPO = Path(__file__).resolve().parents[2]
TAG = "tuned"
NODES = ("n1", "n2")


def spec():
    return load_topology(REPO / "topologies" / "etcd-mesh.yaml").sections["mesh"]


def ev(t, source, kind, **d):
    return Event(t, source, kind, {"config": TAG, **d})


def change(t, seq, rc=0):
    return [ev(t, "registry", "change", seq=seq, instance=f"p{seq}"),
            ev(t + 0.01, "registry", "change_done", seq=seq, rc=rc)]


def config(t, gen, endpoints):
    return ev(t, "pilot", "config", version=gen, reason="endpoints", endpoints=endpoints)


def xds(t, kind, node, gen, typ="endpoints"):
    return ev(t, "pilot", kind, node=node, type=typ, version=f"{gen}-abc{gen}", nonce="1")


# --- the probe mesh spec ----------------------------------------------------------------

def test_registry_mesh_spec_sets_timeouts_and_adds_a_probe_service_without_instances():
    base = spec()
    s = registry_mesh_spec(base, 500, 5000)
    assert (s.registry.heartbeat_ms, s.registry.election_ms) == (500, 5000)
    assert s.registry.members == base.registry.members and s.registry.ttl_s == base.registry.ttl_s
    probe = [x for x in s.services if x.name == PROBE_SERVICE]
    assert len(probe) == 1 and probe[0].port == 9000
    assert s.instances == base.instances            # nothing more to deploy
    assert PROBE_SERVICE in [x.name for x in s.service_specs()]       # Pilot gets a probe cluster
    assert base.registry.heartbeat_ms == 100 and PROBE_SERVICE not in [x.name for x in base.services]


@pytest.mark.parametrize("hb, el, port, words", [
    (500, 2000, 9000, "5 x heartbeat_ms"),                     # etcd's rule
    (100, 60000, 9000, "50000"),
    (100, 1000, 8080, "clashes with service 'echo'"),          # echo's port
])
def test_registry_mesh_spec_errors_name_the_rule(hb, el, port, words):
    with pytest.raises(ValueError, match=words):
        registry_mesh_spec(spec(), hb, el, probe_port=port)


def test_registry_mesh_spec_refuses_a_ttl_shorter_than_two_elections():
    from dataclasses import replace
    short = replace(spec(), registry=replace(spec().registry, ttl_s=5))
    with pytest.raises(ValueError, match="ttl_s 5 s .* 2 x election_ms"):
        registry_mesh_spec(short, 500, 5000)


# --- registry listing and write -> config ------------------------------------------------------

def test_parse_listing_reads_etcdctl_json():
    kvs = [{"key": base64.b64encode(f"/minimesh/services/probe/v1/p{i}".encode()).decode(),
            "create_revision": 10 + i, "mod_revision": 10 + i, "version": 1, "value": ""} for i in (0, 3)]
    assert parse_listing(json.dumps({"header": {"revision": 14}, "kvs": kvs, "count": 2})) == {"p0": 10, "p3": 13}
    assert parse_listing(json.dumps({"header": {"revision": 1}})) == {}


def test_seen_latency_counts_probes_above_the_other_endpoints():
    events = change(1.0, 0) + change(2.0, 1) + [config(1.1, 5, 3), config(2.3, 6, 4)]
    out = pilot_seen_latency(events, TAG, base=2)
    assert [round(c["seen_ms"]) for c in out] == [100, 300] and [c["version"] for c in out] == [5, 6]
    assert pilot_seen_latency(events, "default") == []        # other config: not mixed in


def test_seen_latency_uses_commit_order_from_the_listing_when_commits_overtake():
    """p0 hangs (committed last), p1 and p2 commit at once: by invocation order p1 would
    wait for a third probe; by create revision it is Pilot's first probe."""
    events = change(1.0, 0) + change(1.5, 1) + change(2.0, 2) + [
        config(1.6, 5, 1), config(2.1, 6, 2), config(4.0, 7, 3),
        ev(5.0, "registry", "listing", revisions={"p0": 30, "p1": 10, "p2": 20})]
    out = {c["seq"]: c for c in pilot_seen_latency(events, TAG)}
    assert [round(out[i]["seen_ms"]) for i in range(3)] == [3000, 100, 100]
    assert [out[i]["version"] for i in range(3)] == [7, 5, 6]
    no_listing = pilot_seen_latency([e for e in events if e.kind != "listing"], TAG)
    assert round(no_listing[1]["seen_ms"]) == 600    # the order-based guess is a change late


def test_seen_latency_failed_writes_are_unseen_unless_the_registry_has_them():
    events = change(1.0, 0, rc=1) + change(2.0, 1) + [config(2.1, 5, 1), config(3.5, 6, 2)]
    out = pilot_seen_latency(events, TAG)
    assert out[0]["seen_ms"] is None and round(out[1]["seen_ms"]) == 100
    listed = events + [ev(6.0, "registry", "listing", revisions={"p0": 12, "p1": 11})]
    out = pilot_seen_latency(listed, TAG)                      # p0 timed out but was committed later
    assert not out[0]["ok"] and round(out[0]["seen_ms"]) == 2500 and round(out[1]["seen_ms"]) == 100


# --- config -> push -> every ACK ---------------------------------------------------------------------

def test_xds_latency_waits_for_every_node_and_joins_on_the_generation():
    events = change(1.0, 0) + [config(1.1, 5, 1),
                               xds(0.5, "ack", "n1", 4),                  # older generation: not this change
                               xds(1.12, "push", "n1", 5), xds(1.13, "push", "n2", 5),
                               xds(1.15, "ack", "n1", 5), xds(1.19, "ack", "n2", 5),
                               xds(1.14, "ack", "n2", 5, typ="clusters")]  # another type: ignored
    [c] = xds_latency(events, TAG, NODES)
    assert round(c["seen_ms"]) == 100 and round(c["push_ms"]) == 130 and round(c["ack_ms"]) == 190
    assert c["acks"] == {"n1": 150.0, "n2": 190.0} and round(c["config_to_ack_ms"]) == 90


def test_xds_latency_a_later_generation_also_delivers_the_change():
    """n2 was polling when the next config came: its push and ACK carry generation 6."""
    events = change(1.0, 0) + change(1.05, 1) + [
        config(1.1, 5, 1), config(1.12, 6, 2), xds(1.11, "push", "n1", 5), xds(1.13, "push", "n2", 6),
        xds(1.14, "ack", "n1", 5), xds(1.2, "ack", "n2", 6), xds(1.21, "push", "n1", 6), xds(1.3, "ack", "n1", 6)]
    a, b = xds_latency(events, TAG, NODES)
    assert a["acks"] == {"n1": 140.0, "n2": 200.0} and round(a["ack_ms"]) == 200
    assert b["acks"] == {"n1": 250.0, "n2": 150.0} and round(b["ack_ms"]) == 250


def test_xds_latency_is_none_while_a_node_has_not_acked():
    events = change(1.0, 0) + [config(1.1, 5, 1), xds(1.12, "push", "n1", 5), xds(1.15, "ack", "n1", 5)]
    [c] = xds_latency(events, TAG, NODES)
    assert c["ack_ms"] is None and c["push_ms"] is None and c["acks"]["n2"] is None
    assert c["config_to_ack_ms"] is None and round(c["seen_ms"]) == 100


# --- summaries ------------------------------------------------------------------------------------

def test_window_summary_percentiles_last_seconds_and_missing():
    rows = [{"t": t, "ok": ok, "seen_ms": s, "push_ms": s and s + 1, "ack_ms": a,
             "config_to_ack_ms": None if a is None or s is None else a - s}
            for t, ok, s, a in [(0.5, True, 10.0, 15.0), (1.0, True, 20.0, 30.0), (4.5, True, 40.0, None),
                                (5.0, False, None, None), (6.0, True, 99.0, 99.0)]]
    w = window_summary(rows, 0.0, 5.5)
    assert (w["changes"], w["unseen"], w["unacked"]) == (4, 0, 1)
    assert (w["config_p50_ms"], w["config_max_ms"], w["ack_p50_ms"], w["ack_max_ms"]) == (20.0, 40.0, 15.0, 30.0)
    assert w["xds_p50_ms"] == 5.0 and w["config_last3s_p50_ms"] == 40.0 and w["ack_last3s_p50_ms"] is None
    assert window_summary(rows, 10, 11)["ack_p50_ms"] is None


def test_write_summary_and_leaders_elected():
    ops = [{"t_invoke": t, "t_done": t + d, "outcome": o} for t, d, o in
           [(1.0, 0.004, "ok"), (2.0, 0.4, "ok"), (3.0, 2.0, "ok"), (3.5, 6.0, "info"), (9.0, 0.1, "ok")]]
    w = write_summary(ops, 0.0, 4.0)
    assert (w["writes"], w["ok"], w["not_ok"]) == (4, 3, 1) and w["p50_ms"] == pytest.approx(400)
    assert w["last3s_p50_ms"] == pytest.approx(400) and w["slow_share"] == 0.5     # invoked at >= 1.0: 4, 400, 2000
    assert write_summary(ops, 0.0, 4.0, last_s=1.0)["last1s_p50_ms"] == pytest.approx(2000)
    events = [Event(5.0, "etcd:e1", "leader", {"config": TAG, "leader": "e2"}),
              Event(5.1, "etcd:e2", "leader", {"config": TAG, "leader": "e2"}),
              Event(1.0, "etcd:e1", "leader", {"config": TAG, "leader": "e3"}),
              Event(5.0, "etcd:e1", "leader", {"config": "default", "leader": "e1"})]
    assert leaders_elected(events, TAG, 4.0, 6.0) == ["e2"] and leaders_elected(events, TAG, 6.0, 9.0) == []


def test_plot_pilot_latency_writes_a_png(tmp_path):
    w = {"p50_ms": 5.0, "config_p50_ms": 25.0, "ack_p50_ms": 30.0, "xds_p50_ms": 5.0}
    runs = {"default": {"windows": [{"delay_ms": d, **w} for d in (0, 100)] + [{"delay_ms": 2400, "p50_ms": None}]}}
    plot_pilot_latency(tmp_path / "p.png", runs, "t")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_keep_etcd_logs_copies_the_members_logs_that_exist(tmp_path):
    from types import SimpleNamespace
    members = [SimpleNamespace(name=n) for n in ("e1", "e2")]
    (tmp_path / "e1.json").write_text('{"msg": "elected leader"}\n')
    cluster = SimpleNamespace(members=members, log_file=lambda m: str(tmp_path / f"{m.name}.json"))
    ctx = SimpleNamespace(out=tmp_path / "out")
    kept = keep_etcd_logs(ctx, SimpleNamespace(cluster=cluster), "tuned")
    assert kept == [str(tmp_path / "out" / "etcd-logs-tuned" / "e1.log")]          # e2 never wrote one
    assert Path(kept[0]).read_text() == '{"msg": "elected leader"}\n'


# --- against the real Pilot ---------------------------------------------------------------------------

def test_join_matches_the_real_pilots_events():
    """Two sidecars hold EDS requests for the probe cluster; a registry change lands; each
    gets a push and ACKs it. The join finds config <= push <= ACK for both."""
    from testbed.mesh.model import Endpoint
    from testbed.mesh.pilot.server import Pilot
    from testbed.mesh.pilot.resources import TYPE_BY_PATH, NodeInfo, XdsSource
    services = registry_mesh_spec(spec(), 100, 1000).service_specs()
    cluster = f"outbound|9000||{PROBE_SERVICE}"
    raw: list[dict] = []
    echo = Endpoint("echo", "v1", "echo-v1-0", "h1", "10.0.0.31", 8080)

    async def main() -> float:
        pilot = Pilot(services, [echo], hold_s=3.0, on_event=raw.append, source=XdsSource(request_timeout_ms=8000))
        port = await pilot.start("127.0.0.1", 0)
        nodes = {n: NodeInfo.make(f"10.0.0.{i + 40}", n, "client") for i, n in enumerate(NODES)}

        async def sidecar(s: aiohttp.ClientSession, name: str) -> None:
            version = ""
            for _ in range(3):    # first fetch, the push after the change, then the ACK (held, 304)
                body = {"node": {"id": nodes[name].id, "metadata": nodes[name].metadata()},
                        "type_url": TYPE_BY_PATH["endpoints"], "version_info": version, "resource_names": [cluster]}
                async with s.post(f"http://127.0.0.1:{port}/v3/discovery:endpoints", json=body) as r:
                    if r.status == 200:
                        version = (await r.json())["version_info"]
        try:
            async with aiohttp.ClientSession() as s:
                tasks = [asyncio.create_task(sidecar(s, n)) for n in NODES]
                await asyncio.sleep(0.3)                         # both hold their requests
                t_write = time.time()
                pilot.update_endpoints([echo, Endpoint(PROBE_SERVICE, "v1", "p0", "c1", "10.255.0.1", 10000)])
                await asyncio.wait_for(asyncio.gather(*tasks), 10)
        finally:
            await pilot.stop()
        return t_write

    t_write = asyncio.run(main())
    events = change(t_write, 0) + [
        Event(e["t"], "pilot", e["event"], {**{k: v for k, v in e.items() if k not in ("t", "event")}, "config": TAG})
        for e in raw]
    [c] = xds_latency(events, TAG, [NodeInfo.make(f"10.0.0.{i + 40}", n, "client").id for i, n in enumerate(NODES)],
                      base=1)
    assert c["version"] == max(e["version"] for e in raw if e["event"] == "config")
    assert 0 <= c["seen_ms"] <= c["push_ms"] <= c["ack_ms"] < 2000, c
    assert all(v is not None and v >= c["seen_ms"] for v in c["acks"].values()) and c["config_to_ack_ms"] >= 0
