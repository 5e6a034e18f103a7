"""mTLS for the sidecar: workload identity (``identity``), Envoy's TLS transport-socket config
(``transport``), SSL contexts and peer checks (``context``), TLS sockets (``sockets``), the
certificate client of Citadel (``rotator``) and the per-sidecar SDS state (``sds``).

``identity`` and ``transport`` are imported by config parsing and load no ``cryptography``;
the others do, and the server imports them only when a listener or cluster uses TLS.
Modules here may import ``proxy.config``, ``proxy.errors`` and (for type hints)
``proxy.stats``; never the server: ``sds`` wires into it through the ``SecurityTarget``
protocol.
"""
from proxy.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "proxy.tls.identity": ("SpiffeId", "UNSET", "STRICT", "PERMISSIVE", "DISABLE", "MTLS_MODES",
                           "DEFAULT_TRUST_DOMAIN"),
    "proxy.tls.transport": ("TlsContextSpec", "DownstreamTls"),
    "proxy.tls.context": ("Material", "MeshTLS", "Peer", "PeerRejected"),
    "proxy.tls.sockets": ("start_inbound", "connect_outbound", "open_mtls_stream"),
    "proxy.tls.rotator": ("CertificateRotator",),
    "proxy.tls.sds": ("SidecarSecurity", "attach_security", "security_of"),
})
