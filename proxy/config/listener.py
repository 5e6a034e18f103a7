"""Listener specs: listeners, their network filters (HTTP connection manager, TCP proxy),
HTTP filter lists and access logs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.config.cluster import parse_socket_address
from proxy.config.reader import ConfigError, Obj, typed
from proxy.config.route import RouteConfigSpec, parse_route_config
from proxy.access_log import LogFormat, parse_log_format
import proxy.filters.factory as registry
import proxy.tls.transport as tls_transport

__all__ = ["AccessLogSpec", "HttpFilterSpec", "HcmSpec", "TcpProxySpec", "ListenerSpec", "parse_listener",
           "HCM_NAMES", "TCP_PROXY_NAMES"]

HCM_NAMES = ("envoy.filters.network.http_connection_manager", "envoy.http_connection_manager")
HCM_TYPES = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
             "type.googleapis.com/envoy.config.filter.network.http_connection_manager.v2.HttpConnectionManager")
TCP_PROXY_NAMES = ("envoy.filters.network.tcp_proxy", "envoy.tcp_proxy")
TCP_PROXY_TYPES = ("type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                   "type.googleapis.com/envoy.config.filter.network.tcp_proxy.v2.TcpProxy")
LOGGERS = {
    "envoy.access_loggers.file": "file", "envoy.file_access_log": "file",
    "envoy.access_loggers.stdout": "stdout", "envoy.access_loggers.stderr": "stderr",
}
LOGGER_TYPES = ("type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
                "type.googleapis.com/envoy.config.accesslog.v2.FileAccessLog")


@dataclass(frozen=True)
class AccessLogSpec:
    kind: str          # file | stdout | stderr
    path: str = ""
    log_format: LogFormat | None = None    # None: Envoy's default format


@dataclass(frozen=True)
class HttpFilterSpec:
    name: str          # canonical name
    config: Any        # the filter's own parsed, frozen config


@dataclass(frozen=True)
class HcmSpec:
    stat_prefix: str
    route_config: RouteConfigSpec | None
    rds_route_config_name: str | None        # set when routes come from RDS (xDS client)
    http_filters: tuple[HttpFilterSpec, ...]
    access_log: tuple[AccessLogSpec, ...] = ()
    server_name: str = "envoy"
    server_header_transformation: str = "OVERWRITE"
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    request_headers_timeout_s: float = 0.0
    stream_idle_timeout_s: float = 300.0
    request_timeout_s: float = 0.0
    idle_timeout_s: float = 3600.0
    max_request_headers_kb: int = 60
    max_headers_count: int = 100
    use_remote_address: bool = False
    strip_host_port: bool = False


@dataclass(frozen=True)
class TcpProxySpec:
    stat_prefix: str
    cluster: str
    idle_timeout_s: float = 3600.0
    access_log: tuple[AccessLogSpec, ...] = ()


@dataclass(frozen=True)
class ListenerSpec:
    name: str
    address: str
    port: int
    filter: HcmSpec | TcpProxySpec
    per_connection_buffer_limit_bytes: int = 1024 * 1024
    raw: Any = None
    tls: Any = None        # proxy.tls.transport.DownstreamTls, None: plaintext


def _access_logs(o: Obj) -> tuple[AccessLogSpec, ...]:
    logs = []
    for a in o.objs("access_log"):
        name = a.take("name", kind=str)
        if name not in LOGGERS:
            raise ConfigError(a.sub("name"), f"unsupported access logger {name!r}; allowed: {', '.join(LOGGERS)}")
        kind = LOGGERS[name]
        c = typed(a, (), LOGGER_TYPES)
        path = c.take("path", kind=str) if kind == "file" else ""
        lf = c.obj("log_format")
        fmt = parse_log_format(lf) if lf is not None else None
        c.done()
        a.done()
        logs.append(AccessLogSpec(kind, path, fmt))
    return tuple(logs)


def _http_filters(o: Obj) -> tuple[HttpFilterSpec, ...]:
    out = []
    for f in o.objs("http_filters"):
        name = f.take("name", kind=str)
        info = registry.http_filter(name, f.sub("name"))
        cfg = typed(f, (), info.type_urls)
        parsed = info.parse(cfg)
        cfg.done()
        f.take("disabled", False, bool, (False,))
        f.take("is_optional", False, bool)
        f.done()
        out.append(HttpFilterSpec(info.names[0], parsed))
    if not out or out[-1].name != "envoy.filters.http.router":
        raise ConfigError(o.sub("http_filters"), "the last HTTP filter must be the router "
                          "(envoy.filters.http.router or envoy.router)")
    return tuple(out)


def parse_hcm(c: Obj) -> HcmSpec:
    stat_prefix = c.take("stat_prefix", kind=str)
    c.take("codec_type", "AUTO", str, ("AUTO", "HTTP1", "auto", "http1"))
    which = c.one_of(("route_config", "rds"))
    rc, rds_name = None, None
    if which == "route_config":
        r = c.obj("route_config")
        assert r is not None
        rc = parse_route_config(r)
    else:
        r = c.obj("rds")
        assert r is not None
        rds_name = r.take("route_config_name", kind=str)
        r.ignore("config_source")
        r.done()
    filters = _http_filters(c)
    logs = _access_logs(c)
    cho = c.obj("common_http_protocol_options")
    idle, max_count = 3600.0, 100
    if cho is not None:
        idle = cho.duration("idle_timeout", 3600.0)
        max_count = cho.take("max_headers_count", 100, int)
        cho.take("headers_with_underscores_action", "ALLOW", str, ("ALLOW",))
        cho.done()
    hpo = c.obj("http_protocol_options")
    if hpo is not None:
        hpo.take("accept_http_10", False, bool, (False,))
        hpo.done()
    strip = c.take("strip_any_host_port", False, bool) or c.take("strip_matching_host_port", False, bool)
    spec = HcmSpec(
        stat_prefix=stat_prefix, route_config=rc, rds_route_config_name=rds_name, http_filters=filters,
        access_log=logs,
        server_name=c.take("server_name", "envoy", str),
        server_header_transformation=c.take("server_header_transformation", "OVERWRITE", str,
                                            ("OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH")),
        generate_request_id=c.take("generate_request_id", True, bool),
        preserve_external_request_id=c.take("preserve_external_request_id", False, bool),
        request_headers_timeout_s=c.duration("request_headers_timeout", 0.0),
        stream_idle_timeout_s=c.duration("stream_idle_timeout", 300.0),
        request_timeout_s=c.take("request_timeout", "0s", str, ("0s",)) and 0.0,
        idle_timeout_s=idle,
        max_request_headers_kb=c.take("max_request_headers_kb", 60, int),
        max_headers_count=max_count,
        use_remote_address=c.take("use_remote_address", False, bool),
        strip_host_port=strip)
    c.take("normalize_path", False, bool, (False,))
    c.take("merge_slashes", False, bool, (False,))
    c.ignore("xff_num_trusted_hops", "skip_xff_append")
    c.done()
    if not 1 <= spec.max_request_headers_kb <= 8192:
        raise ConfigError(c.sub("max_request_headers_kb"), "must be 1..8192")
    return spec


def parse_tcp_proxy(c: Obj) -> TcpProxySpec:
    spec = TcpProxySpec(c.take("stat_prefix", kind=str), c.take("cluster", kind=str),
                        c.duration("idle_timeout", 3600.0), _access_logs(c))
    c.done()
    return spec


def parse_listener(o: Obj, index: int) -> ListenerSpec:
    name = o.take("name", f"listener_{index}", str)
    a = o.obj("address", required=True)
    assert a is not None
    address, port = parse_socket_address(a)
    chains = list(o.objs("filter_chains"))
    chain, tls = tls_transport.pick_chain(o, chains)    # transport_socket: STRICT/PERMISSIVE/plain
    chain.ignore("name")
    filters = list(chain.objs("filters"))
    if len(filters) != 1:
        raise ConfigError(chain.sub("filters"), "exactly one network filter (HTTP connection manager "
                          f"or TCP proxy) is supported, got {len(filters)}")
    chain.done()
    f = filters[0]
    fname = f.take("name", kind=str)
    spec: HcmSpec | TcpProxySpec
    if fname in HCM_NAMES:
        c = typed(f, (), HCM_TYPES)
        spec = parse_hcm(c)
    elif fname in TCP_PROXY_NAMES:
        c = typed(f, (), TCP_PROXY_TYPES)
        spec = parse_tcp_proxy(c)
    else:
        raise ConfigError(f.sub("name"), f"unsupported network filter {fname!r}; allowed: "
                          f"{', '.join(HCM_NAMES + TCP_PROXY_NAMES)}")
    f.done()
    limit = o.take("per_connection_buffer_limit_bytes", 1024 * 1024, int)
    o.ignore("traffic_direction", "stat_prefix", "metadata", "connection_balance_config")
    o.done()
    return ListenerSpec(name, address, port, spec, limit, o.data, tls)
