"""Citadel material for real Envoy: file-based SDS and Envoy v3 TLS context shapes.

Real Envoy (sidecar: envoy) gets certificates the way Istio's agent feeds it, only through
files instead of a gRPC SDS socket: `write_sds(material, directory)` writes two SDS
DiscoveryResponse files (`cert.json` with Secret "default", `ca.json` with Secret "ROOTCA")
atomically (write + rename); Envoy watches the directory (`path_config_source` with
`watched_directory`) and reloads on every rotation. Pass `write_sds` as (part of) the
rotator's `on_update`.

`downstream_tls_context` / `upstream_tls_context` build the `transport_socket` Pilot puts on
inbound listeners' filter chains and on outbound clusters: TLS 1.3, ALPN http/1.1, client
certificate required, the peer's SPIFFE URI SAN matched (`match_typed_subject_alt_names`),
revoked serials as an inline CRL (leaf only).
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Collection

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from testbed.mesh.citadel.ca import CertificateAuthority
from proxy.tls.context import Material
from proxy.tls.identity import DISABLE, PERMISSIVE, STRICT

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
TLS_SOCKET = "envoy.transport_sockets.tls"
CERT_SECRET, CA_SECRET = "default", "ROOTCA"  # Istio's names


def _atomic_write(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.replace(tmp, path)  # Envoy sees a moved-in file, never a half-written one


def write_sds(material: Material, directory: str | Path, crl_pem: bytes = b"") -> None:
    """Write `cert.json` and `ca.json` (SDS DiscoveryResponses) into `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert = {"name": CERT_SECRET, "tls_certificate": {
        "certificate_chain": {"inline_string": material.cert_chain_pem.decode()},
        "private_key": {"inline_string": material.private_key_pem.decode()}}}
    validation: dict[str, Any] = {"trusted_ca": {"inline_string":
                                                 material.trust_bundle_pem.decode()}}
    if crl_pem:
        validation.update(crl={"inline_string": crl_pem.decode()},
                          only_verify_leaf_cert_crl=True)
    ca = {"name": CA_SECRET, "validation_context": validation}
    for name, secret in (("cert.json", cert), ("ca.json", ca)):
        _atomic_write(d / name, json.dumps({"resources": [{"@type": SECRET_TYPE, **secret}]}))


def crl_pem(ca: CertificateAuthority, next_update_s: float = 3600.0) -> bytes:
    """One CRL per root in the bundle, each listing every revoked serial (PEM, concatenated)."""
    now = dt.datetime.utcfromtimestamp(int(ca.clock()))
    out = b""
    for root in ca.trust_bundle():
        b = (x509.CertificateRevocationListBuilder().issuer_name(root.cert.subject)
             .last_update(now).next_update(now + dt.timedelta(seconds=next_update_s)))
        for serial in sorted(ca.revoked()):
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder()
                                          .serial_number(serial).revocation_date(now).build())
        out += b.sign(root.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return out


def _sds(name: str, directory: str | Path, file: str) -> dict[str, Any]:
    return {"name": name, "sds_config": {
        "path_config_source": {"path": str(Path(directory) / file),
                               "watched_directory": {"path": str(directory)}},
        "resource_api_version": "V3"}}


def _common(directory: str | Path, sans: Collection[str]) -> dict[str, Any]:
    default: dict[str, Any] = {}
    if sans:
        default["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": s}} for s in sorted(sans)]
    return {"tls_params": {"tls_minimum_protocol_version": "TLSv1_3",
                           "tls_maximum_protocol_version": "TLSv1_3"},  # upstream max is 1.2
            "alpn_protocols": ["http/1.1"],
            "tls_certificate_sds_secret_configs": [_sds(CERT_SECRET, directory, "cert.json")],
            "combined_validation_context": {
                "default_validation_context": default,
                "validation_context_sds_secret_config": _sds(CA_SECRET, directory, "ca.json")}}


def downstream_tls_context(directory: str | Path,
                           allowed_sans: Collection[str] = ()) -> dict[str, Any]:
    """transport_socket for an inbound filter chain (STRICT, or PERMISSIVE's TLS chain)."""
    return {"name": TLS_SOCKET, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                 "DownstreamTlsContext",
        "require_client_certificate": True, "common_tls_context": _common(directory,
                                                                          allowed_sans)}}


def upstream_tls_context(directory: str | Path, expected_sans: Collection[str]) -> dict[str, Any]:
    """transport_socket for an outbound cluster: verify the server's SPIFFE ID."""
    return {"name": TLS_SOCKET, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                 "UpstreamTlsContext",
        "common_tls_context": _common(directory, expected_sans)}}


def inbound_chains(mode: str, directory: str | Path, filters: list[dict],
                   allowed_sans: Collection[str] = ()) -> dict[str, Any]:
    """`listener_filters` + `filter_chains` of an inbound listener for an mTLS mode.
    PERMISSIVE: Envoy's tls_inspector picks the TLS chain or the plaintext one."""
    tls_chain = {"filters": filters,
                 "transport_socket": downstream_tls_context(directory, allowed_sans)}
    if mode == STRICT:
        return {"filter_chains": [tls_chain]}
    if mode == DISABLE:
        return {"filter_chains": [{"filters": filters}]}
    if mode != PERMISSIVE:
        raise ValueError(f"mode {mode!r}: expected STRICT, PERMISSIVE or DISABLE")
    return {"listener_filters": [{
        "name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3."
                     "TlsInspector"}}],
        "filter_chains": [{"filter_chain_match": {"transport_protocol": "tls"}, **tls_chain},
                          {"filter_chain_match": {"transport_protocol": "raw_buffer"},
                           "filters": filters}]}
