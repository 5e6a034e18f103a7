"""What minimesh's Pilot (testbed/mesh/pilot/resources.py) emits parses in minimesh-proxy: per-route
fault config (typed_per_filter_config), request_mirror_policies, access-log log_format;
plus the log_format operators and the fault filter's header matchers, without sockets."""
import json

import pytest

from proxy.config.listener import parse_listener
from proxy.config.reader import ConfigError, Obj
from proxy.config.route import parse_route_config
from proxy.access_log import LogFormat, compile_format, parse_log_format
from proxy.filters.mirror import shadow_host
from proxy.http.route_table import RouteTable
from testbed.mesh.pilot import resources as xds
from testbed.mesh.pilot.resources import NodeInfo, build
from tests.unit.test_xds import CLIENT, SRC, state


def test_pilot_routes_parse_with_fault_and_mirror():
    [rc] = build(state(), CLIENT, xds.ROUTE, ["15001"], SRC)
    rc = {k: v for k, v in rc.items() if k != "@type"}      # the xDS client strips it
    table = RouteTable(parse_route_config(Obj(rc, "rds")))
    vh = table.virtual_host(b"svcb")
    canary = [r for r in vh.routes if r.per_filter]
    assert canary, "the VirtualService's fault must reach the route as per-filter config"
    fault = canary[0].per_filter["envoy.filters.http.fault"]
    assert fault.abort_status == 503 and fault.delay_s == 5.0 and fault.delay_percent == pytest.approx(10.0)
    mirrored = [r for r in vh.routes if r.mirrors]
    assert len(mirrored) == 1
    [m] = mirrored[0].mirrors
    assert m.cluster == "outbound|9000||svca" and m.percent == pytest.approx(12.5)
    assert m.shadow_host_suffix


def test_pilot_listener_with_json_access_log_parses(tmp_path):
    node = NodeInfo.make("10.0.0.50", "curl", "client", labels={"app": "curl"},
                         access_log=str(tmp_path / "access.log"))
    listeners = build(state(), node, xds.LISTENER, [], SRC)
    raw = {k: v for k, v in listeners[0].items() if k not in ("@type", "traffic_direction")}
    spec = parse_listener(Obj(raw, "lds[0]"), 0)
    [log] = spec.filter.access_log
    assert log.kind == "file" and log.log_format is not None and log.log_format.json["listener"]


def test_unknown_per_filter_name_and_unsupported_filter_are_errors():
    rc = {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{
        "match": {"prefix": "/"}, "route": {"cluster": "a"},
        "typed_per_filter_config": {"envoy.filters.http.router": {}}}]}]}
    with pytest.raises(ConfigError, match=r"typed_per_filter_config.envoy.filters.http.router: .*no per-route"):
        parse_route_config(Obj(rc, "rc"))
    rc["virtual_hosts"][0]["routes"][0]["typed_per_filter_config"] = {"envoy.filters.http.nope": {}}
    with pytest.raises(ConfigError, match="unsupported HTTP filter"):
        parse_route_config(Obj(rc, "rc"))


def test_fault_headers_field_compiles_matchers():
    from proxy.filters.fault import _parse
    cfg = _parse(Obj({"headers": [{"name": "x-mm-fault", "string_match": {"exact": "abort"}}],
                      "abort": {"http_status": 503, "percentage": {"numerator": 100}}}, "f"))
    [m] = cfg.matchers
    assert m([(b"x-mm-fault", b"abort")]) and not m([(b"x-mm-fault", b"other")]) and not m([])


@pytest.mark.parametrize("host,shadow", [(b"a.example", b"a.example-shadow"),
                                         (b"a.example:8080", b"a.example-shadow:8080"),
                                         (b"[::1]:80", b"[::1]:80-shadow")])
def test_shadow_host_suffix_goes_before_the_port(host, shadow):
    assert shadow_host(host) == shadow


class _Head:
    http_version = "1.1"


class _Conn:
    peer = ("10.0.0.7", 40000)


class _Host:
    address, port = "10.0.0.9", 9000


class _Route:
    name = "r1"


class _Stream:
    method, path, host = b"GET", b"/p?q=1", b"svc"
    headers = [(b"host", b"svc"), (b"user-agent", b"curl/8"), (b"x-request-id", b"rid")]
    resp_headers = [(b"x-envoy-upstream-service-time", b"3")]
    status, bytes_in, bytes_out, upstream_ms = 503, 10, 20, 3
    cluster_name, upstream_host, route, head, conn = "c", _Host(), _Route(), _Head(), _Conn()

    def flag_string(self):
        return "UF,URX"


def test_text_format_operators():
    fmt = parse_log_format(Obj({"text_format_source": {"inline_string":
        "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% "
        "%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %ROUTE_NAME% %REQ(X-MISSING)% %REQ(USER-AGENT):4% "
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% 100%%\n"}}, "lf"))
    line = compile_format(fmt)(_Stream(), 1_700_000_000.25, 12)
    assert line == "GET /p?q=1 HTTP/1.1 503 UF,URX 10.0.0.9:9000 c r1 - curl 3 10.0.0.7 100%\n"


def test_json_format_keeps_types_and_nulls():
    fmt = LogFormat(json={"code": "%RESPONSE_CODE%", "d": "%DURATION%", "up": "%REQ(X-MISSING)%",
                          "mixed": "%REQ(:METHOD)% %RESPONSE_CODE%", "lit": "x", "n": {"t": "%START_TIME%"}})
    got = json.loads(compile_format(fmt)(_Stream(), 1_700_000_000.25, 12))
    assert got == {"code": 503, "d": 12, "up": None, "mixed": "GET 503", "lit": "x",
                   "n": {"t": "2023-11-14T22:13:20.250Z"}}


def test_unknown_operator_is_an_error_naming_the_field():
    with pytest.raises(ConfigError,
                       match=r"lf.text_format_source.inline_string: unsupported access log operator %NOPE%"):
        parse_log_format(Obj({"text_format_source": {"inline_string": "%NOPE%"}}, "lf"))
