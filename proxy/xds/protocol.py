"""xDS over REST-JSON, the sans-IO core: config sources, the ACK/NACK state machine of one
subscription, and the strict validation of every resource type.

Nothing here touches sockets or the running server; :mod:`proxy.xds.client` does the HTTP
long polls and applies validated updates to the cluster and listener managers.

A subscription (type, resource names) follows real Envoy's REST client
(``http_subscription_impl.cc``) plus the explicit NACK of the gRPC protocol:

* a request carries the last *accepted* ``version_info`` and the nonce of the last response;
* an accepted response is ACKed by the next request carrying its version;
* a rejected response is NACKed by a request still carrying the old version, the rejected
  response's nonce and ``error_detail {code: 13, message}``;
* 304 Not Modified means "nothing new" (the server held the long poll until its timeout).

A response is validated as a whole before anything is applied: one bad resource rejects the
update and the previous config keeps serving.
"""
from __future__ import annotations

import ipaddress
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from proxy.config.cluster import ClusterSpec, EndpointSpec, parse_cluster, parse_load_assignment
from proxy.config.listener import HcmSpec, ListenerSpec, parse_listener
from proxy.config.reader import ConfigError, Obj
from proxy.config.route import RouteConfigSpec, parse_route_config

__all__ = ["LISTENER", "ROUTE", "CLUSTER", "ENDPOINT", "PATHS", "GRPC_INTERNAL", "ConfigSource",
           "parse_config_source", "parse_dynamic_resources", "XdsError", "UpdateStats", "Subscription",
           "decode_response", "validate_clusters", "validate_listeners", "validate_route_config",
           "validate_assignment", "ClusterUpdate", "ListenerUpdate", "version_number"]

T = "type.googleapis.com/envoy.config."
LISTENER = T + "listener.v3.Listener"
ROUTE = T + "route.v3.RouteConfiguration"
CLUSTER = T + "cluster.v3.Cluster"
ENDPOINT = T + "endpoint.v3.ClusterLoadAssignment"
PATHS = {LISTENER: "/v3/discovery:listeners", ROUTE: "/v3/discovery:routes",
         CLUSTER: "/v3/discovery:clusters", ENDPOINT: "/v3/discovery:endpoints"}
GRPC_INTERNAL = 13       # the code Envoy puts in a NACK's error_detail
_API_TYPES = ("REST",)


class XdsError(Exception):
    """A DiscoveryResponse (or a config source) that cannot be used; str() says why."""


@dataclass(frozen=True)
class ConfigSource:
    """An ``api_config_source`` with ``api_type: REST``: where and how often to poll."""

    cluster: str
    refresh_delay_s: float = 1.0
    request_timeout_s: float = 1.0
    initial_fetch_timeout_s: float = 15.0


def parse_config_source(o: Obj) -> ConfigSource:
    """A ConfigSource (bootstrap ``lds_config``/``cds_config``, a listener's ``rds.config_source``
    or a cluster's ``eds_cluster_config.eds_config``); only REST over an api_config_source."""
    o.take("resource_api_version", "V3", str, ("V3", "AUTO"))
    fetch = o.duration("initial_fetch_timeout", 15.0)
    kind = o.one_of(("api_config_source", "ads", "path", "path_config_source", "self"))
    if kind != "api_config_source":
        raise ConfigError(o.sub(kind or ""), "unsupported config source; allowed: api_config_source "
                          "with api_type REST")
    a = o.obj("api_config_source")
    assert a is not None
    a.take("api_type", kind=str, choices=_API_TYPES)
    a.take("transport_api_version", "V3", str, ("V3",))
    names = a.strings("cluster_names")
    if len(names) != 1:
        raise ConfigError(a.sub("cluster_names"), f"exactly one cluster is required for REST, got {len(names)}")
    refresh = a.duration("refresh_delay", 1.0)
    timeout = a.duration("request_timeout", 1.0)
    a.ignore("set_node_on_first_message_only")
    a.done()
    o.done()
    if timeout <= 0:
        raise ConfigError(a.sub("request_timeout"), "must be positive")
    return ConfigSource(names[0], refresh, timeout, fetch)


def parse_dynamic_resources(raw: Mapping[str, Any]) -> tuple[ConfigSource | None, ConfigSource | None]:
    """(cds, lds) config sources of the bootstrap's ``dynamic_resources``."""
    o = Obj(dict(raw), "dynamic_resources")
    cds = o.obj("cds_config")
    lds = o.obj("lds_config")
    for key in ("ads_config", "lds_resources_locator", "cds_resources_locator"):
        if key in raw:
            raise ConfigError(o.sub(key), "unsupported field; minimesh-proxy speaks REST xDS only "
                              "(lds_config / cds_config with api_type REST)")
    o.done()
    return (parse_config_source(cds) if cds else None, parse_config_source(lds) if lds else None)


def version_number(version_info: str) -> int:
    """The ``version`` stat: Pilot's leading generation number, else a 32-bit hash."""
    head = version_info.split("-", 1)[0]
    return int(head) if head.isdigit() else zlib.crc32(version_info.encode())


# ---------------------------------------------------------------- the state machine
@dataclass
class UpdateStats:
    """Envoy's subscription stats (``<prefix>.update_attempt`` ...)."""

    update_attempt: int = 0
    update_success: int = 0
    update_failure: int = 0
    update_rejected: int = 0
    update_empty: int = 0
    version: int = 0

    def items(self, prefix: str) -> Iterator[tuple[str, int]]:
        for k in ("update_attempt", "update_success", "update_failure", "update_rejected", "update_empty",
                  "version"):
            yield f"{prefix}.{k}", getattr(self, k)


@dataclass
class Subscription:
    """One (type_url, resource names) subscription: what to send next, what was accepted."""

    type_url: str
    names: tuple[str, ...] = ()
    version_info: str = ""            # last accepted
    nonce: str = ""                   # nonce of the last response
    error: dict | None = None         # error_detail of a pending NACK
    last_error: str = ""
    stats: UpdateStats = field(default_factory=UpdateStats)
    responded: bool = False           # any answer (update, rejection or 304) since start

    def request(self, node: Mapping[str, Any]) -> dict:
        """The next DiscoveryRequest (an ACK or NACK of the last response, and the next poll)."""
        self.stats.update_attempt += 1
        req: dict[str, Any] = {"version_info": self.version_info, "node": dict(node),
                               "resource_names": list(self.names), "type_url": self.type_url}
        if self.nonce:
            req["response_nonce"] = self.nonce
        if self.error is not None:
            req["error_detail"] = self.error
        return req

    def accepted(self, version: str, nonce: str, empty: bool = False) -> None:
        self.version_info, self.nonce, self.error = version, nonce, None
        self.stats.update_success += 1
        self.stats.update_empty += empty
        self.stats.version = version_number(version)
        self.responded = True

    def rejected(self, nonce: str, message: str) -> None:
        self.nonce, self.last_error = nonce, message
        self.error = {"code": GRPC_INTERNAL, "message": message}
        self.stats.update_rejected += 1
        self.responded = True

    def not_modified(self) -> None:
        self.error = None      # the server has seen the NACK (it answered this request)
        self.stats.update_success += 1
        self.responded = True

    def failed(self, reason: str) -> None:
        self.last_error = reason
        self.stats.update_failure += 1


@dataclass(frozen=True)
class Response:
    version_info: str
    nonce: str
    resources: tuple[dict, ...]


def decode_response(body: Any, type_url: str) -> Response:
    """A DiscoveryResponse's version, nonce and resources (``@type`` checked and removed)."""
    if not isinstance(body, dict):
        raise XdsError(f"DiscoveryResponse: expected a JSON object, got {type(body).__name__}")
    got = body.get("type_url", type_url)
    if got != type_url:
        raise XdsError(f"DiscoveryResponse: type_url {got!r} does not match the subscription's {type_url!r}")
    version, nonce = body.get("version_info", ""), body.get("nonce", "")
    if not isinstance(version, str) or not isinstance(nonce, str):
        raise XdsError("DiscoveryResponse: version_info and nonce must be strings")
    raw = body.get("resources") or []
    if not isinstance(raw, list):
        raise XdsError("DiscoveryResponse: resources must be a list")
    out = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise XdsError(f"resources[{i}]: expected an object")
        rtype = r.get("@type", type_url)
        if rtype != type_url:
            raise XdsError(f"resources[{i}]: @type {rtype!r} is not {type_url!r}")
        out.append({k: v for k, v in r.items() if k != "@type"})
    return Response(version, nonce, tuple(out))


# ---------------------------------------------------------------- validation (all or nothing)
@dataclass(frozen=True)
class ClusterUpdate:
    clusters: tuple[ClusterSpec, ...]
    eds: Mapping[str, tuple[str, ConfigSource]]      # cluster -> (EDS resource name, source)


@dataclass(frozen=True)
class ListenerUpdate:
    listeners: tuple[ListenerSpec, ...]
    rds: Mapping[str, ConfigSource]                   # route_config_name -> source


def _name(r: dict, i: int, what: str) -> str:
    n = r.get("name")
    if not isinstance(n, str) or not n:
        raise ConfigError(f"{what}[{i}].name", "required field is missing")
    return n


def _unique(resources: tuple[dict, ...], what: str, static: frozenset[str]) -> None:
    seen: set[str] = set()
    for i, r in enumerate(resources):
        n = _name(r, i, what)
        if n in seen:
            raise ConfigError(f"{what}[{i}].name", f"duplicate {what} {n!r}")
        if n in static:
            raise ConfigError(f"{what}[{i}].name", f"{n!r} is a static resource of the bootstrap "
                              "and cannot be changed by xDS")
        seen.add(n)


def validate_clusters(resources: tuple[dict, ...], static: frozenset[str] = frozenset()) -> ClusterUpdate:
    """Every Cluster of a CDS response, parsed with the proxy's strict reader."""
    _unique(resources, "cluster", static)
    specs, eds = [], {}
    for i, r in enumerate(resources):
        path = f"cluster[{i}:{r['name']}]"
        spec = parse_cluster(Obj(r, path))
        if spec.type == "EDS":
            ecc = r.get("eds_cluster_config") or {}
            if "eds_config" not in ecc:
                raise ConfigError(f"{path}.eds_cluster_config.eds_config", "required for an EDS cluster")
            eds[spec.name] = (spec.eds_service_name or spec.name,
                              parse_config_source(Obj(ecc["eds_config"], f"{path}.eds_cluster_config.eds_config")))
        specs.append(spec)
    return ClusterUpdate(tuple(specs), eds)


def _rds_source(raw: dict, path: str) -> ConfigSource:
    f = raw["filter_chains"][0]["filters"][0]
    tc = f.get("typed_config") or f.get("config") or {}
    cs = (tc.get("rds") or {}).get("config_source")
    p = f"{path}.filter_chains[0].filters[0].typed_config.rds.config_source"
    if cs is None:
        raise ConfigError(p, "required field is missing")
    return parse_config_source(Obj(cs, p))


def validate_listeners(resources: tuple[dict, ...], static: frozenset[str] = frozenset()) -> ListenerUpdate:
    """Every Listener of an LDS response; RDS names and their config sources."""
    _unique(resources, "listener", static)
    specs, rds = [], {}
    for i, r in enumerate(resources):
        path = f"listener[{i}:{r['name']}]"
        spec = parse_listener(Obj(r, path), i)
        if isinstance(spec.filter, HcmSpec) and spec.filter.rds_route_config_name is not None:
            rds[spec.filter.rds_route_config_name] = _rds_source(r, path)
        specs.append(spec)
    seen: dict[tuple[str, int], str] = {}
    for s in specs:
        if s.port and (s.address, s.port) in seen:
            raise ConfigError(f"listener {s.name!r}", f"address {s.address}:{s.port} is also used by "
                              f"listener {seen[(s.address, s.port)]!r}")
        seen[(s.address, s.port)] = s.name
    return ListenerUpdate(tuple(specs), rds)


def validate_route_config(resources: tuple[dict, ...], name: str) -> RouteConfigSpec | None:
    """The RouteConfiguration ``name`` of an RDS response (None: the response is empty)."""
    if not resources:
        return None
    if len(resources) != 1 or resources[0].get("name") != name:
        got = [r.get("name") for r in resources]
        raise ConfigError("route_config", f"unexpected RDS resources {got}; expected exactly [{name!r}]")
    return parse_route_config(Obj(resources[0], f"route_config[{name}]"))


def validate_assignment(resources: tuple[dict, ...], name: str) -> tuple[EndpointSpec, ...] | None:
    """The endpoints of ClusterLoadAssignment ``name`` (None: empty response, keep the old ones)."""
    if not resources:
        return None
    if len(resources) != 1:
        raise ConfigError("cluster_load_assignment", f"unexpected EDS resource length: {len(resources)}")
    got = resources[0].get("cluster_name")
    if got != name:
        raise ConfigError("cluster_load_assignment.cluster_name",
                          f"unexpected EDS cluster (expecting {name}): {got}")
    path = f"cluster_load_assignment[{name}]"
    eps = parse_load_assignment(Obj(resources[0], path))
    for e in eps:
        try:
            ipaddress.ip_address(e.address)
        except ValueError:
            raise ConfigError(f"{path}.endpoints", f"malformed IP address: {e.address} "
                              "(EDS endpoints need IP addresses)") from None
    return eps

