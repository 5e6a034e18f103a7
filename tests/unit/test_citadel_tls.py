"""tls.py contexts and checks, with in-memory handshakes (ssl.MemoryBIO, no sockets)."""
from __future__ import annotations

import logging
import ssl
import time
from dataclasses import replace

import pytest

from testbed.mesh.citadel.ca import CertificateAuthority
from proxy.tls.context import (Material, MeshTLS, PeerRejected, client_context,
                              describe_tls_error, peer_spiffe_id, server_context, verify_peer)
from proxy.tls.identity import DISABLE, PERMISSIVE, STRICT, SpiffeId


def material(ca: CertificateAuthority, service: str, bundle: bytes | None = None,
             **kw) -> Material:
    i = ca.issue(SpiffeId.make(service), **kw)
    return Material(i.spiffe_id.uri, i.cert_chain_pem, i.private_key_pem,
                    bundle or ca.trust_bundle_pem(), i.not_after, i.serial, ca.revoked())


def handshake(sctx: ssl.SSLContext, cctx: ssl.SSLContext):
    """Run a TLS handshake in memory; returns (server, client) SSLObjects or raises the
    first side's error (TLS 1.3: a rejected client certificate fails on the server)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = sctx.wrap_bio(s_in, s_out, server_side=True)
    cli = cctx.wrap_bio(c_in, c_out, server_side=False, server_hostname=None)
    done = {srv: False, cli: False}
    for _ in range(10):
        for obj in (cli, srv):
            if not done[obj]:
                try:
                    obj.do_handshake()
                    done[obj] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return srv, cli
    raise AssertionError("handshake did not finish")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


def test_mutual_handshake_tls13_and_spiffe_ids(ca):
    srv, cli = handshake(server_context(material(ca, "reviews")),
                         client_context(material(ca, "productpage")))
    assert srv.version() == cli.version() == "TLSv1.3"
    assert srv.selected_alpn_protocol() == "http/1.1"
    assert peer_spiffe_id(srv) == "spiffe://cluster.local/ns/default/sa/productpage"
    assert peer_spiffe_id(cli) == "spiffe://cluster.local/ns/default/sa/reviews"
    peer = verify_peer(srv)
    assert peer.principal == "cluster.local/ns/default/sa/productpage" and peer.tls


def test_server_requires_client_certificate(ca):
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=ca.trust_bundle_pem().decode())
    with pytest.raises(ssl.SSLError) as e:
        handshake(server_context(material(ca, "reviews")), bare)
    assert describe_tls_error(e.value)[0] == "no_client_cert"


def test_modes(ca):
    m = material(ca, "reviews")
    assert server_context(m, DISABLE) is None
    assert server_context(m, PERMISSIVE).verify_mode == ssl.CERT_REQUIRED
    assert server_context(m, STRICT).minimum_version == ssl.TLSVersion.TLSv1_3
    with pytest.raises(ValueError, match="STRICT, PERMISSIVE or DISABLE"):
        server_context(m, "strict")


def test_foreign_ca_client_rejected_by_server(ca):
    other = CertificateAuthority()
    # the intruder trusts our root (so its side completes) but its cert is from `other`
    intruder = material(other, "productpage", bundle=ca.trust_bundle_pem())
    with pytest.raises(ssl.SSLCertVerificationError) as e:
        handshake(server_context(material(ca, "reviews")), client_context(intruder))
    reason, detail = describe_tls_error(e.value)
    assert reason == "foreign_ca" and "trust bundle" in detail


def test_expired_server_certificate_rejected_by_client(ca):
    short = CertificateAuthority(default_ttl_s=1)
    expired = material(short, "reviews")
    time.sleep(max(0.0, expired.not_after - time.time()) + 1.05)
    with pytest.raises(ssl.SSLCertVerificationError) as e:
        handshake(server_context(expired), client_context(material(short, "productpage")))
    assert describe_tls_error(e.value) == ("expired", "peer certificate has expired "
                                                      "(certificate has expired)")


def test_wrong_san_and_revoked(ca):
    srv, cli = handshake(server_context(material(ca, "ratings")),
                         client_context(material(ca, "productpage")))
    with pytest.raises(PeerRejected) as e:
        verify_peer(cli, expected={"spiffe://cluster.local/ns/default/sa/reviews"})
    assert e.value.reason == "wrong_san" and "peer is spiffe://cluster.local/ns/default/sa/" \
        "ratings, expected spiffe://cluster.local/ns/default/sa/reviews" in e.value.detail
    serial = verify_peer(cli).serial
    with pytest.raises(PeerRejected, match="revoked"):
        verify_peer(cli, revoked={serial})


def test_root_rotation_overlap_handshakes():
    clock = [time.time()]  # OpenSSL checks validity against the real time
    ca = CertificateAuthority(default_ttl_s=100, clock=lambda: clock[0])
    old_leaf = material(ca, "productpage")  # signed by root 1, bundle [1]
    ca.rotate_root(activate_after_s=0, overlap_s=50)
    new_server = material(ca, "reviews")  # signed by root 2, bundle [1, 2]
    srv, _ = handshake(server_context(new_server),
                       client_context(replace(old_leaf, trust_bundle_pem=ca.trust_bundle_pem())))
    assert peer_spiffe_id(srv).endswith("/sa/productpage")  # old-root leaf still trusted
    with pytest.raises(ssl.SSLCertVerificationError) as e:  # stale bundle: new root unknown
        handshake(server_context(new_server), client_context(old_leaf))
    assert describe_tls_error(e.value)[0] == "foreign_ca"


def test_keylog_file_written(ca, tmp_path):
    kl = tmp_path / "keys.log"
    handshake(server_context(material(ca, "reviews"), keylog_filename=str(kl)),
              client_context(material(ca, "productpage")))
    labels = {line.split()[0] for line in kl.read_text().splitlines()
              if line and not line.startswith("#")}
    assert {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"} <= labels


def test_meshtls_caches_and_logs_rejections(ca, caplog):
    tls = MeshTLS(material(ca, "reviews"))
    a = tls.client_ctx("spiffe://cluster.local/ns/default/sa/x")
    assert tls.client_ctx("spiffe://cluster.local/ns/default/sa/x") is a
    assert a.expected_spiffe_ids == {"spiffe://cluster.local/ns/default/sa/x"}
    s = tls.server_ctx()
    tls.update(material(ca, "reviews"))
    assert tls.server_ctx() is not s and tls.client_ctx("spiffe://cluster.local/ns/default/sa/x") \
        is not a
    with caplog.at_level(logging.WARNING, "minimesh.mtls"):
        tls.reject("inbound", ("10.0.0.1", 4242), "expired", "peer certificate has expired")
    assert "mtls: REJECT inbound 10.0.0.1:4242 reason=expired: peer certificate has expired" \
        in caplog.text
    assert tls.stats["ssl.rejected.expired"] == 1 and tls.stats["ssl.connection_error"] == 1
    with pytest.raises(RuntimeError, match="never called"):
        MeshTLS().server_ctx()
