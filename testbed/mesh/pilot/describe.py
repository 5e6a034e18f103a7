"""What ``minimesh describe SERVICE`` shows, from Pilot's state (pure; as ``istioctl x
describe``): the service and its endpoints, the DestinationRule and its subsets (with the
endpoints each selects), the VirtualService routes, the mTLS mode of each version's
workloads (PeerAuthentication, as Pilot computes it), whether clients reach it over mTLS
(read from the outbound clusters Pilot builds: a ``transport_socket`` or none), and the
AuthorizationPolicies that apply. Served by Pilot's admin socket as ``GET /describe?service=``.
"""
from __future__ import annotations

from typing import Any

from testbed.mesh.model import DestinationRule, HTTPRoute, MeshState, VirtualService
from testbed.mesh.pilot.resources import CLUSTER, NodeInfo, XdsSource, build, short_host
from testbed.mesh.rules.policy import AuthorizationPolicy, PeerAuthentication, applicable, peer_mode

__all__ = ["describe_service", "DescribeError"]

NAMESPACE = "default"


class DescribeError(LookupError):
    """No such service (the message lists the known ones)."""


def _route(http: HTTPRoute) -> dict:
    matches = []
    for m in http.match:
        parts = [f"uri {m.uri.kind} {m.uri.value}"] if m.uri else []
        parts += [f"header {k} {sm.kind} {sm.value}" for k, sm in m.headers]
        parts += [f"sourceLabels {k}={v}" for k, v in m.source_labels]
        matches.append(", ".join(parts) or "any")
    out: dict[str, Any] = {"name": http.name, "match": matches or ["any"], "route": [
        {"host": short_host(rd.destination.host), "subset": rd.destination.subset,
         "weight": rd.weight if rd.weight is not None else (100 if len(http.route) == 1 else None)}
        for rd in http.route]}
    if http.timeout_ms is not None:
        out["timeout_ms"] = http.timeout_ms
    if http.retries is not None:
        out["retries"] = {"attempts": http.retries.attempts, "per_try_timeout_ms": http.retries.per_try_timeout_ms}
    if http.fault is not None:
        f = http.fault
        out["fault"] = {k: v for k, v in (("delay_ms", f.delay_ms), ("delay_percent", f.delay_percent),
                                          ("abort_status", f.abort_status), ("abort_percent", f.abort_percent))
                        if v is not None}
    return out


def _client_tls(state: MeshState, service: str) -> dict[str, bool]:
    """Outbound cluster -> whether Pilot gives clients an mTLS transport socket for it."""
    node = NodeInfo.make("0.0.0.0", "describe", "describe-client")
    clusters = build(state, node, CLUSTER, [], XdsSource())
    return {c["name"]: "transport_socket" in c for c in clusters
            if c["name"].startswith("outbound|") and c["name"].rsplit("|", 1)[1] == service}


def describe_service(state: MeshState, service: str) -> dict:
    svc = state.service(service)
    if svc is None:
        raise DescribeError(f"no service {service!r}; services: {', '.join(s.name for s in state.services)}")
    eps = [e for e in state.endpoints if e.service == service]
    pas = [r for r in state.rules if isinstance(r, PeerAuthentication)]
    aps = [r for r in state.rules if isinstance(r, AuthorizationPolicy)]
    drs = [r for r in state.rules if isinstance(r, DestinationRule) and short_host(r.host) == service]
    vss = [r for r in state.rules if isinstance(r, VirtualService) and service in {short_host(h) for h in r.hosts}]

    def labels(version: str) -> dict[str, str]:
        return {"app": service, "version": version}

    def selects(sub_labels: tuple[tuple[str, str], ...], version: str) -> bool:
        return all(labels(version).get(k) == v for k, v in sub_labels)
    versions = sorted({v.name for v in svc.versions} | {e.version for e in eps})
    return {
        "service": {"name": svc.name, "port": svc.port, "versions": versions},
        "endpoints": [{"instance": e.instance, "version": e.version, "host": e.host, "address": f"{e.ip}:{e.port}"}
                      for e in sorted(eps, key=lambda e: (e.version, e.instance))],
        "destination_rules": [{"name": d.name, "where": f"{d.file}:{d.line}", "subsets": [
            {"name": s.name, "labels": dict(s.labels),
             "endpoints": [e.instance for e in eps if selects(s.labels, e.version)]} for s in d.subsets]}
            for d in drs],
        "virtual_services": [{"name": v.name, "where": f"{v.file}:{v.line}", "routes": [_route(h) for h in v.http]}
                             for v in vss],
        "mtls": {"server": {v: peer_mode(pas, labels(v), NAMESPACE, svc.port) for v in versions},
                 "peer_authentications": [f"{p.namespace}/{p.name}" for p in pas],
                 "clients": _client_tls(state, service)},
        "authorization_policies": sorted({f"{p.namespace}/{p.name} ({p.action})" for v in versions
                                          for p in applicable(aps, NAMESPACE, labels(v))}),
    }
