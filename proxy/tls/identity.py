"""Workload identity for mTLS: SPIFFE IDs, the peer-authentication modes, and the key, CSR
and SAN helpers that the sidecar and the certificate authority share.

* `SpiffeId` -- `spiffe://<trust-domain>/ns/<namespace>/sa/<service>` and its Istio
  *principal* form `<trust-domain>/ns/<namespace>/sa/<service>` (no scheme).
* `STRICT`, `PERMISSIVE`, `DISABLE` (and `UNSET`, "inherit") -- the mTLS modes of a
  listener, as Istio's PeerAuthentication names them; `MTLS_MODES` lists all four.
* `new_key()`, `key_pem(key)`, `make_csr(spiffe_id, key)`, `uri_sans(cert)` -- EC P-256
  keys, PKCS#8 PEM, a CSR carrying the SPIFFE URI SAN, and the URI SANs of a certificate
  or CSR.

The helpers import `cryptography` when first called: a plaintext sidecar reads the modes
from its config without loading it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["SpiffeId", "UNSET", "STRICT", "PERMISSIVE", "DISABLE", "MTLS_MODES", "DEFAULT_TRUST_DOMAIN",
           "new_key", "key_pem", "make_csr", "uri_sans"]

STRICT, PERMISSIVE, DISABLE, UNSET = "STRICT", "PERMISSIVE", "DISABLE", "UNSET"
MTLS_MODES = (UNSET, STRICT, PERMISSIVE, DISABLE)
DEFAULT_TRUST_DOMAIN = "cluster.local"

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_SPIFFE = re.compile(rf"^spiffe://({_NAME})/ns/({_NAME})/sa/({_NAME})$")


@dataclass(frozen=True)
class SpiffeId:
    """A workload identity. `service` plays the role of Istio's service account."""

    trust_domain: str
    namespace: str
    service: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service}"

    @property
    def principal(self) -> str:
        """Istio's principal string, as written in AuthorizationPolicy `principals`."""
        return self.uri[len("spiffe://"):]

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> "SpiffeId":
        m = _SPIFFE.match(uri)
        if not m:
            raise ValueError(f"not a workload SPIFFE ID: {uri!r} (expected "
                             "spiffe://<trust-domain>/ns/<namespace>/sa/<service>)")
        return cls(*m.groups())

    @classmethod
    def make(cls, service: str, namespace: str = "default",
             trust_domain: str = DEFAULT_TRUST_DOMAIN) -> "SpiffeId":
        """Build and validate (the same rules as `parse`)."""
        return cls.parse(f"spiffe://{trust_domain}/ns/{namespace}/sa/{service}")


# ---------------------------------------------------------------- keys, CSRs, SANs
# late imports: cryptography (~18 MB of RSS) only when a helper runs (see the module docstring)
def new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec       # late: cryptography
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization      # late: cryptography
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_csr(spiffe_id: SpiffeId, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM CSR carrying the SPIFFE URI SAN, signed with `key`."""
    from cryptography import x509                                   # late: cryptography
    from cryptography.hazmat.primitives import hashes, serialization
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.UniformResourceIdentifier(spiffe_id.uri)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def uri_sans(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    from cryptography import x509                                   # late: cryptography
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)
