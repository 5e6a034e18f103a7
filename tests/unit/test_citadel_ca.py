"""Citadel's CA core: certificate contents, CSRs, revocation, root rotation (fake clock)."""
from __future__ import annotations

import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from testbed.mesh.citadel.ca import CertificateAuthority, signed_by
from proxy.tls.identity import SpiffeId, make_csr, new_key, uri_sans


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def cert_of(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_spiffe_id_forms():
    s = SpiffeId.make("reviews", "bookinfo", "example.org")
    assert s.uri == "spiffe://example.org/ns/bookinfo/sa/reviews"
    assert s.principal == "example.org/ns/bookinfo/sa/reviews"
    assert SpiffeId.parse(s.uri) == s
    for bad in ("spiffe://td/ns/a/sa/", "http://td/ns/a/sa/b", "spiffe://td/a/b/c/d",
                "spiffe://td/ns/a/sa/b/c"):
        with pytest.raises(ValueError, match="expected spiffe://"):
            SpiffeId.parse(bad)


def test_leaf_contents_san_lifetime_usage():
    clock = Clock()
    ca = CertificateAuthority(default_ttl_s=3600, clock=clock)
    issued = ca.issue(SpiffeId.make("reviews"))
    cert = cert_of(issued.cert_chain_pem)
    assert uri_sans(cert) == ["spiffe://cluster.local/ns/default/sa/reviews"]
    assert issued.not_after - clock.t == pytest.approx(3600, abs=1)
    assert issued.not_before <= clock.t - 4  # backdated for clock skew
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.serial_number == issued.serial > 0
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    root = ca.signing_root.cert
    assert signed_by(cert, root) and not signed_by(cert, CertificateAuthority().signing_root.cert)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issued.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_short_lifetime_in_seconds_and_bounds():
    clock = Clock(1_800_000_000.4)
    ca = CertificateAuthority(default_ttl_s=60, max_ttl_s=120, clock=clock)
    i = ca.issue(SpiffeId.make("a"), ttl_s=2)
    assert 2 <= i.not_after - clock.t < 3  # whole seconds, never shorter than asked
    for bad in (0, -1, 121):
        with pytest.raises(ValueError, match="ttl_s"):
            ca.issue(SpiffeId.make("a"), ttl_s=bad)
    with pytest.raises(ValueError, match="default_ttl_s"):
        CertificateAuthority(default_ttl_s=10, max_ttl_s=5)


def test_serials_unique():
    ca = CertificateAuthority()
    serials = {ca.issue(SpiffeId.make("a")).serial for _ in range(200)}
    assert len(serials) == 200 and all(0 < s < 2**63 for s in serials)


def test_csr_keeps_private_key_with_workload():
    ca = CertificateAuthority()
    key = new_key()
    sid = SpiffeId.make("ratings")
    issued = ca.issue(sid, make_csr(sid, key))
    assert issued.private_key_pem == b""
    assert cert_of(issued.cert_chain_pem).public_key().public_numbers() == \
        key.public_key().public_numbers()


def test_csr_for_another_identity_is_refused():
    ca = CertificateAuthority()
    csr = make_csr(SpiffeId.make("admin"), new_key())
    with pytest.raises(ValueError, match="CSR asks for"):
        ca.issue(SpiffeId.make("ratings"), csr)


def test_foreign_trust_domain_refused():
    with pytest.raises(ValueError, match="trust domain"):
        CertificateAuthority().issue(SpiffeId.make("a", trust_domain="evil.org"))


def test_revocation_set():
    ca = CertificateAuthority()
    a, b = ca.issue(SpiffeId.make("a")), ca.issue(SpiffeId.make("b"))
    ca.revoke(a.serial)
    assert ca.is_revoked(a.serial) and not ca.is_revoked(b.serial)
    assert ca.revoked() == frozenset({a.serial})


def test_root_rotation_overlap_then_retire():
    clock = Clock()
    ca = CertificateAuthority(default_ttl_s=10, clock=clock)
    old_leaf = ca.issue(SpiffeId.make("a"))
    old_root = ca.signing_root
    new_root = ca.rotate_root(activate_after_s=2, overlap_s=12)
    assert [r.generation for r in ca.trust_bundle()] == [1, 2]
    assert ca.trust_bundle_pem() == old_root.pem + new_root.pem
    # before activation the old root still signs (bundles are still travelling)
    assert ca.issue(SpiffeId.make("a")).root_generation == 1
    clock.t += 2
    leaf = ca.issue(SpiffeId.make("a"))
    assert leaf.root_generation == 2
    assert signed_by(cert_of(leaf.cert_chain_pem), new_root.cert)
    assert signed_by(cert_of(old_leaf.cert_chain_pem), old_root.cert)
    clock.t += 9.9  # overlap not over: both roots trusted
    assert len(ca.trust_bundle()) == 2
    clock.t += 0.2
    assert [r.generation for r in ca.trust_bundle()] == [2]
    assert ca.trust_bundle_pem() == new_root.pem


def test_root_rotation_default_overlap_covers_longest_lifetime():
    clock = Clock()
    ca = CertificateAuthority(default_ttl_s=10, max_ttl_s=100, clock=clock)
    ca.issue(SpiffeId.make("a"), ttl_s=50)
    ca.rotate_root(activate_after_s=1)
    clock.t += 50.5  # the 50 s leaf signed just before rotation is still valid
    assert len(ca.trust_bundle()) == 2
    clock.t += 1
    assert len(ca.trust_bundle()) == 1
    with pytest.raises(ValueError, match="overlap_s"):
        ca.rotate_root(activate_after_s=5, overlap_s=1)


def test_real_clock_default():
    ca = CertificateAuthority(default_ttl_s=5)
    i = ca.issue(SpiffeId.make("a"))
    assert 5 <= i.not_after - time.time() <= 6.5
