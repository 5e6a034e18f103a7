"""Citadel's certificate authority: sans-IO, clock injected (tests pass a fake clock).

* Roots are self-signed EC P-256 certificates (`CN=minimesh root CA <generation>`,
  `O=<trust domain>`). Workload certificates are signed directly by the active root
  (no intermediate: one less moving part for students to read in Wireshark).
* `issue(spiffe_id, csr_pem=None, ttl_s=None)` -> `Issued`: EC P-256 leaf with the SPIFFE
  URI SAN, a random 63-bit serial, digitalSignature+keyEncipherment, serverAuth+clientAuth.
  With a CSR the private key never leaves the workload (Istio's model, used by the sidecar's
  `proxy.tls.rotator.CertificateRotator`); without one the CA generates the key (handy for tests and CLI).
* `revoke(serial)` / `is_revoked(serial)` / `revoked()` -- an in-memory set; sidecars learn it
  with the trust bundle and check the peer's serial after the handshake (proxy.tls.context.verify_peer).
* `rotate_root(activate_after_s, overlap_s)` -- a new root joins the trust bundle at once,
  starts signing after `activate_after_s` (time for bundles to reach every sidecar) and the
  old root leaves the bundle after `overlap_s` (by default: activation + the longest lifetime
  issued, so every leaf of the old root has expired by then).
"""
from __future__ import annotations

import datetime as dt
import math
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.tls.identity import SpiffeId, key_pem, new_key, uri_sans

BACKDATE_S = 5  # not_before lies a little in the past: clocks of hosts differ slightly


@dataclass(frozen=True)
class Root:
    generation: int
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    signs_from: float  # clock time at which this root starts signing
    retire_at: float | None = None  # leaves the trust bundle at this time

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Issued:
    """What the CA hands out. `private_key_pem` is b"" when the workload sent a CSR."""

    spiffe_id: SpiffeId
    cert_chain_pem: bytes
    private_key_pem: bytes
    serial: int
    not_before: float
    not_after: float
    root_generation: int


def _utc(t: float) -> dt.datetime:
    return dt.datetime.utcfromtimestamp(int(t))  # cryptography 38 takes naive UTC


def _ts(d: dt.datetime) -> float:
    return d.replace(tzinfo=dt.timezone.utc).timestamp()


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer`'s key signed `cert` (cryptography 38 has no verify_directly_issued_by)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        key, algorithm = issuer.public_key(), cert.signature_hash_algorithm
        if not isinstance(key, ec.EllipticCurvePublicKey) or algorithm is None:
            return False        # only EC roots sign here
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        return True
    except Exception:  # InvalidSignature, or a key or hash cryptography does not support
        return False


def _ec_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """A saved root's key (roots are EC P-256, see _new_root)."""
    key = serialization.load_pem_private_key(pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"saved CA root key is a {type(key).__name__}, not an EC key")
    return key


class CertificateAuthority:
    def __init__(self, trust_domain: str = "cluster.local", default_ttl_s: float = 3600.0,
                 max_ttl_s: float = 24 * 3600.0, root_ttl_s: float = 365 * 24 * 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not 0 < default_ttl_s <= max_ttl_s:
            raise ValueError(f"default_ttl_s={default_ttl_s} must be in 0 < ttl <= "
                             f"max_ttl_s={max_ttl_s}")
        self.trust_domain, self.default_ttl_s, self.max_ttl_s = (trust_domain, default_ttl_s,
                                                                 max_ttl_s)
        self.root_ttl_s, self.clock = root_ttl_s, clock
        self._roots: list[Root] = []
        self._revoked: set[int] = set()
        self._longest_ttl_s = 0.0
        self.issued_count = 0
        self._roots.append(self._new_root(1, self.clock()))

    # -------------------------------------------------------------- roots
    def _new_root(self, generation: int, signs_from: float) -> Root:
        key = new_key()
        now = self.clock()
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.trust_domain),
                          x509.NameAttribute(NameOID.COMMON_NAME,
                                             f"minimesh root CA {generation}")])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(_utc(now - BACKDATE_S))
                .not_valid_after(_utc(now + self.root_ttl_s))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        return Root(generation, cert, key, signs_from)

    def _live_roots(self) -> list[Root]:
        now = self.clock()
        self._roots = [r for r in self._roots if r.retire_at is None or r.retire_at > now]
        return self._roots

    @property
    def signing_root(self) -> Root:
        now = self.clock()
        active = [r for r in self._live_roots() if r.signs_from <= now]
        return max(active, key=lambda r: r.generation)

    def trust_bundle(self) -> list[Root]:
        return list(self._live_roots())

    def trust_bundle_pem(self) -> bytes:
        return b"".join(r.pem for r in self.trust_bundle())

    def rotate_root(self, activate_after_s: float = 0.0,
                    overlap_s: float | None = None) -> Root:
        """Add a new root; it signs after `activate_after_s`; older roots retire after
        `overlap_s` (default: activate_after_s + the longest lifetime issued so far)."""
        now = self.clock()
        if overlap_s is None:
            overlap_s = activate_after_s + max(self._longest_ttl_s, self.default_ttl_s)
        if overlap_s < activate_after_s:
            raise ValueError(f"overlap_s={overlap_s} < activate_after_s={activate_after_s}: "
                             "the old root would leave the bundle before the new one signs")
        gen = max(r.generation for r in self._roots) + 1
        self._roots = [Root(r.generation, r.cert, r.key, r.signs_from,
                            min(r.retire_at or now + overlap_s, now + overlap_s))
                       for r in self._live_roots()]
        root = self._new_root(gen, now + activate_after_s)
        self._roots.append(root)
        return root

    # -------------------------------------------------------------- leaves
    def issue(self, spiffe_id: SpiffeId, csr_pem: bytes | None = None,
              ttl_s: float | None = None) -> Issued:
        if spiffe_id.trust_domain != self.trust_domain:
            raise ValueError(f"trust domain {spiffe_id.trust_domain!r} is not this CA's "
                             f"({self.trust_domain!r})")
        ttl = self.default_ttl_s if ttl_s is None else float(ttl_s)
        if not 0 < ttl <= self.max_ttl_s:
            raise ValueError(f"ttl_s={ttl_s} must be in 0 < ttl <= {self.max_ttl_s}")
        key_out = b""
        if csr_pem:
            csr = x509.load_pem_x509_csr(csr_pem)
            if not csr.is_signature_valid:
                raise ValueError("CSR signature does not verify")
            if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
                raise ValueError("CSR key must be an EC key")
            asked = uri_sans(csr) if csr.extensions else []
            if asked and asked != [spiffe_id.uri]:
                raise ValueError(f"CSR asks for {asked}, but the caller is {spiffe_id.uri}")
            public = csr.public_key()
        else:
            key = new_key()
            public, key_out = key.public_key(), key_pem(key)
        root = self.signing_root
        now = self.clock()
        not_after = math.ceil(now + ttl)  # X.509 has whole seconds: never shorter than asked
        serial = secrets.randbits(63) | 1  # positive, non-zero, < 2**63
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                            self.trust_domain)]))
                .issuer_name(root.cert.subject).public_key(public).serial_number(serial)
                .not_valid_before(_utc(now - BACKDATE_S)).not_valid_after(_utc(not_after))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=True,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(spiffe_id.uri)]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    root.key.public_key()), critical=False)
                .sign(root.key, hashes.SHA256()))
        self._longest_ttl_s = max(self._longest_ttl_s, ttl)
        self.issued_count += 1
        return Issued(spiffe_id, cert.public_bytes(serialization.Encoding.PEM), key_out,
                      serial, _ts(cert.not_valid_before), _ts(cert.not_valid_after),
                      root.generation)

    @property
    def longest_ttl_s(self) -> float:
        return self._longest_ttl_s

    # -------------------------------------------------------------- state (citadel/store.py)
    def export_state(self) -> dict:
        """Everything needed to resume after a restart: roots (keys included), revocations."""
        return {"trust_domain": self.trust_domain, "longest_ttl_s": self._longest_ttl_s,
                "revoked": sorted(self._revoked),
                "roots": [{"generation": r.generation, "signs_from": r.signs_from,
                           "retire_at": r.retire_at, "cert_pem": r.pem.decode(),
                           "key_pem": key_pem(r.key).decode()} for r in self._roots]}

    def import_state(self, state: dict) -> None:
        if state["trust_domain"] != self.trust_domain:
            raise ValueError(f"saved CA is for trust domain {state['trust_domain']!r}, not "
                             f"{self.trust_domain!r}")
        self._roots = [Root(r["generation"], x509.load_pem_x509_certificate(r["cert_pem"].encode()),
                            _ec_key(r["key_pem"].encode()), r["signs_from"], r["retire_at"])
                       for r in state["roots"]]
        self._revoked = set(state["revoked"])
        self._longest_ttl_s = float(state["longest_ttl_s"])

    # -------------------------------------------------------------- revocation
    def revoke(self, serial: int) -> None:
        self._revoked.add(int(serial))

    def is_revoked(self, serial: int) -> bool:
        return int(serial) in self._revoked

    def revoked(self) -> frozenset[int]:
        return frozenset(self._revoked)
