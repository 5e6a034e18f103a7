"""Pilot's REST-JSON xDS protocol on loopback with a scripted client: long poll,
304, ACK, NACK (error_detail and Envoy-style), rejected applies, events."""
import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from testbed.mesh.pilot import resources as xds
from testbed.mesh.pilot.server import ApplyRejected, Pilot
from testbed.mesh.pilot.resources import NodeInfo, XdsSource
from tests.support.pilot import SUBSETS as DR, echo_service

SVC = echo_service(8080)
EP1 = dict(service="echo", version="v1", instance="e1", host="h1", ip="10.0.0.1", port=8080)
EP2 = dict(service="echo", version="v2", instance="e2", host="h2", ip="10.0.0.2", port=8080)
NODE = NodeInfo.make("10.0.0.9", "curl", "client", labels={"app": "curl"})
# a compact VirtualService: the tests' error lines (bad.yaml:6) are this layout's
VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http: [{route: [{destination: {host: echo, subset: SUBSET}}]}]
"""


class Client:
    def __init__(self, pilot: Pilot, port: int, session: aiohttp.ClientSession) -> None:
        self.pilot, self.url, self.s = pilot, f"http://127.0.0.1:{port}", session

    async def req(self, kind: str, version: str = "", names=(), nonce: str = "",
                  error: str = "", node: dict | None = None) -> tuple[int, dict]:
        body = {"node": node or {"id": NODE.id, "metadata": NODE.metadata()},
                "type_url": xds.TYPE_BY_PATH[kind], "version_info": version,
                "resource_names": list(names), "response_nonce": nonce}
        if error:
            body["error_detail"] = {"code": 3, "message": error}
        async with self.s.post(f"{self.url}/v3/discovery:{kind}", json=body) as r:
            return r.status, (await r.json() if r.status == 200 else {})


def with_pilot(test, **kw):
    async def main():
        events: list[dict] = []
        pilot = Pilot([SVC], [EP1], hold_s=kw.pop("hold_s", 0.3), on_event=events.append,
                      source=XdsSource(request_timeout_ms=5000), **kw)
        port = await pilot.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as s:
                await test(Client(pilot, port, s), events)
        finally:
            await pilot.stop()
    asyncio.run(main())


def kinds(events, kind):
    return [e for e in events if e["event"] == kind]


def test_first_request_answered_then_held_until_304():
    async def t(c, events):
        st, r = await c.req("clusters")
        assert st == 200 and r["type_url"] == xds.CLUSTER and r["nonce"]
        assert r["version_info"].startswith(f"{c.pilot.generation}-")
        assert [x["name"] for x in r["resources"]] == ["outbound|8080||echo"]
        t0 = time.monotonic()
        st, _ = await c.req("clusters", r["version_info"], nonce=r["nonce"])
        assert st == 304 and 0.25 <= time.monotonic() - t0 < 1.0
        assert [e["type"] for e in kinds(events, "ack")] == ["clusters"]
        assert kinds(events, "push")[0]["version"] == r["version_info"]
    with_pilot(t)


def test_endpoint_change_wakes_long_poll_and_unchanged_types_stay_quiet():
    async def t(c, events):
        names = ["outbound|8080||echo"]
        _, eds = await c.req("endpoints", names=names)
        _, cds = await c.req("clusters")
        held_eds = asyncio.create_task(c.req("endpoints", eds["version_info"], names))
        held_cds = asyncio.create_task(c.req("clusters", cds["version_info"]))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        threading.Thread(target=c.pilot.update_endpoints, args=([EP1, EP2],)).start()
        st, r = await held_eds
        took = time.monotonic() - t0
        assert st == 200 and took < 0.1, took
        ips = [e["endpoint"]["address"]["socket_address"]["address"]
               for e in r["resources"][0]["endpoints"][0]["lb_endpoints"]]
        assert ips == ["10.0.0.1", "10.0.0.2"]
        assert (await held_cds)[0] == 304  # the clusters did not change
    with_pilot(t, hold_s=1.0)


def test_nack_with_error_detail_keeps_node_on_last_good_and_is_not_resent():
    async def t(c, events):
        _, r1 = await c.req("routes", names=["15001"])
        await c.req("routes", r1["version_info"], ["15001"], r1["nonce"])  # ACK, 304
        c.pilot.apply_text(DR + "---\n" + VS.replace("SUBSET", "v2"))
        st, r2 = await c.req("routes", r1["version_info"], ["15001"])
        assert st == 200 and r2["version_info"] != r1["version_info"]
        st, _ = await c.req("routes", r1["version_info"], ["15001"], r2["nonce"], "bad regex")
        assert st == 304  # the rejected content is not pushed again
        [nack] = kinds(events, "nack")
        assert (nack["version"], nack["kept"], nack["error"]) == \
            (r2["version_info"], r1["version_info"], "bad regex")
        summary = c.pilot.nodes[NODE.id].summary()["subscriptions"][0]
        assert (summary["acked"], summary["nacked"]) == (r1["version_info"], r2["version_info"])
        c.pilot.apply_text(VS.replace("SUBSET", "v1"))  # new content is pushed again
        st, r3 = await c.req("routes", r1["version_info"], ["15001"], r2["nonce"])
        assert st == 200 and "v1" in json.dumps(r3["resources"])
    with_pilot(t)


def test_envoy_style_ack_and_nack_are_inferred_from_version_info():
    async def t(c, events):
        _, r1 = await c.req("routes", names=["15001"])
        await c.req("routes", r1["version_info"], ["15001"])  # Envoy REST: no nonce at all
        assert len(kinds(events, "ack")) == 1
        c.pilot.apply_text(DR + "---\n" + VS.replace("SUBSET", "v2"))
        st, r2 = await c.req("routes", r1["version_info"], ["15001"])
        assert st == 200
        st, _ = await c.req("routes", r1["version_info"], ["15001"])  # kept the old one
        assert st == 304
        [nack] = kinds(events, "nack")
        assert nack["version"] == r2["version_info"] and "kept version" in nack["error"]
        # a client that restarts sends an empty version: a fresh start, not another NACK
        st, r3 = await c.req("routes", names=["15001"])
        assert st == 200 and r3["version_info"] == r2["version_info"]
        await c.req("routes", r3["version_info"], ["15001"])
        assert len(kinds(events, "nack")) == 1 and len(kinds(events, "ack")) == 2
    with_pilot(t)


def test_invalid_apply_changes_nothing_and_is_logged():
    async def t(c, events):
        c.pilot.apply_text(DR)
        gen, rules = c.pilot.generation, c.pilot.state.rules
        with pytest.raises(ApplyRejected) as e:
            c.pilot.apply_text(VS.replace("SUBSET", "v9"), "bad.yaml")
        assert [m.code for m in e.value.messages] == ["IST0101"]
        with pytest.raises(ApplyRejected) as e:
            c.pilot.apply_text(VS.replace("subset", "subzet"), "bad.yaml")
        assert [m.code for m in e.value.messages] == ["IST0106"]
        assert (c.pilot.generation, c.pilot.state.rules) == (gen, rules)
        assert len(kinds(events, "apply_rejected")) == 2
        assert "bad.yaml:6" in kinds(events, "apply_rejected")[0]["messages"][0]
    with_pilot(t)


def test_routes_wait_for_new_clusters_make_before_break():
    async def t(c, events):
        _, cds = await c.req("clusters")
        await c.req("clusters", cds["version_info"])
        _, rds = await c.req("routes", names=["15001"])
        await c.req("routes", rds["version_info"], ["15001"])
        c.pilot.apply_text(DR + "---\n" + VS.replace("SUBSET", "v2"))
        held_rds = asyncio.create_task(c.req("routes", rds["version_info"], ["15001"]))
        await asyncio.sleep(0.2)
        assert not held_rds.done()  # new clusters not yet acknowledged
        _, cds2 = await c.req("clusters", cds["version_info"])
        ack = asyncio.create_task(c.req("clusters", cds2["version_info"]))
        acks = [ack]
        for cl in cds2["resources"]:
            _, eds = await c.req("endpoints", names=[cl["name"]])
            acks.append(asyncio.create_task(c.req("endpoints", eds["version_info"],
                                                  [cl["name"]])))
        st, r = await asyncio.wait_for(held_rds, 1)
        assert st == 200 and "outbound|8080|v2|echo" in json.dumps(r["resources"])
        assert [x[0] for x in await asyncio.gather(*acks)] == [304] * 4
    with_pilot(t, hold_s=1.0, gate_s=5.0)


def test_http_apply_and_registry_snapshot_shape():
    async def t(c, events):
        async with c.s.post(f"{c.url}/apply?file=r.yaml", data=DR) as r:
            body = await r.json()
            assert r.status == 200 and body["applied"] and body["warnings"] == []
        gen = c.pilot.generation
        async with c.s.post(f"{c.url}/apply?file=bad.yaml",
                            data=VS.replace("SUBSET", "v7")) as r:
            body = await r.json()
            assert r.status == 400 and not body["applied"] and body["generation"] == gen
            assert body["errors"][0].startswith("Error [IST0101] (VirtualService echo) bad.yaml:6")
        from testbed.mesh.model import Endpoint
        c.pilot.update_endpoints({"echo": [Endpoint.from_dict(EP1), Endpoint.from_dict(EP2)]})
        assert {e.instance for e in c.pilot.state.endpoints} == {"e1", "e2"}
        async with c.s.get(f"{c.url}/debug/syncz") as r:
            assert (await r.json())["generation"] == gen + 1
    with_pilot(t)


def apply_remote(url: str, paths: list[str], timeout_s: float = 10.0) -> tuple[list[str], int]:
    """POST /apply over HTTP, the way a remote client would: all files in one all-or-nothing
    apply. Returns (message lines, exit code: 1 rejected, 2 Pilot unreachable)."""
    files = [{"name": str(p), "text": Path(p).read_text()} for p in paths]
    req = urllib.request.Request(f"{url.rstrip('/')}/apply", method="POST",
                                 data=json.dumps({"files": files}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        if e.code != 400:
            raise
        body = json.load(e)
    except urllib.error.URLError as e:
        return [f"Error: cannot reach Pilot at {url}: {e.reason}"], 2
    if not body["applied"]:
        return body["errors"], 1
    return body["warnings"] + [f"applied {len(paths)} file(s): config version "
                               f"{body['generation']}"], 0


def test_apply_remote_is_all_or_nothing(tmp_path):
    good, bad = tmp_path / "dr.yaml", tmp_path / "vs.yaml"
    good.write_text(DR)
    bad.write_text(VS.replace("SUBSET", "v5"))

    async def t(c, events):
        gen = c.pilot.generation
        lines, rc = await asyncio.to_thread(apply_remote, c.url, [str(good), str(bad)])
        assert rc == 1 and len(lines) == 1 and f"{bad}:6" in lines[0]
        assert c.pilot.generation == gen and c.pilot.state.rules == ()
        bad.write_text(VS.replace("SUBSET", "v2"))
        lines, rc = await asyncio.to_thread(apply_remote, c.url, [str(good), str(bad)])
        assert rc == 0 and lines == [f"applied 2 file(s): config version {gen + 1}"]
        assert {r.kind for r in c.pilot.state.rules} == {"DestinationRule", "VirtualService"}
    with_pilot(t)
    lines, rc = apply_remote("http://127.0.0.1:9", [str(good)], timeout_s=2)
    assert rc == 2 and "cannot reach Pilot" in lines[0]


def test_bad_requests_are_refused_in_plain_words():
    async def t(c, events):
        async with c.s.post(f"{c.url}/v3/discovery:secrets", json={}) as r:
            assert r.status == 404 and "listeners" in await r.text()
        async with c.s.post(f"{c.url}/v3/discovery:routes", json={"node": {"id": "x"}}) as r:
            assert r.status == 400 and "sidecar~<ip>" in await r.text()
    with_pilot(t)


def test_events_file_is_json_lines(tmp_path):
    path = tmp_path / "ev.jsonl"

    async def t(c, events):
        await c.req("clusters")
    with_pilot(t, events_path=path)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["config", "start", "push", "stop"]
    assert lines[0]["version"] == 1 and lines[2]["type"] == "clusters"


def test_hold_must_be_shorter_than_client_timeout():
    with pytest.raises(ValueError, match="request_timeout"):
        Pilot([SVC], hold_s=30, source=XdsSource(request_timeout_ms=30000))


def test_push_fan_out_to_100_route_subscribers():
    """100 scripted sidecars long-poll RDS; one apply must reach and be ACKed by all.
    Tolerance: 1 s on a shared 2-core box (measured ~0.1 s when idle)."""
    async def t(c, events):
        nodes = [{"id": f"sidecar~10.1.0.{i}~c{i}~client", "metadata": {"labels": {}}}
                 for i in range(100)]
        first = [await c.req("routes", names=["15001"], node=n) for n in nodes]
        held = [asyncio.create_task(c.req("routes", r["version_info"], ["15001"], node=n))
                for n, (_, r) in zip(nodes, first, strict=True)]
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        c.pilot.apply_text(DR + "---\n" + VS.replace("SUBSET", "v2"))
        pushed = await asyncio.gather(*held)
        assert {st for st, _ in pushed} == {200}
        acking = [asyncio.create_task(c.req("routes", r["version_info"], ["15001"], r["nonce"],
                                            node=n)) for n, (_, r) in zip(nodes, pushed, strict=True)]
        gen = c.pilot.generation

        def acks():
            return [e for e in events if e["event"] == "ack" and
                    e["version"].startswith(f"{gen}-")]
        while len(acks()) < 100 and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.005)
        took = time.monotonic() - t0
        assert {st for st, _ in await asyncio.gather(*acking)} == {304}  # held, then 304
        print(f"apply -> 100 pushes + ACKs: {took * 1000:.0f} ms")
        assert len(acks()) == 100 and took < 1.0, took
    with_pilot(t, hold_s=1.0)
