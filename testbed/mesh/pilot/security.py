"""What Pilot adds to one sidecar's xDS for Citadel: mTLS transport sockets and RBAC (pure).

:mod:`testbed.mesh.pilot.resources` calls :func:`secure_listeners` and :func:`secure_clusters`
on the resources it built (handing the latter its outbound cluster -> destination map and
each cluster's DestinationRule ``tls.mode``). Nothing changes while security is *inactive*:
no PeerAuthentication or AuthorizationPolicy, no DestinationRule with ``tls.mode:
ISTIO_MUTUAL``, and auto mTLS off (``MeshState.auto_mtls``, ``mesh.security.auto_mtls``;
docs/security.md says why it is off by default). Once security is active:

* **inbound listener** (``inbound_<port>``): ``policy.peer_mode(peer_auths, labels, ns, port)``
  picks STRICT (one TLS chain), PERMISSIVE (``tls_inspector`` + TLS chain + plaintext chain)
  or DISABLE (plaintext), in real Envoy's shape (``citadel.envoy.inbound_chains``), so the same
  resources feed Envoy and minimesh-proxy;
* **inbound HCM**: ``rbac.rbac_filters(applicable(auth_policies, ns, labels))``
  before the other HTTP filters (DENY filter, then ALLOW filter);
* **outbound clusters** (auto mTLS, as Istio, once auto mTLS is on or any PeerAuthentication
  or AuthorizationPolicy is applied): a cluster whose destination workloads are in
  STRICT or PERMISSIVE mode gets an ``UpstreamTlsContext`` that checks the server's SPIFFE ID
  ``spiffe://cluster.local/ns/<ns>/sa/<service>``; DISABLE destinations stay plaintext.
  Without any PeerAuthentication, Istio's default PERMISSIVE applies, so clients use mTLS.
  A DestinationRule's ``tls.mode`` overrides this per cluster, as in Istio: ``ISTIO_MUTUAL``
  always originates mTLS, ``DISABLE`` never does.

Secrets are Istio's SDS names ``default`` + ``ROOTCA``. minimesh-proxy serves them from its
Citadel rotator (and ignores ``sds_config``); real Envoy reads them from the files
``citadel.envoy.write_sds`` keeps in :func:`sds_dir` (``$MINIMESH_SDS_ROOT/<instance>``).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from testbed.mesh.citadel.envoy import inbound_chains, upstream_tls_context
from testbed.mesh.model import DestinationRule
from testbed.mesh.rules.policy import AuthorizationPolicy, PeerAuthentication, applicable, peer_mode
from proxy.tls.identity import DISABLE, SpiffeId
from testbed.mesh.pilot.rbac import rbac_filters

__all__ = ["secure_listeners", "secure_clusters", "security_active", "sds_dir", "citadel_metadata",
           "NAMESPACE", "ISTIO_MUTUAL"]

NAMESPACE = "default"      # minimesh services live in one namespace
ISTIO_MUTUAL = "ISTIO_MUTUAL"  # DestinationRule trafficPolicy.tls.mode
SDS_ROOT_ENV = "MINIMESH_SDS_ROOT"


def sds_dir(node) -> str:
    """Where a real-Envoy sidecar's SDS files live (minimesh-proxy ignores it)."""
    return os.path.join(os.environ.get(SDS_ROOT_ENV, "/var/run/minimesh/sds"), node.instance)


def _resources(state) -> tuple[list[PeerAuthentication], list[AuthorizationPolicy]]:
    pas = [r for r in state.rules if isinstance(r, PeerAuthentication)]
    aps = [r for r in state.rules if isinstance(r, AuthorizationPolicy)]
    return pas, aps


def security_active(state) -> bool:
    """Whether Pilot adds mTLS/RBAC at all (see the module docstring)."""
    pas, aps = _resources(state)
    return bool(pas or aps or getattr(state, "auto_mtls", False) or any(
        getattr(p, "tls_mode", None) == ISTIO_MUTUAL for dr in state.rules
        if isinstance(dr, DestinationRule)
        for p in (dr.traffic_policy, *(s.traffic_policy for s in dr.subsets)) if p is not None))


def _labels(service: str, labels) -> dict[str, str]:
    return {"app": service, **dict(labels or {})}


def secure_listeners(state, node, listeners: list[dict]) -> list[dict]:
    """Rewrite the node's inbound listener in place (and return the list)."""
    pas, aps = _resources(state)
    if not security_active(state):
        return listeners
    svc = state.service(node.service)
    if svc is None:
        return listeners
    labels = _labels(node.service, node.labels)
    for lst in listeners:
        if lst.get("traffic_direction") != "INBOUND":
            continue
        filters = lst["filter_chains"][0]["filters"]
        hcm = filters[0]["typed_config"]
        rbac = rbac_filters(applicable(aps, NAMESPACE, labels))
        if rbac:
            hcm["http_filters"] = rbac + hcm["http_filters"]
        mode = peer_mode(pas, labels, NAMESPACE, svc.port)
        lst.pop("filter_chains")
        lst.update(inbound_chains(mode, sds_dir(node), filters))
    return listeners


def secure_clusters(state, node, clusters: list[dict],
                    destinations: Mapping[str, tuple[Any, Mapping[str, str]]],
                    tls_modes: Mapping[str, str | None] | None = None) -> list[dict]:
    """Give outbound clusters of mTLS destinations an UpstreamTlsContext (in place).
    ``destinations``: cluster name -> (service, subset labels) of every outbound cluster;
    ``tls_modes``: cluster name -> its DestinationRule's ``tls.mode`` (None: auto mTLS)."""
    pas, aps = _resources(state)
    if not security_active(state):
        return clusters
    auto = bool(getattr(state, "auto_mtls", False) or pas or aps)
    for c in clusters:
        dest = destinations.get(c["name"])
        if dest is None:
            continue
        svc, subset_labels = dest
        mode = (tls_modes or {}).get(c["name"])
        if mode == DISABLE or (mode != ISTIO_MUTUAL and (not auto or peer_mode(
                pas, _labels(svc.name, subset_labels), NAMESPACE, svc.port) == DISABLE)):
            continue
        c["transport_socket"] = upstream_tls_context(
            sds_dir(node), [SpiffeId.make(svc.name, NAMESPACE).uri])
    return clusters


def citadel_metadata(citadel_url: str, service: str, namespace: str = NAMESPACE,
                     cert_ttl_s: float | None = None, keylog: str = "",
                     bundle_refresh_s: float | None = None,
                     renew_fraction: float | None = None) -> dict[str, Any]:
    """The bootstrap `node.metadata` keys that make minimesh-proxy fetch its certificate from
    Citadel (proxy/tls/sds.py); merge them into `sidecar_bootstrap(...)["node"]["metadata"]`."""
    md: dict[str, Any] = {"CITADEL": citadel_url, "NAMESPACE": namespace, "SERVICE_ACCOUNT": service}
    if cert_ttl_s:
        md["CERT_TTL_S"] = cert_ttl_s
    if keylog:
        md["KEYLOG"] = keylog
    if bundle_refresh_s:
        md["BUNDLE_REFRESH_S"] = bundle_refresh_s
    if renew_fraction:
        md["CERT_RENEW_FRACTION"] = renew_fraction
    return md

