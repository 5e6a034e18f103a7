"""Real Envoy speaks mTLS with Citadel material (file-based SDS) to minimesh's tls_io:
Envoy as the client sidecar verifies our server's SPIFFE ID (wrong SAN -> 503 UF), Envoy as
the server sidecar requires our client certificate (plaintext and foreign CA refused),
rotation through the SDS files, and revocation through the inline CRL."""
from __future__ import annotations

import asyncio
import http.client
import json
import time

import pytest

from tests.integration.test_mtls import REVIEWS, MiniHTTP, http_get, material
from tests.support.ports import free_ports
from tests.support.procs import start_proxy
from testbed.mesh.citadel.ca import CertificateAuthority
from testbed.mesh.citadel.envoy import (crl_pem, downstream_tls_context, upstream_tls_context,
                                        write_sds)
from proxy.tls.context import MeshTLS, PeerRejected
from proxy.tls.sockets import open_mtls_stream, start_inbound

RATINGS = "spiffe://cluster.local/ns/default/sa/ratings"
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"


def hcm(routes: dict) -> dict:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                 ".v3.HttpConnectionManager",
        "stat_prefix": "ingress", "route_config": {"virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, **routes}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}


def bootstrap(admin: int, listeners: list, clusters: list) -> str:
    return json.dumps({"node": {"id": "sidecar~127.0.0.1~test~test", "cluster": "test"},
                       "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                  "port_value": admin}}},
                       "static_resources": {"listeners": listeners, "clusters": clusters}})


def listener(name: str, port: int, chain: dict) -> dict:
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                          "port_value": port}},
            "filter_chains": [chain]}


def cluster(name: str, port: int, transport_socket: dict) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "transport_socket": transport_socket,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": port}}}}]}]}}


def get(port: int, path: str = "/") -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def stat(proxy, name: str) -> int:
    for line in proxy.admin_get("/stats")[1].splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return 0


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority(max_ttl_s=3600)


def test_envoy_client_sidecar_verifies_our_server(ca, tmp_path, envoy_bin):
    """app -> Envoy (plaintext in, mTLS out with SAN check) -> tls_io STRICT server."""
    write_sds(material(ca, "productpage"), tmp_path)
    admin, front = free_ports(2)

    async def main():
        srv_tls = MeshTLS(material(ca, "reviews"))
        srv = await start_inbound(lambda p: MiniHTTP(p, srv_tls), "127.0.0.1", 0, srv_tls)
        port = srv.sockets[0].getsockname()[1]
        cfg = bootstrap(admin, [listener("out", front, {"filters": [hcm({"route": {
            "cluster": "reviews"}})]})], [
            cluster("reviews", port, upstream_tls_context(tmp_path, [REVIEWS])),
            cluster("wrong", port, upstream_tls_context(tmp_path, [RATINGS]))])
        loop = asyncio.get_running_loop()
        try:
            with start_proxy("envoy", cfg, admin) as envoy:
                ok = await loop.run_in_executor(None, get, front)
                cfg_wrong = cfg.replace('"cluster": "reviews"', '"cluster": "wrong"')
                envoy_stats = stat(envoy, "cluster.reviews.ssl.handshake")
            with start_proxy("envoy", cfg_wrong, admin) as envoy:
                bad = await loop.run_in_executor(None, get, front)
                san_fail = stat(envoy, "cluster.wrong.ssl.fail_verify_san")
            return ok, envoy_stats, bad, san_fail, srv_tls.stats
        finally:
            srv.close()
            await srv.wait_closed()

    ok, handshakes, bad, san_fail, srv_stats = asyncio.run(asyncio.wait_for(main(), 90))
    assert ok[0] == 200 and ok[1].startswith("hello cluster.local/ns/default/sa/productpage")
    assert handshakes >= 1 and srv_stats["ssl.handshake"] >= 1
    assert bad[0] == 503 and san_fail >= 1


def test_envoy_server_sidecar_requires_our_client_cert(ca, tmp_path, envoy_bin):
    """tls_io client -> Envoy STRICT listener (DownstreamTlsContext) -> direct response."""
    write_sds(material(ca, "reviews"), tmp_path)
    admin, inbound = free_ports(2)
    chain = {"filters": [hcm({"direct_response": {"status": 200, "body": {
        "inline_string": "envoy ok"}}})],
        "transport_socket": downstream_tls_context(tmp_path, [PRODUCTPAGE])}
    cfg = bootstrap(admin, [listener("in", inbound, chain)], [])

    async def main(envoy):
        out = {}
        r, w, peer = await open_mtls_stream("127.0.0.1", inbound,
                                            MeshTLS(material(ca, "productpage")), REVIEWS)
        out["ok"] = await http_get(r, w)
        out["peer"] = peer
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", inbound)
        w.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        try:
            out["plain"] = await r.read()
        except ConnectionResetError:
            out["plain"] = b""
        w.close()
        for label, cli in (("foreign", material(CertificateAuthority(), "productpage",
                                                bundle=ca.trust_bundle_pem())),
                           ("wrong_san", material(ca, "ratings"))):
            try:
                r, w, _ = await open_mtls_stream("127.0.0.1", inbound, MeshTLS(cli), REVIEWS)
                out[label] = await http_get(r, w)
                w.close()
            except (PeerRejected, ConnectionError, asyncio.IncompleteReadError, IndexError,
                    OSError) as e:
                out[label] = type(e).__name__
        # rotation: new server material through the SDS files, Envoy reloads it
        new = material(ca, "reviews")
        write_sds(new, tmp_path)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r, w, peer = await open_mtls_stream("127.0.0.1", inbound,
                                                MeshTLS(material(ca, "productpage")), REVIEWS)
            w.close()
            if peer.serial == new.serial:
                break
            await asyncio.sleep(0.2)
        out["rotated"] = peer.serial == new.serial
        # revocation: CRL pushed through ca.json, Envoy refuses the revoked client
        victim = material(ca, "productpage")
        ca.revoke(victim.serial)
        write_sds(new, tmp_path, crl_pem(ca))
        await asyncio.sleep(1.0)
        try:
            r, w, _ = await open_mtls_stream("127.0.0.1", inbound, MeshTLS(victim), REVIEWS)
            out["revoked"] = await http_get(r, w)
        except (ConnectionError, asyncio.IncompleteReadError, IndexError, OSError) as e:
            out["revoked"] = type(e).__name__
        r, w, _ = await open_mtls_stream("127.0.0.1", inbound,
                                         MeshTLS(material(ca, "productpage")), REVIEWS)
        out["after_crl_ok"] = await http_get(r, w)
        w.close()
        out["verify_errors"] = stat(envoy, "listener.127.0.0.1_%d.ssl.fail_verify_error"
                                    % inbound)
        out["san_errors"] = stat(envoy, "listener.127.0.0.1_%d.ssl.fail_verify_san" % inbound)
        return out

    with start_proxy("envoy", cfg, admin) as envoy:
        out = asyncio.run(asyncio.wait_for(main(envoy), 90))
    print("\nenvoy server:", {k: v for k, v in out.items() if k != "peer"})
    assert out["ok"] == (200, b"envoy ok") and out["peer"].spiffe_id == REVIEWS
    assert out["plain"] == b""
    assert out["foreign"] != (200, b"envoy ok") and out["wrong_san"] != (200, b"envoy ok")
    assert out["rotated"]
    assert out["revoked"] != (200, b"envoy ok") and out["after_crl_ok"] == (200, b"envoy ok")
    assert out["verify_errors"] >= 2 and out["san_errors"] >= 1  # foreign + revoked; ratings


POLICIES = """
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer}
spec:
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/productpage"]}
    - source: {namespaces: ["test"]}
    to:
    - operation: {methods: ["GET", "HEAD"], paths: ["/reviews/*"]}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: admins}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: ["*/sa/admin"]}}]}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: no-mallory}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[x-user]", values: ["mallory", "eve*"]}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: no-delete-outside-reviews}
spec:
  action: DENY
  rules:
  - from: [{source: {notPrincipals: ["cluster.local/ns/default/sa/admin"]}}]
    to: [{operation: {methods: ["DELETE"], notPaths: ["/reviews/*"]}}]
"""


def test_envoy_rbac_agrees_with_decide(ca, tmp_path, envoy_bin):
    """Differential: the same Istio policies, translated by security_envoy.rbac_filters,
    give real Envoy the same 200/403 verdicts as security.decide over 64 requests."""
    from testbed.mesh.rules.policy import AuthzRequest, decide
    from proxy.tls.identity import SpiffeId
    from testbed.mesh.pilot.rbac import rbac_filters
    from testbed.mesh.rules.security import parse_security
    from proxy.tls.context import Material

    policies, msgs = parse_security(POLICIES, "policies.yaml")
    assert msgs == [] and len(policies) == 4
    write_sds(material(ca, "reviews"), tmp_path)
    admin, inbound = free_ports(2)
    chain_hcm = hcm({"direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
    cfg_hcm = chain_hcm["typed_config"]
    cfg_hcm["http_filters"] = rbac_filters(policies) + cfg_hcm["http_filters"]
    cfg = bootstrap(admin, [listener("in", inbound, {
        "filters": [chain_hcm], "transport_socket": downstream_tls_context(tmp_path)})], [])

    def ident(svc: str, ns: str = "default") -> Material:
        i = ca.issue(SpiffeId.make(svc, ns))
        return Material(i.spiffe_id.uri, i.cert_chain_pem, i.private_key_pem,
                        ca.trust_bundle_pem(), i.not_after, i.serial)

    callers = {"productpage": ident("productpage"), "admin": ident("admin"),
               "ratings": ident("ratings"), "spy(test)": ident("spy", "test")}
    cases = [(c, m, p, u) for c in callers for m in ("GET", "DELETE")
             for p in ("/reviews/1", "/admin?x=1") for u in ("", "alice", "mallory", "eve2")]

    async def main():
        got = {}
        for caller, mat in callers.items():
            r, w, _ = await open_mtls_stream("127.0.0.1", inbound, MeshTLS(mat), REVIEWS)
            for c, method, path, user in cases:
                if c != caller:
                    continue
                hdr = f"x-user: {user}\r\n" if user else ""
                w.write(f"{method} {path} HTTP/1.1\r\nhost: reviews\r\n{hdr}\r\n".encode())
                status = int((await r.readline()).split()[1])
                length = 0
                while (line := await r.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await r.readexactly(length)
                got[(c, method, path, user)] = status
            w.close()
        return got

    with start_proxy("envoy", cfg, admin) as envoy:
        got = asyncio.run(asyncio.wait_for(main(), 60))
        denied = stat(envoy, "http.ingress.rbac.denied")
    want = {}
    for caller, method, path, user in cases:
        principal = SpiffeId.parse(callers[caller].spiffe_id).principal
        ok, _ = decide(policies, AuthzRequest(principal, method, path,
                                              {"x-user": user} if user else {}))
        want[(caller, method, path, user)] = 200 if ok else 403
    print(f"\nenvoy rbac differential: {len(want)} requests, "
          f"{list(want.values()).count(200)} allowed, {list(want.values()).count(403)} denied")
    assert got == want
    assert 0 < list(want.values()).count(200) < len(want)  # the table exercises both outcomes
    assert denied == list(want.values()).count(403)


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE", "DISABLE"])
def test_envoy_inbound_modes(ca, tmp_path, envoy_bin, mode):
    """citadel_envoy.inbound_chains: which of mTLS / plaintext real Envoy accepts per mode."""
    from testbed.mesh.citadel.envoy import inbound_chains
    write_sds(material(ca, "reviews"), tmp_path)
    admin, inbound = free_ports(2)
    filters = [hcm({"direct_response": {"status": 200, "body": {"inline_string": "ok"}}})]
    lst = {"name": "in", "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": inbound}},
           **inbound_chains(mode, tmp_path, filters)}
    cfg = bootstrap(admin, [lst], [])

    async def main():
        out = {}
        try:
            r, w, _ = await open_mtls_stream("127.0.0.1", inbound,
                                             MeshTLS(material(ca, "productpage")), REVIEWS)
            out["mtls"] = (await http_get(r, w))[0]
            w.close()
        except (PeerRejected, OSError, asyncio.IncompleteReadError, IndexError):
            out["mtls"] = None
        try:
            r, w = await asyncio.open_connection("127.0.0.1", inbound)
            out["plain"] = (await http_get(r, w))[0]
            w.close()
        except (OSError, asyncio.IncompleteReadError, IndexError):
            out["plain"] = None
        return out

    with start_proxy("envoy", cfg, admin):
        out = asyncio.run(asyncio.wait_for(main(), 30))
    assert out == {"STRICT": {"mtls": 200, "plain": None},
                   "PERMISSIVE": {"mtls": 200, "plain": 200},
                   "DISABLE": {"mtls": None, "plain": 200}}[mode]
