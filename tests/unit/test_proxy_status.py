"""Pilot's proxy-status (GET /proxy-status on its admin socket; `minimesh proxy-status`):
per node and xDS type SYNCED / STALE / NOT SENT, as istioctl proxy-status, driven by a
scripted REST-xDS client against a real Pilot on loopback."""
from __future__ import annotations

import asyncio

import aiohttp

from testbed.mesh.pilot import resources as xds
from testbed.mesh.pilot.daemon import MeshPilot
from testbed.mesh.pilot.resources import XdsSource
from tests.support.pilot import SUBSETS, echo_service

from test_xds_server import EP1, NODE, Client


def statuses(pilot: MeshPilot) -> dict[str, str]:
    (proxy,) = pilot.proxy_status()["proxies"]
    assert proxy["node"] == NODE.id
    return {t: v["status"] for t, v in proxy["types"].items()}


def test_proxy_status_follows_pushes_acks_and_nacks():
    async def main():
        pilot = MeshPilot([echo_service(8080)], [EP1], hold_s=0.2, source=XdsSource(request_timeout_ms=5000))
        port = await pilot.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as s:
                c = Client(pilot, port, s)
                assert pilot.proxy_status() == {"generation": pilot.generation, "proxies": []}
                st, cds = await c.req("clusters")
                assert st == 200
                # pushed, not yet ACKed: STALE (istioctl's word for sent and unanswered)
                assert statuses(pilot) == {"CDS": "STALE", "LDS": "NOT SENT", "EDS": "NOT SENT", "RDS": "NOT SENT"}
                await c.req("clusters", cds["version_info"], nonce=cds["nonce"])
                assert statuses(pilot)["CDS"] == "SYNCED"
                name = cds["resources"][0]["name"]
                st, eds = await c.req("endpoints", names=[name])
                await c.req("endpoints", eds["version_info"], names=[name], nonce=eds["nonce"])
                assert statuses(pilot) == {"CDS": "SYNCED", "LDS": "NOT SENT", "EDS": "SYNCED", "RDS": "NOT SENT"}
                pilot.apply_texts([(SUBSETS, "subsets.yaml")])        # new subset clusters: CDS behind
                assert statuses(pilot)["CDS"] == "STALE"
                (proxy,) = pilot.proxy_status()["proxies"]
                cds_col = proxy["types"]["CDS"]
                assert cds_col["acked"] == cds["version_info"] and cds_col["latest"] != cds_col["acked"]
                assert cds_col["latest"].startswith(f"{pilot.generation}-")
                st, new = await c.req("clusters", cds["version_info"], nonce=cds["nonce"])
                assert st == 200
                # NACK (the client keeps its old version and says why)
                await c.req("clusters", cds["version_info"], nonce=new["nonce"], error="bad cluster")
                (proxy,) = pilot.proxy_status()["proxies"]
                assert proxy["types"]["CDS"]["status"] == "STALE"
                assert "NACK" in proxy["types"]["CDS"]["subscriptions"][0]["error"]
                assert "bad cluster" in proxy["types"]["CDS"]["subscriptions"][0]["error"]
                await c.req("clusters", new["version_info"], nonce=new["nonce"])
                assert statuses(pilot)["CDS"] == "SYNCED"
        finally:
            await pilot.stop()
    asyncio.run(asyncio.wait_for(main(), 30))
    assert xds.CLUSTER
