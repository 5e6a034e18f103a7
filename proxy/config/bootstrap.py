"""The bootstrap: one Envoy v3 (or v2-style) YAML/JSON file parsed once into frozen specs."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from proxy.config.cluster import ClusterSpec, parse_cluster, parse_socket_address
from proxy.config.listener import HcmSpec, ListenerSpec, parse_listener
from proxy.config.reader import ConfigError, Obj
from proxy.config.route import RouteAction

__all__ = ["NodeSpec", "AdminSpec", "Bootstrap", "load_bootstrap", "parse_bootstrap",]


@dataclass(frozen=True)
class NodeSpec:
    id: str = ""
    cluster: str = ""
    metadata: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class AdminSpec:
    address: str
    port: int
    access_log_path: str = ""


@dataclass(frozen=True)
class Bootstrap:
    node: NodeSpec
    admin: AdminSpec | None
    listeners: tuple[ListenerSpec, ...]
    clusters: tuple[ClusterSpec, ...]
    dynamic_resources: dict | None = None       # raw; the xDS client parses it
    outlier_event_log_path: str = ""            # cluster_manager.outlier_detection.event_log_path
    raw: dict = field(default_factory=dict, compare=False, repr=False)


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DYNAMIC_KEYS = ("lds_config", "cds_config", "ads_config", "lds_resources_locator", "cds_resources_locator")


def _node(o: Obj | None) -> NodeSpec:
    if o is None:
        return NodeSpec()
    n = NodeSpec(o.take("id", "", str), o.take("cluster", "", str), o.take("metadata", {}, dict))
    o.ignore("locality", "user_agent_name", "user_agent_version")
    o.done()
    return n


def _admin(o: Obj | None) -> AdminSpec | None:
    if o is None:
        return None
    a = o.obj("address", required=True)
    assert a is not None
    address, port = parse_socket_address(a)
    path = o.take("access_log_path", "", str)
    for log in o.objs("access_log"):
        # only file loggers make sense here; keep the first path
        log.ignore("name")
        tc = log.obj("typed_config")
        if tc is not None:
            tc.ignore("@type")
            path = path or tc.take("path", "", str)
            tc.done()
        log.done()
    o.ignore("profile_path")
    o.done()
    return AdminSpec(address, port, path)


def _dynamic(o: Obj | None) -> dict | None:
    if o is None:
        return None
    for key in _DYNAMIC_KEYS:
        sub = o.take(key, None, dict)
        if sub is not None and key.endswith("_config"):
            Obj(sub, o.sub(key))   # must be a mapping; the xDS client validates the rest
    o.done()
    return dict(o.data)


def _cluster_manager(o: Obj | None) -> str:
    """``cluster_manager``: only ``outlier_detection.event_log_path`` (the outlier event log,
    proxy/upstream/outlier_log.py); every other field is rejected by name."""
    if o is None:
        return ""
    od = o.obj("outlier_detection")
    path = ""
    if od is not None:
        path = od.take("event_log_path", "", str)
        od.done()      # event_service (gRPC sink) is not supported
    o.done()
    return path


def parse_bootstrap(data: Any, service_node: str = "", service_cluster: str = "") -> Bootstrap:
    o = Obj(data, "")
    node = _node(o.obj("node"))
    if service_node or service_cluster:
        node = NodeSpec(service_node or node.id, service_cluster or node.cluster, node.metadata)
    admin = _admin(o.obj("admin"))
    sr = o.obj("static_resources")
    listeners: list[ListenerSpec] = []
    clusters: list[ClusterSpec] = []
    if sr is not None:
        listeners = [parse_listener(lo, i) for i, lo in enumerate(sr.objs("listeners"))]
        clusters = [parse_cluster(c) for c in sr.objs("clusters")]
        sr.done()
    dyn = _dynamic(o.obj("dynamic_resources"))
    od_log = _cluster_manager(o.obj("cluster_manager"))
    o.ignore("layered_runtime")
    o.done()
    _check_names(listeners, clusters, dyn is not None)
    return Bootstrap(node, admin, tuple(listeners), tuple(clusters), dyn, raw=data, outlier_event_log_path=od_log)


def _check_names(listeners: list[ListenerSpec], clusters: list[ClusterSpec], dynamic: bool) -> None:
    seen: dict[str, int] = {}
    for i, c in enumerate(clusters):
        if c.name in seen:
            raise ConfigError(f"static_resources.clusters[{i}].name", f"duplicate cluster {c.name!r}")
        seen[c.name] = i
    names: set[str] = set()
    for i, lst in enumerate(listeners):
        if lst.name in names:
            raise ConfigError(f"static_resources.listeners[{i}].name", f"duplicate listener {lst.name!r}")
        names.add(lst.name)
    if dynamic:
        return       # clusters may arrive by CDS later
    for i, lst in enumerate(listeners):
        f = lst.filter
        refs: list[tuple[str, str]] = []
        if isinstance(f, HcmSpec) and f.route_config is not None:
            base = f"static_resources.listeners[{i}].filter_chains[0].filters[0]"
            for vi, vh in enumerate(f.route_config.virtual_hosts):
                for ri, r in enumerate(vh.routes):
                    a = r.action
                    p = f"{base}.route_config.virtual_hosts[{vi}].routes[{ri}].route"
                    if isinstance(a, RouteAction):
                        refs += [(a.cluster, p)] if a.cluster else [(w.name, p) for w in a.weighted_clusters]
        elif not isinstance(f, HcmSpec):
            refs.append((f.cluster, f"static_resources.listeners[{i}].filter_chains[0].filters[0].cluster"))
        for name, path in refs:
            if name not in seen:
                raise ConfigError(path, f"unknown cluster {name!r}; defined clusters: {', '.join(seen) or '(none)'}")


def load_bootstrap(path: str, service_node: str = "", service_cluster: str = "") -> Bootstrap:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, f"cannot read config: {e.strerror}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=_SAFE_LOADER)
    except (yaml.YAMLError, ValueError) as e:
        raise ConfigError(path, f"cannot parse config: {e}") from None
    if data is None:
        data = {}
    try:
        return parse_bootstrap(data, service_node, service_cluster)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.path}" if e.path else path, e.message) from None
