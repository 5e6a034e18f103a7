"""Envoy's stat names are part of the contract: after the same request
sequence (tests/support/scenarios.py), minimesh-proxy's admin /stats must give the same
values as real Envoy's for the counters below, per cluster of the scenario's config and
for the HTTP connection manager (stat_prefix ingress_http). A counter a proxy does not
list counts as 0."""
from __future__ import annotations

import pytest
import yaml

from tests.support.configs import CONFIG_DIR, render_free
from tests.support.differential import envoy_stats, run_with_stats
from tests.support.scenarios import SCENARIOS

CLUSTER_COUNTERS = (
    "upstream_rq_total", "upstream_rq_completed", "upstream_rq_2xx", "upstream_rq_5xx",
    "upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_limit_exceeded",
    "upstream_rq_timeout", "upstream_rq_per_try_timeout", "upstream_cx_connect_fail",
    "upstream_cx_none_healthy")
HCM_COUNTERS = ("downstream_rq_total", "downstream_rq_completed", "downstream_rq_2xx",
                "downstream_rq_4xx", "downstream_rq_5xx")


def _names(config: str) -> list[str]:
    path = CONFIG_DIR / config
    boot = yaml.safe_load(render_free(path))
    clusters = [c["name"] for c in boot["static_resources"]["clusters"]]
    return ([f"cluster.{c}.{k}" for c in clusters for k in CLUSTER_COUNTERS]
            + [f"http.ingress_http.{k}" for k in HCM_COUNTERS])


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_same_counters_as_envoy(scenario, envoy_bin, minimesh_proxy):
    names = _names(scenario.config)
    expected = envoy_stats(scenario)
    assert expected.get("http.ingress_http.downstream_rq_total") == len(scenario.requests)
    _, got = run_with_stats("minimesh", scenario.config, scenario.upstreams, scenario.requests)
    diff = [f"{n}: envoy={expected.get(n, 0)} minimesh={got.get(n, 0)}"
            for n in names if expected.get(n, 0) != got.get(n, 0)]
    assert diff == [], "minimesh-proxy /stats differs from real Envoy:\n" + "\n".join(diff)
