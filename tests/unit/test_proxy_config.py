"""Bootstrap loading: the seed parses unmodified, and unsupported or invalid fields are
errors naming their path (like `envoy --mode validate`)."""
import copy
import pathlib
import subprocess
import sys

import pytest
import yaml

from proxy.config.bootstrap import load_bootstrap, parse_bootstrap
from proxy.config.reader import ConfigError
from proxy.config.listener import HcmSpec
from tests.support.seed import seed_path, seed_yaml, yaml_in_seed

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_repo_copy_is_the_tutorials_yaml_byte_for_byte():
    path = seed_path()
    if path is None:
        pytest.skip("the tutorial (shared/seeds) is not beside this checkout")
    assert seed_yaml() == yaml_in_seed(path)


@pytest.fixture
def seed(tmp_path):
    p = tmp_path / "front-proxy.yaml"
    p.write_text(seed_yaml())
    return p


def test_seed_parses_unmodified(seed):
    b = load_bootstrap(str(seed))
    (lst,) = b.listeners
    assert (lst.address, lst.port) == ("10.0.0.1", 15001)
    assert isinstance(lst.filter, HcmSpec) and lst.filter.stat_prefix == "ingress_http"
    route = lst.filter.route_config.virtual_hosts[0].routes[0]
    assert route.prefix == "/" and route.action.cluster == "gwu"
    assert route.action.host_rewrite == "gwadvnet20.github.io"
    (c,) = b.clusters
    assert (c.type, c.lb_policy, c.dns_lookup_family, c.connect_timeout_s) == ("LOGICAL_DNS", "ROUND_ROBIN",
                                                                                "V4_ONLY", 1.0)
    assert c.endpoints[0].address == "gwadvnet20.github.io" and c.endpoints[0].port == 80


def test_cli_validate_mode(seed, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "proxy", "--mode", "validate", "-c", str(seed)], cwd=ROOT,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    data = yaml.safe_load(seed.read_text())
    data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["config"]["x"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    r = subprocess.run([sys.executable, "-m", "proxy", "--mode", "validate", "--config-path", str(bad)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "static_resources.listeners[0].filter_chains[0].filters[0].config: unsupported field 'x'" in r.stderr


def _seed_data():
    return yaml.safe_load(seed_yaml())


def _err(data) -> str:
    with pytest.raises(ConfigError) as e:
        parse_bootstrap(data)
    return str(e.value)


HCM = "static_resources.listeners[0].filter_chains[0].filters[0].config"


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["static_resources"]["clusters"][0].update(foo=1),
     "static_resources.clusters[0]: unsupported field 'foo'"),
    (lambda d: d["static_resources"]["clusters"][0].update(type="ORIGINAL_DST"),
     "static_resources.clusters[0].type: unsupported cluster type 'ORIGINAL_DST'"),
    (lambda d: d["static_resources"]["clusters"][0].update(lb_policy="MAGLEV"),
     "static_resources.clusters[0].lb_policy: unsupported lb_policy 'MAGLEV'"),
    (lambda d: d["static_resources"]["clusters"][0].update(connect_timeout="1 second"),
     "static_resources.clusters[0].connect_timeout: bad duration"),
    (lambda d: d["static_resources"]["clusters"][0].update(type="static"),
     "malformed IP address: gwadvnet20.github.io"),
    (lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["config"]["route_config"]
     ["virtual_hosts"][0]["routes"][0]["route"].update(cluster="nope"), "unknown cluster 'nope'"),
    (lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["config"]["route_config"]
     ["virtual_hosts"][0]["routes"][0]["match"].update(query_parameters=[]),
     f"{HCM}.route_config.virtual_hosts[0].routes[0].match: unsupported field 'query_parameters'"),
    (lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["config"]["http_filters"]
     .insert(0, {"name": "envoy.filters.http.lua"}), "unsupported HTTP filter 'envoy.filters.http.lua'"),
    (lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["config"]
     .update(http_filters=[]), "the last HTTP filter must be the router"),
    (lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0].update(
        typed_config={"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"}),
     "only one of typed_config, config may be given"),
    (lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0].update(use_proxy_proto=True),
     "static_resources.listeners[0].filter_chains[0]: unsupported field 'use_proxy_proto'"),
    (lambda d: d.update(stats_sinks=[]), "unsupported field 'stats_sinks'"),
])
def test_strict_errors_name_the_path(mutate, expected):
    d = _seed_data()
    mutate(d)
    assert expected in _err(d)


def test_v3_type_url_checked_against_filter_name():
    d = _seed_data()
    f = d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    f["typed_config"] = dict(f.pop("config"), **{
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"})
    assert "does not fit filter 'envoy.http_connection_manager'" in _err(d)
    f["typed_config"]["@type"] = ("type.googleapis.com/envoy.extensions.filters.network."
                                  "http_connection_manager.v3.HttpConnectionManager")
    f["name"] = "envoy.filters.network.http_connection_manager"
    parse_bootstrap(d)


def test_logical_dns_needs_one_endpoint_and_duplicate_domains_rejected():
    d = _seed_data()
    la = d["static_resources"]["clusters"][0]["load_assignment"]
    la["endpoints"][0]["lb_endpoints"].append(copy.deepcopy(la["endpoints"][0]["lb_endpoints"][0]))
    assert "LOGICAL_DNS clusters must have a single" in _err(d)
    d = _seed_data()
    vhs = d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["config"]["route_config"][
        "virtual_hosts"]
    vhs.append(dict(copy.deepcopy(vhs[0]), name="other"))
    assert "only unique values for domains are permitted" in _err(d)


def test_full_v3_surface_parses():
    cfg = {
        "node": {"id": "n1", "cluster": "web", "metadata": {"LABELS": {"app": "web", "version": "v1"}}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
        "dynamic_resources": {"cds_config": {"ads": {}}, "lds_config": {"ads": {}},
                              "ads_config": {"api_type": "REST", "cluster_names": ["xds"]}},
        "static_resources": {
            "listeners": [{
                "name": "l", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 80}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
                                 "v3.HttpConnectionManager",
                        "stat_prefix": "in", "request_headers_timeout": "5s", "max_request_headers_kb": 32,
                        "access_log": [{"name": "envoy.access_loggers.stdout", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}}],
                        "route_config": {"name": "r", "response_headers_to_add": [
                            {"header": {"key": "x-a", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
                            "virtual_hosts": [{"name": "v", "domains": ["*.example.com", "api.*", "*"], "routes": [
                                {"match": {"path": "/health"}, "direct_response": {"status": 200,
                                                                                   "body": {"inline_string": "ok"}}},
                                {"match": {"safe_regex": {"regex": "/v[0-9]+/.*"}, "headers": [
                                    {"name": "x-user", "string_match": {"exact": "a"}, "invert_match": True}]},
                                 "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 90},
                                                                              {"name": "b", "weight": 10}]},
                                           "timeout": "2s", "prefix_rewrite": "/",
                                           "retry_policy": {"retry_on": "5xx,connect-failure", "num_retries": 2,
                                                            "per_try_timeout": "0.5s",
                                                            "retry_back_off": {"base_interval": "0.01s"}}}},
                                {"match": {"prefix": "/"}, "route": {"cluster": "a", "hash_policy": [
                                    {"header": {"header_name": "x-user"}}]}}]}]},
                        "http_filters": [
                            {"name": "envoy.filters.http.fault", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                                "abort": {"http_status": 503, "percentage": {"numerator": 10}}}},
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
            "clusters": [
                {"name": "a", "type": "STRICT_DNS", "lb_policy": "LEAST_REQUEST", "connect_timeout": "0.25s",
                 "load_assignment": {"cluster_name": "a", "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"address": {"socket_address": {"address": "localhost", "port_value": 1}}}}]}]},
                 "circuit_breakers": {"thresholds": [{"max_connections": 10, "max_pending_requests": 5}]},
                 "outlier_detection": {"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "5s",
                                       "max_ejection_percent": 50},
                 "health_checks": [{"timeout": "1s", "interval": "2s", "unhealthy_threshold": 2,
                                    "healthy_threshold": 1, "http_health_check": {"path": "/healthz"}}]},
                {"name": "b", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}},
                 "lb_policy": "RING_HASH"},
            ]}}
    b = parse_bootstrap(cfg)
    assert b.node.metadata["LABELS"]["version"] == "v1" and b.admin.port == 9901
    assert b.dynamic_resources["ads_config"]["api_type"] == "REST"
    a, eds = b.clusters
    assert a.thresholds.max_connections == 10 and a.outlier.consecutive_5xx == 3
    assert a.health_checks[0].path == "/healthz"
    assert eds.type == "EDS" and eds.lb_policy == "RING_HASH"
    rp = b.listeners[0].filter.route_config.virtual_hosts[0].routes[1].action.retry_policy
    assert rp.retry_on == {"5xx", "connect-failure"} and rp.num_retries == 2 and rp.per_try_timeout_s == 0.5
    assert rp.max_interval_s == pytest.approx(0.1)
