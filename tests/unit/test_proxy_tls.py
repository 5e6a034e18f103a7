"""proxy/tls/transport.py + proxy/tls/sds.py: Envoy's transport_socket config in minimesh-proxy.

Parsing (STRICT/PERMISSIVE/DISABLE chains as Pilot and citadel_envoy emit them, upstream
contexts with SPIFFE SANs, errors in the user's words) and, on loopback in one process, two
minimesh-proxy Servers with file-based certificates: client sidecar -> mTLS -> server sidecar
-> upstream, SPIFFE check of the server (wrong SAN -> 503 UF), plaintext refused by STRICT,
a foreign CA refused.
"""
from __future__ import annotations

import asyncio
import copy
import logging
from pathlib import Path

import pytest

from proxy.config.bootstrap import parse_bootstrap
from proxy.config.cluster import parse_cluster
from proxy.config.listener import parse_listener
from proxy.config.reader import ConfigError, Obj
from proxy.server import Server
from tests.support.http_peers import Upstream, http_request
from testbed.mesh.citadel.ca import CertificateAuthority
from testbed.mesh.citadel.envoy import inbound_chains, upstream_tls_context
from proxy.tls.identity import SpiffeId

HCM_T = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
SLEEP, ECHO = SpiffeId.make("sleep").uri, SpiffeId.make("echo").uri


def hcm(prefix: str, cluster: str) -> dict:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM_T, "stat_prefix": prefix, "route_config": {"name": "r", "virtual_hosts": [{
            "name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
                                                         "route": {"cluster": cluster}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router"}]}}


def listener(port: int, chains: dict, prefix: str = "in", cluster: str = "app") -> dict:
    return {"name": f"l{port}", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            **chains}


def file_tls(d: Path, kind: str, sans=()) -> dict:
    common = {"tls_certificates": [{"certificate_chain": {"filename": str(d / "cert.pem")},
                                    "private_key": {"filename": str(d / "key.pem")}}],
              "validation_context": {"trusted_ca": {"filename": str(d / "ca.pem")},
                                     "match_typed_subject_alt_names": [
                                         {"san_type": "URI", "matcher": {"exact": s}} for s in sans]}}
    t = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3." + kind
    cfg = {"@type": t, "common_tls_context": common}
    if kind == "DownstreamTlsContext":
        cfg["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": cfg}


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE", "DISABLE"])
def test_inbound_chains_map_to_modes(mode: str) -> None:
    spec = parse_listener(Obj(listener(1, inbound_chains(mode, "/sds", [hcm("in", "app")])), "l"), 0)
    assert (spec.tls.mode if spec.tls else "DISABLE") == mode
    if spec.tls:
        assert (spec.tls.context.cert_secret, spec.tls.context.ca_secret) == ("default", "ROOTCA")


def test_upstream_context_carries_the_spiffe_san() -> None:
    c = parse_cluster(Obj({"name": "c", "connect_timeout": "1s",
                           "transport_socket": upstream_tls_context("/sds", [ECHO])}, "c"))
    assert c.tls.sans == (ECHO,) and c.tls.cert_secret == "default"
    assert parse_cluster(Obj({"name": "c"}, "c")).tls is None


@pytest.mark.parametrize("mutate,needle", [
    (lambda lst: lst["filter_chains"][0]["transport_socket"]["typed_config"].update(
        require_client_certificate=False), "mutual TLS only"),
    (lambda lst: lst["filter_chains"].append(copy.deepcopy(lst["filter_chains"][0])), "filter chains"),
    (lambda lst: lst["filter_chains"][0]["transport_socket"].update(name="envoy.transport_sockets.alts"),
     "unsupported transport socket"),
    (lambda lst: lst["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
     ["combined_validation_context"]["default_validation_context"]
     .update(match_typed_subject_alt_names=[{"san_type": "URI", "matcher": {"exact": "echo"}}]),
     "not a SPIFFE URI"),
    (lambda lst: lst["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
     ["tls_params"].update(tls_maximum_protocol_version="TLSv1_2"), "TLS 1.3 only"),
])
def test_bad_tls_config_is_rejected_with_the_field(mutate, needle: str) -> None:
    raw = listener(1, inbound_chains("STRICT", "/sds", [hcm("in", "app")]))
    mutate(raw)
    with pytest.raises(ConfigError) as e:
        parse_listener(Obj(raw, "listeners[0]"), 0)
    assert needle in str(e.value) and "listeners[0]" in str(e.value)


def test_permissive_chains_must_share_filters() -> None:
    raw = listener(1, inbound_chains("PERMISSIVE", "/sds", [hcm("in", "app")]))
    raw["filter_chains"][1]["filters"] = [hcm("other", "app")]
    with pytest.raises(ConfigError, match="same network filters"):
        parse_listener(Obj(raw, "l"), 0)


# ------------------------------------------------------------------ on loopback
def write_identity(ca: CertificateAuthority, service: str, d: Path, bundle: bytes | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    i = ca.issue(SpiffeId.make(service))
    (d / "cert.pem").write_bytes(i.cert_chain_pem)
    (d / "key.pem").write_bytes(i.private_key_pem)
    (d / "ca.pem").write_bytes(bundle or ca.trust_bundle_pem())
    return d


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def sidecars(tmp: Path, up_port: int, expect: str, client_ca: CertificateAuthority | None = None,
                   server_sans: tuple[str, ...] = ()):
    ca = CertificateAuthority()
    server_dir = write_identity(ca, "echo", tmp / "echo")
    client_dir = write_identity(client_ca or ca, "sleep", tmp / "sleep",
                                bundle=ca.trust_bundle_pem())
    server = Server(parse_bootstrap({"static_resources": {
        "listeners": [listener(0, {"filter_chains": [{
            "filters": [hcm("inbound", "app")],
            "transport_socket": file_tls(server_dir, "DownstreamTlsContext", server_sans)}]})],
        "clusters": [{"name": "app", "connect_timeout": "1s", "load_assignment": {"cluster_name": "app", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": up_port}}}}]}]}}]}}))
    await server.start()
    in_port = server.listener_manager.bound_port("l0")
    client = Server(parse_bootstrap({"static_resources": {
        "listeners": [listener(0, {"filter_chains": [{"filters": [hcm("outbound", "echo")]}]})],
        "clusters": [{"name": "echo", "connect_timeout": "1s",
                      "transport_socket": file_tls(client_dir, "UpstreamTlsContext", [expect]),
                      "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [
                          {"endpoint": {"address": {"socket_address": {
                              "address": "127.0.0.1", "port_value": in_port}}}}]}]}}]}}))
    await client.start()
    return server, client, in_port, client.listener_manager.bound_port("l0")


async def _mtls_roundtrip(tmp: Path, expect: str, client_ca=None, server_sans: tuple[str, ...] = ()):
    async with Upstream() as up:
        server, client, in_port, out_port = await sidecars(tmp, up.port, expect, client_ca, server_sans)
        try:
            via = [await http_request(out_port) for _ in range(20)]
            plain = []
            for _ in range(20):
                try:
                    plain.append((await http_request(in_port, timeout=2)).status)
                except (ConnectionError, asyncio.IncompleteReadError, OSError, asyncio.TimeoutError):
                    plain.append(0)
            return ([r.status for r in via], plain, client.stats.render_text(), server.stats.render_text(),
                    len(up.requests) if hasattr(up, "requests") else None)
        finally:
            await client.stop()
            await server.stop()


def test_sidecar_to_sidecar_mtls_and_strict_refuses_plaintext(tmp_path: Path) -> None:
    via, plain, cstats, sstats, _ = asyncio.run(_mtls_roundtrip(tmp_path, ECHO))
    assert via == [200] * 20
    assert plain == [0] * 20
    assert "cluster.echo.ssl.handshake: " in cstats
    assert "listener.127.0.0.1_" in sstats and ".ssl.rejected.plaintext: 20" in sstats


def test_client_refuses_a_server_with_the_wrong_spiffe_id(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, "minimesh.mtls")
    via, _, cstats, _, _ = asyncio.run(_mtls_roundtrip(tmp_path, SpiffeId.make("reviews").uri))
    assert via == [503] * 20
    assert "cluster.echo.ssl.rejected.wrong_san: 20" in cstats
    assert "cluster.echo.upstream_cx_connect_fail: 20" in cstats
    assert f"reason=wrong_san: peer is {ECHO}, expected {SpiffeId.make('reviews').uri}" in caplog.text


def test_server_refuses_a_client_from_a_foreign_ca(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, "minimesh.mtls")
    via, _, _, sstats, _ = asyncio.run(_mtls_roundtrip(tmp_path, ECHO, client_ca=CertificateAuthority()))
    assert via == [503] * 20
    assert ".ssl.rejected.foreign_ca: 20" in sstats
    assert "reason=foreign_ca" in caplog.text


def test_sds_secret_without_citadel_is_a_clear_startup_error(tmp_path: Path) -> None:
    from proxy.errors import StartupError
    port = free_port()
    b = parse_bootstrap({"static_resources": {"listeners": [
        listener(port, inbound_chains("STRICT", "/sds", [hcm("in", "app")]))],
        "clusters": [{"name": "app", "connect_timeout": "1s"}]}})

    async def go():
        s = Server(b)
        try:
            await s.start()
        finally:
            await s.stop()
    with pytest.raises(StartupError, match="node.metadata.CITADEL"):
        asyncio.run(go())


def test_server_listener_san_list_refuses_other_clients(tmp_path: Path, caplog) -> None:
    """DownstreamTlsContext match_typed_subject_alt_names: only listed client identities."""
    caplog.set_level(logging.WARNING, "minimesh.mtls")
    via, _, _, sstats, _ = asyncio.run(_mtls_roundtrip(tmp_path, ECHO,
                                                       server_sans=(SpiffeId.make("productpage").uri,)))
    assert via == [503] * 20
    assert ".ssl.rejected.wrong_san: 20" in sstats
    assert f"reason=wrong_san: client is {SLEEP}, listener accepts" in caplog.text
    via, _, _, _, _ = asyncio.run(_mtls_roundtrip(tmp_path / "ok", ECHO, server_sans=(SLEEP,)))
    assert via == [200] * 20
