"""LDS on loopback sockets, in process, with a scripted control plane: listeners are added,
replaced and removed as a whole; an update whose listener cannot bind is NACKed and rolled
back (no listener of it stays bound, the old ones keep serving); listeners get the route
configuration RDS already delivered."""
from __future__ import annotations

import asyncio
import socket

from proxy.config.bootstrap import parse_bootstrap
from proxy.server import Server
from tests.support.http_peers import Reply, Upstream, http_request
from proxy.xds.protocol import CLUSTER, LISTENER, ROUTE
from proxy.xds.client import XdsClient
from tests.support.xds_control import FakeControlPlane, discovery_response as response

REST = {"api_config_source": {"api_type": "REST", "transport_api_version": "V3",
                              "cluster_names": ["xds_cluster"], "refresh_delay": "0.01s",
                              "request_timeout": "1s"}, "resource_api_version": "V3",
        "initial_fetch_timeout": "1s"}
BOOT = {"node": {"id": "sidecar~127.0.0.1~t~client"},
        "dynamic_resources": {"cds_config": REST, "lds_config": REST},
        "static_resources": {"clusters": [{"name": "xds_cluster", "type": "STATIC", "connect_timeout": "1s",
                                           "load_assignment": {"cluster_name": "xds_cluster", "endpoints": [
                                               {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                                                   "address": "127.0.0.1", "port_value": 9}}}}]}]}}]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listener(name: str, port: int, prefix: str = "out", rds: str = "r") -> dict:
    return {"@type": LISTENER, "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": {
                                                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                                         "http_connection_manager.v3.HttpConnectionManager",
                                                "stat_prefix": prefix,
                                                "rds": {"route_config_name": rds, "config_source": REST},
                                                "http_filters": [{"name": "envoy.filters.http.router"}]}}]}]}


async def refused(port: int) -> bool:
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    w.close()
    return False


async def settle(pred, timeout=3.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


def test_lds_apply_rollback_and_routes_for_new_listeners():
    async def go():
        async with Upstream(lambda r: Reply(body=b"up")) as up:
            fake = FakeControlPlane()
            server = Server(parse_bootstrap(BOOT))
            for c in server.bootstrap.clusters:
                server.cluster_manager.add_or_update_cluster(c)
            client = XdsClient(server, transport=fake)
            lm = server.listener_manager
            a, b, taken = free_port(), free_port(), socket.socket()
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            try:
                fake.push(CLUSTER, response(CLUSTER, "1", [{
                    "@type": CLUSTER, "name": "c", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": up.port}}}}]}]}}],
                    "1"))
                fake.push(LISTENER, response(LISTENER, "1", [listener("a", a)], "2"))
                fake.push(ROUTE, response(ROUTE, "1", [{"@type": ROUTE, "name": "r", "virtual_hosts": [{
                    "name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
                                                               "route": {"cluster": "c"}}]}]}], "3"), ("r",))
                await client.start()
                assert (await http_request(a)).body == b"up"
                old = lm.listeners["a"]
                # b is fine, x cannot bind: the whole update is NACKed and rolled back
                fake.push(LISTENER, response(LISTENER, "2", [listener("a", a), listener("b", b),
                                                              listener("x", taken.getsockname()[1])], "4"))
                await settle(lambda: client.lds.state.stats.update_rejected == 1)
                assert set(lm.listeners) == {"a"} and lm.listeners["a"] is old
                assert await refused(b)
                nack = fake.last(LISTENER)
                assert nack["version_info"] == "1" and nack["response_nonce"] == "4"
                assert "cannot bind" in nack["error_detail"]["message"]
                assert (await http_request(a)).body == b"up"
                # a removed, b added: b serves at once with the routes RDS delivered earlier
                fake.push(LISTENER, response(LISTENER, "3", [listener("b", b, "out2")], "5"))
                await settle(lambda: client.lds.state.version_info == "3")
                assert set(lm.listeners) == {"b"} and await refused(a)
                assert (await http_request(b)).body == b"up"
                text = server.stats.render_text()
                assert "listener_manager.lds.update_rejected: 1" in text
                assert "listener_manager.lds.update_success: 2" in text
                assert "http.out2.rds.r.update_success: 1" in text
                # a new listener with routes not yet delivered warms: it opens once RDS arrives
                w = free_port()
                fake.push(LISTENER, response(LISTENER, "4", [listener("b", b, "out2"),
                                                              listener("w", w, "warm", rds="r2")], "6"))
                await settle(lambda: client.lds.state.version_info == "4")
                assert "w" in client.warming and await refused(w)
                fake.push(ROUTE, response(ROUTE, "1", [{"@type": ROUTE, "name": "r2", "virtual_hosts": [{
                    "name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {
                        "status": 200, "body": {"inline_string": "r2"}}}]}]}], "7"), ("r2",))
                await settle(lambda: "w" in lm.listeners)
                assert (await http_request(w)).body == b"r2" and not client.warming
            finally:
                taken.close()
                await client.stop()
                await server.stop()
    asyncio.run(asyncio.wait_for(go(), 30))
