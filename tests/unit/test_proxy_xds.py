"""minimesh-proxy's xDS client without sockets: request building, the ACK/NACK state machine,
strict validation of Pilot's resources, and all-or-nothing application (a fake transport
stands in for Pilot; the real cluster and listener managers take the updates)."""
from __future__ import annotations

import asyncio
import copy
import re

import pytest

from proxy.config.bootstrap import parse_bootstrap
from proxy.config.reader import ConfigError, Obj
from proxy.server import Server
from proxy.xds.protocol import (CLUSTER, ENDPOINT, LISTENER, ROUTE, Subscription, XdsError, decode_response,
                       parse_config_source, parse_dynamic_resources, validate_assignment, validate_clusters,
                       validate_listeners, validate_route_config)
from proxy.xds.client import XdsClient
from tests.support.xds_control import FakeControlPlane, discovery_response
from testbed.mesh.pilot import resources as pilot_xds
from testbed.mesh.model import Endpoint, MeshState
from testbed.mesh.rules.traffic import parse_rules
from testbed.mesh.pilot.resources import XdsSource, sidecar_bootstrap
from tests.support.pilot import SUBSETS as DR, client_node, echo_service, subsets

SRC = XdsSource(refresh_delay_ms=10, request_timeout_ms=1000)
NODE = client_node()
SVC = echo_service(8080)


def mesh_state(rules: str = DR) -> MeshState:
    eps = [Endpoint.from_dict(dict(service="echo", version=v, instance=f"echo-{v}", host="h",
                                   ip=ip, port=8080, labels={}))
           for v, ip in (("v1", "10.0.0.1"), ("v2", "10.0.0.2"))]
    return MeshState((SVC,), tuple(eps), tuple(parse_rules(rules, "r.yaml")[0]) if rules else ())


def resources(type_url: str, state: MeshState | None = None, names: list | None = None) -> list[dict]:
    return pilot_xds.build(state or mesh_state(), NODE, type_url.replace("type.googleapis.com/", pilot_xds.T),
                           names or [], SRC)


def plain(res: list[dict]) -> tuple[dict, ...]:
    """Resources as decode_response hands them to the validators (without @type)."""
    return tuple({k: v for k, v in r.items() if k != "@type"} for r in res)


response = discovery_response


# ---------------------------------------------------------------- the state machine
def test_request_ack_nack_sequence():
    s = Subscription(ROUTE, ("15001",))
    node = {"id": "sidecar~1.2.3.4~a~client"}
    first = s.request(node)
    assert first == {"version_info": "", "node": node, "resource_names": ["15001"], "type_url": ROUTE}
    s.accepted("1-aa", "7")
    ack = s.request(node)
    assert (ack["version_info"], ack["response_nonce"]) == ("1-aa", "7") and "error_detail" not in ack
    s.rejected("8", "route_config[15001]: unsupported field 'x'")
    nack = s.request(node)      # old version, the rejected response's nonce, the reason
    assert (nack["version_info"], nack["response_nonce"]) == ("1-aa", "8")
    assert nack["error_detail"] == {"code": 13, "message": "route_config[15001]: unsupported field 'x'"}
    s.not_modified()            # the server answered the NACK: next poll is a plain one
    assert "error_detail" not in s.request(node)
    s.failed("OSError: refused")
    assert s.request(node)["version_info"] == "1-aa"
    st = s.stats
    assert (st.update_attempt, st.update_success, st.update_rejected, st.update_failure) == (5, 2, 1, 1)
    assert st.version == 1


def test_decode_response_checks_types():
    r = decode_response(response(CLUSTER, "3-x", [{"@type": CLUSTER, "name": "a"}], "5"), CLUSTER)
    assert (r.version_info, r.nonce, r.resources) == ("3-x", "5", ({"name": "a"},))
    with pytest.raises(XdsError, match="type_url"):
        decode_response(response(ROUTE, "1", [], "1"), CLUSTER)
    with pytest.raises(XdsError, match=r"resources\[0\]: @type"):
        decode_response(response(CLUSTER, "1", [{"@type": LISTENER}], "1"), CLUSTER)


def test_config_sources_from_pilots_bootstrap_and_rejections():
    boot = sidecar_bootstrap(NODE, ("127.0.0.1", 15010), 0, source=SRC)
    cds, lds = parse_dynamic_resources(boot["dynamic_resources"])
    assert cds == lds and (cds.cluster, cds.refresh_delay_s, cds.request_timeout_s) == ("xds_cluster", 0.01, 1.0)
    grpc = copy.deepcopy(boot["dynamic_resources"]["cds_config"])
    grpc["api_config_source"]["api_type"] = "GRPC"
    with pytest.raises(ConfigError, match="api_type: unsupported value 'GRPC'; allowed: REST"):
        parse_config_source(Obj(grpc, "cds_config"))
    with pytest.raises(ConfigError, match="unsupported config source"):
        parse_config_source(Obj({"ads": {}}, "eds_config"))
    with pytest.raises(ConfigError, match="ads_config: unsupported field"):
        parse_dynamic_resources({"ads_config": {}})


def test_pilots_resources_validate_and_a_bad_one_names_itself():
    upd = validate_clusters(tuple(decode_response(response(CLUSTER, "1", resources(CLUSTER), "1"),
                                                  CLUSTER).resources))
    assert {c.name for c in upd.clusters} == {"outbound|8080||echo", "outbound|8080|v1|echo",
                                              "outbound|8080|v2|echo"}
    assert upd.eds["outbound|8080|v1|echo"][0] == "outbound|8080|v1|echo"
    lst = validate_listeners(plain(resources(LISTENER)))
    assert [spec.name for spec in lst.listeners] == ["virtualOutbound"] and set(lst.rds) == {"15001"}
    bad = plain(resources(CLUSTER))
    bad[1]["lb_policy"] = "MAGLEV"
    with pytest.raises(ConfigError, match=r"cluster\[1:outbound\|8080\|v1\|echo\]\.lb_policy: unsupported"):
        validate_clusters(bad)
    with pytest.raises(ConfigError, match="duplicate cluster"):
        validate_clusters(plain(resources(CLUSTER))[:1] * 2)
    with pytest.raises(ConfigError, match="static resource"):
        validate_clusters(({"name": "xds_cluster"},), frozenset({"xds_cluster"}))
    with pytest.raises(ConfigError, match="unexpected EDS cluster"):
        validate_assignment(({"cluster_name": "other", "endpoints": []},), "mine")
    with pytest.raises(ConfigError, match="malformed IP address"):
        validate_assignment(({"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "echo.local", "port_value": 1}}}}]}]},), "c")
    assert validate_route_config((), "15001") is None
    with pytest.raises(ConfigError, match="expected exactly"):
        validate_route_config(({"name": "other"},), "15001")


# ---------------------------------------------------------------- the client, fake transport
class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def settle(pred, timeout=2.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.002)


def make_client(fake, clock=None):
    boot = sidecar_bootstrap(NODE, ("127.0.0.1", 1), 0, source=SRC)
    del boot["admin"]
    for k in ("cds_config",):
        boot["dynamic_resources"][k]["initial_fetch_timeout"] = "0.5s"
    del boot["dynamic_resources"]["lds_config"]            # LDS binds sockets: integration tests
    server = Server(parse_bootstrap(boot))
    for c in server.bootstrap.clusters:          # what Server.start does, without sockets
        server.cluster_manager.add_or_update_cluster(c)
    return server, XdsClient(server, transport=fake, clock=clock or Clock())


def test_cds_eds_then_a_bad_cluster_among_good_ones_changes_nothing():
    async def go():
        fake = FakeControlPlane()
        server, client = make_client(fake)
        cm = server.cluster_manager
        st = mesh_state()
        fake.push(CLUSTER, response(CLUSTER, "1-a", resources(CLUSTER, st), "1"))
        for name in ("outbound|8080||echo", "outbound|8080|v1|echo", "outbound|8080|v2|echo"):
            fake.push(ENDPOINT, response(ENDPOINT, "1-e", resources(ENDPOINT, st, [name]), "e" + name),
                      (name,))
        await client.start()
        assert set(cm.clusters) == {"xds_cluster", "outbound|8080||echo", "outbound|8080|v1|echo",
                                    "outbound|8080|v2|echo"}
        await settle(lambda: all(cm.get(n).hosts for n in client.eds))
        assert [h.address for h in cm.get("outbound|8080|v2|echo").hosts] == ["10.0.0.2"]
        before = dict(cm.clusters)
        # a new good cluster set, but one resource has a field the proxy does not support
        good = resources(CLUSTER, mesh_state(subsets("v1", "v2", "v3")))
        bad = copy.deepcopy(good)
        bad[0]["mystery_field"] = 1
        fake.push(CLUSTER, response(CLUSTER, "2-b", bad, "2"))
        await settle(lambda: client.cds.state.stats.update_rejected == 1)
        await settle(lambda: fake.last(CLUSTER).get("response_nonce") == "2")
        nack = fake.last(CLUSTER)
        assert nack["version_info"] == "1-a" and nack["error_detail"]["code"] == 13
        assert "cluster[0:outbound|8080||echo]: unsupported field 'mystery_field'" in nack["error_detail"]["message"]
        assert cm.clusters == before                      # same Cluster objects: nothing applied
        assert set(client.eds) == set(before) - {"xds_cluster"}
        # the good version is applied and ACKed; v3 gets its own EDS subscription
        fake.push(CLUSTER, response(CLUSTER, "3-c", good, "3"))
        await settle(lambda: fake.last(CLUSTER).get("version_info") == "3-c")
        assert "outbound|8080|v3|echo" in cm.clusters and "outbound|8080|v3|echo" in client.eds
        assert cm.get("outbound|8080|v1|echo") is before["outbound|8080|v1|echo"]   # unchanged: kept
        # CDS removes v3 and v2: clusters and EDS subscriptions go
        fake.push(CLUSTER, response(CLUSTER, "4-d", resources(CLUSTER, mesh_state(subsets("v1"))), "4"))
        await settle(lambda: fake.last(CLUSTER).get("version_info") == "4-d")
        assert set(cm.clusters) == {"xds_cluster", "outbound|8080||echo", "outbound|8080|v1|echo"}
        assert set(client.eds) == {"outbound|8080||echo", "outbound|8080|v1|echo"}
        text = server.stats.render_text()
        assert "cluster_manager.cds.update_rejected: 1" in text and "cluster_manager.cds.version: 4" in text
        assert "cluster.outbound|8080|v1|echo.update_success: 1" in text
        prom = server.stats.render_prometheus().decode()     # (counter/gauge typing is stats.py's)
        assert re.search(r"^envoy_cluster_manager_cds_update_rejected(_total)? 1\.0$", prom, re.M)
        assert re.search(r'^envoy_cluster_update_rejected(_total)?\{envoy_cluster_name="outbound\|8080\|v1\|echo"\} '
                         r"0\.0$", prom, re.M)
        assert re.search(r"^envoy_control_plane_connected(_total)? 1\.0$", prom, re.M)
        await client.stop()
        server.cluster_manager.stop()
    asyncio.run(asyncio.wait_for(go(), 20))


def test_eds_nack_keeps_endpoints_and_failures_show_staleness():
    async def go():
        fake, clock = FakeControlPlane(), Clock()
        server, client = make_client(fake, clock)
        cm = server.cluster_manager
        st = mesh_state("")
        fake.push(CLUSTER, response(CLUSTER, "1-a", resources(CLUSTER, st), "1"))
        fake.push(ENDPOINT, response(ENDPOINT, "1-e", resources(ENDPOINT, st, ["outbound|8080||echo"]), "2"),
                  ("outbound|8080||echo",))
        await client.start()
        c = cm.get("outbound|8080||echo")
        await settle(lambda: len(c.hosts) == 2)
        bad = resources(ENDPOINT, st, ["outbound|8080||echo"])
        bad[0]["endpoints"][0]["lb_endpoints"][1]["load_balancing_weight"] = 0
        fake.push(ENDPOINT, response(ENDPOINT, "2-e", bad, "3"), ("outbound|8080||echo",))
        await settle(lambda: client.eds_stats["outbound|8080||echo"].update_rejected == 1)
        assert [h.address for h in c.hosts] == ["10.0.0.1", "10.0.0.2"]
        assert "must be at least 1" in client.eds["outbound|8080||echo"].state.last_error
        assert client.connected
        # the control plane goes away: requests fail, the config stays, staleness grows
        fake.push(CLUSTER, OSError("connection refused"))
        await settle(lambda: client.cds.state.stats.update_failure == 1)
        clock.t += 7.5
        text = server.stats.render_text()
        assert "control_plane.connected: 0" in text
        assert "control_plane.seconds_since_last_update: 7.5" in text
        assert "cluster_manager.cds.update_failure: 1" in text and len(c.hosts) == 2
        fake.push(CLUSTER, 304)          # back: a held poll answered "nothing new"
        await settle(lambda: client.connected)
        assert "control_plane.seconds_since_last_update: 0.0" in server.stats.render_text()
        await client.stop()
        server.cluster_manager.stop()
    asyncio.run(asyncio.wait_for(go(), 20))


def test_rds_bad_route_keeps_the_old_table():
    async def go():
        fake = FakeControlPlane()
        server, client = make_client(fake)
        from proxy.xds.protocol import ListenerUpdate, ConfigSource
        from proxy.config.listener import parse_listener
        spec = parse_listener(Obj(plain(resources(LISTENER))[0], "l"), 0)
        from proxy.http.hcm import HcmConfig

        class Lst:      # a listener without a socket: only its HCM config matters here
            def __init__(self):
                self.spec, self.config = spec, HcmConfig(spec.filter, server.ctx, spec.name)
        server.listener_manager.listeners["virtualOutbound"] = Lst()
        client._reconcile_rds(ListenerUpdate((spec,), {"15001": ConfigSource("xds_cluster", 0.01, 1.0)}))
        fake.push(ROUTE, response(ROUTE, "1-r", resources(ROUTE, names=["15001"]), "1"), ("15001",))
        hcm = server.listener_manager.listeners["virtualOutbound"].config
        await settle(lambda: hcm.route_table is not None)
        table = hcm.route_table
        bad = resources(ROUTE, names=["15001"])
        bad[0]["virtual_hosts"][0]["routes"][0]["route"]["retry_policy"]["retry_on"] = "nonsense"
        bad[0]["virtual_hosts"][0]["routes"][0]["match"]["magic"] = True
        fake.push(ROUTE, response(ROUTE, "2-r", bad, "2"), ("15001",))
        await settle(lambda: client.rds_stats["15001"].update_rejected == 1)
        assert hcm.route_table is table
        assert "http.outbound_0.rds.15001.update_rejected: 1" in server.stats.render_text()
        await client.stop()
    asyncio.run(asyncio.wait_for(go(), 20))
