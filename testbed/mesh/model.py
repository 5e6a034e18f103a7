"""Pure data of the mesh control plane: services, endpoints, analysis messages, state.

Nothing here does I/O. The registry produces `Endpoint`s, the topology produces
`ServiceSpec`s, the rule parsers (testbed.mesh.rules) produce rules, Galley produces `Message`s, and Pilot
holds a `MeshState` it hands to the xDS builder.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping

ERROR = "Error"
WARNING = "Warning"
INFO = "Info"


@dataclass(frozen=True)
class VersionSpec:
    """One version of a service: how many replicas, optionally on which hosts."""

    name: str
    replicas: int = 1
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceSpec:
    """A mesh service as declared in topology YAML `mesh.services.<name>`."""

    name: str
    port: int
    versions: tuple[VersionSpec, ...] = ()
    run: str = ""
    file: str = ""
    line: int = 0

    @property
    def version_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.versions)


@dataclass(frozen=True)
class Endpoint:
    """One registered instance: ip is the host's IP, port its sidecar's inbound port."""

    service: str
    version: str
    instance: str
    host: str
    ip: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Endpoint":
        return cls(service=str(d["service"]), version=str(d["version"]),
                   instance=str(d["instance"]), host=str(d.get("host", "")),
                   ip=str(d["ip"]), port=int(d["port"]),
                   labels=dict(d.get("labels") or {}))

    @property
    def all_labels(self) -> dict[str, str]:
        """Labels used for subset selection: app/version always present."""
        return {"app": self.service, "version": self.version, **dict(self.labels)}

    def __hash__(self) -> int:  # labels is a dict: hash the identity fields only
        return hash((self.service, self.version, self.instance, self.ip, self.port))


@dataclass(frozen=True)
class Message:
    """An Istio-style analysis message (`istioctl analyze` shape)."""

    code: str
    level: str
    text: str
    file: str = ""
    line: int = 0
    resource: str = ""  # e.g. "VirtualService reviews"

    def format(self) -> str:
        where = f" {self.file}:{self.line}" if self.file else ""
        res = f" ({self.resource})" if self.resource else ""
        return f"{self.level} [{self.code}]{res}{where} {self.text}"


# ------------------------------------------- Istio rules (testbed.mesh.rules.traffic parses them)
@dataclass(frozen=True)
class StringMatch:
    kind: str  # exact | prefix | regex
    value: str


@dataclass(frozen=True)
class HTTPMatch:
    uri: StringMatch | None
    headers: tuple[tuple[str, StringMatch], ...]
    source_labels: tuple[tuple[str, str], ...]
    line: int

    @property
    def is_catch_all(self) -> bool:
        return self.uri in (None, StringMatch("prefix", "/")) and not self.headers \
            and not self.source_labels


@dataclass(frozen=True)
class Destination:
    host: str
    subset: str
    port: int | None
    line: int


@dataclass(frozen=True)
class RouteDestination:
    destination: Destination
    weight: int | None
    line: int


@dataclass(frozen=True)
class HTTPFault:
    """A route's ``fault`` (Istio's HTTPFaultInjection): a delay and/or an abort."""

    delay_ms: int | None = None
    delay_percent: float = 100.0
    abort_status: int | None = None
    abort_percent: float = 100.0


@dataclass(frozen=True)
class Retries:
    attempts: int
    per_try_timeout_ms: int | None
    retry_on: str


@dataclass(frozen=True)
class HTTPRoute:
    name: str
    match: tuple[HTTPMatch, ...]
    route: tuple[RouteDestination, ...]
    timeout_ms: int | None
    retries: Retries | None
    fault: HTTPFault | None
    mirror: Destination | None
    mirror_percent: float
    line: int


@dataclass(frozen=True)
class VirtualService:
    name: str
    namespace: str
    hosts: tuple[str, ...]
    http: tuple[HTTPRoute, ...]
    file: str
    line: int
    kind: str = "VirtualService"
    hosts_line: int = 0


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx: int | None
    consecutive_gateway: int | None
    interval_ms: int | None
    base_ejection_ms: int | None
    max_ejection_percent: int | None


@dataclass(frozen=True)
class TrafficPolicy:
    lb_simple: str | None = None
    hash_header: str | None = None
    max_connections: int | None = None
    connect_timeout_ms: int | None = None
    http1_max_pending: int | None = None
    http2_max_requests: int | None = None
    max_retries: int | None = None
    outlier: OutlierDetection | None = None
    tls_mode: str | None = None          # ISTIO_MUTUAL | DISABLE | None (auto mTLS)


@dataclass(frozen=True)
class Subset:
    name: str
    labels: tuple[tuple[str, str], ...]
    traffic_policy: TrafficPolicy | None
    line: int


@dataclass(frozen=True)
class DestinationRule:
    name: str
    namespace: str
    host: str
    subsets: tuple[Subset, ...]
    traffic_policy: TrafficPolicy | None
    file: str
    line: int
    kind: str = "DestinationRule"


@dataclass(frozen=True)
class MeshState:
    """Everything Pilot builds xDS from. `rules` holds the applied rules: VirtualServices,
    DestinationRules and the security resources (PeerAuthentication, AuthorizationPolicy)."""

    services: tuple[ServiceSpec, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    rules: tuple[Any, ...] = ()
    auto_mtls: bool = False      # mTLS between sidecars from the start (mesh.security.auto_mtls)

    def service(self, name: str) -> ServiceSpec | None:
        for s in self.services:
            if s.name == name:
                return s
        return None


def service_vips(names: "list[str] | tuple[str, ...]",
                 cidr: str = "10.96.0.0/16") -> dict[str, str]:
    """Deterministic virtual IPs: the i-th service by sorted name gets network + i + 1."""
    net = ipaddress.ip_network(cidr)
    names = sorted(set(names))
    if len(names) > net.num_addresses - 2:
        raise ValueError(f"{len(names)} services do not fit VIP range {cidr}")
    return {n: str(net.network_address + i + 1) for i, n in enumerate(names)}
