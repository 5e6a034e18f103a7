"""istioctl-style inspection without root: the tables of `proxy-config` built from the
admin output of a real minimesh-proxy (a client sidecar) and a real Envoy (an echo
sidecar), captured from one mesh (tests/configs/inspection/, trimmed to the config dump
sections the commands read; Envoy redacts the private key); `proxy-status`'s table;
`describe` from Pilot's state; the shell commands' glue and errors on a stand-in mesh."""
from __future__ import annotations

import datetime as dt
import json
import types
from pathlib import Path

import pytest

from testbed.cli.inspection import (cli_describe, cli_proxy_config, cli_proxy_status, cluster_rows, endpoint_rows,
                                    format_describe, format_proxy_status, listener_rows, proxy_version, route_rows,
                                    secret_rows)
from testbed.cli.shell_commands import CLIUsageError
from testbed.mesh.pilot.describe import DescribeError, describe_service
from testbed.mesh.pilot.server import Pilot
from tests.support.pilot import echo_endpoints, echo_service

D = Path(__file__).resolve().parents[1] / "configs" / "inspection"
NOW = dt.datetime(2026, 12, 5, 18, 10, tzinfo=dt.timezone.utc)      # within the captured certificates' lives


def dump(kind: str) -> dict:
    return json.loads((D / f"{kind}-config_dump.json").read_text())


def clusters_json(kind: str) -> dict:
    return json.loads((D / f"{kind}-clusters.json").read_text())


OUTBOUND = [("echo", "8080", "-", "outbound", "EDS", "mTLS"), ("echo", "8080", "v1", "outbound", "EDS", "mTLS"),
            ("echo", "8080", "v2", "outbound", "EDS", "mTLS"), ("xds_cluster", "-", "-", "-", "STATIC", "-")]


@pytest.mark.parametrize("kind", ["minimesh", "envoy"])
def test_clusters_listeners_routes_alike_from_both_sidecars(kind):
    inbound = [("echo", "8080", "-", "inbound", "STATIC", "-")] if kind == "envoy" else []
    assert cluster_rows(dump(kind)) == [("SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "TLS"),
                                        *inbound, *OUTBOUND]
    lst = listener_rows(dump(kind))
    assert lst[:2] == [("NAME", "ADDRESS", "PORT", "MATCH", "DESTINATION"),
                       ("virtualOutbound", "0.0.0.0", "15001", "ALL", "Route: 15001")]
    if kind == "envoy":      # the server sidecar's inbound listener (the client sidecar has none)
        assert lst[2:] == [("inbound_8080", "10.0.0.2", "8080", "ALL", "Inline Route: inbound|8080||echo")]
    routes = route_rows(dump(kind))
    assert routes[0] == ("NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE")
    assert ("15001", "echo:8080", "echo +5 more", "prefix /", "echo") in routes
    assert len(routes) == len(set(routes))


@pytest.mark.parametrize("kind", ["minimesh", "envoy"])
def test_endpoints_and_secrets_from_both_sidecars(kind):
    eps = endpoint_rows(clusters_json(kind))
    assert eps[0] == ("ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER")
    assert ("10.0.0.2:8080", "HEALTHY", "OK", "outbound|8080|v1|echo") in eps
    assert ("10.0.0.3:8080", "HEALTHY", "OK", "outbound|8080|v2|echo") in eps
    sec = secret_rows(dump(kind), NOW)
    assert [r[:4] for r in sec] == [("RESOURCE NAME", "TYPE", "STATUS", "VALID CERT"),
                                    ("default", "Cert Chain", "ACTIVE", "true"), ("ROOTCA", "CA", "ACTIVE", "true")]
    assert sec[1][5] == "2026-12-05T18:5" + sec[1][5][15:] and int(sec[1][4], 16) > 0
    later = secret_rows(dump(kind), NOW + dt.timedelta(hours=2))       # the leaf has expired by then
    assert [r[3] for r in later[1:]] == ["false", "true"]


def test_proxy_version_column():
    assert proxy_version({"version": "6c2a3c3a/1.40.0/Clean/RELEASE/BoringSSL"}) == "envoy 1.40.0"
    assert proxy_version({"version": "minimesh-proxy/0.1.0"}) == "minimesh-proxy 0.1.0"
    assert proxy_version({}) == "?"


def test_proxy_status_table():
    body = {"generation": 7, "proxies": [
        {"node": "sidecar~10.0.0.2~echo-v1-0~echo", "types": {
            "CDS": {"status": "SYNCED"}, "LDS": {"status": "SYNCED"}, "EDS": {"status": "SYNCED"},
            "RDS": {"status": "STALE", "subscriptions": [{"error": "NACK of 7-ab: bad route"}]}}},
        {"node": "sidecar~10.0.0.9~gone-0~gone", "types": {}}]}
    names = {"sidecar~10.0.0.2~echo-v1-0~echo": "echo-v1-0", "sidecar~10.0.0.1~c~client": "client@c"}
    out = format_proxy_status(body, names, {"echo-v1-0": "envoy", "client@c": "minimesh-proxy"}).splitlines()
    assert out[0].split() == ["NAME", "NODE", "CDS", "LDS", "EDS", "RDS", "PILOT", "VERSION"]
    assert out[1].split() == ["echo-v1-0", "sidecar~10.0.0.2~echo-v1-0~echo", "SYNCED", "SYNCED", "SYNCED",
                              "STALE", "(NACK)", "generation", "7", "envoy"]
    assert out[2].split()[:3] == ["gone-0", "sidecar~10.0.0.9~gone-0~gone", "NOT"]     # Pilot knows, not running
    assert out[3].split()[:2] == ["client@c", "sidecar~10.0.0.1~c~client"]             # running, never asked
    assert out[3].count("NOT SENT") == 4


RULES = """\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: echo-strict, namespace: default}
spec: {selector: {matchLabels: {app: echo, version: v2}}, mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: echo, subset: v1}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
  - route: [{destination: {host: echo, subset: v1}}]
    timeout: 2s
"""


def test_describe_from_pilots_state():
    pilot = Pilot([echo_service(8080)], echo_endpoints(8080))
    assert list(describe_service(pilot.state, "echo")["mtls"]["clients"]) == ["outbound|8080||echo"]
    pilot.apply_texts([(RULES, "rules.yaml")])
    d = describe_service(pilot.state, "echo")
    assert d["service"] == {"name": "echo", "port": 8080, "versions": ["v1", "v2"]}
    assert [e["instance"] for e in d["endpoints"]] == ["echo-v1-0", "echo-v2-0"]
    (dr,) = d["destination_rules"]
    assert dr["where"] == "rules.yaml:6"
    assert [(s["name"], s["endpoints"]) for s in dr["subsets"]] == [("v1", ["echo-v1-0"]), ("v3", [])]
    (vs,) = d["virtual_services"]
    assert vs["routes"][0]["match"] == ["header end-user exact jason"]
    assert vs["routes"][0]["fault"]["abort_status"] == 500 and vs["routes"][1]["timeout_ms"] == 2000
    assert d["mtls"]["server"] == {"v1": "PERMISSIVE", "v2": "STRICT"}
    assert d["mtls"]["peer_authentications"] == ["default/echo-strict"]
    assert set(d["mtls"]["clients"].values()) == {True}          # a PeerAuthentication: auto mTLS
    text = format_describe(d)
    assert "subset v3 version=v3: NO ENDPOINTS" in text
    assert "   when header end-user exact jason -> echo/v1 100%; fault abort 500 (100%)\n" in text
    assert "   when any -> echo/v1 100%; timeout 2000 ms\n" in text
    assert "mTLS (server side, PeerAuthentication): v1 PERMISSIVE, v2 STRICT  [default/echo-strict]" in text
    with pytest.raises(DescribeError, match="no service 'nope'; services: echo"):
        describe_service(pilot.state, "nope")


class FakeAdmin:
    def __init__(self, answers: dict):
        self.answers = answers

    def request(self, method: str, url: str, body=None):
        return self.answers[url]


def fake_mesh(**answers) -> types.SimpleNamespace:
    texts = {("client@c", "/config_dump"): json.dumps(dump("minimesh")),
             ("client@c", "/clusters?format=json"): json.dumps(clusters_json("minimesh")),
             ("client@c", "/server_info"): json.dumps({"version": "minimesh-proxy/0.1.0"})}
    return types.SimpleNamespace(
        sidecar_nodes=lambda: {"client@c": "sidecar~10.0.0.1~c~client"}, sidecar_default="minimesh",
        instances=lambda: [], admin=FakeAdmin(answers), sidecar_admin=lambda name, path: texts[(name, path)])


def test_shell_commands_glue_and_errors():
    m = fake_mesh(**{"/proxy-status": (200, {"generation": 1, "proxies": []}),
                     "/describe?service=nope": (404, {"error": "no service 'nope'; services: echo"})})
    assert cli_proxy_config(m, "clusters client@c").splitlines()[1].split() == ["echo", "8080", "-", "outbound",
                                                                                "EDS", "mTLS"]
    assert cli_proxy_config(m, "cluster client@c -o json").startswith('{\n "@type": "type.googleapis.com/envoy.admin')
    assert "outbound|8080|v2|echo" in cli_proxy_config(m, "endpoints client@c")
    assert json.loads(cli_proxy_config(m, "endpoints client@c -o json"))["cluster_statuses"]
    for bad, msg in [("clusters", "usage: proxy-config clusters|listeners|routes|endpoints|secret NAME"),
                     ("pods client@c", "usage: proxy-config"), ("clusters nosuch", "no running sidecar 'nosuch'; "
                                                                "sidecars: client@c"),
                     ("clusters client@c -o yaml", "expected json or table")]:
        with pytest.raises(CLIUsageError, match=msg):
            cli_proxy_config(m, bad)
    row = cli_proxy_status(m, "").splitlines()[1]
    assert row.split()[0] == "client@c" and row.endswith("minimesh-proxy 0.1.0")   # running, not yet seen by Pilot
    assert json.loads(cli_proxy_status(m, "-o json")) == {"generation": 1, "proxies": []}
    with pytest.raises(CLIUsageError, match="no service 'nope'"):
        cli_describe(m, "nope")
    for cmd in (cli_proxy_status, cli_describe):
        with pytest.raises(CLIUsageError, match="this topology has no mesh: section"):
            cmd(None, "x" if cmd is cli_describe else "")
