"""``/config_dump`` in Envoy's shape (``envoy.admin.v3.*ConfigDump``), so that the tools
made for Envoy's admin -- ``istioctl proxy-config``, ``minimesh proxy-config`` -- read
minimesh-proxy the same way:

- ``BootstrapConfigDump``: the bootstrap as given;
- ``ClustersConfigDump``: ``version_info`` (CDS), ``static_clusters``, ``dynamic_active_clusters``
  (each ``{version_info, cluster, last_updated}``, the cluster as CDS delivered it);
- ``ListenersConfigDump``: ``static_listeners``, ``dynamic_listeners`` (``{name, active_state:
  {version_info, listener, last_updated}}``);
- ``RoutesConfigDump``: ``static_route_configs`` (the listeners' inline ones, as Envoy) and
  ``dynamic_route_configs`` (``{version_info, route_config, last_updated}``);
- ``SecretsConfigDump``: ``dynamic_active_secrets`` ``default`` (certificate chain, private key
  redacted as Envoy does) and ``ROOTCA`` (trust bundle), when the sidecar holds an identity;
- ``EndpointsConfigDump`` only with ``?include_eds`` (as Envoy): ``dynamic_endpoint_configs``.
"""
from __future__ import annotations

import base64
import datetime as dt
from typing import Any

__all__ = ["config_dump"]

_T = "type.googleapis.com/envoy.admin.v3."
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
REDACTED = base64.b64encode(b"[redacted]").decode()


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _accepted(xds: Any, label: str) -> tuple[str, float, tuple[dict, ...]]:
    """(version, wall time, resources) of the subscription ``label`` of ``xds``, or empty."""
    return getattr(xds, "accepted", {}).get(label, ("", 0.0, ()))


def _clusters(server: Any, xds: Any, static: dict) -> dict:
    version, t, resources = _accepted(xds, "cds")
    raw = {r.get("name"): r for r in resources}
    statics = {c.get("name") for c in static.get("clusters") or []}
    return {"@type": _T + "ClustersConfigDump", "version_info": version,
            "static_clusters": [{"cluster": c} for c in static.get("clusters") or []],
            "dynamic_active_clusters": [{"version_info": version, "cluster": raw.get(n) or {"name": n},
                                         "last_updated": _ts(t) if t else ""}
                                        for n in server.cluster_manager.clusters if n not in statics]}


def _listeners(server: Any, xds: Any) -> dict:
    version, t, _ = _accepted(xds, "lds")
    lm, b = server.listener_manager, server.bootstrap
    return {"@type": _T + "ListenersConfigDump", "version_info": version,
            "static_listeners": [{"listener": lst.spec.raw} for lst in lm.listeners.values()
                                 if lst.spec in b.listeners],
            "dynamic_listeners": [{"name": lst.spec.name, "active_state": {
                "version_info": version, "listener": lst.spec.raw, "last_updated": _ts(t) if t else ""}}
                for lst in lm.listeners.values() if lst.spec not in b.listeners]}


def _inline_routes(server: Any) -> list[dict]:
    """The listeners' inline ``route_config``s (Envoy dumps them as static route configs)."""
    out = []
    for lst in server.listener_manager.listeners.values():
        for chain in (lst.spec.raw or {}).get("filter_chains") or []:
            for f in chain.get("filters") or []:
                rc = (f.get("typed_config") or {}).get("route_config")
                if rc:
                    out.append({"route_config": rc})
    return out


def _routes(server: Any, xds: Any) -> dict:
    out = []
    for name, rc in (getattr(xds, "routes", None) or {}).items():
        version, t, _ = _accepted(xds, f"rds {name}")
        out.append({"version_info": version, "route_config": rc.raw, "last_updated": _ts(t) if t else ""})
    return {"@type": _T + "RoutesConfigDump", "static_route_configs": _inline_routes(server),
            "dynamic_route_configs": out}


def _endpoints(xds: Any) -> dict:
    out = []
    for label, (version, t, resources) in sorted(getattr(xds, "accepted", {}).items()):
        if label.startswith("eds "):
            out += [{"version_info": version, "endpoint_config": r, "last_updated": _ts(t)} for r in resources]
    return {"@type": _T + "EndpointsConfigDump", "dynamic_endpoint_configs": out}


def _secrets(server: Any) -> dict | None:
    sec = getattr(getattr(server, "ctx", None), "security", None)
    m = getattr(sec, "material", None)
    if m is None:
        return None
    b64 = lambda data: base64.b64encode(data).decode()      # noqa: E731  (a one-line local helper)
    version = str(m.serial)
    return {"@type": _T + "SecretsConfigDump", "dynamic_active_secrets": [
        {"name": "default", "version_info": version, "secret": {
            "@type": SECRET, "name": "default", "tls_certificate": {
                "certificate_chain": {"inline_bytes": b64(m.cert_chain_pem)},
                "private_key": {"inline_bytes": REDACTED}}}},
        {"name": "ROOTCA", "version_info": version, "secret": {
            "@type": SECRET, "name": "ROOTCA", "validation_context": {
                "trusted_ca": {"inline_bytes": b64(m.trust_bundle_pem)}}}}]}


def config_dump(server: Any, include_eds: bool = False) -> dict:
    """The ``/config_dump`` document of ``server`` (a :class:`proxy.server.Server`)."""
    b = server.bootstrap
    raw = b.raw or {}
    xds = getattr(server, "xds", None)
    configs = [{"@type": _T + "BootstrapConfigDump", "bootstrap": raw},
               _clusters(server, xds, raw.get("static_resources") or {}), _listeners(server, xds), _routes(server, xds)]
    secrets = _secrets(server)
    if secrets is not None:
        configs.append(secrets)
    if include_eds:
        configs.append(_endpoints(xds))
    return {"configs": configs}
