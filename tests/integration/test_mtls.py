"""mTLS between two loopback "sidecars" (asyncio, real sockets, no namespaces needed).

STRICT rejects 100 % of plaintext, PERMISSIVE takes both, foreign-CA / expired / wrong-SAN /
revoked peers are rejected with clear log lines, AuthorizationPolicy denies a disallowed
principal 100 % (403) and allows the allowed one. Helpers here are reused by the tshark and
rotation tests (test_mtls_tshark.py, test_mtls_rotation.py).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import pytest

from testbed.mesh.citadel.ca import CertificateAuthority
from testbed.mesh.rules.policy import AuthorizationPolicy, AuthzRequest, Rule, Source, decide
from proxy.tls.context import Material, MeshTLS, Peer, PeerRejected
from proxy.tls.identity import DISABLE, PERMISSIVE, STRICT, SpiffeId
from proxy.tls.sockets import open_mtls_stream, start_inbound

REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"


def material(ca: CertificateAuthority, service: str, bundle: bytes | None = None,
             **kw) -> Material:
    i = ca.issue(SpiffeId.make(service), **kw)
    return Material(i.spiffe_id.uri, i.cert_chain_pem, i.private_key_pem,
                    bundle or ca.trust_bundle_pem(), i.not_after, i.serial, ca.revoked())


class MiniHTTP(asyncio.Protocol):
    """Tiny HTTP/1.1 keep-alive server (GET only) standing in for the inbound sidecar:
    answers 200 with the caller's principal and the server's serial, or 403 (RBAC)."""

    def __init__(self, peer: Peer, tls: MeshTLS, policies=(), counts: Counter | None = None):
        self.peer, self.tls, self.policies = peer, tls, list(policies)
        self.counts = counts if counts is not None else Counter()
        self.buf = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in
                       (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
            allowed, _ = decide(self.policies, AuthzRequest(self.peer.principal, method, path,
                                                            headers))
            self.counts["allowed" if allowed else "denied"] += 1
            self.counts[f"serial:{self.peer.serial}"] += 1
            if allowed:
                body = f"hello {self.peer.principal} from {self.tls.material.serial:x}".encode()
                status = b"200 OK"
            else:  # Envoy: 403 "RBAC: access denied", response flag RBAC (rbac.denied stat)
                body, status = b"RBAC: access denied", b"403 Forbidden"
            self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)


async def http_get(reader, writer, path: str = "/hello", headers: str = "") -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nhost: reviews\r\n{headers}\r\n".encode())
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, await reader.readexactly(length)


async def serve(tls: MeshTLS, mode=STRICT, policies=(), counts=None):
    srv = await start_inbound(lambda peer: MiniHTTP(peer, tls, policies, counts), "127.0.0.1",
                              0, tls, mode, handshake_timeout_s=3, peek_timeout_s=3)
    return srv, srv.sockets[0].getsockname()[1]


def run(coro, timeout_s: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority(max_ttl_s=3600)


# ---------------------------------------------------------------- tests
def test_mtls_request_carries_principal(ca):
    async def main():
        srv_tls = MeshTLS(material(ca, "reviews"))
        srv, port = await serve(srv_tls)
        try:
            r, w, peer = await open_mtls_stream("127.0.0.1", port,
                                                MeshTLS(material(ca, "productpage")), REVIEWS)
            got = await http_get(r, w)
            w.close()
            return peer, got, srv_tls.stats
        finally:
            srv.close()
            await srv.wait_closed()

    peer, (status, body), stats = run(main())
    assert peer.spiffe_id == REVIEWS and status == 200
    assert body.startswith(b"hello cluster.local/ns/default/sa/productpage from ")
    assert stats["ssl.handshake"] == 1 and stats["ssl.connection_error"] == 0


def test_strict_rejects_all_plaintext(ca, caplog):
    n = 200

    async def main():
        srv_tls = MeshTLS(material(ca, "reviews"))
        srv, port = await serve(srv_tls, STRICT)
        answered = 0
        try:
            for _ in range(n):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"GET /hello HTTP/1.1\r\nhost: reviews\r\n\r\n")
                try:
                    answered += bool(await r.read())
                except ConnectionResetError:
                    pass
                w.close()
            await asyncio.sleep(0.05)
            return answered, srv_tls.stats
        finally:
            srv.close()
            await srv.wait_closed()

    with caplog.at_level(logging.WARNING, "minimesh.mtls"):
        answered, stats = run(main())
    assert answered == 0  # 100 % of plaintext attempts got no HTTP response
    assert stats["ssl.rejected.plaintext"] == n
    assert caplog.text.count("reason=plaintext: first byte is not TLS (plaintext); STRICT mTLS "
                             "requires TLS with a client certificate") == n


@pytest.mark.parametrize("mode", [PERMISSIVE, DISABLE])
def test_permissive_and_disable_accept_plaintext(ca, mode):
    async def main():
        srv_tls = MeshTLS(material(ca, "reviews"))
        srv, port = await serve(srv_tls, mode)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            plain = await http_get(r, w)
            w.close()
            tls_status = None
            if mode == PERMISSIVE:
                r, w, _ = await open_mtls_stream("127.0.0.1", port,
                                                 MeshTLS(material(ca, "productpage")), REVIEWS)
                tls_status = (await http_get(r, w))[0]
                w.close()
            return plain, tls_status
        finally:
            srv.close()
            await srv.wait_closed()

    (status, body), tls_status = run(main())
    assert status == 200 and body.startswith(b"hello None")  # plaintext: no principal
    assert tls_status == (200 if mode == PERMISSIVE else None)


def _reject_case(ca, client: Material, server: Material, expected=None):
    async def main():
        srv_tls, cli_tls = MeshTLS(server), MeshTLS(client)
        srv, port = await serve(srv_tls)
        outcome = "answered"
        try:
            r, w, _ = await open_mtls_stream("127.0.0.1", port, cli_tls, expected)
            try:
                await http_get(r, w)
            except (asyncio.IncompleteReadError, ConnectionError, IndexError, OSError):
                outcome = "closed by server"
            w.close()
        except PeerRejected as e:
            outcome = f"client rejected: {e.reason}"
        await asyncio.sleep(0.1)
        srv.close()
        await srv.wait_closed()
        return outcome, srv_tls.stats, cli_tls.stats

    return run(main())


def test_foreign_ca_client_rejected(ca, caplog):
    intruder = material(CertificateAuthority(), "productpage", bundle=ca.trust_bundle_pem())
    with caplog.at_level(logging.WARNING, "minimesh.mtls"):
        outcome, srv, _ = _reject_case(ca, intruder, material(ca, "reviews"))
    assert outcome == "closed by server" and srv["ssl.rejected.foreign_ca"] == 1
    assert "REJECT inbound 127.0.0.1:" in caplog.text
    assert "reason=foreign_ca: peer certificate is not signed by a CA in the trust bundle" \
        in caplog.text


def test_foreign_ca_server_rejected_by_client(ca, caplog):
    imposter = material(CertificateAuthority(), "reviews", bundle=ca.trust_bundle_pem())
    with caplog.at_level(logging.WARNING, "minimesh.mtls"):
        outcome, _, cli = _reject_case(ca, material(ca, "productpage"), imposter, REVIEWS)
    assert outcome == "client rejected: foreign_ca" and cli["ssl.rejected.foreign_ca"] == 1
    assert "REJECT outbound 127.0.0.1:" in caplog.text and "reason=foreign_ca" in caplog.text


def test_expired_client_rejected(ca, caplog):
    short = material(ca, "productpage", ttl_s=1)
    time.sleep(max(0.0, short.not_after - time.time()) + 1.05)
    with caplog.at_level(logging.WARNING, "minimesh.mtls"):
        outcome, srv, _ = _reject_case(ca, short, material(ca, "reviews"))
    assert outcome == "closed by server" and srv["ssl.rejected.expired"] == 1
    assert "reason=expired: peer certificate has expired" in caplog.text


def test_wrong_san_rejected_by_client(ca, caplog):
    with caplog.at_level(logging.WARNING, "minimesh.mtls"):
        outcome, _, cli = _reject_case(ca, material(ca, "productpage"),
                                       material(ca, "ratings"), REVIEWS)
    assert outcome == "client rejected: wrong_san" and cli["ssl.rejected.wrong_san"] == 1
    assert ("reason=wrong_san: peer is spiffe://cluster.local/ns/default/sa/ratings, expected "
            "spiffe://cluster.local/ns/default/sa/reviews") in caplog.text


def test_revoked_client_rejected(ca, caplog):
    client = material(ca, "productpage")
    ca.revoke(client.serial)
    with caplog.at_level(logging.WARNING, "minimesh.mtls"):
        outcome, srv, _ = _reject_case(ca, client, material(ca, "reviews"))  # bundle has it
    assert outcome == "closed by server" and srv["ssl.rejected.revoked"] == 1
    assert f"reason=revoked: peer certificate serial {client.serial:x}" in caplog.text


def test_authorization_denies_disallowed_principal_every_time(ca):
    n = 100
    only_pp = AuthorizationPolicy("reviews-viewer", rules=(
        Rule((Source(principals=("cluster.local/ns/default/sa/productpage",)),)),))

    async def main():
        counts: Counter = Counter()
        srv_tls = MeshTLS(material(ca, "reviews"))
        srv, port = await serve(srv_tls, STRICT, [only_pp], counts)
        statuses: dict[str, Counter] = {}
        try:
            for svc in ("productpage", "ratings"):
                r, w, _ = await open_mtls_stream("127.0.0.1", port,
                                                 MeshTLS(material(ca, svc)), REVIEWS)
                statuses[svc] = Counter([(await http_get(r, w))[0] for _ in range(n)])
                w.close()
        finally:
            srv.close()
            await srv.wait_closed()
        return statuses, counts

    statuses, counts = run(main())
    assert statuses["productpage"] == Counter({200: n})
    assert statuses["ratings"] == Counter({403: n})
    assert counts["allowed"] == counts["denied"] == n


def test_same_behaviour_under_uvloop(ca, caplog):
    """minimesh-proxy runs on uvloop: its connect_accepted_socket returns its own SSLProtocol,
    and handshake errors must still reach us with their reasons."""
    uvloop = pytest.importorskip("uvloop")

    async def main():
        srv_tls = MeshTLS(material(ca, "reviews"))
        srv, port = await serve(srv_tls)
        try:
            r, w, _ = await open_mtls_stream("127.0.0.1", port,
                                             MeshTLS(material(ca, "productpage")), REVIEWS)
            ok = await http_get(r, w)
            w.close()
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET / HTTP/1.1\r\n\r\n")
            try:
                plain = await r.read()
            except ConnectionResetError:
                plain = b""
            w.close()
            intruder = material(CertificateAuthority(), "productpage",
                                bundle=ca.trust_bundle_pem())
            r, w, _ = await open_mtls_stream("127.0.0.1", port, MeshTLS(intruder), REVIEWS)
            try:
                await http_get(r, w)
            except (asyncio.IncompleteReadError, ConnectionError, IndexError, OSError):
                pass
            w.close()
            await asyncio.sleep(0.1)
            return ok, plain, srv_tls.stats, type(asyncio.get_running_loop()).__module__
        finally:
            srv.close()
            await srv.wait_closed()

    with caplog.at_level(logging.WARNING, "minimesh.mtls"), \
            asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        (status, _), plain, stats, loop_mod = runner.run(main())
    assert loop_mod.startswith("uvloop") and status == 200 and plain == b""
    assert stats["ssl.handshake"] == 1 and stats["ssl.rejected.plaintext"] == 1
    assert stats["ssl.rejected.foreign_ca"] == 1 and "reason=foreign_ca" in caplog.text


def test_silent_client_and_certless_tls_are_rejected(ca, caplog):
    """STRICT: a client that sends nothing is closed after the peek timeout; PERMISSIVE: a
    TLS client without a certificate is refused (a certificate is required for TLS)."""
    async def main():
        srv_tls = MeshTLS(material(ca, "reviews"))
        strict = await start_inbound(lambda p: MiniHTTP(p, srv_tls), "127.0.0.1", 0, srv_tls,
                                     STRICT, peek_timeout_s=0.2)
        permissive = await start_inbound(lambda p: MiniHTTP(p, srv_tls), "127.0.0.1", 0,
                                         srv_tls, PERMISSIVE)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", strict.sockets[0].getsockname()[1])
            silent = await asyncio.wait_for(r.read(), 3)  # EOF once the server gives up
            w.close()
            import ssl
            bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            bare.check_hostname = False
            bare.load_verify_locations(cadata=ca.trust_bundle_pem().decode())
            r, w = await asyncio.open_connection(
                "127.0.0.1", permissive.sockets[0].getsockname()[1], ssl=bare)
            try:
                certless = await http_get(r, w)
            except (OSError, asyncio.IncompleteReadError, IndexError) as e:
                certless = type(e).__name__
            w.close()
            await asyncio.sleep(0.1)
            return silent, certless, srv_tls.stats
        finally:
            for s in (strict, permissive):
                s.close()
                await s.wait_closed()

    with caplog.at_level(logging.WARNING, "minimesh.mtls"):
        silent, certless, stats = run(main())
    assert silent == b"" and "reason=plaintext: first byte sent no data" in caplog.text
    assert not isinstance(certless, tuple) and stats["ssl.rejected.no_client_cert"] == 1
    assert "reason=no_client_cert: peer presented no client certificate" in caplog.text
