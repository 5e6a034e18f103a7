"""Sidecar-side mTLS: SSLContexts from Citadel material, SPIFFE peer checks, one sidecar's
TLS state (`MeshTLS`), and clear rejection reasons.

* `server_context(material, mode, keylog_filename)` / `client_context(material,
  expected_spiffe_id, keylog_filename)`: TLS 1.3 only, ALPN http/1.1, the peer's chain
  verified by OpenSSL against the trust bundle (a client certificate is required), hostname
  checks off (SPIFFE certificates carry a URI SAN, which Python's ssl cannot check).
* `verify_peer(ssl_object, material, expected)` runs right after the handshake: the peer's
  URI SAN (parsed by cryptography from `getpeercert(binary_form=True)`) must be a SPIFFE ID
  (equal to `expected` when given) and its serial must not be revoked.
* `MeshTLS` holds one sidecar's current material, caches contexts, counts outcomes in
  `stats` and logs one line per rejection (`mtls: REJECT ... reason=<reason>: <detail>`).
* proxy/tls/sockets.py has the sockets: `start_inbound` (listener) and `connect_outbound`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Collection, TypeVar

from cryptography import x509

from proxy.tls.identity import DISABLE, PERMISSIVE, STRICT, SpiffeId, uri_sans

log = logging.getLogger("minimesh.mtls")
ALPN = ["http/1.1"]
REASONS = ("plaintext", "foreign_ca", "expired", "not_yet_valid", "wrong_san", "revoked",
           "no_client_cert", "peer_rejected_us", "peer_closed", "handshake_timeout",
           "handshake_error")


@dataclass(frozen=True)
class Material:
    """One workload's TLS material as Citadel hands it out (SDS response)."""

    spiffe_id: str
    cert_chain_pem: bytes
    private_key_pem: bytes
    trust_bundle_pem: bytes
    not_after: float
    serial: int
    revoked: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Peer:
    """The other side of a connection, after the checks passed."""

    tls: bool
    spiffe_id: str | None = None
    serial: int | None = None

    @property
    def principal(self) -> str | None:
        """Istio principal (AuthorizationPolicy `source.principals`), None for plaintext."""
        return SpiffeId.parse(self.spiffe_id).principal if self.spiffe_id else None


class PeerRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# ---------------------------------------------------------------- contexts
_Context = TypeVar("_Context", bound=ssl.SSLContext)


def _load(ctx: _Context, m: Material, keylog_filename: str | None) -> _Context:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(ALPN)
    ctx.load_verify_locations(cadata=m.trust_bundle_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    with tempfile.TemporaryDirectory(prefix="mm-tls-") as d:  # ssl loads keys from files only
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(m.private_key_pem)
        with open(cert, "wb") as f:
            f.write(m.cert_chain_pem)
        ctx.load_cert_chain(cert, key)
    if keylog_filename:
        ctx.keylog_filename = keylog_filename  # NSS key log format, appended
    return ctx


def server_context(material: Material, mode: str = STRICT,
                   keylog_filename: str | None = None) -> ssl.SSLContext | None:
    """Inbound context; None for DISABLE. PERMISSIVE uses the same context for its TLS
    connections (plaintext ones are told apart before the handshake, see start_inbound)."""
    if mode == DISABLE:
        return None
    if mode not in (STRICT, PERMISSIVE):
        raise ValueError(f"mode {mode!r}: expected STRICT, PERMISSIVE or DISABLE")
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), material, keylog_filename)


class ClientContext(ssl.SSLContext):
    """An outbound context that carries the server SPIFFE IDs it accepts."""

    expected_spiffe_ids: frozenset[str] = frozenset()


def client_context(material: Material, expected_spiffe_id: str | Collection[str] | None = None,
                   keylog_filename: str | None = None) -> ClientContext:
    """Outbound context; `expected_spiffe_id` (one or several URIs) is checked by
    `verify_peer` after the handshake (stored on the context as `expected_spiffe_ids`)."""
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if isinstance(expected_spiffe_id, str):
        expected_spiffe_id = [expected_spiffe_id]
    ctx.expected_spiffe_ids = frozenset(expected_spiffe_id or ())
    return _load(ctx, material, keylog_filename)


# ---------------------------------------------------------------- peer checks
def peer_certificate(sslobj) -> x509.Certificate | None:
    der = sslobj.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def peer_spiffe_id(sslobj) -> str | None:
    """The peer's SPIFFE URI SAN (ssl.SSLObject or SSLSocket), None without one."""
    cert = peer_certificate(sslobj)
    ids = [u for u in uri_sans(cert) if u.startswith("spiffe://")] if cert else []
    return ids[0] if len(ids) == 1 else None


def verify_peer(sslobj, revoked: Collection[int] = frozenset(),
                expected: Collection[str] = frozenset()) -> Peer:
    """Post-handshake checks; raises PeerRejected(reason, detail)."""
    cert = peer_certificate(sslobj)
    if cert is None:
        raise PeerRejected("no_client_cert", "peer presented no certificate")
    sans = uri_sans(cert)
    sid = peer_spiffe_id(sslobj)
    if sid is None:
        raise PeerRejected("wrong_san", f"peer certificate has no single SPIFFE URI SAN "
                           f"(URI SANs: {sans or 'none'})")
    try:
        SpiffeId.parse(sid)
    except ValueError as e:
        raise PeerRejected("wrong_san", str(e)) from None
    if expected and sid not in expected:
        raise PeerRejected("wrong_san", f"peer is {sid}, expected "
                           f"{' or '.join(sorted(expected))}")
    if cert.serial_number in revoked:
        raise PeerRejected("revoked", f"peer certificate serial {cert.serial_number:x} "
                           f"({sid}) is revoked")
    return Peer(True, sid, cert.serial_number)


_VERIFY = {"certificate has expired": ("expired", "peer certificate has expired"),
           "certificate is not yet valid": ("not_yet_valid", "peer certificate is not yet valid"),
           "unable to get local issuer certificate":
               ("foreign_ca", "peer certificate is not signed by a CA in the trust bundle"),
           "self-signed certificate": ("foreign_ca", "peer certificate is self-signed"),
           "self-signed certificate in certificate chain":
               ("foreign_ca", "peer chain ends in a root that is not in the trust bundle"),
           "certificate signature failure":
               ("foreign_ca", "peer certificate signature does not verify")}
_ALERTS = {"TLSV13_ALERT_CERTIFICATE_REQUIRED": "peer requires a client certificate",
           "TLSV1_ALERT_UNKNOWN_CA": "peer does not trust our CA (unknown ca alert)",
           "SSLV3_ALERT_CERTIFICATE_EXPIRED": "peer says our certificate has expired",
           "SSLV3_ALERT_BAD_CERTIFICATE": "peer rejected our certificate (bad certificate)",
           "SSLV3_ALERT_CERTIFICATE_REVOKED": "peer says our certificate is revoked",
           "SSLV3_ALERT_HANDSHAKE_FAILURE": "peer aborted the handshake"}


def describe_tls_error(exc: BaseException) -> tuple[str, str]:
    """(reason, detail) for a failed handshake, reason one of REASONS."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = exc.verify_message or str(exc)
        reason, detail = _VERIFY.get(msg, ("handshake_error", "certificate verify failed"))
        return reason, f"{detail} ({msg})"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "handshake_timeout", "no TLS handshake within the timeout"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)) or \
            getattr(exc, "reason", None) == "UNEXPECTED_EOF_WHILE_READING":
        return "peer_closed", ("peer closed the connection during the handshake (it may have "
                               f"rejected our certificate; see its log) ({type(exc).__name__})")
    r = getattr(exc, "reason", None) or ""
    if r in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"):
        return "plaintext", f"peer did not speak TLS ({r})"
    if r == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "no_client_cert", "peer presented no client certificate"
    if r in _ALERTS:
        return "peer_rejected_us", f"{_ALERTS[r]} ({r})"
    return "handshake_error", f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- one sidecar's state
class MeshTLS:
    """Current material + cached contexts + stats for one sidecar. `update` is the
    rotator's callback: new connections use the new material, open ones keep theirs."""

    def __init__(self, material: Material | None = None, keylog_filename: str | None = None,
                 logger: logging.Logger = log) -> None:
        self.keylog_filename, self.log = keylog_filename, logger
        self.stats: Counter[str] = Counter()
        self.material: Material | None = None
        self._server: ssl.SSLContext | None = None
        self._clients: dict[frozenset[str], ClientContext] = {}
        if material is not None:
            self.update(material)

    def update(self, material: Material) -> None:
        self._server = server_context(material, STRICT, self.keylog_filename)
        self._clients = {}
        self.material = material
        self.stats["ssl.material_updates"] += 1

    def _need(self) -> Material:
        if self.material is None:
            raise RuntimeError("no certificate yet: MeshTLS.update() was never called")
        return self.material

    def server_ctx(self) -> ssl.SSLContext:
        self._need()
        ctx = self._server
        assert ctx is not None        # update() sets it with the material (STRICT: never None)
        return ctx

    def client_ctx(self, expected: str | Collection[str] | None = None) -> ClientContext:
        key = frozenset([expected] if isinstance(expected, str) else expected or ())
        ctx = self._clients.get(key)
        if ctx is None:
            ctx = self._clients[key] = client_context(self._need(), key, self.keylog_filename)
        return ctx

    def check(self, sslobj, expected: Collection[str] = frozenset()) -> Peer:
        return verify_peer(sslobj, self._need().revoked, expected)

    def reject(self, direction: str, addr, reason: str, detail: str) -> None:
        self.stats[f"ssl.rejected.{reason}"] += 1
        self.stats["ssl.connection_error"] += 1
        self.log.warning("mtls: REJECT %s %s reason=%s: %s", direction, addr_str(addr), reason,
                         detail)


def addr_str(a) -> str:
    return f"{a[0]}:{a[1]}" if isinstance(a, tuple) and len(a) >= 2 else str(a)
