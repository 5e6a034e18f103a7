"""The sidecar side of Citadel: SDS secrets, per-listener/per-cluster TLS state, peers, stats.

``await attach_security(server)`` (from ``Server.start``, before listeners open) reads the
bootstrap node metadata::

    node: {id: sidecar~10.0.0.2~reviews-1~reviews, metadata: {
        CITADEL: http://10.0.0.254:15012,   # no CITADEL: only file-based certificates work
        NAMESPACE: default, SERVICE_ACCOUNT: reviews,   # default: WORKLOAD_NAME / LABELS.app
        CERT_TTL_S: 3600, CERT_RENEW_FRACTION: 0.5, BUNDLE_REFRESH_S: 5, KEYLOG: run/keys.log}}

and starts a :class:`proxy.tls.rotator.CertificateRotator` whose material serves every
SDS secret (``default`` + ``ROOTCA``). Each TLS listener and cluster gets its own
:class:`proxy.tls.context.MeshTLS` (so stats are per listener / per cluster); a rotation
updates all of them: new connections use the new certificate, open ones keep theirs.

Stats (``/stats``): ``listener.<addr>.ssl.*``, ``cluster.<name>.ssl.*``, ``citadel.*``,
``server.days_until_first_cert_expiring``, and the RBAC filter's ``http.<prefix>.rbac.*``.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography import x509

from proxy.errors import StartupError
from proxy.tls.context import Material, MeshTLS, Peer, PeerRejected
from proxy.tls.identity import uri_sans
from proxy.tls.rotator import CertificateRotator
from proxy.tls.sockets import connect_outbound, start_inbound

if TYPE_CHECKING:
    from proxy.config.bootstrap import Bootstrap
    from proxy.stats import Stats

__all__ = ["SidecarSecurity", "SecurityTarget", "attach_security", "security_of", "material_from_files"]
log = logging.getLogger("proxy.tls.sds")


class _Shared(Protocol):
    """The server's shared context (filters see it too); ``security`` is set on first use."""

    stats: Stats
    security: SidecarSecurity | None


class SecurityTarget(Protocol):
    """What :func:`attach_security` wires into; :class:`proxy.server.Server` provides it."""

    @property
    def bootstrap(self) -> Bootstrap: ...

    @property
    def ctx(self) -> _Shared: ...

    @property
    def cluster_manager(self) -> Any:
        """Gets ``.security``: outbound connects of TLS clusters go through it (a
        proxy.upstream.cluster.ClusterManager, which this package does not import)."""
        ...


def material_from_files(chain: str, key: str, ca: str) -> Material:
    """File-based ``tls_certificates`` + ``trusted_ca`` as Material."""
    chain_pem, key_pem, ca_pem = (Path(p).read_bytes() for p in (chain, key, ca))
    cert = x509.load_pem_x509_certificate(chain_pem)
    sans = uri_sans(cert)
    if len(sans) != 1:
        raise ValueError(f"{chain}: certificate needs exactly one SPIFFE URI SAN, has {sans or 'none'}")
    not_after = cert.not_valid_after.replace(tzinfo=dt.timezone.utc).timestamp()
    return Material(sans[0], chain_pem, key_pem, ca_pem, not_after,
                    cert.serial_number)


class SidecarSecurity:
    """One sidecar's TLS state; ``on_update`` is the rotator's callback."""

    def __init__(self, keylog_filename: str | None = None) -> None:
        self.keylog = keylog_filename
        self.material: Material | None = None
        self.rotator: CertificateRotator | None = None
        self.sds_users: dict[str, MeshTLS] = {}     # "listener.<addr>" / "cluster.<name>"
        self.file_users: dict[str, MeshTLS] = {}
        self._files: dict[str, tuple[str, str, str]] = {}    # file_users key -> (chain, key, ca) paths
        self.peers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # connection -> Peer
        self.rbac: dict[str, Counter] = {}          # HCM stat prefix -> allowed/denied/shadow
        self.served = {"default", "ROOTCA"}

    # --- material -----------------------------------------------------------------------------
    def on_update(self, material: Material) -> None:
        self.material = material
        for m in self.sds_users.values():
            m.update(material)

    def mesh_for(self, key: str, spec) -> MeshTLS:
        """The MeshTLS of one listener or cluster for a :class:`TlsContextSpec`."""
        if spec.cert_files is not None:
            m = self.file_users.get(key)
            files = (*spec.cert_files, spec.ca_file)
            if m is None or self._files.get(key) != files:    # new listener/cluster or new paths
                m = self.file_users[key] = MeshTLS(material_from_files(*files), self.keylog)
                self._files[key] = files
            return m
        for name in (spec.cert_secret, spec.ca_secret):
            if name not in self.served:
                raise ValueError(f"SDS secret {name!r}: this sidecar serves only "
                                 f"{', '.join(sorted(self.served))} (from its Citadel rotator)")
        m = self.sds_users.get(key)
        if m is None:
            m = self.sds_users[key] = MeshTLS(self.material, self.keylog)
        return m

    # --- sockets ------------------------------------------------------------------------------
    async def start_listener(self, spec, lname: str, factory):
        """start_inbound for a listener with a DownstreamTls; ``factory()`` makes the HCM/TCP
        connection, which is remembered with its Peer for the RBAC filter."""
        try:
            mtls = self.mesh_for(f"listener.{lname}", spec.tls.context)
        except (OSError, ValueError) as e:
            raise StartupError(f"listener {spec.name!r}: transport_socket: {e}") from None
        if mtls.material is None:
            raise StartupError(f"listener {spec.name!r}: transport_socket needs SDS secret "
                               f"{spec.tls.context.cert_secret!r}, but this sidecar has no certificate "
                               "(set node.metadata.CITADEL to the Citadel URL)")
        mode = spec.tls.mode
        peers = self.peers
        allowed = frozenset(spec.tls.context.sans)     # DownstreamTlsContext SAN matchers

        def make(peer: Peer):
            if allowed and peer.tls and peer.spiffe_id not in allowed:
                mtls.reject("inbound", spec.name, "wrong_san", f"client is {peer.spiffe_id}, "
                            f"listener accepts {' or '.join(sorted(allowed))}")
                return _Refused()
            conn = factory()
            peers[conn] = peer
            return conn
        return await start_inbound(make, spec.address, spec.port, mtls, mode=mode)

    async def connect(self, cluster, conn, address: str, port: int) -> None:
        """Outbound mTLS for a cluster with an UpstreamTlsContext; failures become OSError
        (a connect failure: flag UF, upstream_cx_connect_fail) after MeshTLS logged them."""
        spec = cluster.spec.tls
        mtls = self.mesh_for(f"cluster.{cluster.name}", spec)
        try:
            await connect_outbound(lambda peer: conn, address, port, mtls, expected=spec.sans or None,
                                   handshake_timeout_s=cluster.spec.connect_timeout_s)
        except PeerRejected as e:
            raise ConnectionError(0, f"TLS error: {e.reason}") from None
        except RuntimeError as e:     # no material yet
            raise ConnectionError(0, f"TLS error: {e}") from None

    def peer_of(self, conn) -> Peer | None:
        return self.peers.get(conn)

    # --- stats --------------------------------------------------------------------------------
    def stat_items(self):
        for key, m in list(self.sds_users.items()) + list(self.file_users.items()):
            tags = {"envoy_cluster_name": key[len("cluster."):]} if key.startswith("cluster.") else {}
            for stat, n in m.stats.items():
                yield f"{key}.{stat}", n, tags
        if self.rotator is not None:
            for stat, n in self.rotator.stats.items():
                yield f"citadel.{stat}", n, {}
        mats = [m.material for m in list(self.sds_users.values()) + list(self.file_users.values())
                if m.material is not None]
        if mats:
            left = min(m.not_after for m in mats) - time.time()
            yield "server.days_until_first_cert_expiring", round(left / 86400.0, 6), {}
        for prefix, c in self.rbac.items():
            for stat in ("allowed", "denied"):
                yield f"http.{prefix}.rbac.{stat}", c[stat], {}

    async def stop(self) -> None:
        if self.rotator is not None:
            await self.rotator.stop()


class _Refused(asyncio.Protocol):
    """A connection whose client certificate passed TLS but not the listener's SAN list."""

    def connection_made(self, transport) -> None:
        transport.abort()


def security_of(ctx: _Shared) -> SidecarSecurity:
    """The ServerContext's SidecarSecurity (created on first use, e.g. by the RBAC filter)."""
    sec = getattr(ctx, "security", None)
    if sec is None:
        sec = ctx.security = SidecarSecurity()
        ctx.stats.gauge_sources.append(sec.stat_items)
    return sec


async def attach_security(server: SecurityTarget) -> SidecarSecurity:
    """Wire Citadel into a Server (see module docstring); idempotent."""
    ctx = server.ctx
    md = server.bootstrap.node.metadata or {}
    existing = getattr(ctx, "security", None)
    sec = security_of(ctx)
    if existing is None:
        sec.keylog = md.get("KEYLOG") or None
    server.cluster_manager.security = sec
    url = md.get("CITADEL")
    if url and sec.rotator is None:
        labels = md.get("LABELS")
        if not isinstance(labels, dict):
            labels = {}
        service = str(md.get("SERVICE_ACCOUNT") or md.get("WORKLOAD_NAME") or labels.get("app")
                      or server.bootstrap.node.cluster or "client")
        ttl = md.get("CERT_TTL_S")
        sec.rotator = CertificateRotator(str(url), service, sec.on_update,
                                         namespace=str(md.get("NAMESPACE") or "default"),
                                         node_id=server.bootstrap.node.id,
                                         ttl_s=float(ttl) if ttl else None,
                                         bundle_refresh_s=float(md.get("BUNDLE_REFRESH_S") or 5.0),
                                         renew_fraction=float(md.get("CERT_RENEW_FRACTION") or 0.5))
        try:
            await sec.rotator.start()
        except RuntimeError as e:
            raise StartupError(f"node.metadata.CITADEL: {e}") from None
    return sec
